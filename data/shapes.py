"""The built-in `shapes` dataset: coloured geometric objects on textured backgrounds.

    python3 data/shapes.py [--out data/shapes] [--n-train 800] [--n-val 200] [--seed 0]

Deterministic (same seed and parameters -> byte-identical files), generated on first use by
train.py/test.py (``ensure_shapes``). Five classes (shapes.names): circle, square, triangle,
star, ring; 1-8 objects per image from ~8 px to half the image, rotated, overlapping (an
object stays at least 60% visible: placements that would hide more are redrawn elsewhere),
on gradient + noise + line-clutter backgrounds, image sides 192-416 px. Labels are the tight
boxes of each object's visible pixels. Layout::

    data/shapes/images/{train,val}/NNNNN.jpg   data/shapes/labels/{train,val}/NNNNN.txt
    data/shapes/train.txt  data/shapes/val.txt  (paths relative to data/shapes)
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

CLASSES = ['circle', 'square', 'triangle', 'star', 'ring']
VERSION = 1
MIN_VISIBLE = 0.6  # fraction of an object's pixels that must stay visible
JPEG_QUALITY = 92


def _background(rng, h, w):
    """Smooth two-colour gradient + Gaussian noise + random line clutter, uint8 BGR [h,w,3]."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, rng.uniform(3, 18), (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 12)):  # clutter: thin lines
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, tuple(int(v) for v in rng.uniform(0, 255, 3)), int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _star(cx, cy, r, rot):
    angles = rot + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)


def _polygon(cx, cy, r, n, rot):
    angles = rot + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)


def draw_mask(cls, cx, cy, r, rot, h, w):
    """Binary mask (uint8 [h,w]) of one object of class ``cls`` with centre (cx, cy), radius r."""
    mask = np.zeros((h, w), np.uint8)
    shift = 4  # sub-pixel precision of cv2 drawing
    scale = 1 << shift
    if cls == 0:
        cv2.circle(mask, (int(cx * scale), int(cy * scale)), int(r * scale), 1, -1, cv2.LINE_8, shift)
    elif cls == 4:
        thick = max(2, int(round(r * 0.35)))
        cv2.circle(mask, (int(cx * scale), int(cy * scale)), int((r - thick / 2) * scale), 1, thick, cv2.LINE_8,
                   shift)
    else:
        pts = {1: lambda: _polygon(cx, cy, r, 4, rot), 2: lambda: _polygon(cx, cy, r, 3, rot),
               3: lambda: _star(cx, cy, r, rot)}[cls]()
        cv2.fillPoly(mask, [np.round(pts * scale).astype(np.int32)], 1, cv2.LINE_8, shift)
    return mask


def render(rng, h, w, max_objects=8):
    """One image and its objects. Returns (img uint8 BGR, [(cls, visible_mask)])."""
    img = _background(rng, h, w)
    objects = []  # (cls, full mask, colour)
    occupied = np.zeros((h, w), np.uint16)  # index+1 of the top object per pixel
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        for _attempt in range(10):
            r = float(np.exp(rng.uniform(np.log(4.5), np.log(min(h, w) / 4))))  # box side ~8 px .. half image
            cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
            mask = draw_mask(cls, cx, cy, r, rng.uniform(0, 2 * np.pi), h, w).astype(bool)
            if mask.sum() < 16:
                continue
            # would this object hide too much of any object below it?
            covered = np.bincount(occupied[mask], minlength=len(objects) + 1)[1:]
            visible_before = np.bincount(occupied.ravel(), minlength=len(objects) + 1)[1:]
            if all(v - c >= MIN_VISIBLE * o[1].sum() for v, c, o in zip(visible_before, covered, objects)):
                break
        else:
            continue
        colour = rng.uniform(0, 255, 3)
        local = img[mask].mean(0)
        if np.abs(colour - local).max() < 80:  # keep objects distinguishable from their background
            colour = np.where(local > 127, local - 120, local + 120)
        objects.append((cls, mask, colour))
        occupied[mask] = len(objects)
        shade = rng.uniform(0.85, 1.15, (h, w, 1)).astype(np.float32)  # mild texture on the object
        img[mask] = np.clip(colour[None] * shade[mask], 0, 255).astype(np.uint8)
    visible = [(cls, occupied == i + 1) for i, (cls, _, _) in enumerate(objects)]
    return img, visible


def labels_from_masks(visible, h, w):
    """YOLO rows (cls, cx, cy, bw, bh) normalised, from the tight boxes of the visible pixels."""
    rows = []
    for cls, mask in visible:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        rows.append((cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h))
    return rows


def make_image(seed, index, min_size=192, max_size=416):
    rng = np.random.default_rng([seed, index])
    h, w = (int(v) for v in rng.integers(min_size // 8, max_size // 8 + 1, 2) * 8)
    img, visible = render(rng, h, w)
    return img, labels_from_masks(visible, h, w), visible


def generate(out, n_train=800, n_val=200, seed=0, min_size=192, max_size=416):
    """Write the dataset into ``out`` (created; must not exist)."""
    from tqdm import tqdm
    out = Path(out)
    for split, n, offset in (('train', n_train, 0), ('val', n_val, 10 ** 6)):
        (out / 'images' / split).mkdir(parents=True)
        (out / 'labels' / split).mkdir(parents=True)
        lines = []
        for i in tqdm(range(n), desc=f'shapes {split}', bar_format='{l_bar}{bar:10}{r_bar}'):
            img, rows, _ = make_image(seed, offset + i, min_size, max_size)
            name = f'{i:05d}'
            cv2.imwrite(str(out / 'images' / split / f'{name}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            (out / 'labels' / split / f'{name}.txt').write_text(
                ''.join(f'{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n' for c, x, y, bw, bh in rows))
            lines.append(f'images/{split}/{name}.jpg')
        (out / f'{split}.txt').write_text('\n'.join(lines) + '\n')
    return out


def ensure_shapes(root=None, n_train=800, n_val=200, seed=0, min_size=192, max_size=416):
    """Generate the dataset if it is missing or was made with other parameters; returns the
    path of the .data file. Generation goes to a temp folder renamed at the end, so an
    interrupted run never leaves a dataset that looks complete."""
    here = Path(__file__).resolve().parent
    root = Path(root) if root else here / 'shapes'
    stamp = {'version': VERSION, 'n_train': n_train, 'n_val': n_val, 'seed': seed, 'min_size': min_size,
             'max_size': max_size}
    stamp_file = root / 'stamp.json'
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        tmp = root.with_name(root.name + '.tmp')
        shutil.rmtree(tmp, ignore_errors=True)
        generate(tmp, n_train, n_val, seed, min_size, max_size)
        (tmp / 'stamp.json').write_text(json.dumps(stamp))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    data = root.parent / f'{root.name}.data'
    if not data.is_file() or root.parent != here:
        names = root.parent / f'{root.name}.names'
        names.write_text('\n'.join(CLASSES) + '\n')
        data.write_text(f'classes={len(CLASSES)}\ntrain={root.name}/train.txt\nvalid={root.name}/val.txt\n'
                        f'names={root.name}.names\n')
    return data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=None, help='dataset folder (default: data/shapes next to this file)')
    p.add_argument('--n-train', type=int, default=800)
    p.add_argument('--n-val', type=int, default=200)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--min-size', type=int, default=192)
    p.add_argument('--max-size', type=int, default=416)
    opt = p.parse_args(argv)
    data = ensure_shapes(opt.out, opt.n_train, opt.n_val, opt.seed, opt.min_size, opt.max_size)
    print(f'shapes dataset ready: {data}')


if __name__ == '__main__':
    sys.exit(main())
