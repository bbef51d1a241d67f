"""YOLO-format datasets: image lists, label checking and caching, letterbox, augmentation,
data loaders, and the image/video/stream sources of detect.py.

Labels: one ``.txt`` per image, rows ``class cx cy w h`` normalised to [0, 1]; the label
path replaces the last ``images`` path component with ``labels`` and the extension with
``.txt``. Training batches are ``(imgs uint8 [B,3,H,W] RGB, targets [n,6] = (image index,
class, cx, cy, w, h) normalised to the batch images, paths, shapes)``; ``shapes[i]`` =
``((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))`` maps boxes back to the original image
(None for mosaics).

Augmentation randomness comes from a generator seeded by (seed, epoch, index), so a batch
is the same whatever the worker count, and a resumed run sees the same images as an
uninterrupted one.
"""
import glob
import hashlib
import json
import math
import os
import threading
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from utils.general import atomic_write_text

IMG_FORMATS = {'.bmp', '.jpg', '.jpeg', '.png', '.tif', '.tiff', '.dng', '.webp'}
VID_FORMATS = {'.mov', '.avi', '.mp4', '.mpg', '.mpeg', '.m4v', '.wmv', '.mkv'}
CACHE_VERSION = 2
COORD_TOLERANCE = 1e-3  # labels this far outside [0, 1] are clipped; further out they are errors


# ----------------------------------------------------------------------------- files

def img2label_paths(img_paths):
    """…/images/…/x.jpg -> …/labels/…/x.txt (the LAST `images` component only)."""
    out = []
    for p in img_paths:
        parts = Path(p).parts
        idx = max((i for i, part in enumerate(parts[:-1]) if part == 'images'), default=None)
        if idx is None:
            out.append(str(Path(p).with_suffix('.txt')))
        else:
            out.append(str(Path(*parts[:idx], 'labels', *parts[idx + 1:]).with_suffix('.txt')))
    return out


def list_images(path):
    """Image files of a .txt list (relative entries resolve against the list's folder), a
    folder (recursive) or a glob; sorted where the source has no order. FileNotFoundError
    when nothing matches."""
    files = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = str(p)
        if os.path.isfile(p) and p.endswith('.txt'):
            base = os.path.dirname(os.path.abspath(p))
            for line in Path(p).read_text().splitlines():
                line = line.strip()
                if line:
                    files.append(line if os.path.isabs(line) or os.path.exists(line) else os.path.join(base, line))
        elif os.path.isdir(p):
            files += sorted(str(f) for f in Path(p).rglob('*') if f.suffix.lower() in IMG_FORMATS)
        elif any(c in p for c in '*?['):
            files += sorted(glob.glob(p, recursive=True))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f'{p} does not exist')
    files = [f for f in files if Path(f).suffix.lower() in IMG_FORMATS]
    if not files:
        raise FileNotFoundError(f'no images found in {path} (formats: {", ".join(sorted(IMG_FORMATS))})')
    return files


def _file_sig(path):
    try:
        st = os.stat(path)
        return f'{st.st_size}:{st.st_mtime_ns}'
    except OSError:
        return 'missing'


def verify_image(path):
    """(height, width) of a readable image, else raises ValueError with the reason.
    Truncated JPEGs (no end-of-image marker) are rejected."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format
    except Exception as e:
        raise ValueError(f'unreadable image ({e.__class__.__name__}: {e})') from None
    if fmt == 'JPEG':
        with open(path, 'rb') as f:
            f.seek(-2, 2)
            if f.read() != b'\xff\xd9':
                raise ValueError('truncated JPEG (no end-of-image marker)')
    if w < 2 or h < 2:
        raise ValueError(f'image too small ({w}x{h})')
    return h, w


def check_label_file(path, nc):
    """Parse a label file. Returns (rows float32 [n,5], problems [str], n_duplicates).
    Problems are 'path:line: reason' strings; rows with problems are not returned."""
    rows, problems = [], []
    try:
        text = Path(path).read_text()
    except OSError as e:
        return np.zeros((0, 5), np.float32), [f'{path}: unreadable ({e})'], 0
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f'{path}:{lineno}'
        if len(parts) != 5:
            problems.append(f'{where}: expected 5 columns (class cx cy w h), got {len(parts)}')
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            problems.append(f'{where}: non-numeric value in {line.strip()!r}')
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(f'{where}: non-finite value in {line.strip()!r}')
            continue
        cls = values[0]
        if cls != int(cls) or cls < 0 or (nc is not None and cls >= nc):
            problems.append(f'{where}: class {parts[0]} outside 0..{nc - 1 if nc else "?"}')
            continue
        coords = np.array(values[1:])
        if (coords < -COORD_TOLERANCE).any() or (coords > 1 + COORD_TOLERANCE).any():
            problems.append(f'{where}: coordinates {parts[1:]} outside [0, 1]')
            continue
        if coords[2] <= 0 or coords[3] <= 0:
            problems.append(f'{where}: zero-size box')
            continue
        rows.append([cls, *np.clip(coords, 0, 1)])
    arr = np.array(rows, np.float32).reshape(-1, 5)
    unique = np.unique(arr, axis=0) if len(arr) else arr
    return unique, problems, len(arr) - len(unique)


def load_labels(img_files, nc=None, strict=False, cache_path=None, prefix=''):
    """Check every image and label once (cached next to the list); returns
    (kept image paths, labels list of [n,5] arrays, shapes [N,2] (h, w)).

    The cache is keyed by the size and mtime of every image and label file, so any change
    rebuilds it; it is JSON (never unpickled)."""
    label_files = img2label_paths(img_files)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, nc, img_files,
                                     [_file_sig(f) for f in img_files + label_files]]).encode()).hexdigest()
    if cache_path and os.path.isfile(cache_path):
        try:
            cache = json.loads(Path(cache_path).read_text())
            if cache.get('hash') == key:
                s = cache['stats']
                print(f'{prefix}{cache_path}: found {s["found"]}, missing {s["missing"]}, empty {s["empty"]}, '
                      f'duplicate {s["duplicate"]}, corrupt {s["corrupt"]} (cached)')
                return (cache['files'], [np.array(l, np.float32).reshape(-1, 5) for l in cache['labels']],
                        np.array(cache['shapes'], np.int64).reshape(-1, 2))
        except (ValueError, KeyError):
            pass  # unreadable cache: rebuild
    files, labels, shapes, problems = [], [], [], []
    stats = dict(found=0, missing=0, empty=0, duplicate=0, corrupt=0)
    for img, lab in tqdm(zip(img_files, label_files), total=len(img_files), desc=f'{prefix}checking labels',
                         bar_format='{l_bar}{bar:10}{r_bar}'):
        try:
            hw = verify_image(img)
        except ValueError as e:
            warnings.warn(f'{img}: skipped: {e}')
            stats['corrupt'] += 1
            continue
        if os.path.isfile(lab):
            rows, bad, dup = check_label_file(lab, nc)
            stats['duplicate'] += dup
            if bad:
                problems += bad
                stats['corrupt'] += 1
                continue
            stats['found' if len(rows) else 'empty'] += 1
        else:
            rows = np.zeros((0, 5), np.float32)
            stats['missing'] += 1
        files.append(img)
        labels.append(rows)
        shapes.append(hw)
    print(f'{prefix}found {stats["found"]}, missing {stats["missing"]}, empty {stats["empty"]}, '
          f'duplicate {stats["duplicate"]}, corrupt {stats["corrupt"]}')
    if problems:
        msg = '\n'.join(problems[:20]) + (f'\n... and {len(problems) - 20} more' if len(problems) > 20 else '')
        if strict:
            raise ValueError(f'{len(problems)} bad label rows:\n{msg}')
        warnings.warn(f'{len(problems)} bad label rows; their images are excluded (use --strict to stop):\n{msg}')
    if not files:
        raise ValueError(f'{prefix}no usable images among {len(img_files)}')
    if cache_path:
        try:
            atomic_write_text(cache_path, json.dumps({'hash': key, 'stats': stats, 'files': files,
                                                      'labels': [l.tolist() for l in labels], 'shapes': shapes}))
        except OSError as e:
            warnings.warn(f'{prefix}cannot write label cache {cache_path} ({e}); continuing without')
    return files, labels, np.array(shapes, np.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------- geometry

def letterbox(img, new_shape=416, color=(114, 114, 114), auto=False, scaleup=True, stride=32):
    """Resize keeping the aspect ratio, pad to ``new_shape`` (int or (h, w)); with ``auto``
    pad only to a multiple of ``stride``. Returns (img, (ratio_h, ratio_w), (pad_w, pad_h))
    where pad is the left/top padding."""
    h0, w0 = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h0, new_w / w0)
    if not scaleup:
        r = min(r, 1.0)
    w, h = int(round(w0 * r)), int(round(h0 * r))
    dw, dh = new_w - w, new_h - h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w, h) != (w0, h0):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    top, left = dh // 2, dw // 2
    img = cv2.copyMakeBorder(img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=color)
    return img, (h / h0, w / w0), (left, top)


def scale_boxes(img1_shape, boxes, img0_shape, ratio_pad=None):
    """xyxy boxes in a letterboxed image of shape img1 (h, w) -> original image img0 (h, w)."""
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = ((img1_shape[1] - round(img0_shape[1] * gain)) // 2, (img1_shape[0] - round(img0_shape[0] * gain)) // 2)
        gain = (gain, gain)
    else:
        gain, pad = ratio_pad
    boxes = boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad[0]) / gain[1]
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad[1]) / gain[0]
    lim = (img0_shape[1], img0_shape[0], img0_shape[1], img0_shape[0])
    for k in range(4):
        boxes[:, k] = boxes[:, k].clamp(0, lim[k]) if isinstance(boxes, torch.Tensor) else boxes[:, k].clip(0, lim[k])
    return boxes


def xywhn2xyxy(x, w, h, padw=0, padh=0):
    y = np.copy(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x, w, h):
    y = np.copy(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2 / w
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2 / h
    y[:, 2] = (x[:, 2] - x[:, 0]) / w
    y[:, 3] = (x[:, 3] - x[:, 1]) / h
    return y


def random_affine(img, boxes, rng, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0,
                  border=(0, 0)):
    """Random rotation/scale/shear/translation (and perspective) of an image and its xyxy
    pixel boxes [n,4]. ``border`` (negative) crops, as after a 2x mosaic. Boxes are the
    hull of the 4 transformed corners, clipped; a box survives if it keeps > 4 px width and
    height, > 10% of its (scaled) area and an aspect ratio < 20. Returns (img, boxes, keep)."""
    h = img.shape[0] + border[0] * 2
    w = img.shape[1] + border[1] * 2
    C = np.eye(3)
    C[0, 2], C[1, 2] = -img.shape[1] / 2, -img.shape[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)
    R = np.eye(3)
    a, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = (math.tan(rng.uniform(-shear, shear) * math.pi / 180) for _ in range(2))
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * w
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * h
    M = T @ S @ R @ P @ C
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=(w, h), borderValue=(114, 114, 114))
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(w, h), borderValue=(114, 114, 114))
    n = len(boxes)
    if not n:
        return img, boxes, np.zeros(0, bool)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    corners = corners @ M.T
    corners = (corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]).reshape(n, 8)
    xs, ys = corners[:, [0, 2, 4, 6]], corners[:, [1, 3, 5, 7]]
    new = np.stack((xs.min(1), ys.min(1), xs.max(1), ys.max(1)), 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, w)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, h)
    keep = box_candidates(boxes.T * s, new.T)
    return img, new, keep


def box_candidates(box1, box2, wh_thr=4, ar_thr=20, area_thr=0.1):
    """Boxes (xyxy, [4,n]) before and after augmentation -> keep mask."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


def augment_hsv(img, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """In-place HSV jitter of a BGR uint8 image with per-image random gains (LUTs)."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.int16)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)
    return img


def random_train_size(min_size, max_size, stride=32, rng=None):
    """A random multiple of ``stride`` in [min_size, max_size]."""
    rng = rng or np.random
    lo, hi = math.ceil(min_size / stride), max_size // stride
    return int(rng.integers(lo, hi + 1) if hasattr(rng, 'integers') else rng.randint(lo, hi + 1)) * stride


# ----------------------------------------------------------------------------- dataset

class LoadImagesAndLabels(Dataset):
    def __init__(self, path, img_size=416, batch_size=16, augment=False, hyp=None, rect=False, cache_images=False,
                 single_cls=False, stride=32, pad=0.0, nc=None, strict=False, seed=0, prefix=''):
        self.img_size, self.augment, self.hyp, self.rect = img_size, augment, hyp or {}, rect
        self.stride, self.seed, self.epoch = stride, seed, 0
        self.mosaic = augment and not rect and self.hyp.get('mosaic', 1.0) > 0
        files = list_images(path)
        cache = None
        if isinstance(path, (str, Path)):
            p = Path(path)
            cache = str(p.with_suffix('.cache')) if p.is_file() else str(p.parent / (p.name.rstrip('/') + '.cache'))
        self.img_files, self.labels, self.shapes = load_labels(files, nc, strict, cache, prefix)
        if single_cls:
            for l in self.labels:
                l[:, 0] = 0
        n = len(self.img_files)
        self.batch_index = np.arange(n) // batch_size
        self.batch_shapes = None
        if rect:  # aspect-sorted batches, each padded to its own multiple-of-stride shape
            ar = self.shapes[:, 0] / self.shapes[:, 1]  # h / w
            order = ar.argsort()
            self.img_files = [self.img_files[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.shapes, ar = self.shapes[order], ar[order]
            n_batches = self.batch_index[-1] + 1
            shapes = []
            for b in range(n_batches):
                a = ar[self.batch_index == b]
                lo, hi = a.min(), a.max()
                hw = [hi, 1] if hi < 1 else [1, 1 / lo] if lo > 1 else [1, 1]
                shapes.append(hw)
            self.batch_shapes = (np.ceil(np.array(shapes) * img_size / stride + pad) * stride).astype(int)
        self.imgs = [None] * n
        if cache_images:
            gb = 0
            for i in tqdm(range(n), desc=f'{prefix}caching images', bar_format='{l_bar}{bar:10}{r_bar}'):
                self.imgs[i] = self._load(i)[0]
                gb += self.imgs[i].nbytes / 1e9
            print(f'{prefix}cached {n} images ({gb:.2f} GB)')

    def __len__(self):
        return len(self.img_files)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def close_mosaic(self):
        self.mosaic = False

    def _load(self, i):
        """Image i resized so its long side is img_size: (img BGR, (h0, w0), (h, w))."""
        if self.imgs[i] is not None:
            img = self.imgs[i]
            return img, tuple(self.shapes[i]), img.shape[:2]
        img = cv2.imread(self.img_files[i])
        if img is None:
            raise FileNotFoundError(f'{self.img_files[i]}: cannot read image')
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_AREA if r < 1 and not self.augment else cv2.INTER_LINEAR
            img = cv2.resize(img, (int(round(w0 * r)), int(round(h0 * r))), interpolation=interp)
        return img, (h0, w0), img.shape[:2]

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        hyp = self.hyp
        if self.mosaic and rng.random() < hyp.get('mosaic', 1.0):
            img, labels = self._mosaic(index, rng)
            shapes = None
        else:
            img, (h0, w0), (h, w) = self._load(index)
            shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else self.img_size
            img, ratio, (padw, padh) = letterbox(img, shape, scaleup=self.augment)
            shapes = ((h0, w0), ((h / h0 * ratio[0], w / w0 * ratio[1]), (padw, padh)))
            labels = self.labels[index].copy()
            if len(labels):
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[1] * w, ratio[0] * h, padw, padh)
            if self.augment:
                img, boxes, keep = random_affine(img, labels[:, 1:], rng, hyp.get('degrees', 0),
                                                 hyp.get('translate', 0), hyp.get('scale', 0), hyp.get('shear', 0),
                                                 hyp.get('perspective', 0))
                labels = np.concatenate((labels[:, :1], boxes), 1)[keep]
        h, w = img.shape[:2]
        if len(labels):
            labels[:, 1:] = xyxy2xywhn(labels[:, 1:], w, h)
        if self.augment:
            augment_hsv(img, rng, hyp.get('hsv_h', 0), hyp.get('hsv_s', 0), hyp.get('hsv_v', 0))
            if rng.random() < hyp.get('flipud', 0.0):
                img = np.flipud(img)
                labels[:, 2] = 1 - labels[:, 2]
            if rng.random() < hyp.get('fliplr', 0.5):
                img = np.fliplr(img)
                labels[:, 1] = 1 - labels[:, 1]
        out = torch.zeros((len(labels), 6))
        if len(labels):
            out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(img), out, self.img_files[index], shapes

    def _mosaic(self, index, rng):
        """4 images around a random centre of a 2s x 2s canvas, then a random affine that
        crops back to s x s. Returns (img, labels [n,5] cls + xyxy pixels)."""
        s = self.img_size
        yc, xc = (int(rng.uniform(0.5 * s, 1.5 * s)) for _ in range(2))
        indices = [index] + list(rng.integers(0, len(self), 3))
        canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
        all_labels = []
        for k, i in enumerate(indices):
            img, _, (h, w) = self._load(int(i))
            if k == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif k == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif k == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            labels = self.labels[int(i)].copy()
            if len(labels):
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, x1a - x1b, y1a - y1b)
            all_labels.append(labels)
        labels = np.concatenate(all_labels, 0)
        labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)
        hyp = self.hyp
        img, boxes, keep = random_affine(canvas, labels[:, 1:], rng, hyp.get('degrees', 0), hyp.get('translate', 0),
                                         hyp.get('scale', 0), hyp.get('shear', 0), hyp.get('perspective', 0),
                                         border=(-s // 2, -s // 2))
        return img, np.concatenate((labels[:, :1], boxes), 1)[keep]

    @staticmethod
    def collate_fn(batch):
        imgs, labels, paths, shapes = zip(*batch)
        for i, l in enumerate(labels):
            l[:, 0] = i
        return torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes


class EpochShuffleSampler(Sampler):
    """Random order that depends only on (seed, epoch): reproducible, resumable."""

    def __init__(self, n, seed=0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def seed_worker(worker_id):
    """Seed the global RNGs of a loader worker (augmentation itself uses per-item generators)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    import random
    random.seed(seed)


def create_dataloader(path, img_size, batch_size, stride=32, hyp=None, augment=False, cache=False, rect=False,
                      workers=2, shuffle=False, seed=0, rank=-1, world_size=1, single_cls=False, nc=None, pad=0.0,
                      strict=False, prefix=''):
    """(DataLoader, dataset). Under DDP (world_size > 1) a DistributedSampler splits the data."""
    dataset = LoadImagesAndLabels(path, img_size, batch_size, augment=augment, hyp=hyp, rect=rect,
                                  cache_images=cache, single_cls=single_cls, stride=stride, pad=pad, nc=nc,
                                  strict=strict, seed=seed, prefix=prefix)
    batch_size = min(batch_size, len(dataset))
    if world_size > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=world_size,
                                                                  rank=max(rank, 0), shuffle=shuffle, seed=seed)
    else:
        sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None
    workers = min(os.cpu_count() or 1, workers, batch_size)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), collate_fn=LoadImagesAndLabels.collate_fn,
                        worker_init_fn=seed_worker, persistent_workers=False)
    return loader, dataset


# ----------------------------------------------------------------------------- detect.py sources

class LoadImages:
    """Iterate images and videos of a file, folder, glob or .txt list. Yields
    (path, letterboxed RGB CHW uint8, original BGR image, cv2.VideoCapture or None, status)."""

    def __init__(self, path, img_size=416, stride=32):
        path = str(path)
        if os.path.isfile(path) and path.endswith('.txt'):
            files = [l.strip() for l in Path(path).read_text().splitlines() if l.strip()]
        elif os.path.isdir(path):
            files = sorted(str(f) for f in Path(path).iterdir() if f.is_file())
        elif any(c in path for c in '*?['):
            files = sorted(glob.glob(path, recursive=True))
        elif os.path.isfile(path):
            files = [path]
        else:
            raise FileNotFoundError(f'{path} does not exist')
        self.files = [f for f in files if Path(f).suffix.lower() in IMG_FORMATS | VID_FORMATS]
        if not self.files:
            raise FileNotFoundError(f'no images or videos in {path}')
        self.img_size, self.stride = img_size, stride
        self.cap, self.frame, self.frames, self.fps = None, 0, 0, 0

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        for k, path in enumerate(self.files):
            if Path(path).suffix.lower() in VID_FORMATS:
                self.cap = cv2.VideoCapture(path)
                if not self.cap.isOpened():
                    warnings.warn(f'{path}: cannot open video, skipped')
                    continue
                self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
                self.fps = self.cap.get(cv2.CAP_PROP_FPS)
                self.frame = 0
                while True:
                    ok, im0 = self.cap.read()
                    if not ok:
                        break
                    self.frame += 1
                    status = f'video {k + 1}/{len(self.files)} ({self.frame}/{self.frames}) {path}: '
                    yield path, self._prepare(im0), im0, self.cap, status
                self.cap.release()
                self.cap = None
            else:
                im0 = cv2.imread(path)
                if im0 is None:
                    warnings.warn(f'{path}: unreadable image, skipped')
                    continue
                yield path, self._prepare(im0), im0, None, f'image {k + 1}/{len(self.files)} {path}: '

    def _prepare(self, im0):
        img = letterbox(im0, self.img_size, auto=True, stride=self.stride)[0]
        return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))


class LoadStreams:
    """Webcam indices or stream URLs (one per line in a .txt, or a single source), read by
    background threads; yields the latest frame of every stream as lists."""

    def __init__(self, sources, img_size=416, stride=32):
        sources = str(sources)
        if os.path.isfile(sources):
            sources = [l.strip() for l in Path(sources).read_text().splitlines() if l.strip()]
        else:
            sources = [sources]
        self.sources, self.img_size, self.stride = sources, img_size, stride
        self.imgs, self.caps, self.alive = [None] * len(sources), [], True
        for i, s in enumerate(sources):
            cap = cv2.VideoCapture(int(s) if s.isnumeric() else s)
            if not cap.isOpened():
                raise FileNotFoundError(f'cannot open stream {s}')
            ok, self.imgs[i] = cap.read()
            if not ok:
                raise FileNotFoundError(f'stream {s} gave no frame')
            self.caps.append(cap)
            threading.Thread(target=self._update, args=(i, cap), daemon=True).start()
        self.frame = 0

    def _update(self, i, cap):
        while self.alive and cap.isOpened():
            ok, img = cap.read()
            if not ok:
                self.alive = False
                break
            self.imgs[i] = img
            time.sleep(0.001)

    def __iter__(self):
        while self.alive:
            self.frame += 1
            im0s = [im.copy() for im in self.imgs]
            imgs = [np.ascontiguousarray(letterbox(im, self.img_size, auto=True, stride=self.stride)[0][:, :, ::-1]
                                         .transpose(2, 0, 1)) for im in im0s]
            yield list(range(len(im0s))), imgs, im0s, None, f'frame {self.frame}: '

    def __len__(self):
        return 0
