"""Evaluation loop shared by test.py and train.py: inference, NMS, matching, mAP, plots, JSON.

``evaluate(model, loader, names, ...)`` runs a built model over a loader of
(images uint8 [B,3,H,W], targets [n,6] (image, class, cx, cy, w, h normalised to the
letterboxed input), paths, shapes) and returns a metrics dict with keys
``precision recall map50 map50_95 f1 per_class speed_ms val_losses``.
Matching and AP are computed in original-image pixels (boxes mapped back through the
letterbox), as COCO does.
"""
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.datasets import scale_boxes
from utils.general import atomic_write_text
from utils.nms import non_max_suppression, xywh2xyxy
from utils.torch_utils import time_sync

# 80 darknet classes -> official COCO category ids
COCO80_TO_91 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
                33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
                60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def tta_forward(model, imgs, scales=(1.0, 0.83, 0.67), flips=(None, 'lr', None)):
    """Test-time augmentation: the image at several scales (one horizontally flipped), boxes
    mapped back to the input frame and concatenated before NMS. imgs [B,3,H,W] -> [B,N,5+nc]."""
    h, w = imgs.shape[-2:]
    preds = []
    for s, flip in zip(scales, flips):
        x = imgs.flip(-1) if flip == 'lr' else imgs
        if s != 1.0:
            size = (int(h * s), int(w * s))
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
            ph, pw = (-size[0]) % 32, (-size[1]) % 32  # pad to the stride grid with letterbox grey
            x = F.pad(x, (0, pw, 0, ph), value=0.447)
        p = model(x)[0].clone()
        p[..., :4] /= s
        if flip == 'lr':
            p[..., 0] = w - p[..., 0]
        preds.append(p)
    return torch.cat(preds, 1)


def to_original_images(dets, targets, shapes, input_hw, single_cls=False):
    """One batch's detections and labels in original-image pixels, on the CPU, as
    Evaluator.update takes them. dets: per image [n, 6] xyxy, conf, cls in the letterboxed
    input; targets [m, 6] (image, class, normalised xywh); shapes: the loader's per-image
    ((h0, w0), ratio_pad). Returns (dets [n, 6] list, labels [k, 5] class + xyxy list)."""
    h, w = input_hw
    scale = torch.tensor([w, h, w, h], device=targets.device)
    batch_dets, batch_gts = [], []
    for si, det in enumerate(dets):
        labels = targets[targets[:, 0] == si, 1:]
        gt = torch.cat((labels[:, :1], scale_boxes((h, w), xywh2xyxy(labels[:, 1:5]) * scale, *shapes[si])), 1)
        det = det.clone()
        if single_cls:
            det[:, 5] = 0
        det[:, :4] = scale_boxes((h, w), det[:, :4], *shapes[si])
        batch_dets.append(det.cpu())
        batch_gts.append(gt.cpu())
    return batch_dets, batch_gts


def image_id(path):
    """COCO-style image id: the file stem as an int when numeric (also COCO_val2014_000000000139)."""
    stem = Path(path).stem
    if stem.isnumeric():
        return int(stem)
    tail = stem.rsplit('_', 1)[-1]
    return int(tail) if tail.isnumeric() else stem


@torch.no_grad()
def evaluate(model, loader, names, conf_thres=0.001, iou_thres=0.6, loss_fn=None, save_dir=None, plots=False,
             verbose=False, augment=False, save_json=False, coco=False, max_det=300, merge=False,
             single_cls=False, gt_json=None):
    from utils.metrics import Evaluator
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nc = len(names)
    evaluator = Evaluator(nc, names=names)
    val_losses = torch.zeros(3, device=device)
    t_infer = t_nms = 0.0
    n_images = 0
    json_rows = []
    save_dir = Path(save_dir) if save_dir else None
    for bi, (imgs, targets, paths, shapes) in enumerate(tqdm(loader, desc=f'{"Class":>20}{"Images":>11}'
                                                                          f'{"Targets":>11}{"P":>11}{"R":>11}'
                                                                          f'{"mAP@.5":>11}{"mAP@.5:.95":>11}',
                                                             bar_format='{l_bar}{bar:10}{r_bar}')):
        imgs = imgs.to(device, non_blocking=True).float() / 255.0
        targets = targets.to(device)
        if single_cls:
            targets[:, 1] = 0
        b, _, h, w = imgs.shape
        t0 = time_sync(device)
        if augment:
            pred, raw = tta_forward(model, imgs), None
        else:
            pred, raw = model(imgs)
        t1 = time_sync(device)
        if loss_fn is not None and raw is not None:
            val_losses += loss_fn(raw, targets, (h, w))[1][:3]
        dets = non_max_suppression(pred, conf_thres, iou_thres, multi_label=True, max_det=max_det, merge=merge,
                                   agnostic=single_cls)
        t2 = time_sync(device)
        t_infer, t_nms, n_images = t_infer + t1 - t0, t_nms + t2 - t1, n_images + b
        batch_dets, batch_gts = to_original_images(dets, targets, shapes, (h, w), single_cls)
        if save_json:
            for det, path in zip(batch_dets, paths):
                json_rows += _json_rows(det, path, coco)
        evaluator.update(batch_dets, batch_gts)
        if plots and save_dir and bi < 3:
            _plot_val_batch(imgs, targets, dets, paths, names, save_dir, bi)
    metrics = evaluator.compute()
    ap_result = metrics.pop('ap_result')
    if plots and save_dir:
        _plot_metrics(ap_result, evaluator.confusion_matrix, names, save_dir)
    metrics['speed_ms'] = {'inference': 1e3 * t_infer / max(n_images, 1), 'nms': 1e3 * t_nms / max(n_images, 1),
                           'total': 1e3 * (t_infer + t_nms) / max(n_images, 1)}
    metrics['val_losses'] = (val_losses / max(len(loader), 1)).tolist()
    metrics['f1'] = float(metrics.get('f1', 0.0))
    _print_table(metrics, names, verbose)
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(save_dir / 'metrics.json', json.dumps(_jsonable(metrics), indent=2))
        if save_json:
            atomic_write_text(save_dir / 'predictions.json', json.dumps(json_rows))
            if gt_json:
                metrics['pycocotools'] = _pycocotools(gt_json, save_dir / 'predictions.json')
    if was_training:
        model.train()
    return metrics


def _json_rows(det, path, coco):
    img_id = image_id(path)
    rows = []
    for x1, y1, x2, y2, conf, cls in det.tolist():
        rows.append({'image_id': img_id, 'category_id': COCO80_TO_91[int(cls)] if coco else int(cls),
                     'bbox': [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                     'score': round(conf, 5)})
    return rows


def _pycocotools(gt_json, pred_json):
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        print('pycocotools not installed: skipping the COCO evaluation')
        return None
    gt = COCO(str(gt_json))
    dt = gt.loadRes(str(pred_json))
    ev = COCOeval(gt, dt, 'bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {'map50_95': float(ev.stats[0]), 'map50': float(ev.stats[1])}


def _print_table(m, names, verbose):
    row = '%20s' + '%11i' * 2 + '%11.3g' * 4
    print(row % ('all', m.get('images', 0), m.get('targets', 0), m['precision'], m['recall'], m['map50'],
                 m['map50_95']))
    if verbose:
        for c in m.get('per_class', []):
            print(row % (names[c['class']], c['images'], c['targets'], c['p'], c['r'], c['ap50'], c['ap']))
    s = m['speed_ms']
    print(f"Speed: {s['inference']:.1f}/{s['nms']:.1f}/{s['total']:.1f} ms inference/NMS/total per image")


def _plot_metrics(ap_result, confusion, names, save_dir):
    from utils.plots import plot_ap_curves, plot_confusion_matrices
    plot_ap_curves(ap_result, save_dir, names)
    plot_confusion_matrices(confusion, save_dir, names)


def _plot_val_batch(imgs, targets, dets, paths, names, save_dir, bi):
    from utils.plots import plot_images
    plot_images(imgs, targets, paths, save_dir / f'val_batch{bi}_labels.jpg', names)
    h, w = imgs.shape[-2:]
    rows = []
    for si, d in enumerate(dets):
        d = d[d[:, 4] > 0.25]
        if len(d):
            xywh = torch.stack(((d[:, 0] + d[:, 2]) / 2 / w, (d[:, 1] + d[:, 3]) / 2 / h,
                                (d[:, 2] - d[:, 0]) / w, (d[:, 3] - d[:, 1]) / h), 1)
            rows.append(torch.cat((torch.full_like(d[:, :1], si), d[:, 5:6], xywh, d[:, 4:5]), 1))
    pred_targets = torch.cat(rows) if rows else torch.zeros((0, 7), device=imgs.device)
    plot_images(imgs, pred_targets, paths, save_dir / f'val_batch{bi}_pred.jpg', names)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x
