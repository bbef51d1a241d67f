"""YOLO-format datasets: image lists, label checking and caching, the training/evaluation
Dataset and its DataLoader, multi-scale helpers, and the image/video/stream sources of
detect.py.

Layout: one label ``.txt`` per image, rows ``class cx cy w h`` normalised to [0, 1]; the
label path replaces the LAST ``images`` path component with ``labels`` and the extension
with ``.txt`` (``d/images/train/a.jpg -> d/labels/train/a.txt``). Input files are only read.

Batches from ``create_dataloader`` are ``(imgs, targets, paths, shapes)``:
  imgs     uint8 [B,3,H,W] RGB (divide by 255 on the device);
  targets  float32 [n,6] = (image index in the batch, class, cx, cy, w, h), normalised to H, W;
  shapes   per image ``((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))`` mapping letterboxed
           pixels back to the original (x0 = (x - pad_w) / ratio_w), or None for a mosaic.

Reproducibility: every random draw of item ``i`` in epoch ``e`` comes from
``numpy.random.default_rng([seed, e, i])``, so the images do not depend on the number of
workers or their scheduling, and a resumed run sees what an uninterrupted one would.

Multi-scale training (the loop's job, helped by ``random_train_size`` and ``resize_batch``):
build the loader at the largest size, draw a new size every ``accumulate`` batches with
``random_train_size(min, max, 32, rng)`` and call ``resize_batch(imgs, size)``: bilinear
resize so the long side is ``size``, each side rounded up to a multiple of 32. Labels are
normalised, so targets need no change.
"""
import glob
import hashlib
import io
import json
import math
import os
import random
import threading
import warnings
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from utils.augmentations import (AUG_DEFAULTS, aug_params, augment_hsv, box_candidates, letterbox,  # noqa: F401
                                 mixup, mosaic_slices, random_affine, xywhn2xyxy, xyxy2xywhn)
from utils.general import IMG_FORMATS, atomic_write_bytes  # noqa: F401  (IMG_FORMATS re-exported)

VID_FORMATS = {'.mov', '.avi', '.mp4', '.mpg', '.mpeg', '.m4v', '.wmv', '.mkv'}
CACHE_VERSION = 4  # bump whenever the cache layout changes
COORD_TOLERANCE = 1e-3  # coordinates this far outside [0, 1] are clipped; further out they are errors
MAX_LISTED = 20  # problems listed in one warning / error before "... and N more"
_BAR = '{l_bar}{bar:10}{r_bar}'
_STATS = ('found', 'missing', 'empty', 'duplicate', 'corrupt')  # the summary line's counters


# ============================================================================= files

def img2label_paths(img_paths):
    """Label path of each image: the LAST ``images`` path component becomes ``labels`` (a parent
    folder called e.g. ``images_2020`` is left alone), the extension ``.txt``. String operations
    only: this runs over every file of a dataset on each start."""
    mid, new = f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'
    out = []
    for p in map(str, img_paths):
        i = p.rfind(mid)
        if i >= 0:
            p = p[:i] + new + p[i + len(mid):]
        elif p.startswith('images' + os.sep):
            p = 'labels' + p[len('images'):]
        dot = p.rfind('.')
        out.append((p[:dot] if dot > p.rfind(os.sep) + 1 else p) + '.txt')  # a leading dot is not an extension
    return out


def _read_list(list_file):
    """Non-empty lines of a .txt list; a relative entry that does not exist from the CWD is
    resolved against the list file's folder (lists usually hold paths relative to themselves)."""
    base = os.path.dirname(os.path.abspath(list_file))
    out = []
    for line in Path(list_file).read_text().splitlines():
        line = line.strip()
        if line:
            out.append(line if os.path.isabs(line) or os.path.exists(line) else os.path.join(base, line))
    return out


def list_images(path):
    """Image paths of a .txt list, a folder (recursive, sorted), a glob (sorted), an image file,
    or a list of those; only IMG_FORMATS extensions are kept. FileNotFoundError (one line)
    when a path does not exist or nothing matches."""
    files = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = str(p)
        if os.path.isfile(p) and p.endswith('.txt'):
            files += _read_list(p)
        elif os.path.isdir(p):
            files += sorted(str(f) for f in Path(p).rglob('*') if f.suffix.lower() in IMG_FORMATS)
        elif any(c in p for c in '*?['):
            files += sorted(glob.glob(p, recursive=True))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f'{p} does not exist (expected an image list .txt, a folder, a glob or an image)')
    files = [f for f in files if os.path.splitext(f)[1].lower() in IMG_FORMATS]
    if not files:
        raise FileNotFoundError(f'no images found in {path} (formats: {" ".join(sorted(IMG_FORMATS))})')
    return files


def cache_path_for(path):
    """Where the label cache of a source lives: ``list.txt -> list.cache`` beside the list,
    ``folder -> folder.cache`` beside the folder; None for globs and lists of paths."""
    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    if p.is_file() and p.suffix == '.txt':
        return str(p.with_suffix('.cache'))
    if p.is_dir():
        p = p.resolve()
        return str(p.parent / f'{p.name}.cache')
    return None


# ============================================================================= checking

_EXIF_ORIENTATION = 0x0112


def verify_image(path):
    """(height, width) of a readable image as cv2.imread returns it (EXIF rotation applied),
    else ValueError with the reason. The header and structure are checked with PIL's
    ``verify()``; a JPEG without its end-of-image marker is fully decoded, so a truncated one
    is rejected while one with harmless trailing bytes is accepted."""
    try:
        with Image.open(path) as im:  # parses the header only; size and EXIF need no decoding
            w, h = im.size
            fmt = im.format
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if fmt in ('JPEG', 'TIFF', 'WEBP') else 1
            im.verify()
        if fmt == 'JPEG' and not _has_jpeg_eoi(path):
            with Image.open(path) as im:
                im.load()  # raises OSError "image file is truncated" when data is missing
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ValueError(f'unreadable image ({e.__class__.__name__}: {e})') from None
    if w < 2 or h < 2:
        raise ValueError(f'image too small ({w}x{h})')
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # 90-degree EXIF rotations swap the sides


def _has_jpeg_eoi(path):
    with open(path, 'rb') as f:
        f.seek(-2, 2)
        return f.read() == b'\xff\xd9'


def _row_problem(parts, nc):
    """(reason, None) for a bad label row (list of tokens), else (None, [cls, cx, cy, w, h])."""
    if len(parts) != 5:
        return f'expected 5 columns (class cx cy w h), got {len(parts)}', None
    try:
        values = [float(v) for v in parts]
    except ValueError:
        return f'non-numeric value in {" ".join(parts)!r}', None
    if not all(math.isfinite(v) for v in values):
        return f'non-finite value in {" ".join(parts)!r}', None
    cls = values[0]
    if cls != int(cls):
        return f'class {parts[0]} is not an integer', None
    if cls < 0 or (nc is not None and cls >= nc):
        return f'class {parts[0]} outside 0..{nc - 1}' if nc is not None else f'negative class {parts[0]}', None
    for name, v in zip(('cx', 'cy', 'w', 'h'), values[1:]):
        if v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE:
            return f'{name}={v:g} outside [0, 1] (coordinates are fractions of the image size)', None
    values[1:] = [min(max(v, 0.0), 1.0) for v in values[1:]]
    if values[3] <= 0 or values[4] <= 0:
        return f'zero-size box (w={values[3]:g}, h={values[4]:g})', None
    return None, values


def check_label_file(path, nc=None):
    """Parse and check a label file. Returns (rows float32 [n,5], problems, n_duplicates):
    problems are ``'path:line: reason'`` strings (their rows are not returned); exact duplicate
    rows are dropped (first kept, order preserved) and counted. ``nc`` None skips the upper
    class bound."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        return np.zeros((0, 5), np.float32), [f'{path}: unreadable label file ({e})'], 0
    rows, problems = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if parts:
            reason, values = _row_problem(parts, nc)
            if reason:
                problems.append(f'{path}:{lineno}: {reason}')
            else:
                rows.append(values)
    unique = list(dict.fromkeys(map(tuple, rows)))  # exact duplicates dropped, first kept, order kept
    return np.array(unique, np.float32).reshape(-1, 5), problems, len(rows) - len(unique)


def _check_pair(args):
    """Check one image and its label file -> (status, hw, rows, messages, n_duplicates);
    status is found / missing / empty / bad_image / bad_labels."""
    img, lab, nc = args
    try:
        hw = verify_image(img)
    except (ValueError, OSError) as e:
        return 'bad_image', None, None, [f'{img}: {e}'], 0
    if not os.path.isfile(lab):
        return 'missing', hw, np.zeros((0, 5), np.float32), [], 0
    rows, problems, dup = check_label_file(lab, nc)
    if problems:
        return 'bad_labels', hw, None, problems, dup
    return ('found' if len(rows) else 'empty'), hw, rows, [], dup


# ============================================================================= label cache

def _cache_key(img_files, label_files, nc):
    """Hash of the version, nc, and every file's path, size and mtime: any change rebuilds."""
    def sig(f):
        try:
            st = os.stat(f)
            return f'{f}\0{st.st_size}\0{st.st_mtime_ns}'
        except OSError:
            return f'{f}\0missing'
    sigs = [sig(f) for f in img_files + label_files]
    return hashlib.sha256('\n'.join([json.dumps([CACHE_VERSION, nc]), *sigs]).encode()).hexdigest()


def _write_cache(path, key, result, prefix):
    """Store the checked labels as .npz with plain arrays only (never needs unpickling)."""
    files, labels, shapes, stats, bad_images, bad_rows = result
    buf = io.BytesIO()
    np.savez(buf, version=np.array(CACHE_VERSION), key=np.array(key), files=_pack(files),
             counts=np.array([len(x) for x in labels], np.int64),
             labels=np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32),
             shapes=np.asarray(shapes, np.int64).reshape(-1, 2), stats=np.array([stats[k] for k in _STATS]),
             bad_images=_pack(bad_images), bad_rows=_pack(bad_rows))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:  # read-only dataset folder: work without a cache
        warnings.warn(f'{prefix}cannot write label cache {path} ({e.__class__.__name__}: {e}); '
                      f'continuing without one (labels are re-checked on every start)')


def _pack(strings):
    """Strings -> one uint8 array of UTF-8 joined by NUL (a byte no path or message contains);
    4x smaller than a fixed-width unicode array for paths."""
    return np.frombuffer('\0'.join(strings).encode('utf-8', 'surrogateescape'), np.uint8) if strings else \
        np.zeros(0, np.uint8)


def _unpack(arr):
    return arr.tobytes().decode('utf-8', 'surrogateescape').split('\0') if len(arr) else []


def _read_cache(path, key):
    """The cached result when ``path`` holds a cache for ``key``, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z['version']) != CACHE_VERSION or str(z['key']) != key:
                return None
            arr, ends = z['labels'].astype(np.float32), np.cumsum(z['counts']).tolist()
            labels = [arr[a:b] for a, b in zip([0] + ends[:-1], ends)]  # views of one array
            files = _unpack(z['files'])
            if not len(files) == len(labels) == len(z['shapes']):
                return None
            return (files, labels, z['shapes'], dict(zip(_STATS, z['stats'].tolist())),
                    _unpack(z['bad_images']), _unpack(z['bad_rows']))
    except Exception:  # missing, truncated, an older format: rebuild
        return None


def _summary(stats):
    return ', '.join(f'{k} {stats[k]}' for k in _STATS)


def _listing(items):
    more = f'\n  ... and {len(items) - MAX_LISTED} more' if len(items) > MAX_LISTED else ''
    return '\n  ' + '\n  '.join(items[:MAX_LISTED]) + more


def load_labels(img_files, nc=None, strict=False, cache_path=None, prefix='', workers=None):
    """Check every image and label file (once: the result is cached at ``cache_path``) and
    return (kept image paths, labels [list of float32 [n,5] arrays], shapes int64 [N,2] (h, w)).

    Skipped with a warning naming them: unreadable/truncated images; label files with a bad
    row (listed as ``path:line: reason``). strict=True turns bad rows into a ValueError.
    Prints one summary line ``found N, missing N, empty N, duplicate N, corrupt N`` (corrupt =
    bad images + label files with bad rows)."""
    img_files = [str(f) for f in img_files]
    label_files = img2label_paths(img_files)
    key = _cache_key(img_files, label_files, nc) if cache_path else None
    result = _read_cache(cache_path, key) if cache_path and os.path.isfile(cache_path) else None
    cached = result is not None
    if not cached:
        result = _check_all(img_files, label_files, nc, prefix, workers)
    if cache_path and not cached:  # the check result holds whatever strict says: cache it first
        _write_cache(cache_path, key, result, prefix)
    files, labels, shapes, stats, bad_images, bad_rows = result
    print(f'{prefix}{_summary(stats)}' + (f' (cache {cache_path})' if cached else ''))
    if bad_images:
        warnings.warn(f'{prefix}{len(bad_images)} unreadable image(s) skipped:{_listing(bad_images)}')
    if bad_rows:
        if strict:
            raise ValueError(f'{prefix}{len(bad_rows)} bad label row(s):{_listing(bad_rows)}\n'
                             f'fix these files (or run without strict to skip their images)')
        warnings.warn(f'{prefix}{len(bad_rows)} bad label row(s); their images are excluded:{_listing(bad_rows)}')
    if not files:
        raise ValueError(f'{prefix}no usable images among {len(img_files)} (see the warnings above)')
    return files, labels, np.asarray(shapes, np.int64).reshape(-1, 2)


def _check_all(img_files, label_files, nc, prefix, workers):
    """Run _check_pair over all files (threads: the work is mostly file I/O and C decoding)."""
    files, labels, shapes, bad_images, bad_rows = [], [], [], [], []
    stats = dict.fromkeys(_STATS, 0)
    workers = workers or min(8, os.cpu_count() or 1)
    jobs = ((i, l, nc) for i, l in zip(img_files, label_files))
    with ThreadPool(workers) as pool:
        bar = tqdm(pool.imap(_check_pair, jobs, chunksize=64), total=len(img_files),
                   desc=f'{prefix}checking images and labels', bar_format=_BAR)
        for img, (status, hw, rows, messages, dup) in zip(img_files, bar):
            stats['duplicate'] += dup
            if status == 'bad_image':
                bad_images += messages
            elif status == 'bad_labels':
                bad_rows += messages
            if status in ('bad_image', 'bad_labels'):
                stats['corrupt'] += 1
                continue
            stats[status] += 1
            files.append(img)
            labels.append(rows)
            shapes.append(hw)
            bar.set_postfix_str(_summary(stats), refresh=False)
    return files, labels, np.array(shapes, np.int64).reshape(-1, 2), stats, bad_images, bad_rows


# ============================================================================= boxes, sizes

def scale_boxes(img1_shape, boxes, img0_shape, ratio_pad=None):
    """Map xyxy boxes [n,4] (tensor or array) from a letterboxed image of shape img1 (h, w)
    back to the original image img0 (h, w), clipped to it. ratio_pad = ((ratio_h, ratio_w),
    (pad_w, pad_h)) as the loader's ``shapes`` give it; None recomputes it as ``letterbox``
    (centred padding) would have."""
    if ratio_pad is None:
        r = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        h, w = round(img0_shape[0] * r), round(img0_shape[1] * r)
        rh, rw = h / img0_shape[0], w / img0_shape[1]
        pw, ph = (img1_shape[1] - w) // 2, (img1_shape[0] - h) // 2
    else:
        (rh, rw), (pw, ph) = ratio_pad
    is_t = isinstance(boxes, torch.Tensor)
    boxes = boxes.clone() if is_t else np.array(boxes, dtype=np.float64)
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pw) / rw
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - ph) / rh
    clip = (lambda x, hi: x.clamp(0, hi)) if is_t else (lambda x, hi: x.clip(0, hi))
    boxes[:, [0, 2]] = clip(boxes[:, [0, 2]], img0_shape[1])
    boxes[:, [1, 3]] = clip(boxes[:, [1, 3]], img0_shape[0])
    return boxes


def write_detections_txt(path, det, shape):
    """YOLO rows ``class cx cy w h conf`` (normalised to an image of ``shape`` (h, w, ...)) of
    detections det [n, 6] (xyxy pixels, conf, cls), written atomically."""
    det = np.asarray(det, dtype=np.float64).reshape(-1, 6)
    boxes = xyxy2xywhn(det[:, :4], shape[1], shape[0])
    rows = [f'{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f} {conf:.5f}' for (x, y, w, h), conf, c in
            zip(boxes, det[:, 4], det[:, 5])]
    atomic_write_bytes(path, ('\n'.join(rows) + ('\n' if rows else '')).encode())


def random_train_size(min_size, max_size, stride=32, rng=None):
    """A uniformly random multiple of ``stride`` in [min_size, max_size] (multi-scale training).
    rng: numpy Generator (or the legacy np.random module); ValueError if the range holds none."""
    lo, hi = math.ceil(min_size / stride), max_size // stride
    if lo > hi:
        raise ValueError(f'no multiple of {stride} in [{min_size}, {max_size}]')
    rng = rng if rng is not None else np.random.default_rng()
    k = rng.integers(lo, hi + 1) if hasattr(rng, 'integers') else rng.randint(lo, hi + 1)
    return int(k) * stride


def multi_scale_range(img_size, stride=32):
    """(min, max) multi-scale range around one size: [size / 1.5, size / 0.667] rounded down
    to multiples of ``stride`` (608 -> (384, 896)), the v2020 rule for ``--multi-scale``."""
    return (int(img_size // 1.5) // stride * stride, int(img_size // 0.667) // stride * stride)


def resize_batch(imgs, size, stride=32):
    """Resize a batch [B,3,H,W] (float, or uint8 converted to float) so its long side is ``size``,
    each side rounded UP to a multiple of ``stride``: bilinear, no antialias (matches a GPU-side
    resize in the training loop). Normalised targets stay valid. Returns float [B,3,H',W']."""
    h, w = imgs.shape[-2:]
    s = size / max(h, w)
    new = [math.ceil(h * s / stride) * stride, math.ceil(w * s / stride) * stride]
    imgs = imgs if imgs.is_floating_point() else imgs.float()
    if new == [h, w]:
        return imgs
    return F.interpolate(imgs, size=new, mode='bilinear', align_corners=False)


def rect_batch_shapes(shapes, batch_size, img_size, stride=32, pad=0.0):
    """Aspect-sorted rectangular batches. shapes int [N,2] (h, w) -> (order [N] to sort the
    images by h/w, batch_shapes int [nb,2] (h, w)). Each batch's shape fits its most extreme
    aspect ratio with the long side ``img_size``, plus ``pad`` strides, rounded up to
    multiples of ``stride``."""
    ar = shapes[:, 0] / shapes[:, 1]
    order = np.argsort(ar, kind='stable')
    ar = ar[order]
    nb = math.ceil(len(ar) / batch_size)
    out = np.ones((nb, 2))
    for b in range(nb):
        a = ar[b * batch_size:(b + 1) * batch_size]
        if a.max() < 1:  # all landscape: full width, height set by the tallest
            out[b] = (a.max(), 1)
        elif a.min() > 1:  # all portrait: full height, width set by the widest
            out[b] = (1, 1 / a.min())
    return order, (np.ceil(out * img_size / stride + pad) * stride).astype(np.int64)


# ============================================================================= dataset

class LoadImagesAndLabels(Dataset):
    """Checked, cached YOLO dataset.

    augment=False: letterbox to ``img_size`` square, or with rect=True to the image's batch
    shape (images sorted by aspect ratio; batch b = items b*batch_size ...).
    augment=True: mosaic with probability hyp['mosaic'] (unless rect or after
    ``close_mosaic()``), else letterbox; then random affine, HSV jitter, flips; optional
    mixup of two mosaics. ``set_epoch(e)`` changes the random draws per epoch.
    Item: (img uint8 [3,H,W] RGB, labels float32 [n,6] (0, cls, cx, cy, w, h), path, shapes)."""

    def __init__(self, path, img_size=416, batch_size=16, augment=False, hyp=None, rect=False, cache_images=False,
                 single_cls=False, stride=32, pad=0.0, nc=None, strict=False, prefix='', seed=0):
        if img_size % stride and not rect:  # rect shapes are rounded up to the stride anyway
            raise ValueError(f'img_size {img_size} must be a multiple of the stride {stride} (or use rect batches)')
        self.img_size, self.augment, self.rect, self.stride = img_size, augment, rect, stride
        self.hyp = aug_params(hyp)
        self.seed, self.epoch = seed, 0
        self.mosaic = augment and not rect and self.hyp['mosaic'] > 0
        self.img_files, self.labels, self.shapes = load_labels(list_images(path), nc, strict, cache_path_for(path),
                                                               prefix)
        if single_cls:
            for lab in self.labels:
                lab[:, 0] = 0
        n = len(self.img_files)
        self.batch_index = np.arange(n) // batch_size
        self.batch_shapes = None
        if rect:
            order, self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, img_size, stride, pad)
            self.img_files = [self.img_files[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.shapes = self.shapes[order]
        self.imgs = [None] * n
        if cache_images not in (False, None, 'off'):
            self._cache_images(prefix, auto=cache_images == 'auto')

    def _cache_images(self, prefix, auto=False):
        """Keep every resized image in RAM (skipped with a warning if it would not fit). ``auto``:
        only when the cache is small (<= AUTO_CACHE_BYTES and 10% of the free RAM), silently
        otherwise. Decoding is ~half of a mosaic's loader time, and the loader shares the CPU
        with training."""
        r = self.img_size / self.shapes.max(1)
        need = float((np.round(self.shapes * r[:, None]).prod(1) * 3).sum())
        avail = _available_ram()
        if auto and (need > AUTO_CACHE_BYTES or (avail is not None and need > 0.1 * avail)):
            return
        if avail is not None and need > 0.8 * avail:
            warnings.warn(f'{prefix}image cache needs {need / 1e9:.1f} GB but {avail / 1e9:.1f} GB are free; '
                          f'not caching')
            return
        nbytes = 0
        for i in tqdm(range(len(self)), desc=f'{prefix}caching images', bar_format=_BAR):
            self.imgs[i] = self._load(i)[0]
            nbytes += self.imgs[i].nbytes
        print(f'{prefix}cached {len(self)} images in RAM ({nbytes / 1e9:.2f} GB)')

    def __len__(self):
        return len(self.img_files)

    def set_epoch(self, epoch):
        """Draw different augmentations (and, with create_dataloader's sampler, order) per epoch."""
        self.epoch = int(epoch)

    def close_mosaic(self):
        """Turn mosaic (and mixup) off, e.g. for the last epochs; other augmentation stays."""
        self.mosaic = False

    def _load(self, i):
        """Image i (BGR) resized so its long side is img_size: (img, (h0, w0), (h, w))."""
        if self.imgs[i] is not None:
            img = self.imgs[i]
            return img, tuple(int(v) for v in self.shapes[i]), img.shape[:2]
        img = cv2.imread(self.img_files[i])
        if img is None:
            raise FileNotFoundError(f'{self.img_files[i]}: cannot read image '
                                    f'(deleted or changed after the label check?)')
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:  # INTER_AREA shrinks cleanly for evaluation; training keeps the cheaper linear
            interp = cv2.INTER_AREA if r < 1 and not self.augment else cv2.INTER_LINEAR
            img = cv2.resize(img, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return img, (h0, w0), img.shape[:2]

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        hyp = self.hyp
        if self.mosaic and rng.random() < hyp['mosaic']:
            img, labels = self._mosaic(index, rng)
            if hyp['mixup'] and rng.random() < hyp['mixup']:
                img, labels = mixup(img, labels, *self._mosaic(int(rng.integers(len(self))), rng), rng)
            shapes = None
        else:
            img, labels, shapes = self._letterboxed(index, rng)
        h, w = img.shape[:2]
        labels = np.concatenate((labels[:, :1], xyxy2xywhn(labels[:, 1:], w, h)), 1)
        if self.augment:
            img = augment_hsv(img, rng, hyp['hsv_h'], hyp['hsv_s'], hyp['hsv_v'])
            if rng.random() < hyp['flipud']:
                img, labels[:, 2] = img[::-1], 1 - labels[:, 2]
            if rng.random() < hyp['fliplr']:
                img, labels[:, 1] = img[:, ::-1], 1 - labels[:, 1]
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(img), out, self.img_files[index], shapes

    def _letterboxed(self, index, rng):
        """Letterbox (+ random affine when augmenting): (img, labels [n,5] cls + xyxy px, shapes)."""
        img, (h0, w0), (h, w) = self._load(index)
        shape = tuple(int(v) for v in self.batch_shapes[self.batch_index[index]]) if self.rect else self.img_size
        img, (rh, rw), (pw, ph) = letterbox(img, shape, scaleup=self.augment)
        shapes = ((h0, w0), ((h / h0 * rh, w / w0 * rw), (pw, ph)))
        labels = self.labels[index]
        boxes = xywhn2xyxy(labels[:, 1:], rw * w, rh * h, pw, ph)
        if self.augment:
            hyp = self.hyp
            img, boxes, keep = random_affine(img, boxes, rng, hyp['degrees'], hyp['translate'], hyp['scale'],
                                             hyp['shear'], hyp['perspective'],
                                             min_visible=hyp['min_visible'])
            labels, boxes = labels[keep], boxes[keep]
        return img, np.concatenate((labels[:, :1], boxes), 1), shapes

    def _mosaic(self, index, rng):
        """Item ``index`` and 3 random others as the tiles of a 2s x 2s canvas meeting at a
        random centre in [s/2, 3s/2]^2, then a random affine cropping back to s x s.
        Returns (img [s,s,3], labels [n,5] cls + xyxy px)."""
        s = self.img_size
        xc, yc = (int(rng.uniform(0.5 * s, 1.5 * s)) for _ in range(2))
        ids = [index, *(int(i) for i in rng.integers(0, len(self), 3))]
        canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
        cls, full = [], []
        for k, i in enumerate(ids):
            img, _, (h, w) = self._load(i)
            (y1a, y2a, x1a, x2a), (y1b, y2b, x1b, x2b) = mosaic_slices(k, xc, yc, h, w, s)
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            cls.append(self.labels[i][:, :1])
            full.append(xywhn2xyxy(self.labels[i][:, 1:], w, h, x1a - x1b, y1a - y1b))
        cls, full = np.concatenate(cls, 0), np.concatenate(full, 0)
        visible = full.clip(0, 2 * s)  # tiles are cut only by the canvas border
        hyp = self.hyp
        img, boxes, keep = random_affine(canvas, visible, rng, hyp['degrees'], hyp['translate'], hyp['scale'],
                                         hyp['shear'], hyp['perspective'], border=(-(s // 2), -(s // 2)),
                                         full_boxes=full, min_visible=hyp['min_visible'])
        return img, np.concatenate((cls, boxes), 1)[keep]

    @staticmethod
    def collate_fn(batch):
        """Stack items: (imgs uint8 [B,3,H,W], targets [n,6] with column 0 = image index, paths, shapes)."""
        imgs, labels, paths, shapes = zip(*batch)
        for i, lab in enumerate(labels):
            lab[:, 0] = i
        return torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes


AUTO_CACHE_BYTES = 2 ** 30  # --cache-images auto: cache datasets whose resized images fit in 1 GiB


def _available_ram():
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


# ============================================================================= loader

class EpochShuffleSampler(Sampler):
    """A random order that depends only on (seed, dataset.epoch): reproducible and resumable;
    it follows ``dataset.set_epoch`` so the training loop has one call to make."""

    def __init__(self, dataset, seed=0):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + getattr(self.dataset, 'epoch', 0))
        return iter(torch.randperm(len(self.dataset), generator=g).tolist())


class RectBatchSampler(Sampler):
    """Rect batches (consecutive indices sharing one batch shape) split over DDP ranks: rank r
    gets batches r, r + world, ...; ranks short of a batch repeat their first ones, so every
    rank runs the same number of steps (unequal counts would hang DDP)."""

    def __init__(self, n, batch_size, rank=0, world_size=1):
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        per_rank = math.ceil(len(batches) / world_size)
        mine = batches[rank::world_size]
        self.batches = (mine * per_rank)[:per_rank] if mine else batches[:1] * per_rank

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def seed_worker(worker_id):
    """DataLoader ``worker_init_fn``: seed the global numpy / random RNGs of a worker from its
    torch seed (which derives from the loader's seeded generator), and keep OpenCV
    single-threaded in workers. The dataset's own augmentation uses per-item generators, so
    the seeding only matters for code using global RNGs."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)  # OpenCV's own thread pool per worker would oversubscribe the CPU cores


def create_dataloader(path, img_size, batch_size, stride=32, hyp=None, augment=False, cache=False, rect=False,
                      workers=2, shuffle=False, seed=0, rank=-1, world_size=1, single_cls=False, nc=None, pad=0.0,
                      strict=False, prefix=''):
    """(DataLoader, dataset) over a YOLO image source. ``batch_size`` is per process. With
    world_size > 1 the data is split over ranks (DistributedSampler; rect batches are split
    whole). rect disables shuffling (the order is the aspect-ratio order). Workers are not
    persistent so ``set_epoch``/``close_mosaic`` reach them at the next epoch."""
    dataset = LoadImagesAndLabels(path, img_size, batch_size, augment=augment, hyp=hyp, rect=rect,
                                  cache_images=cache, single_cls=single_cls, stride=stride, pad=pad, nc=nc,
                                  strict=strict, prefix=prefix, seed=seed)
    batch_size = min(batch_size, len(dataset))
    if rect and shuffle:
        warnings.warn(f'{prefix}rect batches are not shuffled (their order is the aspect-ratio order)')
    workers = min(os.cpu_count() or 1, workers, batch_size)
    kwargs = dict(num_workers=workers, pin_memory=torch.cuda.is_available(), collate_fn=LoadImagesAndLabels.collate_fn,
                  worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed))
    if rect and world_size > 1:
        loader = DataLoader(dataset, batch_sampler=RectBatchSampler(len(dataset), batch_size, max(rank, 0),
                                                                    world_size), **kwargs)
        return loader, dataset
    if world_size > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=world_size, rank=max(rank, 0),
                                                                  shuffle=shuffle and not rect, seed=seed)
    else:
        sampler = EpochShuffleSampler(dataset, seed) if shuffle and not rect else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs), dataset


# ============================================================================= detect.py sources

def _to_chw_rgb(img):
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))


class LoadImages:
    """Images and videos of a file, folder (not recursive), glob or .txt list, in sorted order.

    Iterating yields ``(path, img, im0, cap, status)``: img = letterboxed RGB CHW uint8 numpy
    (padded to a multiple of ``stride``), im0 = the original BGR image, cap = the open
    cv2.VideoCapture for video frames (else None), status = 'image 3/10 path: ' or
    'video 1/2 (12/300) path: '. While a video plays, ``.frame`` (1-based), ``.frames`` and
    ``.fps`` describe it. Unreadable images/videos are skipped with a warning. ``auto`` False
    letterboxes to the full ``img_size`` (int or (h, w)): a fixed-size exported model."""

    def __init__(self, path, img_size=416, stride=32, auto=True):
        path = str(path)
        if os.path.isfile(path) and path.endswith('.txt'):
            files = _read_list(path)
        elif os.path.isdir(path):
            files = sorted(str(f) for f in Path(path).iterdir() if f.is_file())
        elif any(c in path for c in '*?['):
            files = sorted(glob.glob(path, recursive=True))
        elif os.path.isfile(path):
            files = [path]
        else:
            raise FileNotFoundError(f'{path} does not exist '
                                    f'(expected an image, a video, a folder, a glob or a .txt list)')
        self.files = [f for f in files if Path(f).suffix.lower() in IMG_FORMATS | VID_FORMATS]
        if not self.files:
            raise FileNotFoundError(f'no images or videos in {path} (formats: '
                                    f'{" ".join(sorted(IMG_FORMATS | VID_FORMATS))})')
        self.img_size, self.stride, self.auto = img_size, stride, auto
        self.cap, self.frame, self.frames, self.fps = None, 0, 0, 0.0

    def __len__(self):
        return len(self.files)

    def frame_count(self):
        """Images plus video frames (as the containers report them): a progress bar's total."""
        total = 0
        for path in self.files:
            if Path(path).suffix.lower() in VID_FORMATS:
                cap = cv2.VideoCapture(path)
                total += max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
                cap.release()
            else:
                total += 1
        return total

    def __iter__(self):
        n = len(self.files)
        for k, path in enumerate(self.files):
            if Path(path).suffix.lower() in VID_FORMATS:
                yield from self._video(k, n, path)
                continue
            im0 = cv2.imread(path)
            if im0 is None:
                warnings.warn(f'{path}: unreadable image, skipped')
                continue
            yield path, self._prepare(im0), im0, None, f'image {k + 1}/{n} {path}: '

    def _video(self, k, n, path):
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            warnings.warn(f'{path}: cannot open video, skipped')
            return
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.frame = 0
        try:
            while True:
                ok, im0 = self.cap.read()
                if not ok:
                    break
                self.frame += 1
                status = f'video {k + 1}/{n} ({self.frame}/{self.frames}) {path}: '
                yield path, self._prepare(im0), im0, self.cap, status
        finally:
            self.cap.release()
            self.cap = None

    def _prepare(self, im0):
        return _to_chw_rgb(letterbox(im0, self.img_size, auto=self.auto, stride=self.stride)[0])


class LoadStreams:
    """Webcams (an integer index), stream URLs or video files read as live streams: one source,
    or a .txt with one source per line. A thread per source keeps its latest frame; iterating
    yields whenever some source has a new frame, ``(indices, imgs, im0s, None, status)`` with
    lists over the sources (imgs letterboxed RGB CHW uint8, all the same shape; im0s BGR
    copies). Frames that arrive faster than they are consumed are dropped (live semantics).
    The iteration ends when every source has ended; ``close()`` stops the readers."""

    def __init__(self, sources, img_size=416, stride=32):
        sources = str(sources)
        self.sources = _read_list(sources) if os.path.isfile(sources) and sources.endswith('.txt') else [sources]
        self.img_size, self.stride = img_size, stride
        n = len(self.sources)
        self.imgs, self.counts, self.fps, self.frames = [None] * n, [0] * n, [0.0] * n, [0] * n
        self.alive, self.caps, self.threads = [True] * n, [], []
        self._cond, self._stop = threading.Condition(), False
        for i, s in enumerate(self.sources):
            cap = cv2.VideoCapture(int(s) if s.isnumeric() else s)
            ok, img = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                cap.release()
                self.close()
                raise FileNotFoundError(f'cannot open stream {s} (no frame could be read)')
            self.imgs[i], self.counts[i] = img, 1
            self.fps[i] = cap.get(cv2.CAP_PROP_FPS) or 30.0
            self.frames[i] = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0  # 0 = unknown/live
            self.caps.append(cap)
            t = threading.Thread(target=self._update, args=(i, cap), daemon=True)
            self.threads.append(t)
            t.start()
        same = len({im.shape for im in self.imgs}) == 1
        self.auto = same  # equal shapes: minimal padding; mixed shapes: pad all to img_size square
        self.frame = 0

    def _update(self, i, cap):
        while not self._stop:
            ok, img = cap.read()
            with self._cond:
                if not ok:
                    self.alive[i] = False
                    self._cond.notify_all()
                    break
                self.imgs[i] = img
                self.counts[i] += 1
                self._cond.notify_all()
        cap.release()

    def __iter__(self):
        seen = [0] * len(self.sources)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.counts != seen or not any(self.alive), timeout=10.0)
                if self.counts == seen:
                    if not any(self.alive):
                        return
                    continue  # a stalled live source: keep waiting
                seen = list(self.counts)
                im0s = [im.copy() for im in self.imgs]
            self.frame += 1
            imgs = [_to_chw_rgb(letterbox(im, self.img_size, auto=self.auto, stride=self.stride)[0]) for im in im0s]
            yield list(range(len(im0s))), imgs, im0s, None, f'frame {self.frame} ({" ".join(map(str, seen))}): '

    def close(self):
        self._stop = True
        for t in self.threads:
            t.join(timeout=2.0)

    def __len__(self):
        return 0  # unknown: live sources have no length


DEFAULT_DATA = 'data/shapes.data'  # every script's --data default: the built-in dataset


def resolve_data(path):
    """``--data`` as given, or the built-in shapes dataset (generated on first use) for the
    default (or an empty) path."""
    return default_data() if str(path or '') in ('', DEFAULT_DATA) else str(path)


def default_data():
    """The built-in shapes dataset, generated on first use."""
    import importlib.util
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location('shapes', root / 'data' / 'shapes.py')
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    return str(shapes.ensure_shapes(str(root / 'data' / 'shapes')))

