"""Box format helpers and non-maximum suppression for YOLO outputs.

Box conventions used across the project:
  xywh  = centre x, centre y, width, height (the model's decoded output, in input pixels)
  xyxy  = top-left x, y, bottom-right x, y
Helpers accept torch tensors or numpy arrays of shape [..., 4] and return the same kind.
"""
import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou, nms


def _float_copy(x):
    """A float copy of a tensor/array (integers become float32/float64) so box maths never truncates."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64, copy=True)


def xywh2xyxy(x):
    """[..., 4] centre-size boxes -> corner boxes (new tensor/array, input untouched)."""
    y = _float_copy(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xyxy2xywh(x):
    """[..., 4] corner boxes -> centre-size boxes (new tensor/array, input untouched)."""
    y = _float_copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def clip_boxes(boxes, shape):
    """Clip xyxy ``boxes`` [..., 4] **in place** to an image of ``shape`` = (height, width);
    returns ``boxes`` for chaining."""
    h, w = shape[:2]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def _candidates(x, conf_thres, multi_label, min_wh, max_wh):
    """One image's raw rows [N, 5+nc] -> (xyxy [n,4], score [n], cls [n]) above threshold.
    Score = objectness x class probability; multi_label keeps one row per passing class."""
    wh = x[:, 2:4]
    x = x[(x[:, 4] > conf_thres) & (wh > min_wh).all(1) & (wh < max_wh).all(1)]  # cheap objectness pre-filter
    boxes = xywh2xyxy(x[:, :4])
    scores = x[:, 5:] * x[:, 4:5]
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        return boxes[i], scores[i, j], j
    score, j = scores.max(1)
    keep = score > conf_thres
    return boxes[keep], score[keep], j[keep]


def _pair_iou(a, b):
    """Row-wise IoU of xyxy boxes a [p,4] and b [p,4] -> [p]."""
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    area = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area - inter)


def merge_boxes(boxes, scores, cls, keep, iou_thres, agnostic=False):
    """Merge-NMS: each kept box becomes the score-weighted mean of all candidate boxes
    (same class unless ``agnostic``) whose IoU with it exceeds ``iou_thres``; the kept box
    itself (IoU 1) is always among them.
    boxes [n,4], scores [n], cls [n], keep [k] indices -> merged boxes [k,4]."""
    if agnostic:
        weights = (box_iou(boxes[keep], boxes) > iou_thres) * scores[None]  # [k, n]
        return (weights @ boxes) / weights.sum(1, keepdim=True)
    # class-aware: only same-class (kept, candidate) pairs, enumerated through a class-sorted index
    order = cls.argsort(stable=True)
    sorted_cls = cls[order].contiguous()
    first = torch.searchsorted(sorted_cls, cls[keep].contiguous())
    count = torch.searchsorted(sorted_cls, cls[keep].contiguous(), right=True) - first
    row = torch.repeat_interleave(torch.arange(len(keep), device=boxes.device), count)
    within = torch.arange(len(row), device=boxes.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
    cand = order[first[row] + within]
    weights = scores[cand] * (_pair_iou(boxes[keep][row], boxes[cand]) > iou_thres)
    num = boxes.new_zeros((len(keep), 4)).index_add_(0, row, weights[:, None] * boxes[cand])
    return num / boxes.new_zeros(len(keep)).index_add_(0, row, weights)[:, None]


_PREFIX_MIN = 256  # smallest score-ordered prefix tried by _nms_top
_OFFSET_MAX = 2048  # up to this many boxes the one-call offset trick beats a per-class loop (CPU)


def _class_nms(boxes, scores, cls, iou_thres):
    """Per-class NMS. Small inputs: one NMS call after shifting each class into its own
    coordinate range (O(n^2) but one kernel); large inputs: torchvision's batched_nms, which
    loops over classes there. Returns kept indices in descending score order."""
    if len(boxes) > _OFFSET_MAX:
        return batched_nms(boxes, scores, cls, iou_thres)
    b = boxes.float()  # fp16 would overflow the shifted coordinates
    span = (b.max() - b.min()).clamp(min=0) + 1  # spacing that keeps classes apart even for negative coords
    return nms(b + (cls.to(b.dtype) * span)[:, None], scores.float(), iou_thres)


def _nms_top(boxes, scores, cls, iou_thres, agnostic, max_det):
    """Greedy NMS returning only the first ``max_det`` kept boxes, computed on growing
    score-ordered prefixes of the candidates. Exact: whether a box survives greedy NMS depends
    only on higher-scoring boxes, so the keep decisions inside a prefix are final; once a prefix
    yields ``max_det`` survivors the rest cannot enter the output. This avoids running NMS over
    thousands of low-score multi-label candidates at conf 0.001.
    Returns the candidates re-sorted by descending score and ``keep`` indices into them."""
    order = scores.argsort(descending=True, stable=True)
    boxes, scores, cls = boxes[order], scores[order], cls[order]
    n, k = len(scores), min(len(scores), max(2 * max_det, _PREFIX_MIN))
    while True:
        b, s, c = boxes[:k], scores[:k], cls[:k]
        keep = nms(b, s, iou_thres) if agnostic else _class_nms(b, s, c, iou_thres)
        if len(keep) >= max_det or k == n:
            return boxes, scores, cls, keep[:max_det]
        k = min(n, 4 * k)


def non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, classes=None, agnostic=False, multi_label=False,
                        max_det=300, merge=False, max_wh=4096, max_nms=30000, min_wh=2):
    """NMS over a batch of raw YOLO outputs.

    pred: [B, N, 5+nc] rows (cx, cy, w, h in input pixels, objectness, class probabilities), post-sigmoid.
    Rows with objectness <= conf_thres, or a side outside (min_wh, max_wh) px, are dropped first; the
    score is objectness x class probability and must exceed ``conf_thres``. ``multi_label`` keeps one
    row per (box, class) whose score passes (for mAP), else only the best class. ``classes`` keeps only
    those class indices. NMS is per class (offset trick or torchvision ``batched_nms``) unless ``agnostic``.
    At most ``max_nms`` highest-scoring candidates enter NMS, at most ``max_det`` leave it.
    ``merge`` replaces each kept box by the score-weighted mean of its overlapping candidates.

    Returns a list of B tensors [n, 6] = (x1, y1, x2, y2, score, cls), sorted by score, on pred's device.
    """
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise ValueError(f'non_max_suppression expects [batch, boxes, 5+classes], got {tuple(pred.shape)}')
    if classes is not None:
        classes = torch.as_tensor(classes, device=pred.device).reshape(-1)
    out = []
    for x in pred:  # loop over images only; everything per box is vectorised
        boxes, scores, cls = _candidates(x, conf_thres, multi_label, min_wh, max_wh)
        if classes is not None:
            keep = (cls[:, None] == classes[None]).any(1)
            boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        if scores.numel() > max_nms:  # bound NMS cost on very noisy outputs
            top = scores.topk(max_nms).indices
            boxes, scores, cls = boxes[top], scores[top], cls[top]
        if scores.numel() == 0:
            out.append(pred.new_zeros((0, 6)))
            continue
        boxes, scores, cls, keep = _nms_top(boxes, scores, cls, iou_thres, agnostic, max_det)
        kept = merge_boxes(boxes, scores, cls, keep, iou_thres, agnostic) if merge else boxes[keep]
        out.append(torch.cat([kept, scores[keep, None], cls[keep, None].to(kept.dtype)], 1))
    return out
