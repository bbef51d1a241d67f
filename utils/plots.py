"""Plots written by training and evaluation: metric curves, confusion matrix, batch mosaics,
label statistics and the results.csv overview.

Figures use matplotlib's object API on the Agg canvas (no pyplot global state, no display
needed); images are drawn with OpenCV. Every file is written atomically (temp + rename).
"""
import csv
import io
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from utils.general import atomic_write_bytes
from utils.metrics import CONF_GRID, RECALL_POINTS, class_name

# 20 well-separated colours (RGB); class i uses PALETTE[i % 20] everywhere (boxes, curves)
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
           (255, 225, 25), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
           (128, 128, 128), (255, 99, 71))


def colors(i, bgr=False):
    """Stable colour of class ``i`` as an (r, g, b) (or (b, g, r)) tuple of ints 0..255."""
    c = PALETTE[int(i) % len(PALETTE)]
    return c[::-1] if bgr else c


def _rgb01(i):
    return tuple(v / 255 for v in colors(i))


def _new_figure(figsize):
    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi=200):
    """Render ``fig`` to ``path`` atomically (format from the suffix). Returns the path."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip('.') or 'png', dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def save_image(img_bgr, path, quality=90):
    """Encode an HxWx3 uint8 BGR image by the path's suffix (.jpg/.png) and write it atomically."""
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in ('.jpg', '.jpeg') else []
    ok, buf = cv2.imencode(path.suffix or '.png', img_bgr, params)
    if not ok:
        raise ValueError(f'cannot encode an image as {path.suffix!r}: use .jpg or .png ({path})')
    return atomic_write_bytes(path, buf.tobytes())


# ----------------------------------------------------------------------------------------- curves
def plot_pr_curve(recall, precision, ap50, save_path, names=None):
    """Precision-recall curves. recall [101], precision [C,101], ap50 [C], names [C] labels."""
    fig = _new_figure((9, 6))
    ax = fig.subplots()
    precision = np.asarray(precision).reshape(-1, len(recall))
    legend = len(precision) < 21
    for i, (y, a) in enumerate(zip(precision, ap50)):
        ax.plot(recall, y, linewidth=1, color=_rgb01(i), label=f'{class_name(names, i)} {a:.3f}' if legend else None)
    if len(precision):
        ax.plot(recall, precision.mean(0), linewidth=3, color='blue', label=f'all classes {np.mean(ap50):.3f} mAP@0.5')
    ax.set(xlabel='Recall', ylabel='Precision', xlim=(0, 1), ylim=(0, 1.01), title='Precision-Recall (IoU 0.5)')
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    return save_figure(fig, save_path)


def plot_mc_curve(x, y, save_path, names=None, xlabel='Confidence', ylabel='Metric'):
    """Metric-vs-confidence curves (F1, P or R). x [N], y [C,N]; the mean is drawn bold with its maximum."""
    fig = _new_figure((9, 6))
    ax = fig.subplots()
    y = np.asarray(y).reshape(-1, len(x))
    legend = len(y) < 21
    for i, yi in enumerate(y):
        ax.plot(x, yi, linewidth=1, color=_rgb01(i), label=class_name(names, i) if legend else None)
    if len(y):
        mean = y.mean(0)
        best = int(mean.argmax())
        ax.plot(x, mean, linewidth=3, color='blue', label=f'all classes {mean[best]:.2f} at {x[best]:.3f}')
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=f'{ylabel}-{xlabel} curve')
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    return save_figure(fig, save_path)


def plot_confusion_matrix(matrix, labels, save_path, normalize=True):
    """matrix [nc+1, nc+1] (rows predicted, columns true, last = background) -> heat map.
    ``normalize`` divides each column by its total so a column shows where a true class went."""
    m = np.asarray(matrix, dtype=np.float64)
    if normalize:
        m = m / np.clip(m.sum(0, keepdims=True), 1e-9, None)
    n = len(m)
    fig = _new_figure((max(6, 0.5 * n + 3), max(5, 0.45 * n + 2.5)))
    ax = fig.subplots()
    im = ax.imshow(m, cmap='Blues', vmin=0, vmax=1 if normalize else max(m.max(), 1))
    fig.colorbar(im, ax=ax)
    if n <= 30:  # annotate cells while they are readable
        for (r, c), v in np.ndenumerate(m):
            if v:
                ax.text(c, r, f'{v:.2f}' if normalize else f'{int(v)}', ha='center', va='center', fontsize=7,
                        color='white' if v > 0.6 * (1 if normalize else m.max()) else 'black')
    ticks = labels if n <= 60 else []
    ax.set_xticks(range(n) if ticks else [], ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(n) if ticks else [], ticks, fontsize=7)
    ax.set(xlabel='True', ylabel='Predicted', title='Confusion matrix' + (' (normalised)' if normalize else ''))
    return save_figure(fig, save_path)


def plot_ap_curves(ap_result, save_dir, names=None):
    """An evaluation's curves (a utils.metrics.APResult) -> pr_curve.png, f1_curve.png, p_curve.png
    and r_curve.png in ``save_dir``, one line per class with GT. Returns the written paths."""
    save_dir = Path(save_dir)
    labels = [class_name(names, int(c)) for c in ap_result.classes]
    paths = [plot_pr_curve(RECALL_POINTS, ap_result.pr_curve, ap_result.ap50, save_dir / 'pr_curve.png', labels)]
    for curve, name, ylabel in ((ap_result.f1_curve, 'f1_curve.png', 'F1'),
                                (ap_result.p_curve, 'p_curve.png', 'Precision'),
                                (ap_result.r_curve, 'r_curve.png', 'Recall')):
        paths.append(plot_mc_curve(CONF_GRID, curve, save_dir / name, labels, xlabel='Confidence', ylabel=ylabel))
    return paths


def plot_confusion_matrices(confusion, save_dir, names=None, normalize=True):
    """A utils.metrics.ConfusionMatrix -> confusion_matrix.png (counts) and, with ``normalize``,
    confusion_matrix_normalized.png (each true-class column sums to 1) in ``save_dir``.
    Returns the written paths."""
    labels = [class_name(names, i) for i in range(confusion.nc)] + ['background']
    save_dir = Path(save_dir)
    paths = [plot_confusion_matrix(confusion.matrix, labels, save_dir / 'confusion_matrix.png', normalize=False)]
    if normalize:
        paths.append(plot_confusion_matrix(confusion.matrix, labels, save_dir / 'confusion_matrix_normalized.png',
                                           normalize=True))
    return paths


# ----------------------------------------------------------------------------------------- images
def _to_uint8_images(images):
    """[B,3,H,W] tensor/array, uint8 or float (0..1 or 0..255) -> uint8 numpy [B,H,W,3] RGB."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy() if images.is_floating_point() else images.cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'plot_images expects images [B,3,H,W], got {images.shape}')
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
        if images.size and images.max() <= 1.0:
            images = images * 255
        images = images.clip(0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def draw_box(img, xyxy, color_bgr, text, thickness):
    """One box (xyxy pixels) with an optional filled label, in place on a BGR image."""
    p1, p2 = (int(round(xyxy[0])), int(round(xyxy[1]))), (int(round(xyxy[2])), int(round(xyxy[3])))
    cv2.rectangle(img, p1, p2, color_bgr, thickness)  # no anti-aliasing: crisp class colour
    if text:
        scale = max(thickness / 3, 0.3)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x0 = min(max(p1[0], 0), max(img.shape[1] - tw - 2, 0))  # keep the label inside the tile
        y0 = p1[1] - th - 3 if p1[1] - th - 3 >= 0 else max(p1[1], 0)
        cv2.rectangle(img, (x0, y0), (x0 + tw + 2, y0 + th + 3), color_bgr, -1)
        cv2.putText(img, text, (x0 + 1, y0 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)


def plot_images(images, targets=None, paths=None, fname='images.jpg', names=None, max_size=1920, max_subplots=16,
                conf_thres=0.25, normalized=None):
    """Mosaic of a batch with its boxes, e.g. train_batch0.jpg or val_batch0_pred.jpg.

    images: [B,3,H,W] uint8, or float in 0..1 or 0..255. targets: [n,6] (img_idx, cls, cx, cy, w, h)
    for labels or [n,7] with a trailing confidence for predictions (drawn when conf > conf_thres,
    labelled with it). Box coordinates are fractions of the image (``normalized=True``) or pixels
    of the network input (``False``); None decides per call: all |coordinates| <= 2 -> fractions
    (boxes poking out of the image still count as fractions; pixel boxes are never that small).
    Up to ``max_subplots`` images, the mosaic scaled to at most ``max_size`` px. Returns the path.
    """
    imgs = _to_uint8_images(images)[:max_subplots]
    bs, h, w, _ = imgs.shape
    ns = math.ceil(math.sqrt(max(bs, 1)))
    scale = min(1.0, max_size / (ns * max(h, w)))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    mosaic = np.full((ns * th, ns * tw, 3), 255, np.uint8)
    t = np.zeros((0, 6)) if targets is None else np.asarray(
        targets.detach().cpu().float() if isinstance(targets, torch.Tensor) else targets, dtype=np.float64)
    t = t.reshape(-1, t.shape[-1]) if t.size else np.zeros((0, 6))
    if t.shape[1] not in (6, 7):
        raise ValueError(f'plot_images targets must be [n,6] or [n,7], got {t.shape}')
    if normalized is None:
        normalized = not len(t) or float(np.abs(t[:, 2:6]).max()) <= 2.0
    thickness = max(1, round(2 * max(th, tw) / 640))
    for i, img in enumerate(imgs):
        x0, y0 = (i % ns) * tw, (i // ns) * th
        tile = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        if scale < 1:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        tile = np.ascontiguousarray(tile)
        rows = t[t[:, 0] == i]
        if rows.shape[1] == 7:
            rows = rows[rows[:, 6] > conf_thres]
        boxes = rows[:, 2:6] * (np.array([tw, th, tw, th]) if normalized else scale)
        xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        for r, b in zip(rows, xyxy):
            c = int(r[1])
            text = class_name(names, c) + (f' {r[6]:.2f}' if len(r) == 7 else '')
            draw_box(tile, b, colors(c, bgr=True), text, thickness)
        if paths is not None and i < len(paths):
            cv2.putText(tile, Path(str(paths[i])).name[:40], (5, max(12, th // 30)), cv2.FONT_HERSHEY_SIMPLEX,
                        max(0.35, th / 1200), (220, 220, 220), 1, cv2.LINE_AA)
        mosaic[y0:y0 + th, x0:x0 + tw] = tile
        cv2.rectangle(mosaic, (x0, y0), (x0 + tw - 1, y0 + th - 1), (255, 255, 255), thickness)
    return save_image(mosaic, fname)


def draw_detections(img, det, names=None):
    """Detections det [n, 6] (xyxy pixels, conf, cls) drawn on a BGR image in place, a stable
    colour per class and 'name conf' labels, line width scaled to the image."""
    thickness = max(round(sum(img.shape[:2]) / 2 * 0.003), 2)
    for *xyxy, conf, cls in np.asarray(det, dtype=np.float64).reshape(-1, 6):
        draw_box(img, xyxy, colors(int(cls), bgr=True), f'{class_name(names, int(cls))} {conf:.2f}', thickness)
    return img


# ----------------------------------------------------------------------------------------- datasets, runs
def plot_labels(labels, names=None, save_dir='.'):
    """Dataset label statistics -> save_dir/labels.png.

    labels [n,5] (cls, cx, cy, w, h) with coordinates as fractions of the image: class histogram,
    box-centre and box-size densities, and up to 1000 boxes drawn at a common centre."""
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float64).reshape(-1, 5)
    cls = lab[:, 0].astype(int)
    nc = int(cls.max()) + 1 if len(cls) else (len(names) if names is not None else 1)
    if isinstance(names, (list, tuple, dict)):
        nc = max(nc, len(names))
    fig = _new_figure((10, 10))
    (a0, a1), (a2, a3) = fig.subplots(2, 2)
    counts = np.bincount(cls, minlength=nc)
    a0.bar(range(nc), counts, color=[_rgb01(i) for i in range(nc)])
    a0.set(ylabel='instances', title=f'{len(lab)} labels, {nc} classes')
    if nc <= 30:
        a0.set_xticks(range(nc), [class_name(names, i) for i in range(nc)], rotation=90, fontsize=8)
    for ax, (i, j), (xl, yl) in ((a1, (1, 2), ('x', 'y')), (a2, (3, 4), ('width', 'height'))):
        if len(lab):
            ax.hist2d(lab[:, i], lab[:, j], bins=50, range=[[0, 1], [0, 1]], cmap='Blues')
        ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1))
    for c, bw, bh in lab[:1000, [0, 3, 4]]:
        a3.add_patch(Rectangle((0.5 - bw / 2, 0.5 - bh / 2), bw, bh, fill=False, linewidth=0.5,
                               edgecolor=_rgb01(int(c)), alpha=0.5))
    a3.set(xlim=(0, 1), ylim=(0, 1), title='box shapes', xticks=[], yticks=[])
    return save_figure(fig, Path(save_dir) / 'labels.png')


def read_results_csv(path):
    """results.csv -> (header list, float array [epochs, columns]); clear errors naming file/line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'results file not found: {path}')
    with open(path, newline='') as f:
        rows = [r for r in csv.reader(f) if r and any(v.strip() for v in r)]
    if len(rows) < 2:
        raise ValueError(f'{path}: needs a header line and at least one epoch line')
    header = [h.strip() for h in rows[0]]
    data = []
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise ValueError(f'{path}:{n}: {len(row)} values for {len(header)} columns; fix or delete the line')
        try:
            data.append([float(v) for v in row])
        except ValueError as e:
            raise ValueError(f'{path}:{n}: non-numeric value ({e}); fix or delete the line') from None
    return header, np.array(data)


def plot_results(results_csv, save_dir=None):
    """One panel per results.csv column (epoch on x) -> save_dir/results.png (default: next to the csv).
    Expected columns: epoch, lr, box, obj, cls, P, R, mAP@0.5, mAP@0.5:0.95, val_box, val_obj, val_cls,
    then any extra ones (loss terms such as distillation's kd_*, epoch-hook columns such as
    sparsity's): every numeric column is plotted, at most 8 panels a row (``epoch`` is the x axis
    when present)."""
    header, data = read_results_csv(results_csv)
    x_col = header.index('epoch') if 'epoch' in header else None
    x = data[:, x_col] if x_col is not None else np.arange(len(data))
    cols = [i for i in range(len(header)) if i != x_col]
    nrows = max(2, math.ceil(len(cols) / 8))
    ncols = math.ceil(len(cols) / nrows)
    fig = _new_figure((3 * ncols, 3 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
    for ax, i in zip(axes, cols):
        ax.plot(x, data[:, i], marker='.', linewidth=2, markersize=6)
        ax.set_title(header[i], fontsize=11)
    for ax in axes[len(cols):]:
        ax.set_axis_off()
    return save_figure(fig, Path(save_dir or Path(results_csv).parent) / 'results.png')


def plot_stacked_histograms(histograms, path, xlabel='value', title=None, dpi=120):
    """TensorBoard's "offset" histogram view: ``histograms`` = [(label, bin edges [n+1], counts
    [n]), ...] oldest first, each drawn as a filled outline on its own baseline, older ones
    higher and paler, so the drift of a distribution over training reads top to bottom.
    Heights are fractions of that histogram's total count, scaled so the tallest peak spans
    about two baselines. Written atomically to ``path``; returns it."""
    n = len(histograms)
    fig = _new_figure((7, 2 + 0.35 * min(max(n, 1), 40)))
    ax = fig.subplots()
    fractions = [np.asarray(c, float) / max(float(np.sum(c)), 1.0) for _, _, c in histograms]
    peak = max((float(f.max()) for f in fractions if f.size), default=1.0) or 1.0
    for k, ((label, edges, _), frac) in enumerate(zip(histograms, fractions)):
        edges = np.asarray(edges, float)
        base = n - 1 - k  # the newest sits at the bottom, in front
        x = np.repeat(edges, 2)[1:-1]  # step outline through the bin edges
        y = base + 2.0 * np.repeat(frac, 2) / peak
        t = (k + 1) / n  # pale grey-blue (oldest) -> dark blue (newest)
        colour = (0.75 - 0.65 * t, 0.8 - 0.5 * t, 0.9 - 0.15 * t)
        ax.fill_between(x, base, y, color='white', zorder=2 * k)  # hides older curves behind it
        ax.plot(x, y, color=colour, linewidth=1.2, zorder=2 * k + 1)
    step = max(1, math.ceil(n / 20))
    ax.set_yticks([n - 1 - k for k in range(0, n, step)], [histograms[k][0] for k in range(0, n, step)])
    ax.set_xlabel(xlabel)
    ax.set_ylim(-0.2, n + 1.5)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis='x', alpha=0.3)
    return save_figure(fig, path, dpi=dpi)


def plot_study(csv_path, png_path=None):
    """test.py --task study: study.csv (columns img_size, map50, map50_95, ms_per_image) ->
    mAP@0.5 and mAP@0.5:0.95 vs image size (left) and ms/image vs image size (right),
    written to ``png_path`` (default: study.png next to the csv). Returns the path."""
    header, data = read_results_csv(csv_path)
    need = ('img_size', 'map50', 'map50_95', 'ms_per_image')
    missing = [c for c in need if c not in header]
    if missing:
        raise ValueError(f'{csv_path}: missing column(s) {", ".join(missing)} (expected {", ".join(need)})')
    col = {c: data[:, header.index(c)] for c in need}
    order = np.argsort(col['img_size'], kind='stable')
    x = col['img_size'][order]
    fig = _new_figure((10, 4))
    a0, a1 = fig.subplots(1, 2)
    a0.plot(x, col['map50'][order], marker='.', linewidth=2, markersize=8, label='mAP@0.5')
    a0.plot(x, col['map50_95'][order], marker='.', linewidth=2, markersize=8, label='mAP@0.5:0.95')
    a0.set(xlabel='image size (pixels)', ylabel='mAP', ylim=(0, 1.01), title='mAP vs image size')
    a0.grid(alpha=0.3)
    a0.legend(loc='lower right')
    a1.plot(x, col['ms_per_image'][order], marker='.', linewidth=2, markersize=8, color='tab:red')
    a1.set(xlabel='image size (pixels)', ylabel='ms / image', ylim=(0, None), title='speed (inference + NMS)')
    a1.grid(alpha=0.3)
    return save_figure(fig, Path(png_path) if png_path else Path(csv_path).parent / 'study.png')
