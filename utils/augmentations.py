"""Image + box transforms for YOLO data: letterbox, mosaic placement, random affine /
perspective, HSV jitter, mixup, and the box helpers they share.

Images are BGR uint8 HWC numpy arrays (as cv2 reads them); boxes are float arrays [n,4]
``x1, y1, x2, y2`` in pixels unless a name says ``n`` (normalised). Every random draw
comes from a ``numpy.random.Generator`` passed in, so a caller that seeds it gets the
same augmentation on every run and in every worker.

Box filter after a geometric transform (``box_candidates``): a box is kept when
  * its clipped width and height are both > ``wh_thr`` (2 px): thinner boxes carry no
    learnable extent;
  * its clipped area is > ``area_thr`` (hyp ``min_visible``, default 20 %) of the area the whole object would cover
    under the same transform, i.e. at least a fifth of the object is still visible (an
    object cut off by the mosaic split or the crop is dropped, not kept as a sliver);
  * its aspect ratio max(w/h, h/w) is < ``ar_thr`` (20): needles left by a crop along an
    edge are dropped.
"""
import math

import cv2
import numpy as np

PAD_COLOR = (114, 114, 114)

# Augmentation keys the loader reads from a hyp dict, with the values used when a key is
# missing (the same as data/hyp.yaml; tests check they agree).
AUG_DEFAULTS = {
    'hsv_h': 0.0138, 'hsv_s': 0.678, 'hsv_v': 0.36,
    'degrees': 0.0, 'translate': 0.0, 'scale': 0.0, 'shear': 0.0, 'perspective': 0.0,
    'flipud': 0.0, 'fliplr': 0.5, 'mosaic': 1.0, 'mixup': 0.0, 'min_visible': 0.2,
}
_PROBABILITIES = ('flipud', 'fliplr', 'mosaic', 'mixup', 'min_visible')  # and fractions: all in [0, 1]


def aug_params(hyp):
    """The augmentation subset of a hyp dict (other keys ignored), checked: probabilities in
    [0, 1], magnitudes >= 0. ValueError names the bad key."""
    out = dict(AUG_DEFAULTS)
    for k in AUG_DEFAULTS:
        if hyp is not None and k in hyp:
            out[k] = float(hyp[k])
    for k, v in out.items():
        if not math.isfinite(v) or v < 0 or (k in _PROBABILITIES and v > 1):
            raise ValueError(f'hyp {k}={v}: must be {"a probability in [0, 1]" if k in _PROBABILITIES else ">= 0"}')
    return out


# ----------------------------------------------------------------------------- box formats

def xywhn2xyxy(x, w, h, padw=0.0, padh=0.0):
    """Normalised centre boxes [n,4] -> pixel corners [n,4] in a w x h image offset by (padw, padh)."""
    y = np.empty_like(x, dtype=np.float64)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x, w, h):
    """Pixel corners [n,4] -> normalised centre boxes [n,4] of a w x h image."""
    y = np.empty_like(x, dtype=np.float64)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2 / w
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2 / h
    y[:, 2] = (x[:, 2] - x[:, 0]) / w
    y[:, 3] = (x[:, 3] - x[:, 1]) / h
    return y


# ----------------------------------------------------------------------------- letterbox

def letterbox(img, new_shape=416, color=PAD_COLOR, auto=False, scaleup=True, stride=32):
    """Resize keeping the aspect ratio so the image fits ``new_shape`` (int or (h, w)), then pad
    with ``color``, the padding split evenly (left/top get the smaller half).

    auto=True pads only up to the next multiple of ``stride`` (detect.py: minimal padding);
    scaleup=False never enlarges (r <= 1). Returns (img, (ratio_h, ratio_w), (pad_w, pad_h)):
    the per-axis resize ratio after rounding to whole pixels and the left/top padding, so a
    pixel x0 of the input lands at x0 * ratio_w + pad_w."""
    h0, w0 = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h0, new_w / w0)
    if not scaleup:
        r = min(r, 1.0)
    w, h = max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))
    dw, dh = new_w - w, new_h - h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w, h) != (w0, h0):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    top, left = dh // 2, dw // 2
    if dw or dh:
        img = cv2.copyMakeBorder(img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=color)
    return img, (h / h0, w / w0), (left, top)


# ----------------------------------------------------------------------------- mosaic

def mosaic_slices(k, xc, yc, h, w, s):
    """Where tile k (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of size h x w goes
    on a 2s x 2s canvas whose tiles meet at (xc, yc). Returns ((y1a, y2a, x1a, x2a) canvas
    region, (y1b, y2b, x1b, x2b) image region); each tile touches the centre and is cut only
    by the canvas border, so label offsets are (x1a - x1b, y1a - y1b)."""
    left, top = k in (0, 2), k in (0, 1)
    x1a, x2a = (max(xc - w, 0), xc) if left else (xc, min(xc + w, 2 * s))
    y1a, y2a = (max(yc - h, 0), yc) if top else (yc, min(yc + h, 2 * s))
    x1b = w - (x2a - x1a) if left else 0
    y1b = h - (y2a - y1a) if top else 0
    return (y1a, y2a, x1a, x2a), (y1b, y1b + (y2a - y1a), x1b, x1b + (x2a - x1a))


# ----------------------------------------------------------------------------- affine

def affine_matrix(rng, in_hw, out_hw, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0):
    """Random 3x3 transform from input pixels to output pixels: centre the input, perspective
    (+/- perspective), rotate (+/- degrees) and scale (1 +/- scale) about the centre, shear
    (+/- shear degrees on each axis), then move the centre to the output centre +/- translate
    of the output size. Returns (M [3,3], scale factor s)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective, 2)
    R = np.eye(3)
    angle, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return T @ S @ R @ P @ C, s


def warp_corners(boxes, M, perspective=False):
    """The 4 corners of each xyxy box [n,4] under the 3x3 transform M: [n,4,2] (in order, so
    consecutive corners are polygon edges; a rectangle stays a convex quadrilateral)."""
    n = len(boxes)
    pts = np.ones((n * 4, 3))
    pts[:, :2] = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n * 4, 2)  # tl, tr, br, bl
    pts = pts @ M.T
    return (pts[:, :2] / pts[:, 2:3] if perspective else pts[:, :2]).reshape(n, 4, 2)


def hull_boxes(quads):
    """Axis-aligned bounding boxes [n,4] of quadrilaterals [n,4,2] (unclipped)."""
    return np.concatenate((quads.min(1), quads.max(1)), 1)


def clip_quads(quads, w, h):
    """Exact bounding boxes [n,4] of (convex quadrilateral [n,4,2] intersected with the image
    [0,w]x[0,h]). The intersection's extreme points are among: quad corners inside the image,
    crossings of quad edges with the image border, and image corners inside the quad. A quad
    fully outside gets a zero-size box. Unlike clipping the hull, this stays tight when a
    rotated/sheared box is cut by the border. A quad of zero area (a box already clipped away to
    a line or a point) has no visible part: it gets a zero-size box, never the image corners."""
    n = len(quads)
    a, b = quads, np.roll(quads, -1, axis=1)  # edges a -> b, [n,4,2]
    pts = [quads]
    for axis, lim, other_lim in ((0, 0.0, h), (0, w, h), (1, 0.0, w), (1, h, w)):
        d = b[..., axis] - a[..., axis]
        with np.errstate(divide='ignore', invalid='ignore'):  # edges parallel to the border give nan
            t = (lim - a[..., axis]) / d
            p = a + t[..., None] * (b - a)
        p[..., axis] = lim  # exact on the border line
        ok = (d != 0) & (t >= 0) & (t <= 1) & (p[..., 1 - axis] >= 0) & (p[..., 1 - axis] <= other_lim)
        pts.append(np.where(ok[..., None], p, np.nan))
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    cross = ((b[:, None, :, 0] - a[:, None, :, 0]) * (corners[None, :, None, 1] - a[:, None, :, 1])
             - (b[:, None, :, 1] - a[:, None, :, 1]) * (corners[None, :, None, 0] - a[:, None, :, 0]))  # [n,4c,4e]
    inside = (cross >= 0).all(2) | (cross <= 0).all(2)  # same side of every edge: inside the convex quad
    area2 = (a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1]).sum(1)  # shoelace: twice the signed area
    inside &= (np.abs(area2) > 1e-9)[:, None]  # a collapsed quad (box cut off the canvas) contains nothing
    pts.append(np.where(inside[..., None], corners[None], np.nan))
    allp = np.concatenate(pts, 1)
    in_img = (allp[..., 0] >= 0) & (allp[..., 0] <= w) & (allp[..., 1] >= 0) & (allp[..., 1] <= h)
    allp = np.where(in_img[..., None], allp, np.nan)
    out = np.zeros((n, 4))
    valid = in_img.any(1)
    if valid.any():
        v = allp[valid]
        out[valid] = np.concatenate((np.nanmin(v, 1), np.nanmax(v, 1)), 1)
    return out


def box_candidates(full_boxes, boxes, wh_thr=2.0, area_thr=0.2, ar_thr=20.0):
    """Keep mask [n] for transformed boxes: ``full_boxes`` = the whole objects' boxes after the
    transform (unclipped), ``boxes`` = their visible, clipped parts. See the module docstring."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    full_area = (full_boxes[:, 2] - full_boxes[:, 0]) * (full_boxes[:, 3] - full_boxes[:, 1])
    ar = np.maximum(w / (h + 1e-9), h / (w + 1e-9))
    return (w > wh_thr) & (h > wh_thr) & (w * h > area_thr * full_area) & (ar < ar_thr)


def random_affine(img, boxes, rng, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0,
                  border=(0, 0), full_boxes=None, min_visible=0.2):
    """Randomly rotate/scale/shear/translate (and perspective-warp) an image and its boxes.

    img: HxWx3 uint8; boxes: [n,4] xyxy pixels; border (by, bx): the output is (H + 2 by,
    W + 2 bx) - a negative border crops, as after a 2s mosaic. full_boxes: the objects' whole
    boxes when ``boxes`` are already clipped (mosaic), for the visible-area rule; defaults to
    ``boxes``. min_visible: ``box_candidates``' area_thr. Returns (img, boxes [n,4] clipped to
    the output, keep [n] bool)."""
    h, w = img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1]
    M, _ = affine_matrix(rng, img.shape[:2], (h, w), degrees, translate, scale, shear, perspective)
    shift = _crop_offset(M, img.shape[:2], (h, w))
    if shift is not None:  # a whole-pixel crop (e.g. mosaic with the shapes recipe): slicing is exact and ~4x cheaper
        img = img[shift[1]:shift[1] + h, shift[0]:shift[0] + w]
    elif (h, w) != img.shape[:2] or not np.allclose(M, np.eye(3)):
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=(w, h), borderValue=PAD_COLOR)
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(w, h), borderValue=PAD_COLOR)
    if not len(boxes):
        return img, boxes.reshape(0, 4), np.zeros(0, bool)
    if shift is not None:  # axis-aligned boxes stay boxes: clipping them is their exact visible part
        full = (boxes if full_boxes is None else full_boxes) - np.tile(shift, 2)
        new = (boxes - np.tile(shift, 2)).clip(0, [w, h, w, h])
        return img, new, box_candidates(full, new, area_thr=min_visible)
    quads = warp_corners(boxes, M, bool(perspective))
    full = hull_boxes(quads if full_boxes is None else warp_corners(full_boxes, M, bool(perspective)))
    new = clip_quads(quads, w, h)
    return img, new, box_candidates(full, new, area_thr=min_visible)


def _crop_offset(M, in_hw, out_hw):
    """(x0, y0) when the 3x3 transform M (input -> output pixels) is a pure whole-pixel shift by
    (-x0, -y0) whose output window lies inside the input: the output is ``img[y0:y0+h, x0:x0+w]``.
    Else None."""
    if not np.array_equal(M[:2, :2], np.eye(2)) or not np.array_equal(M[2], [0, 0, 1]):
        return None
    x0, y0 = -M[0, 2], -M[1, 2]
    if x0 != round(x0) or y0 != round(y0):
        return None
    x0, y0 = int(round(x0)), int(round(y0))
    if x0 < 0 or y0 < 0 or x0 + out_hw[1] > in_hw[1] or y0 + out_hw[0] > in_hw[0]:
        return None
    return np.array([x0, y0])


# ----------------------------------------------------------------------------- colour, mixing

def augment_hsv(img, rng, hgain=0.0, sgain=0.0, vgain=0.0):
    """HSV jitter of a BGR uint8 image: hue, saturation and value multiplied by 1 + U(-g, g)
    (hue wraps mod 180, the others saturate). Returns a new image."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def mixup(img1, labels1, img2, labels2, rng):
    """Blend two same-size images with ratio r ~ Beta(32, 32) (about 0.5) and keep both label
    sets (rows cls + xyxy). Returns (img, labels)."""
    r = rng.beta(32.0, 32.0)
    img = (img1.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).round().astype(np.uint8)
    return img, np.concatenate((labels1, labels2), 0)
