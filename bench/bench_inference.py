"""Batch-1 CPU inference latency: this project's Darknet vs OpenCV DNN 4.x, same cfg + weights.

    python3 bench/bench_inference.py [--cfgs yolov3-tiny yolov4-tiny yolov3 yolov4] [--img-size 416]
                                     [--threads 2] [--runs 20]

Weights are random (written by our writer, read by both). Both runs are interleaved in one
process so machine noise hits both alike; the figure that matters is the ratio ours/OpenCV.
Also prints achieved GFLOP/s and the machine's fp32 matmul peak measured the same way.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import models  # noqa: E402


def find_cfg(name):
    if name.endswith('.cfg') and Path(name).is_file():  # a cfg written elsewhere, e.g. bench/pruned_yolov3_cfg.py
        return Path(name)
    for folder in (ROOT / 'cfg', ROOT / 'tests' / 'data' / 'darknet-cfg'):
        if (folder / f'{name}.cfg').is_file():
            return folder / f'{name}.cfg'
    raise FileNotFoundError(f'{name}.cfg not found in cfg/ or tests/data/darknet-cfg/')


def matmul_peak(threads, n=2048, runs=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_time(lambda: torch.mm(a, b)) for _ in range(runs))
    return 2 * n ** 3 / best / 1e9


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cfgs', nargs='+', default=['yolov3-tiny', 'yolov4-tiny', 'yolov3', 'yolov4'])
    ap.add_argument('--img-size', type=int, default=416)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--no-compile', action='store_true', help='skip the torch.compile column (saves minutes)')
    opt = ap.parse_args()
    import cv2
    torch.set_num_threads(opt.threads)
    cv2.setNumThreads(opt.threads)
    peak = matmul_peak(opt.threads)
    print(f'torch {torch.__version__}, OpenCV {cv2.__version__}, {opt.threads} threads, fp32 matmul peak '
          f'{peak:.0f} GFLOP/s')
    print(f'{"model":<14} {"GFLOPs":>7} {"OpenCV ms":>10} {"ours ms":>9} {"ratio":>6} {"GFLOP/s":>8} '
          f'{"% peak":>7} {"compiled ms":>12} {"ratio":>6} {"compile s":>10} {"max |diff|":>10}')
    x = torch.rand(1, 3, opt.img_size, opt.img_size)
    for name in opt.cfgs:
        model = models.Darknet(find_cfg(name), img_size=opt.img_size).eval()
        flops = models.layer_flops(model, opt.img_size)[1]
        with tempfile.TemporaryDirectory() as tmp:
            models.save_weights(model, f'{tmp}/m.weights')
            (Path(tmp) / 'm.cfg').write_text(model.cfg_text())
            net = cv2.dnn.readNetFromDarknet(f'{tmp}/m.cfg', f'{tmp}/m.weights')
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        out_names = net.getUnconnectedOutLayersNames()
        fast = models.optimize_for_inference(model)
        blob = x.numpy()
        xc = x.contiguous(memory_format=torch.channels_last)

        def run_cv():
            net.setInput(blob)
            return net.forward(out_names)

        def runner(m):
            def run():
                with torch.inference_mode():
                    return m(xc)
            return run

        runs = {'cv': run_cv, 'ours': runner(fast)}
        compile_s = float('nan')
        if not opt.no_compile:
            compiled = models.optimize_for_inference(model, compile=True)
            compile_s = _time(runner(compiled))
            runs['compiled'] = runner(compiled)
        for _ in range(3):  # warm-up (allocations, oneDNN primitive caches)
            for run in runs.values():
                run()
        times = {k: [] for k in runs}
        for _ in range(opt.runs):  # interleaved: noise hits every variant alike
            for k, run in runs.items():
                times[k].append(_time(run))
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ours_out = runs['ours']()[0][0, :, 4].numpy()
        diff = float(np.abs(np.sort(ours_out) - np.sort(np.concatenate([o[:, 4] for o in run_cv()]))).max())
        comp_ms = ms.get('compiled', float('nan'))
        print(f'{name:<14} {flops / 1e9:>7.2f} {ms["cv"]:>10.1f} {ms["ours"]:>9.1f} {ms["ours"] / ms["cv"]:>6.2f} '
              f'{flops / 1e9 / (ms["ours"] / 1e3):>8.0f} {100 * flops / 1e9 / (ms["ours"] / 1e3) / peak:>6.0f}% '
              f'{comp_ms:>12.1f} {comp_ms / ms["cv"]:>6.2f} {compile_s:>10.1f} {diff:>10.1e}')


if __name__ == '__main__':
    main()
