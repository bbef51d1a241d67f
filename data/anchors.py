"""Anchors for a YOLO dataset: k-means on box sizes with a 1 - IoU distance, then a genetic refinement.

    python3 data/anchors.py --data data/shapes.data -n 6 --img-size 256
    python3 data/anchors.py --data data/coco.data -n 9 --img-size 416 --gen 1000 --thr 0.2 \\
        --cfg cfg/yolov3.cfg --out cfg/yolov3-coco-anchors.cfg

Boxes: every label of the .data file's ``train`` list (label path: the last ``images`` path
component -> ``labels``, extension -> ``.txt``), scaled as the letterbox scales its image
(longest side = ``--img-size``); boxes under 2 px are dropped. Distances and fitness use the
width/height-only IoU, boxes aligned at a common centre: min(w1,w2)*min(h1,h2) / union.

Matching rule (best possible recall, BPR = fraction of boxes with at least one matching anchor):
``--thr`` below 1 is a wh-IoU threshold, a box matches an anchor when IoU > thr; the default 0.20
is ``iou_t`` of data/hyp.yaml, the rule train.py's loss uses to assign targets to anchors.
``--thr`` of 1 or more is a size-ratio threshold: a box matches when
max(w/aw, aw/w, h/ah, ah/h) < thr (e.g. 4.0).

The genetic step mutates all anchors multiplicatively and keeps a mutation only if it raises
the fitness: the mean over boxes of the best-anchor IoU, counting boxes without a matching
anchor as 0 (so it trades mean IoU against BPR). Printed anchors are rounded to whole pixels
and sorted by area, as Darknet cfgs expect; BPR and mean IoU are those of the rounded anchors.
With ``--cfg IN --out OUT`` the anchors are written into a copy of IN (every [yolo] section;
IN must have as many anchors as ``-n``, which defaults to IN's count).
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make utils/ importable
    sys.path.append(str(ROOT))

MIN_BOX_PX = 2.0


# ----------------------------------------------------------------------------- fitness

def wh_iou(wh, anchors):
    """IoU of centre-aligned boxes: wh float [N,2], anchors float [K,2] -> [N,K]."""
    wh, anchors = np.asarray(wh, np.float64), np.asarray(anchors, np.float64)
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = wh[:, None].prod(2) + anchors[None].prod(2) - inter
    return inter / union


def matches(wh, anchors, thr=0.2):
    """bool [N,K]: box n matches anchor k under the rule of ``thr`` (see the module docstring)."""
    if thr < 1:
        return wh_iou(wh, anchors) > thr
    ratio = np.asarray(wh, np.float64)[:, None] / np.asarray(anchors, np.float64)[None]  # [N,K,2]
    return np.maximum(ratio, 1 / ratio).max(2) < thr


def anchor_fitness(wh, anchors, thr=0.2):
    """(mean best IoU, best possible recall) of ``anchors`` [K,2] for boxes ``wh`` [N,2].

    mean best IoU: mean over boxes of max_k wh_iou; BPR: fraction of boxes matching some
    anchor under the ``thr`` rule.
    """
    iou = wh_iou(wh, anchors)
    return float(iou.max(1).mean()), float(matches(wh, anchors, thr).any(1).mean())


def _evolution_fitness(wh, anchors, thr):
    """Mean over boxes of the best IoU among *matching* anchors (0 for a box with none)."""
    iou = wh_iou(wh, anchors) * matches(wh, anchors, thr)
    return float(iou.max(1).mean())


# ----------------------------------------------------------------------------- clustering

def _sort_by_area(anchors):
    anchors = np.asarray(anchors, np.float64)
    return anchors[np.argsort(anchors.prod(1), kind='stable')]


def _seed_centres(wh, n, rng):
    """Greedy k-means++ seeding with distance d = 1 - IoU: each step draws a few candidates with
    probability ~ d^2 and keeps the one that lowers the total d^2 most (plain k-means++ often
    puts two seeds in one cluster)."""
    trials = 2 + int(np.log(n))
    centres = [wh[rng.integers(len(wh))]]
    best = wh_iou(wh, np.array(centres))[:, 0]
    for _ in range(n - 1):
        d2 = (1 - best) ** 2
        total = d2.sum()
        cand = rng.choice(len(wh), trials, p=d2 / total) if total > 0 else rng.integers(len(wh), size=trials)
        new_best = np.maximum(best[:, None], wh_iou(wh, wh[cand]))  # [N, trials]
        pick = ((1 - new_best) ** 2).sum(0).argmin()
        centres.append(wh[cand[pick]])
        best = new_best[:, pick]
    return np.array(centres, np.float64)


def _lloyd(wh, centres, iters):
    """k-means iterations (assign by highest IoU, centre = per-dimension median of its boxes)."""
    assign = None
    for _ in range(iters):
        iou = wh_iou(wh, centres)
        new = iou.argmax(1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for k in range(len(centres)):
            members = wh[assign == k]
            if len(members):
                centres[k] = np.median(members, 0)
            else:  # empty cluster: restart it on the worst-covered box
                centres[k] = wh[iou.max(1).argmin()]
    return centres


def kmeans_anchors(wh, n, iters=300, seed=0, restarts=5):
    """Cluster box sizes ``wh`` float [N,2] (px) into ``n`` anchors float [n,2], sorted by area.

    k-means with distance 1 - IoU, k-means++ seeding from ``numpy.random.default_rng(seed)``;
    the best of ``restarts`` runs by mean best IoU is returned.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if n < 1:
        raise ValueError(f'need at least 1 anchor, got n={n}')
    if (wh <= 0).any():
        raise ValueError('box sizes must be positive')
    if len(np.unique(wh, axis=0)) < n:
        raise ValueError(f'only {len(np.unique(wh, axis=0))} distinct box sizes: cannot fit {n} anchors '
                         f'(use fewer anchors or more labels)')
    rng = np.random.default_rng(seed)
    best, best_fit = None, -1.0
    for _ in range(max(1, restarts)):
        centres = _lloyd(wh, _seed_centres(wh, n, rng), iters)
        fit = wh_iou(wh, centres).max(1).mean()
        if fit > best_fit:
            best, best_fit = centres, fit
    return _sort_by_area(best)


def evolve_anchors(wh, anchors, gen=1000, thr=0.2, seed=0, mutation_prob=0.9, sigma=0.1, verbose=True):
    """Genetic refinement: multiplicative mutations of ``anchors`` [K,2], kept when they raise the
    fitness (mean best matching IoU, see :func:`_evolution_fitness`). Returns [K,2] sorted by area."""
    from tqdm import tqdm
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    best = np.asarray(anchors, np.float64).copy()
    best_fit = _evolution_fitness(wh, best, thr)
    bar = tqdm(range(gen), desc='evolving anchors', disable=not verbose or gen == 0,
               bar_format='{l_bar}{bar:10}{r_bar}')
    for _ in bar:
        factors = np.ones_like(best)
        while (factors == 1).all():  # mutate at least one value
            hit = rng.random(best.shape) < mutation_prob
            factors = np.clip(1 + hit * rng.standard_normal(best.shape) * rng.random() * sigma, 0.3, 3.0)
        candidate = np.maximum(best * factors, MIN_BOX_PX)
        fit = _evolution_fitness(wh, candidate, thr)
        if fit > best_fit:
            best, best_fit = candidate, fit
            bar.set_description(f'evolving anchors: fitness {best_fit:.4f}')
    return _sort_by_area(best)


# ----------------------------------------------------------------------------- data

def load_wh(data, img_size):
    """Box sizes (px) of every training label, letterboxed to ``img_size``: float [N,2].

    Images and labels are checked as the training loader checks them (bad ones are skipped
    with a warning); image sizes come from the file headers."""
    from utils.datasets import list_images, load_labels
    from utils.parse_config import parse_data_cfg
    cfg = parse_data_cfg(data)
    if 'train' not in cfg:
        raise ValueError(f'{data}: no "train = ..." line (the list of training images)')
    nc = cfg.get('classes')
    files, labels, shapes = load_labels(list_images(cfg['train']), nc=nc, cache_path=None, prefix='anchors: ')
    parts = []
    for rows, (h0, w0) in zip(labels, shapes):
        if len(rows):
            scale = img_size / max(h0, w0)
            parts.append(rows[:, 3:5].astype(np.float64) * (w0 * scale, h0 * scale))
    wh = np.concatenate(parts) if parts else np.zeros((0, 2))
    keep = (wh >= MIN_BOX_PX).all(1)
    if (~keep).any():
        print(f'anchors: {(~keep).sum()} of {len(wh)} boxes are under {MIN_BOX_PX:g} px at {img_size} px: ignored')
    wh = wh[keep]
    if not len(wh):
        raise ValueError(f'{data}: no labelled boxes in {cfg["train"]}')
    return wh


def format_anchors(anchors):
    """'w,h,  w,h, ...' as in a cfg's anchors= line."""
    return ',  '.join(f'{int(w)},{int(h)}' for w, h in anchors)


def cfg_anchor_count(sections, path):
    """Number of anchors of the cfg's [yolo] sections (they must agree)."""
    counts = {len(s['anchors']) for s in sections if s['type'] == 'yolo'}
    if len(counts) != 1:
        raise ValueError(f'{path}: its [yolo] sections list different anchor counts {sorted(counts)}')
    return counts.pop()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='dataset .data file (its train list is used)')
    p.add_argument('-n', '--n', type=int, default=None, help='number of anchors (default: --cfg\'s count, else 9)')
    p.add_argument('--img-size', type=int, default=416, help='network input size (letterbox longest side), px')
    p.add_argument('--gen', type=int, default=1000, help='genetic refinement generations (0: k-means only)')
    p.add_argument('--thr', type=float, default=0.2,
                   help='match rule: < 1 wh-IoU threshold (default 0.2 = hyp iou_t), >= 1 size-ratio threshold')
    p.add_argument('--seed', type=int, default=0, help='random seed of k-means and evolution')
    p.add_argument('--cfg', default=None, help='cfg to copy with the new anchors (never modified)')
    p.add_argument('--out', default=None, help='where to write the cfg with the new anchors')
    opt = p.parse_args(argv)
    if (opt.cfg is None) != (opt.out is None):
        p.error('--cfg and --out go together')
    if opt.thr <= 0:
        p.error(f'--thr must be positive, got {opt.thr}')
    if opt.img_size < 32 or opt.gen < 0 or (opt.n is not None and opt.n < 1):
        p.error(f'need --img-size >= 32, --gen >= 0 and -n >= 1 (got {opt.img_size}, {opt.gen}, {opt.n})')
    sections = None
    if opt.cfg:
        from utils.parse_config import parse_cfg
        sections = parse_cfg(opt.cfg)
        n_cfg = cfg_anchor_count(sections, opt.cfg)
        if opt.n is None:
            opt.n = n_cfg
        elif opt.n != n_cfg:
            p.error(f'-n {opt.n} but {opt.cfg} has {n_cfg} anchors per [yolo] section: use -n {n_cfg} '
                    f'(or a cfg with {opt.n} anchors)')
        if os.path.exists(opt.out) and os.path.samefile(opt.cfg, opt.out):
            p.error('--out must differ from --cfg (the input cfg is never modified)')
    n = opt.n or 9

    wh = load_wh(opt.data, opt.img_size)
    print(f'anchors: {len(wh)} boxes at {opt.img_size} px, {n} anchors, '
          f'match rule: {"wh-IoU > " if opt.thr < 1 else "size ratio < "}{opt.thr:g}')
    anchors = kmeans_anchors(wh, n, seed=opt.seed)
    mean_iou, bpr = anchor_fitness(wh, anchors, opt.thr)
    print(f'k-means: mean best IoU {mean_iou:.4f}, best possible recall {bpr:.4f}')
    if opt.gen > 0:
        anchors = evolve_anchors(wh, anchors, opt.gen, opt.thr, opt.seed)
    anchors = _sort_by_area(np.maximum(np.round(anchors), 1)).astype(int)
    mean_iou, bpr = anchor_fitness(wh, anchors, opt.thr)
    print(f'best possible recall {bpr:.4f}, mean best IoU {mean_iou:.4f}')
    print(f'anchors = {format_anchors(anchors)}')
    if sections is not None:
        from utils.parse_config import rewrite_head, write_cfg
        write_cfg(rewrite_head(sections, anchors=anchors.tolist()), opt.out)
        print(f'wrote {opt.out}')
    return anchors


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError) as e:  # bad input: one clear line, no traceback
        sys.exit(f'anchors.py: error: {e}')
