"""A pruned yolov3 structure at the published rate of the upstream channel-and-layer-pruning
project (yolov3: 58.67M -> 10.32M parameters), for latency benchmarks on random weights.

    python3 bench/pruned_yolov3_cfg.py [--cfg cfg/yolov3.cfg] [--params 10.32e6] [--out bench/yolov3-pruned-10m.cfg]
    python3 bench/run.py --models bench/yolov3-pruned-10m.cfg:416 --batch 1

The pruning is the project's slim recipe (utils.compress.prune: candidate layers of sparsity mode 1, a
global |gamma| threshold, slim's floor of 1% of each layer, residual stages kept where any of
their layers keeps the channel, utils.compress.prune.compact_model) on random BN scales instead of
sparsity-trained ones; a trained model's per-layer widths would differ, the parameter count
(bisected over --percent to the target) is the same. Only the cfg is written: the weights of
a structure timed on random weights do not matter.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import models  # noqa: E402
from utils.compress.layer_graph import LayerGraph  # noqa: E402
from utils.compress.prune import (bn_gammas, check_not_empty, compact_model, global_threshold,  # noqa: E402
                                  min_keep_masks, removed_groups, threshold_masks)
from utils.general import atomic_write_text  # noqa: E402


def pruned(model, percent, graph, scales):
    masks = min_keep_masks(scales, threshold_masks(scales, global_threshold(scales, percent), strict=True), 0.01)
    removed = removed_groups(graph, masks, rule='any')
    check_not_empty(graph, removed)
    return compact_model(model, removed, graph=graph)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cfg', default=str(ROOT / 'cfg' / 'yolov3.cfg'))
    ap.add_argument('--params', type=float, default=10.32e6, help='target parameter count')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'yolov3-pruned-10m.cfg'))
    opt = ap.parse_args(argv)
    model = models.Darknet(opt.cfg).eval()
    g = torch.Generator().manual_seed(opt.seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g))
    graph = LayerGraph(model.module_defs, model.in_channels)
    scales = bn_gammas(model, graph.prune_set(1))
    lo, hi = 0.0, 0.999  # fraction of |gamma| below the threshold; parameters fall as it rises
    best = None
    for _ in range(30):
        mid = (lo + hi) / 2
        try:
            small = pruned(model, mid, graph, scales)
        except ValueError:  # a layer would empty: too far
            hi = mid
            continue
        n = models.count_parameters(small)[0]
        if best is None or abs(n - opt.params) < abs(best[1] - opt.params):
            best = (mid, n, small)
        lo, hi = (mid, hi) if n > opt.params else (lo, mid)
    percent, n, small = best
    full = models.count_parameters(model)[0]
    atomic_write_text(opt.out, f'# {Path(opt.cfg).name} slim-pruned on random BN scales by bench/pruned_yolov3_cfg.py: '
                               f'--percent {percent:.4f}, {full / 1e6:.2f}M -> {n / 1e6:.2f}M parameters\n'
                      + small.cfg_text())
    gflops = [models.layer_flops(m, 416)[1] / 1e9 for m in (model, small)]
    print(f'{opt.out}: --percent {percent:.4f}, {full / 1e6:.2f}M -> {n / 1e6:.2f}M parameters, '
          f'{gflops[0]:.1f} -> {gflops[1]:.1f} GFLOPs at 416')


if __name__ == '__main__':
    main()
