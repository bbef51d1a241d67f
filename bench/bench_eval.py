"""Evaluation overhead: per image, model inference vs NMS vs metric accumulation, as test.py's
evaluate() does them (fused model, conf 0.001, IoU 0.6, multi-label NMS, max_det 300).

    python3 bench/bench_eval.py [--img-size 416] [--batch-size 16] [--images 200] [--candidates 600]
                                [--conf-thres 0.001] [--threads 2] [--cfg cfg/yolov3-tiny.cfg]

Model: cfg/yolov3-tiny.cfg rewritten to the shapes dataset's 5 classes (temp cfg), random init.
A random head makes every box pass conf 0.001 (objectness ~0.5), which no trained model does, so
the objectness biases are shifted (bisection on the first batch) until the mean number of
(box, class) candidates per image that pass the threshold is ``--candidates``: 600 by default,
close to what a yolov3-tiny-shapes checkpoint trained to mAP@0.5 0.44 emits at 416 (~570);
``--candidates 0`` keeps the raw random head (worst case: all ~2500 boxes x 5 classes).

Data: the shapes val set (utils.datasets.default_data(), generated on first use), loaded once up
front so disk/decoding is not timed. Timed per batch: inference (model forward), NMS, metric
accumulation (boxes mapped back to the original images + Evaluator.update), and once at the end
Evaluator.compute() (matching/AP over the whole set), charged to the metrics. Prints ms/image for
each and the ratio (NMS + metrics) / inference (target <= 10%).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import models  # noqa: E402
from utils.datasets import create_dataloader  # noqa: E402
from utils.evaluation import to_original_images  # noqa: E402
from utils.metrics import Evaluator  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.parse_config import parse_cfg, parse_data_cfg, rewrite_head, write_cfg  # noqa: E402
from utils.datasets import default_data  # noqa: E402


def build_model(cfg, nc, img_size):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_cfg(rewrite_head(parse_cfg(cfg), classes=nc), Path(tmp) / f'{Path(cfg).stem}-{nc}.cfg')
        model = models.Darknet(str(path), img_size=img_size)
    return model.eval().fuse()


def _head_biases(model):
    out = []
    for i in model.yolo_layers:
        conv, layer = model.module_list[i - 1].Conv2d, model.module_list[i]
        out.append(conv.bias.data.view(layer.na, layer.no)[:, 4])  # objectness bias of each anchor (a view)
    return out


def candidates(pred, conf):
    """(box, class) pairs per image that multi-label NMS would consider: objectness and score > conf."""
    obj = pred[..., 4:5]
    return ((obj > conf) & (pred[..., 5:] * obj > conf)).sum().item() / len(pred)


@torch.no_grad()
def calibrate(model, imgs, conf, target, iters=40):
    """Shift all objectness biases by one constant so that ~``target`` (box, class) pairs per image pass
    ``conf`` (the multi-label NMS candidates). The shift adds to the raw objectness logits, so one
    forward pass suffices for the bisection. Returns (shift, candidates per image after the shift)."""
    raw = torch.cat([r.flatten(0, 3) for r in model(imgs)[1]])  # [B*rows, no] logits
    obj, cls = raw[:, 4:5], raw[:, 5:].sigmoid()

    def count(shift):
        o = (obj + shift).sigmoid()
        return ((o > conf) & (o * cls > conf)).sum().item() / len(imgs)

    lo, hi = -40.0, 10.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if count(mid) > target else (mid, hi)
    for b in _head_biases(model):
        b += lo
    return lo, candidates(model(imgs)[0], conf)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cfg', default=str(ROOT / 'cfg' / 'yolov3-tiny.cfg'))
    ap.add_argument('--img-size', type=int, default=416)
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--images', type=int, default=200, help='val images to use (at most the whole set)')
    ap.add_argument('--candidates', type=float, default=600, help='mean NMS candidates per image (0: raw head)')
    ap.add_argument('--conf-thres', type=float, default=0.001)
    ap.add_argument('--iou-thres', type=float, default=0.6)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    opt = ap.parse_args(argv)
    torch.set_num_threads(opt.threads)
    torch.manual_seed(opt.seed)

    data = parse_data_cfg(default_data())
    nc = int(data['classes'])
    loader, _ = create_dataloader(data['valid'], opt.img_size, opt.batch_size, stride=32, hyp=None, augment=False,
                                  rect=True, workers=0, shuffle=False, pad=0.5, nc=nc)
    batches, n = [], 0
    for imgs, targets, paths, shapes in loader:  # preload: the loader is not what is measured
        batches.append((imgs, targets, shapes))
        n += len(imgs)
        if n >= opt.images:
            break
    model = build_model(opt.cfg, nc, opt.img_size)
    first = batches[0][0].float() / 255.0
    if opt.candidates > 0:
        shift, got = calibrate(model, first, opt.conf_thres, opt.candidates)
        how = f'objectness bias shift {shift:+.2f}'
    else:
        with torch.no_grad():
            got, how = candidates(model(first)[0], opt.conf_thres), 'raw random head'
    print(f'{Path(opt.cfg).stem} ({nc} classes, random init, {how}) @ {opt.img_size}, {n} images in '
          f'{len(batches)} batches of {opt.batch_size}, {opt.threads} threads; '
          f'{got:.0f} candidates/image on the first batch')

    with torch.no_grad():
        model(first)  # warm-up (allocator, oneDNN primitives)
    evaluator = Evaluator(nc)
    t_inf = t_nms = t_met = 0.0
    n_cand = n_det = 0
    with torch.no_grad():
        for imgs, targets, shapes in batches:
            x = imgs.float() / 255.0
            b, _, h, w = x.shape
            t0 = time.perf_counter()
            pred = model(x)[0]
            t1 = time.perf_counter()
            dets = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, multi_label=True, max_det=300)
            t2 = time.perf_counter()
            evaluator.update(*to_original_images(dets, targets, shapes, (h, w)))  # as evaluate() does
            t3 = time.perf_counter()
            t_inf, t_nms, t_met = t_inf + t1 - t0, t_nms + t2 - t1, t_met + t3 - t2
            n_cand += candidates(pred, opt.conf_thres) * b
            n_det += sum(len(d) for d in dets)
        t4 = time.perf_counter()
        m = evaluator.compute()
        t_compute = time.perf_counter() - t4
    ms = lambda t: 1e3 * t / n  # noqa: E731
    print(f'candidates {n_cand / n:.0f}/image before NMS, {n_det / n:.0f}/image after '
          f'(mAP@0.5 {m["map50"]:.4f}, random weights)')
    print(f'inference  {ms(t_inf):8.2f} ms/image')
    print(f'NMS        {ms(t_nms):8.2f} ms/image')
    print(f'metrics    {ms(t_met + t_compute):8.2f} ms/image  (update {ms(t_met):.2f} + compute {ms(t_compute):.2f})')
    ratio = (t_nms + t_met + t_compute) / t_inf
    print(f'(NMS + metrics) / inference = {100 * ratio:.1f}%  (target <= 10%: {"ok" if ratio <= 0.10 else "OVER"})')
    return ratio


if __name__ == '__main__':
    main()
