"""Evaluation speed: utils.metrics.Evaluator vs pycocotools on one synthetic detection set,
and NMS latency for a yolov3-tiny-sized output.

    python3 bench/bench_metrics.py [--images 5000] [--gt 7] [--dets 20] [--nc 10] [--batch 32]
                                   [--nms-runs 200] [--threads 2]

Both evaluators see the same boxes and scores (pycocotools from in-memory dicts: COCO(),
loadRes(list), evaluate, accumulate, summarize; ours: Evaluator.update per batch + compute).
Building the COCO dicts is timed separately and not charged to pycocotools. Ours runs with
max_det=100 per image and class, the cap COCOeval's maxDets=100 applies, so the mAPs must agree.
"""
import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.metrics import Evaluator  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402


def synthetic_set(n_img, n_gt, n_det, nc, seed=0, w=640, h=480):
    """-> list of (labels [m,5] cls,x1,y1,x2,y2 ; detections [n,6] x1,y1,x2,y2,conf,cls), float64.
    Detections: jittered copies of most GT (some with the wrong class), plus random false positives."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(n_img):
        m = rng.poisson(n_gt)
        c = rng.uniform([0, 0], [w, h], (m, 2))
        s = rng.uniform(10, 200, (m, 2))
        gt = np.concatenate([c - s / 2, c + s / 2], 1)
        gcls = rng.integers(0, nc, m)
        hit = rng.random(m) < 0.8
        k = int(hit.sum())
        jit = rng.normal(0, 1, (k, 4)) * rng.uniform(0, 0.15, (k, 1)) * np.tile(s[hit], 2)
        tp_box = gt[hit] + jit
        tp_cls = np.where(rng.random(k) < 0.9, gcls[hit], rng.integers(0, nc, k))
        n_fp = max(0, rng.poisson(n_det) - k)
        fc, fs = rng.uniform([0, 0], [w, h], (n_fp, 2)), rng.uniform(10, 200, (n_fp, 2))
        fp_box = np.concatenate([fc - fs / 2, fc + fs / 2], 1)
        box = np.concatenate([tp_box, fp_box])
        box = np.concatenate([np.minimum(box[:, :2], box[:, 2:] - 1), np.maximum(box[:, 2:], box[:, :2] + 1)], 1)
        conf = np.concatenate([rng.beta(5, 2, k), rng.beta(2, 5, n_fp)])
        data.append((np.c_[gcls, gt], np.c_[box, conf, np.r_[tp_cls, rng.integers(0, nc, n_fp)]]))
    return data


def coco_dicts(data, nc):
    images = [{'id': i + 1, 'width': 640, 'height': 480} for i in range(len(data))]
    anns, res = [], []
    for i, (lab, det) in enumerate(data):
        for c, x1, y1, x2, y2 in lab.tolist():
            anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': int(c) + 1, 'iscrowd': 0,
                         'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1)})
        for x1, y1, x2, y2, s, c in det.tolist():
            res.append({'image_id': i + 1, 'category_id': int(c) + 1, 'bbox': [x1, y1, x2 - x1, y2 - y1], 'score': s})
    gt = {'images': images, 'annotations': anns, 'categories': [{'id': c + 1, 'name': str(c)} for c in range(nc)]}
    return gt, res


def run_pycocotools(gt_dict, res):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1], ev.stats[0]


def run_ours(data, nc, batch):
    ev = Evaluator(nc, max_det=100, confusion=False)
    for s in range(0, len(data), batch):
        chunk = data[s:s + batch]
        ev.update([torch.from_numpy(d) for _, d in chunk], [torch.from_numpy(lab) for lab, _ in chunk])
    m = ev.compute()
    return m['map50'], m['map50_95']


def tiny_output(seed=0, img=416, nc=80, n_obj=8):
    """A yolov3-tiny-shaped output [1, 2535, 5+nc] (13x13 and 26x26 grids, 3 anchors), post-sigmoid.
    Objectness logits ~ N(-7, 2) (most cells confidently empty, a tail above 0.001); a few objects
    light up 3-6 neighbouring cells with high objectness and one dominant class."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    anchors = {13: [(81, 82), (135, 169), (344, 319)], 26: [(10, 14), (23, 27), (37, 58)]}
    for n, anc in anchors.items():
        stride = img / n
        yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing='ij')
        for aw, ah in anc:
            xy = (torch.stack([xv, yv], -1).reshape(-1, 2) + torch.rand(n * n, 2, generator=g)) * stride
            wh = torch.tensor([aw, ah]) * torch.exp(torch.randn(n * n, 2, generator=g) * 0.3)
            obj = torch.sigmoid(torch.randn(n * n, 1, generator=g) * 2 - 7)
            cls = torch.sigmoid(torch.randn(n * n, nc, generator=g) * 2 - 5)
            rows.append(torch.cat([xy, wh, obj, cls], 1))
    p = torch.cat(rows)[None]
    for _ in range(n_obj):  # objects: a cluster of confident, overlapping boxes of one class
        i = int(torch.randint(0, p.shape[1] - 6, (1,), generator=g))
        k = int(torch.randint(3, 7, (1,), generator=g))
        c = int(torch.randint(0, nc, (1,), generator=g))
        p[0, i:i + k, 4] = torch.rand(k, generator=g) * 0.4 + 0.6
        p[0, i:i + k, 5 + c] = torch.rand(k, generator=g) * 0.3 + 0.7
        p[0, i:i + k, :2] = p[0, i, :2] + torch.randn(k, 2, generator=g) * 3
    return p


def bench_nms(runs):
    p = tiny_output()
    n_cand = int((p[0, :, 4] > 0.001).sum())
    print(f'\nNMS on [1, 2535, 85] (yolov3-tiny @416), conf 0.001, IoU 0.6: {n_cand} rows pass objectness')
    for name, kw in (('best class', {}), ('multi_label (eval)', {'multi_label': True}),
                     ('multi_label + merge', {'multi_label': True, 'merge': True})):
        out = non_max_suppression(p, conf_thres=0.001, iou_thres=0.6, **kw)
        for _ in range(10):
            non_max_suppression(p, conf_thres=0.001, iou_thres=0.6, **kw)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            non_max_suppression(p, conf_thres=0.001, iou_thres=0.6, **kw)
            times.append(time.perf_counter() - t)
        print(f'  {name:22s} median {1e3 * np.median(times):6.3f} ms  p90 {1e3 * np.percentile(times, 90):6.3f} ms'
              f'  ({len(out[0])} boxes kept)')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=5000)
    ap.add_argument('--gt', type=float, default=7, help='mean GT boxes per image')
    ap.add_argument('--dets', type=float, default=20, help='mean detections per image')
    ap.add_argument('--nc', type=int, default=10)
    ap.add_argument('--batch', type=int, default=32, help='images per Evaluator.update call')
    ap.add_argument('--nms-runs', type=int, default=200)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    opt = ap.parse_args(argv)
    torch.set_num_threads(opt.threads)
    data = synthetic_set(opt.images, opt.gt, opt.dets, opt.nc, opt.seed)
    n_gt, n_det = sum(len(lab) for lab, _ in data), sum(len(d) for _, d in data)
    print(f'{opt.images} images, {opt.nc} classes, {n_gt} GT, {n_det} detections')
    t = time.perf_counter()
    gt_dict, res = coco_dicts(data, opt.nc)
    t_dict = time.perf_counter() - t
    t = time.perf_counter()
    c50, c5095 = run_pycocotools(gt_dict, res)
    t_coco = time.perf_counter() - t
    t = time.perf_counter()
    o50, o5095 = run_ours(data, opt.nc, opt.batch)
    t_ours = time.perf_counter() - t
    print(f'pycocotools  {t_coco:7.2f} s   mAP@0.5 {c50:.6f}  mAP@0.5:0.95 {c5095:.6f}'
          f'   (+{t_dict:.2f} s building its dicts, not counted)')
    print(f'ours         {t_ours:7.2f} s   mAP@0.5 {o50:.6f}  mAP@0.5:0.95 {o5095:.6f}'
          f'   ({t_coco / t_ours:.1f}x faster; |diff| {abs(o50 - c50):.1e} / {abs(o5095 - c5095):.1e})')
    bench_nms(opt.nms_runs)


if __name__ == '__main__':
    main()
