"""Detection metrics that reproduce pycocotools' bbox evaluation, plus a confusion matrix.

What "as pycocotools" means here (cocoeval.py, areaRng 'all'):
  * matching, per image, per class, per IoU threshold t in 0.50:0.05:0.95: detections in
    descending score order (stable sort, so ties keep their input order) each take the still
    unmatched ground truth (GT) with the highest IoU >= t; among equal IoUs the *later* GT wins;
  * AP: all detections of a class, over all images, stably sorted by score (image order breaks
    ties); precision made monotone from the right; sampled at recall 0:0.01:1 with
    ``searchsorted(..., 'left')`` (points beyond the last recall are 0); AP = mean of the samples.
    mAP = mean over classes that have GT (classes with detections only are ignored);
  * ``Evaluator(max_det=100)`` keeps at most 100 detections per image *per class* (cocoeval's
    maxDets acts on each (image, category) pair), so numbers match COCOeval's maxDets=100 row.
Deviations, by design: no crowd GT / ignore regions (YOLO labels have none) and no small/
medium/large area ranges. IoU is computed in float64 from xyxy boxes (pycocotools works from
xywh, which can differ in the last bit at an exact threshold tie).
"""
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou  # noqa: F401  (re-exported: the project's torch IoU)

IOU_THRESHOLDS = np.linspace(.5, .95, int(np.round((.95 - .5) / .05)) + 1, endpoint=True)  # as cocoeval builds it
RECALL_POINTS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
CONF_GRID = np.linspace(0, 1, 1000)  # confidence axis of the P/R/F1 curves
_PAD_BUDGET = 1 << 22  # elements of one padded [groups, dets, gts] IoU block (32 MB of float64)


def fitness(map50, map50_95):
    """Checkpoint selection score: 0.1 x mAP@0.5 + 0.9 x mAP@0.5:0.95."""
    return 0.1 * map50 + 0.9 * map50_95


def _np(x, cols):
    """Tensor/array/list -> float64 numpy [n, cols] (empty inputs of any shape allowed)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to('cpu', torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros((0, cols))
    if x.ndim != 2 or x.shape[1] < cols:
        raise ValueError(f'expected an array of shape [n, {cols}], got {x.shape}')
    return x[:, :cols]


def _vec(x, dtype):
    """Tensor/array/list -> flat numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1).astype(dtype)


def iou_matrix(a, b):
    """IoU of xyxy boxes a [n,4] x b [m,4] (numpy float64) -> [n,m]; zero-area unions give 0."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None]
    union = union - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _pair_iou(a, b):
    """Row-wise IoU of xyxy boxes a [p,4] and b [p,4] -> [p]."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _rank_in_group(keys):
    """Position of each element among the elements with the same key, in array order."""
    order = np.argsort(keys, kind='stable')
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
    run = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys)) - run
    return rank


def _greedy(ious, thresholds):
    """COCO greedy matching for G independent (image, class) groups at once.

    ious [G, K, M]: detection k (in processing order) vs GT m, -1 where no pair exists.
    Returns matched [G, K, T] bool. Loops over the K detection ranks; each step is
    vectorised over groups, thresholds and GTs.
    """
    G, K, M = ious.shape
    thr = np.minimum(thresholds, 1 - 1e-10)[None, :, None]  # cocoeval caps t below 1 the same way
    free = np.ones((G, len(thresholds), M), bool)
    matched = np.zeros((G, K, len(thresholds)), bool)
    for k in range(K):
        iou_k = ious[:, k, None, :]  # [G, 1, M]
        cand = free & (iou_k >= thr)
        hit = cand.any(-1)  # [G, T]
        if not hit.any():
            continue
        score = np.where(cand, iou_k, -1.0)
        best = M - 1 - score[..., ::-1].argmax(-1)  # the last of equal best IoUs, as cocoeval's loop picks
        g, t = hit.nonzero()
        free[g, t, best[g, t]] = False
        matched[:, k] = hit
    return matched


def _match(d_img, d_cls, d_box, g_img, g_cls, g_box, thresholds):
    """Match all detections of several images against their GT, COCO style.

    Detections must already be in processing order (image by image, descending score).
    d_img/d_cls [N] int, d_box [N,4]; g_img/g_cls [M] int, g_box [M,4] (xyxy, same units).
    Returns tp [N, T] bool.
    """
    T = len(thresholds)
    tp = np.zeros((len(d_img), T), bool)
    if len(d_img) == 0 or len(g_img) == 0:
        return tp
    # 1) every same-(image, class) detection/GT pair, via a sorted GT key table
    n_cls = int(max(d_cls.max(), g_cls.max())) + 1
    d_key, g_key = d_img * n_cls + d_cls, g_img * n_cls + g_cls
    g_order = np.argsort(g_key, kind='stable')  # stable: GTs keep their input order inside a group
    g_sorted = g_key[g_order]
    lo = np.searchsorted(g_sorted, d_key, 'left')
    cnt = np.searchsorted(g_sorted, d_key, 'right') - lo
    pd = np.repeat(np.arange(len(d_img)), cnt)
    pg = g_order[np.repeat(lo, cnt) + np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)]
    iou = _pair_iou(d_box[pd], g_box[pg])
    # 2) only pairs that can match at the lowest threshold matter; other detections are FPs everywhere
    keep = iou >= min(thresholds.min(), 1 - 1e-10)
    pd, pg, iou = pd[keep], pg[keep], iou[keep]
    if len(pd) == 0:
        return tp
    act_d, act_g = np.unique(pd), np.unique(pg)
    groups, gid_d = np.unique(d_key[act_d], return_inverse=True)
    d_rank, g_rank = np.full(len(d_img), -1), np.full(len(g_img), -1)
    d_rank[act_d] = _rank_in_group(gid_d)  # act_d is ascending = processing order
    g_rank[act_g] = _rank_in_group(np.searchsorted(groups, g_key[act_g]))
    d_gid = np.full(len(d_img), -1)
    d_gid[act_d] = gid_d
    # 3) bucket groups by padded size (powers of two) so one crowded image does not inflate the rest
    k_sz = np.bincount(gid_d, minlength=len(groups))
    m_sz = np.bincount(np.searchsorted(groups, g_key[act_g]), minlength=len(groups))
    k_pad, m_pad = 1 << np.ceil(np.log2(k_sz)).astype(int), 1 << np.ceil(np.log2(m_sz)).astype(int)
    bucket = k_pad * (m_pad.max() + 1) + m_pad
    pair_gid = d_gid[pd]
    for b in np.unique(bucket):
        members = np.flatnonzero(bucket == b)
        K, M = int(k_pad[members[0]]), int(m_pad[members[0]])
        step = max(1, _PAD_BUDGET // (K * M))
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            local = np.full(len(groups), -1)
            local[chunk] = np.arange(len(chunk))
            sel = local[pair_gid] >= 0
            ious = np.full((len(chunk), K, M), -1.0)
            ious[local[pair_gid[sel]], d_rank[pd[sel]], g_rank[pg[sel]]] = iou[sel]
            matched = _greedy(ious, thresholds)
            dets = act_d[local[gid_d] >= 0]
            tp[dets] = matched[local[d_gid[dets]], d_rank[dets]]
    return tp


def _processing_order(img, conf):
    """Indices sorting detections by image, then descending score (stable, like cocoeval's mergesort)."""
    by_conf = np.argsort(-conf, kind='stable')
    return by_conf[np.argsort(img[by_conf], kind='stable')]


def match_predictions(detections, labels, iou_thresholds=IOU_THRESHOLDS):
    """COCO greedy matching for one image.

    detections [n,6] (x1, y1, x2, y2, conf, cls); labels [m,5] (cls, x1, y1, x2, y2), same units.
    Returns tp [n, T] bool in the input order of ``detections`` (torch bool tensor on the
    detections' device when given a tensor, else numpy).
    """
    det, lab = _np(detections, 6), _np(labels, 5)
    thresholds = np.asarray(iou_thresholds, np.float64).reshape(-1)
    order = np.argsort(-det[:, 4], kind='stable')
    tp_sorted = _match(np.zeros(len(det), np.int64), det[order, 5].astype(np.int64), det[order, :4],
                       np.zeros(len(lab), np.int64), lab[:, 0].astype(np.int64), lab[:, 1:5], thresholds)
    tp = np.empty_like(tp_sorted)
    tp[order] = tp_sorted
    if isinstance(detections, torch.Tensor):
        return torch.from_numpy(tp).to(detections.device)
    return tp


@dataclass
class APResult:
    """Output of ``ap_per_class``; arrays are per class in the order of ``classes``.

    classes [C] (classes with GT), n_targets [C], ap [C, T]; p, r, f1 [C] at ``conf`` (the
    confidence that maximises the mean F1 over classes, IoU 0.5); curves over CONF_GRID:
    p_curve, r_curve, f1_curve [C, 1000]; pr_curve [C, 101]: the interpolated precision at
    IoU 0.5 sampled at RECALL_POINTS (exactly what AP@0.5 averages).
    """
    classes: np.ndarray
    n_targets: np.ndarray
    ap: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    conf: float
    p_curve: np.ndarray
    r_curve: np.ndarray
    f1_curve: np.ndarray
    pr_curve: np.ndarray
    iou_thresholds: np.ndarray = field(default_factory=lambda: IOU_THRESHOLDS.copy())

    @property
    def ap50(self):
        return self.ap[:, _index_of(self.iou_thresholds, 0.5)]

    @property
    def map50(self):
        return float(self.ap50.mean()) if len(self.ap) else 0.0

    @property
    def map50_95(self):
        return float(self.ap.mean()) if len(self.ap) else 0.0


def _index_of(thresholds, value):
    i = int(np.argmin(np.abs(np.asarray(thresholds) - value)))
    if abs(thresholds[i] - value) > 1e-9:
        raise ValueError(f'IoU threshold {value} is not among {list(thresholds)}')
    return i


def _class_curves(tp, conf, n_gt, i50):
    """One class. tp [n,T] bool and conf [n], sorted by descending conf; n_gt > 0.
    Returns ap [T], interpolated precision at IoU 0.5 [101], p and r over CONF_GRID [1000]."""
    n, T = tp.shape
    if n == 0:
        zeros = np.zeros(len(CONF_GRID))
        return np.zeros(T), np.zeros(len(RECALL_POINTS)), zeros, zeros
    tpc = np.cumsum(tp, 0).astype(float)
    fpc = np.cumsum(~tp, 0).astype(float)
    recall = tpc / n_gt
    precision = tpc / (fpc + tpc + np.spacing(1))  # the same epsilon as cocoeval
    envelope = np.maximum.accumulate(precision[::-1], 0)[::-1]
    ap, interp50 = np.zeros(T), None
    for t in range(T):
        idx = np.searchsorted(recall[:, t], RECALL_POINTS, side='left')
        q = np.where(idx < n, envelope[np.minimum(idx, n - 1), t], 0.0)
        ap[t] = q.mean()
        if t == i50:
            interp50 = q
    # exact step curves: detections with conf >= c for every c on the grid (none -> P = R = 0)
    n_at = n - np.searchsorted(conf[::-1], CONF_GRID, side='left')
    tp_at = np.where(n_at > 0, tpc[np.maximum(n_at - 1, 0), i50], 0.0)
    p = np.divide(tp_at, n_at, out=np.zeros(len(CONF_GRID)), where=n_at > 0)
    return ap, interp50, p, tp_at / n_gt


def ap_per_class(tp, conf, pred_cls, target_cls, iou_thresholds=IOU_THRESHOLDS):
    """COCO 101-point AP per class and IoU threshold, plus P/R/F1.

    tp [n, T] bool (from ``match_predictions``), conf [n], pred_cls [n], target_cls [m] (one
    entry per GT). Classes without GT are left out (as cocoeval does). Returns an ``APResult``
    (utils.plots.plot_ap_curves draws its curves).
    """
    conf = _vec(conf, np.float64)
    pred_cls, target_cls = _vec(pred_cls, np.int64), _vec(target_cls, np.int64)
    thresholds = np.asarray(iou_thresholds, np.float64).reshape(-1)
    tp = _vec(tp, bool).reshape(len(conf), len(thresholds))
    i50 = _index_of(thresholds, 0.5)
    order = np.argsort(-conf, kind='stable')
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_targets = np.unique(target_cls, return_counts=True)
    C, T = len(classes), len(thresholds)
    ap, pr_curve = np.zeros((C, T)), np.zeros((C, len(RECALL_POINTS)))
    p_curve, r_curve = np.zeros((C, len(CONF_GRID))), np.zeros((C, len(CONF_GRID)))
    for ci, c in enumerate(classes):  # loop over classes only; each class is vectorised
        sel = pred_cls == c
        ap[ci], pr_curve[ci], p_curve[ci], r_curve[ci] = _class_curves(tp[sel], conf[sel], n_targets[ci], i50)
    f1_curve = np.divide(2 * p_curve * r_curve, p_curve + r_curve, out=np.zeros_like(p_curve),
                         where=(p_curve + r_curve) > 0)
    best = int(f1_curve.mean(0).argmax()) if C else 0
    return APResult(classes, n_targets, ap, p_curve[:, best], r_curve[:, best], f1_curve[:, best],
                    float(CONF_GRID[best]), p_curve, r_curve, f1_curve, pr_curve, thresholds)


def class_name(names, c):
    """names: list/tuple/dict or None -> display name of class index c."""
    if isinstance(names, dict):
        return str(names.get(c, c))
    if names is not None and 0 <= c < len(names):
        return str(names[c])
    return str(c)


def _greedy_pairs(iou):
    """Greedy one-to-one assignment by descending IoU (entries < 0 = not allowed).
    Rounds of mutual best pairs give the same result as a sequential greedy, without a loop over
    boxes. iou [m, n] -> (rows [k], cols [k])."""
    iou = iou.copy()
    rows, cols = [], []
    idx = np.arange(iou.shape[0])
    while iou.size and iou.max() >= 0:
        best_col = iou.argmax(1)
        best_row = iou.argmax(0)
        mutual = (iou[idx, best_col] >= 0) & (best_row[best_col] == idx)
        r, c = idx[mutual], best_col[mutual]
        rows.append(r)
        cols.append(c)
        iou[r, :] = -1
        iou[:, c] = -1
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


class ConfusionMatrix:
    """Detection confusion matrix with a background class.

    ``matrix`` [nc+1, nc+1]: rows = predicted class, columns = true class, index nc =
    background. Per image, detections with conf > ``conf`` are matched one-to-one to GT
    (class-agnostic, greedy by IoU, IoU > ``iou_thres``); a matched pair adds
    matrix[pred, true]; an unmatched GT adds matrix[nc, true] (missed); an unmatched
    detection adds matrix[pred, nc] (background false positive).
    """

    def __init__(self, nc, conf=0.25, iou_thres=0.45):
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), np.int64)

    def process_batch(self, detections, labels):
        """detections [n,6] (x1, y1, x2, y2, conf, cls), labels [m,5] (cls, x1, y1, x2, y2): one image."""
        det, lab = _np(detections, 6), _np(labels, 5)
        det = det[det[:, 4] > self.conf]
        d_cls, g_cls = det[:, 5].astype(np.int64), lab[:, 0].astype(np.int64)
        for name, cls in (('detection', d_cls), ('label', g_cls)):
            if len(cls) and (cls.min() < 0 or cls.max() >= self.nc):
                raise ValueError(f'{name} class {int(cls.max())} out of range for nc={self.nc}')
        iou = iou_matrix(lab[:, 1:5], det[:, :4])
        gi, di = _greedy_pairs(np.where(iou > self.iou_thres, iou, -1.0))
        np.add.at(self.matrix, (d_cls[di], g_cls[gi]), 1)
        g_free, d_free = np.ones(len(g_cls), bool), np.ones(len(d_cls), bool)
        g_free[gi], d_free[di] = False, False
        np.add.at(self.matrix, (self.nc, g_cls[g_free]), 1)
        np.add.at(self.matrix, (d_cls[d_free], self.nc), 1)


class Evaluator:
    """Accumulates per-batch detections and targets, then computes COCO-exact metrics.

    update(detections, targets): detections = list (one per image) of [n,6] (x1, y1, x2, y2,
    conf, cls); targets = list of [m,5] (cls, x1, y1, x2, y2) in the same pixel units. Tensors
    (any device) or arrays. ``max_det`` caps detections per image per class as cocoeval's
    maxDets does (None: no cap). With ``confusion`` a ``ConfusionMatrix`` is filled too.
    """

    def __init__(self, nc, names=None, iou_thresholds=IOU_THRESHOLDS, max_det=100, confusion=True, conf=0.25,
                 iou_thres=0.45):
        self.nc, self.names, self.max_det = nc, names, max_det
        self.iou_thresholds = np.asarray(iou_thresholds, np.float64).reshape(-1)
        self.confusion_matrix = ConfusionMatrix(nc, conf, iou_thres) if confusion else None
        self.reset()

    def reset(self):
        self._tp, self._conf, self._cls, self._tcls = [], [], [], []
        self.images = 0
        self.images_per_class = np.zeros(self.nc, np.int64)

    def _check_cls(self, cls, what):
        if len(cls) and (cls.min() < 0 or cls.max() >= self.nc):
            raise ValueError(f'{what} class {int(cls.max()) if cls.max() >= self.nc else int(cls.min())} '
                             f'out of range 0..{self.nc - 1}: check the data cfg "classes" and the labels')

    def update(self, detections, targets):
        if len(detections) != len(targets):
            raise ValueError(f'update() got {len(detections)} detection lists for {len(targets)} images')
        dets = [_np(d, 6) for d in detections]
        labs = [_np(t, 5) for t in targets]
        if self.confusion_matrix is not None:
            for d, t in zip(dets, labs):
                self.confusion_matrix.process_batch(d, t)
        d_img = np.repeat(np.arange(len(dets)), [len(d) for d in dets])
        g_img = np.repeat(np.arange(len(labs)), [len(t) for t in labs])
        det = np.concatenate(dets) if dets else np.zeros((0, 6))
        lab = np.concatenate(labs) if labs else np.zeros((0, 5))
        d_cls, g_cls = det[:, 5].astype(np.int64), lab[:, 0].astype(np.int64)
        self._check_cls(d_cls, 'detection')
        self._check_cls(g_cls, 'target')
        order = _processing_order(d_img, det[:, 4])
        d_img, d_cls, det = d_img[order], d_cls[order], det[order]
        if self.max_det is not None and len(det):  # cocoeval's maxDets: per image and class
            keep = _rank_in_group(d_img * self.nc + d_cls) < self.max_det
            d_img, d_cls, det = d_img[keep], d_cls[keep], det[keep]
        tp = _match(d_img, d_cls, det[:, :4], g_img, g_cls, lab[:, 1:5], self.iou_thresholds)
        self._tp.append(tp)
        self._conf.append(det[:, 4])
        self._cls.append(d_cls)
        self._tcls.append(g_cls)
        self.images += len(dets)
        present = np.unique(g_img * self.nc + g_cls) % self.nc if len(g_cls) else np.zeros(0, np.int64)
        self.images_per_class += np.bincount(present, minlength=self.nc)

    def compute(self, nc=None, names=None):
        """-> dict: precision, recall, f1 (means over classes with GT at the best-F1 confidence),
        map50, map50_95, fitness, conf, images, targets, maps [nc] (per-class mAP@0.5:0.95, classes
        without GT get the mean), per_class (list of dicts: class, name, images, targets, p, r, ap50, ap),
        ap_result (the APResult, what utils.plots.plot_ap_curves draws)."""
        nc = nc or self.nc
        names = names if names is not None else self.names
        cat = (lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape))
        res = ap_per_class(cat(self._tp, (0, len(self.iou_thresholds))).astype(bool), cat(self._conf, (0,)),
                           cat(self._cls, (0,)).astype(np.int64), cat(self._tcls, (0,)).astype(np.int64),
                           self.iou_thresholds)
        map50, map50_95 = res.map50, res.map50_95
        maps = np.full(nc, map50_95)
        maps[res.classes] = res.ap.mean(1)
        per_class = [{'class': int(c), 'name': class_name(names, int(c)), 'images': int(self.images_per_class[c]),
                      'targets': int(n), 'p': float(p), 'r': float(r), 'ap50': float(a50), 'ap': float(a)}
                     for c, n, p, r, a50, a in zip(res.classes, res.n_targets, res.p, res.r, res.ap50, res.ap.mean(1))]
        mean = (lambda x: float(x.mean()) if len(x) else 0.0)
        return {'precision': mean(res.p), 'recall': mean(res.r), 'f1': mean(res.f1), 'map50': map50,
                'map50_95': map50_95, 'fitness': fitness(map50, map50_95), 'conf': res.conf, 'images': self.images,
                'targets': int(res.n_targets.sum()), 'maps': maps, 'per_class': per_class, 'ap_result': res}
