"""The built-in `shapes` dataset: coloured geometric objects on cluttered, textured backgrounds.

    python3 data/shapes.py [--out data/shapes] [--n-train 1000] [--n-val 200] [--seed 0]
                           [--min-size 160] [--max-size 320] [--max-objects 12] [--min-diameter 24]
                           [--force]

Generated on first use by train.py/test.py (:func:`ensure_shapes`) and never committed.
Deterministic: every image draws from ``numpy.random.default_rng([seed, split offset + index])``,
so the same parameters give byte-identical files (JPEG via OpenCV at a fixed quality, whose
encoder is deterministic for a given OpenCV build).

Content. Five classes (shapes.names): circle, square, triangle, star, ring, rotated freely,
1-12 per image, circumscribed diameter log-uniform from 24 px to half the shorter image side,
in random colours with a mild per-pixel texture. Backgrounds are two-colour gradients with
low-frequency colour texture, pixel noise, random lines and irregular blobs (distractors no
class resembles). Image sides are multiples of 8 in [min-size, max-size], each side drawn
independently (aspect ratios up to ~2:1).

Difficulty. Version 4 (up to 12 objects of >= 24 px) replaced version 3 (up to 8 of >= 16 px),
on which no small model reached mAP@0.5 0.9 within the 10-minute, 2-core CPU budget (best
0.836); ``--max-objects 8 --min-diameter 16`` still writes version 3's images and labels. More
objects per image give more training signal per step; small, occluded and cut objects remain,
so compressed models still lose accuracy first on them.

Occlusion rule. Objects overlap each other and may leave the image, but a placement is
redrawn (up to 12 tries, else the object is skipped) whenever it would leave any object
(itself or one already drawn) with less than ``MIN_VISIBLE`` = 60% of its pixels visible
(pixels outside the image count as hidden), a visible box shorter than ``MIN_BOX`` = 6 px,
or a box overlapping another object's box by IoU > ``MAX_BOX_IOU`` (a detector's NMS could not
report both). So every drawn object is labelled and no unlabelled object is drawn.

Labels are ``cls cx cy w h`` (normalised) of the tight box around each object's *visible*
pixels (pixel i spans [i, i+1)). Layout::

    <out>/images/{train,val}/NNNNN.jpg   <out>/labels/{train,val}/NNNNN.txt
    <out>/train.txt  <out>/val.txt       (paths relative to <out>)
    <out>/stamp.json                     (parameters + VERSION; written last)
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make utils/ importable
    sys.path.append(str(ROOT))

CLASSES = ['circle', 'square', 'triangle', 'star', 'ring']
VERSION = 4            # bump whenever the generator's output changes: stale datasets regenerate
MIN_VISIBLE = 0.6      # fraction of an object's own pixels that must stay visible
MIN_BOX = 6            # shortest side of a visible box, px
MAX_BOX_IOU = 0.45     # largest IoU between two labelled boxes
MIN_DIAMETER = 24.0    # smallest circumscribed object diameter, px
MAX_OBJECTS = 12
PLACE_TRIES = 12
JPEG_QUALITY = 90
STAR_INNER = 0.45      # inner / outer radius of the five-pointed star
SUBPIX = 4             # cv2 drawing shift: coordinates with 1/16 px precision
VAL_OFFSET = 10 ** 6   # val images use rng streams [seed, VAL_OFFSET + i]


# ----------------------------------------------------------------------------- drawing

def shape_polygon(cls, r, rot):
    """Vertices (float [k,2], x y, around the origin) of a polygonal class: square, triangle, star."""
    if cls == 3:
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * STAR_INNER)
    else:
        n = {1: 4, 2: 3}[cls]
        angles = rot + np.arange(n) * 2 * np.pi / n
        radii = np.full(n, r)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def ring_thickness(r):
    """Ring band width in whole px (cv2 thickness is integral): 35% of the radius, at least 2."""
    return max(2, int(round(r * 0.35)))


def object_mask(cls, cx, cy, r, rot):
    """Rasterise one object alone, unclipped by any image.

    Returns (x0, y0, mask bool [S,S]): mask[i, j] is image pixel (x0 + j, y0 + i); the
    window is large enough to hold the whole object, so ``mask.sum()`` is its full area.
    """
    pad = 2
    x0, y0 = int(np.floor(cx - r)) - pad, int(np.floor(cy - r)) - pad
    size = int(np.ceil(2 * r)) + 2 * pad + 1
    mask = np.zeros((size, size), np.uint8)
    scale = 1 << SUBPIX
    lx, ly = cx - x0, cy - y0
    centre = (int(round(lx * scale)), int(round(ly * scale)))
    if cls == 0:
        cv2.circle(mask, centre, int(round(r * scale)), 1, -1, cv2.LINE_8, SUBPIX)
    elif cls == 4:
        t = ring_thickness(r)
        cv2.circle(mask, centre, int(round((r - t / 2) * scale)), 1, t, cv2.LINE_8, SUBPIX)
    else:
        pts = shape_polygon(cls, r, rot) + (lx, ly)
        cv2.fillPoly(mask, [np.round(pts * scale).astype(np.int32)], 1, cv2.LINE_8, SUBPIX)
    return x0, y0, mask.astype(bool)


def _clip_window(x0, y0, size_h, size_w, h, w):
    """Overlap of a window with the image: (image slices, window slices), or None if disjoint."""
    ix1, iy1, ix2, iy2 = max(x0, 0), max(y0, 0), min(x0 + size_w, w), min(y0 + size_h, h)
    if ix1 >= ix2 or iy1 >= iy2:
        return None
    return ((slice(iy1, iy2), slice(ix1, ix2)),
            (slice(iy1 - y0, iy2 - y0), slice(ix1 - x0, ix2 - x0)))


def _mask_box(mask, ox, oy):
    """Tight box [x1, y1, x2, y2] (pixel edges) of a bool mask whose [0,0] is pixel (ox, oy); None if empty."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if not len(cols):
        return None
    return np.array([ox + cols[0], oy + rows[0], ox + cols[-1] + 1, oy + rows[-1] + 1], np.float64)


def _box_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ----------------------------------------------------------------------------- background

def _smooth_noise(rng, h, w, cells, channels):
    """Low-frequency noise float32 [h,w,channels] in about [-1, 1]: a coarse grid upsampled bicubically."""
    gh, gw = max(2, int(round(cells * h / max(h, w)))), max(2, int(round(cells * w / max(h, w))))
    coarse = rng.uniform(-1, 1, (gh, gw, channels)).astype(np.float32)
    out = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _blob(rng, img):
    """Paint one irregular blob (thresholded smooth noise: never a clean geometric outline)."""
    h, w = img.shape[:2]
    d = int(np.exp(rng.uniform(np.log(10), np.log(max(11, min(h, w) / 3)))))
    noise = _smooth_noise(rng, d, d, 5, 1)[..., 0]
    yy, xx = np.mgrid[0:d, 0:d].astype(np.float32) / max(d - 1, 1) * 2 - 1
    mask = noise + 0.9 * (1 - np.sqrt(xx ** 2 + yy ** 2)) > 0.6  # noise-dominated, roughly compact
    x0, y0 = int(rng.integers(-d // 2, w - d // 2)), int(rng.integers(-d // 2, h - d // 2))
    win = _clip_window(x0, y0, d, d, h, w)
    colour = rng.uniform(0, 255, 3)
    alpha = rng.uniform(0.4, 0.9)
    if win is not None:
        region, local = img[win[0]], mask[win[1]]
        region[local] = region[local] * (1 - alpha) + colour * alpha


_NOISE_BANK = None


def _pixel_noise(rng, h, w):
    """Unit Gaussian noise float32 [h,w,3]: a random crop of a fixed bank (drawing fresh
    normals for every image would be a third of the generation time)."""
    global _NOISE_BANK
    side = 1024
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20200101).standard_normal((side, side, 3), dtype=np.float32)
    if h > side or w > side:  # larger than the bank: draw it directly
        return rng.standard_normal((h, w, 3), dtype=np.float32)
    y, x = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
    return _NOISE_BANK[y:y + h, x:x + w]


def background(rng, h, w):
    """Gradient + low-frequency colour texture + pixel noise + lines and blobs, float32 BGR [h,w,3]."""
    # gradient and texture share one coarse grid: bicubic upsampling keeps a linear ramp linear
    cells = rng.uniform(3, 12)
    gh, gw = max(2, int(round(cells * h / max(h, w)))), max(2, int(round(cells * w / max(h, w))))
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * np.linspace(0, 1, gw, dtype=np.float32)[None]
            + np.sin(angle) * np.linspace(0, 1, gh, dtype=np.float32)[:, None])
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    coarse = c0 + (c1 - c0) * ramp[..., None] + rng.uniform(-1, 1, (gh, gw, 3)).astype(np.float32) * rng.uniform(0, 35)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(0, 5))):
        _blob(rng, img)
    for _ in range(int(rng.integers(0, 11))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, tuple(float(v) for v in rng.uniform(0, 255, 3)), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    img += _pixel_noise(rng, h, w) * np.float32(rng.uniform(2, 14))
    return img


# ----------------------------------------------------------------------------- scene

class _Scene:
    """Objects placed so far and the owner map (index of the top object per pixel, -1 = none)."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.owner = np.full((h, w), -1, np.int16)
        self.objects = []  # dicts: cls cx cy r rot x0 y0 mask area visible box colour

    def visible_box(self, i, owner=None):
        o = self.objects[i]
        owner = self.owner if owner is None else owner
        win = _clip_window(o['x0'], o['y0'], *o['mask'].shape, self.h, self.w)
        return None if win is None else _mask_box(owner[win[0]] == i, win[0][1].start, win[0][0].start)

    def try_place(self, cls, cx, cy, r, rot):
        """Add the object if every occlusion rule still holds afterwards; returns success."""
        x0, y0, mask = object_mask(cls, cx, cy, r, rot)
        area = int(mask.sum())
        win = _clip_window(x0, y0, *mask.shape, self.h, self.w)
        if win is None:
            return False
        inside = mask[win[1]]
        if inside.sum() < MIN_VISIBLE * area:
            return False
        k = len(self.objects)
        below = self.owner[win[0]][inside]
        covered = np.bincount(below[below >= 0], minlength=k)
        owner = self.owner.copy()
        owner[win[0]][inside] = k
        box = _mask_box(inside, win[0][1].start, win[0][0].start)
        boxes = [o['box'] for o in self.objects] + [box]
        for j in np.flatnonzero(covered):
            if self.objects[j]['visible'] - covered[j] < MIN_VISIBLE * self.objects[j]['area']:
                return False
            boxes[j] = self.visible_box(j, owner)
        changed = list(np.flatnonzero(covered)) + [k]
        if any(min(boxes[j][2] - boxes[j][0], boxes[j][3] - boxes[j][1]) < MIN_BOX for j in changed):
            return False
        if any(_box_iou(boxes[j], boxes[i]) > MAX_BOX_IOU for j in changed for i in range(k + 1) if i != j):
            return False
        for j in np.flatnonzero(covered):
            self.objects[j]['visible'] -= int(covered[j])
            self.objects[j]['box'] = boxes[j]
        self.owner = owner
        self.objects.append(dict(cls=cls, cx=cx, cy=cy, r=r, rot=rot, x0=x0, y0=y0, mask=mask, area=area,
                                 visible=int(inside.sum()), box=box, colour=None, covered=covered))
        return True


def _pick_colour(rng, avoid):
    """A colour differing by >= 70 in some channel from every colour in ``avoid`` (best of 12 draws)."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3)
        d = min((np.abs(c - a).max() for a in avoid), default=255.0)
        if d >= 70:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def render(rng, h, w, max_objects=MAX_OBJECTS, min_diameter=MIN_DIAMETER):
    """One image and its objects.

    Returns (img uint8 BGR [h,w,3], objects): each object is a dict with ``cls``, ``cx``,
    ``cy``, ``r``, ``rot`` (drawing parameters, see :func:`object_mask`), ``colour`` (BGR),
    ``box`` (visible box [x1,y1,x2,y2] in px) and ``visible``/``area`` pixel counts, in
    painting order (later objects cover earlier ones).
    """
    img = background(rng, h, w)
    scene = _Scene(h, w)
    d_max = max(min(h, w) / 2, min_diameter + 1)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        for _try in range(PLACE_TRIES):
            r = float(np.exp(rng.uniform(np.log(min_diameter), np.log(d_max)))) / 2
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            if scene.try_place(cls, cx, cy, r, rng.uniform(0, 2 * np.pi)):
                break
        else:
            continue
        o = scene.objects[-1]
        win = _clip_window(o['x0'], o['y0'], *o['mask'].shape, h, w)
        inside = o['mask'][win[1]]
        region = img[win[0]]
        # contrast with what it covers: the background under it and each object it overlaps
        avoid = [region[inside].mean(0)] + [scene.objects[j]['colour'] for j in np.flatnonzero(o['covered'])]
        o['colour'] = _pick_colour(rng, avoid)
        shade = rng.uniform(0.85, 1.15, (int(inside.sum()), 1)).astype(np.float32)  # mild surface texture
        region[inside] = o['colour'] * shade
    img = np.rint(np.clip(img, 0, 255, out=img)).astype(np.uint8)
    objects = [{k: o[k] for k in ('cls', 'cx', 'cy', 'r', 'rot', 'colour', 'box', 'visible', 'area')}
               for o in scene.objects]
    return img, objects


def yolo_rows(objects, h, w):
    """Label rows (cls, cx, cy, bw, bh), normalised, from the objects' visible boxes."""
    rows = []
    for o in objects:
        x1, y1, x2, y2 = o['box']
        rows.append((o['cls'], (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h))
    return rows


def make_image(seed, index, min_size=160, max_size=320, max_objects=MAX_OBJECTS, min_diameter=MIN_DIAMETER):
    """Image ``index`` of the stream ``seed``: (img uint8 BGR, label rows, objects)."""
    rng = np.random.default_rng([seed, index])
    lo, hi = -(-min_size // 8), max(max_size // 8, -(-min_size // 8))
    h, w = (int(v) * 8 for v in rng.integers(lo, hi + 1, 2))
    img, objects = render(rng, h, w, max_objects, min_diameter)
    return img, yolo_rows(objects, h, w), objects


# ----------------------------------------------------------------------------- files

def generate(out, n_train=1000, n_val=200, seed=0, min_size=160, max_size=320, max_objects=MAX_OBJECTS,
             min_diameter=MIN_DIAMETER):
    """Write the dataset into ``out`` (created; must not exist yet). No stamp: see ensure_shapes."""
    from tqdm import tqdm
    out = Path(out)
    for split, n, offset in (('train', n_train, 0), ('val', n_val, VAL_OFFSET)):
        (out / 'images' / split).mkdir(parents=True)
        (out / 'labels' / split).mkdir(parents=True)
        lines = []
        for i in tqdm(range(n), desc=f'shapes {split}', bar_format='{l_bar}{bar:10}{r_bar}', disable=n == 0):
            img, rows, _ = make_image(seed, offset + i, min_size, max_size, max_objects, min_diameter)
            ok, jpg = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f'OpenCV could not encode image {split}/{i}')
            (out / 'images' / split / f'{i:05d}.jpg').write_bytes(jpg.tobytes())
            (out / 'labels' / split / f'{i:05d}.txt').write_text(
                ''.join(f'{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n' for c, x, y, bw, bh in rows))
            lines.append(f'images/{split}/{i:05d}.jpg\n')
        (out / f'{split}.txt').write_text(''.join(lines))
    return out


def _remove_stale_temps(root):
    """Delete temp folders of generations whose process is gone (interrupted runs)."""
    for tmp in root.parent.glob(f'.{root.name}.tmp-*'):
        try:
            pid = int(tmp.name.rsplit('-', 2)[-2])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass


def _is_complete(root, stamp):
    try:
        ok = json.loads((root / 'stamp.json').read_text()) == stamp
    except (OSError, ValueError):
        return False
    return ok and (root / 'train.txt').is_file() and (root / 'val.txt').is_file()


def ensure_shapes(root=None, n_train=1000, n_val=200, seed=0, min_size=160, max_size=320, force=False,
                  max_objects=MAX_OBJECTS, min_diameter=MIN_DIAMETER):
    """Generate the dataset unless ``root`` already holds one made by this VERSION with these
    parameters; returns the path of its ``.data`` file.

    ``root`` defaults to ``data/shapes`` next to this file, whose ``data/shapes.data`` is
    committed; any other root gets ``<root>.data`` and ``<root>.names`` written beside it.
    Generation goes to a temp folder that is renamed onto ``root`` only once complete
    (stamp.json written last), so an interrupted run never leaves a dataset that looks complete.
    """
    from utils.general import atomic_write_text
    if min_size < 32 or max_size < min_size:
        raise ValueError(f'need 32 <= min_size <= max_size, got min_size={min_size} max_size={max_size}')
    if n_train < 0 or n_val < 0:
        raise ValueError(f'image counts must be >= 0, got n_train={n_train} n_val={n_val}')
    if max_objects < 1 or not 4 <= min_diameter <= min_size / 2:
        raise ValueError(f'need max_objects >= 1 and 4 <= min_diameter <= min_size / 2, got max_objects={max_objects} '
                         f'min_diameter={min_diameter} min_size={min_size}')
    here = Path(__file__).resolve().parent
    root = Path(root).resolve() if root else here / 'shapes'
    stamp = {'version': VERSION, 'n_train': n_train, 'n_val': n_val, 'seed': seed, 'min_size': min_size,
             'max_size': max_size, 'max_objects': max_objects, 'min_diameter': float(min_diameter)}
    if force or not _is_complete(root, stamp):
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-{os.getpid()}-', dir=root.parent))
        try:
            generate(tmp / 'd', n_train, n_val, seed, min_size, max_size, max_objects, min_diameter)
            (tmp / 'd' / 'stamp.json').write_text(json.dumps(stamp))
            if root.exists():
                os.replace(root, tmp / 'old')  # move aside: os.replace cannot overwrite a full folder
            os.replace(tmp / 'd', root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    data = root.parent / f'{root.name}.data'
    if root != here / 'shapes' or not data.is_file():
        atomic_write_text(root.parent / f'{root.name}.names', '\n'.join(CLASSES) + '\n')
        atomic_write_text(data, f'classes={len(CLASSES)}\ntrain={root.name}/train.txt\nvalid={root.name}/val.txt\n'
                                f'names={root.name}.names\nhyp={here / "hyp.shapes.yaml"}\n')
    return data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=None, help='dataset folder (default: data/shapes next to this file)')
    p.add_argument('--n-train', type=int, default=1000, help='training images')
    p.add_argument('--n-val', type=int, default=200, help='validation images')
    p.add_argument('--seed', type=int, default=0, help='random seed (same seed -> identical files)')
    p.add_argument('--min-size', type=int, default=160, help='smallest image side, px')
    p.add_argument('--max-size', type=int, default=320, help='largest image side, px')
    p.add_argument('--max-objects', type=int, default=MAX_OBJECTS, help='most objects drawn per image (1..N, uniform)')
    p.add_argument('--min-diameter', type=float, default=MIN_DIAMETER,
                   help='smallest circumscribed object diameter, px (harder: smaller)')
    p.add_argument('--force', action='store_true', help='regenerate even if an up-to-date copy exists')
    opt = p.parse_args(argv)
    data = ensure_shapes(opt.out, opt.n_train, opt.n_val, opt.seed, opt.min_size, opt.max_size, force=opt.force,
                         max_objects=opt.max_objects, min_diameter=opt.min_diameter)
    print(f'shapes dataset ready: {data}')


if __name__ == '__main__':
    try:
        main()
    except ValueError as e:  # bad parameters: one clear line, no traceback
        sys.exit(f'shapes.py: error: {e}')
