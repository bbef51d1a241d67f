"""Runtime benchmark: one model, every CPU runtime, interleaved in one process.

    python3 bench/run.py [--quick] [--threads 2] [--runs 15] [--extra pruned.pt ...] [--compile]

Models: yolov3-tiny, yolov4-tiny, yolov3, yolov4 at 416 and the default model
(cfg/yolov3-mini-shapes.cfg) at 256, with random weights (the same cfg + weights in every
runtime), plus ``--extra`` checkpoints (pruned, quantization-aware, ...) at 256; batch 1 and 8.
Runtimes: PyTorch eager, PyTorch fused (BN folded, channels_last; ``--compile`` adds
torch.compile), ONNX Runtime FP32 and INT8 (static QDQ from utils.export, calibrated on 8
built-in images), OpenVINO FP32 and on the INT8 QDQ graph, OpenCV DNN 4.x (Darknet files).
Each round runs every runtime once in turn, so machine noise hits all alike; reported: median
ms, spread (10th-90th percentile), achieved GFLOP/s and the ratio to OpenCV DNN. Writes
bench/results.md and bench/results.json. ``--quick``: yolov3-tiny and the default model,
batch 1, 5 rounds (under 3 minutes on 2 cores). Run it on a quiet machine: other processes
change the absolute numbers (the ratios less).
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))
import models  # noqa: E402
from bench_inference import find_cfg, matmul_peak  # noqa: E402
from utils.latency import (darknet_runner, openvino_runner, ort_runner, summarize, time_interleaved,  # noqa: E402
                           torch_runner)

RUNTIMES = ('OpenCV DNN', 'PyTorch eager', 'PyTorch fused', 'PyTorch compiled', 'ORT FP32', 'ORT INT8',
            'OpenVINO FP32', 'OpenVINO INT8')
FULL = [('yolov3-tiny', 416), ('yolov4-tiny', 416), ('yolov3', 416), ('yolov4', 416), ('yolov3-mini-shapes', 256)]
QUICK = [('yolov3-tiny', 416), ('yolov3-mini-shapes', 256)]
CALIB_IMAGES = 8


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='two models, batch 1, 5 rounds')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--runs', type=int, default=15, help='timed rounds per model and batch')
    ap.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    ap.add_argument('--extra', nargs='*', default=[], help='checkpoints (.pt) to add, at 256 px')
    ap.add_argument('--compile', action='store_true', help='add torch.compile (tens of seconds per model/shape)')
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results'), help='results path without suffix')
    opt = ap.parse_args(argv)
    if opt.quick:
        opt.runs, opt.batches = min(opt.runs, 5), [1]
    return opt


# ----------------------------------------------------------------------------- runners

def calibration_images(size):
    """CALIB_IMAGES built-in training images letterboxed to ``size``, float [n,3,s,s] in [0,1]."""
    from utils.datasets import default_data
    from utils.export import dataset_images
    from utils.parse_config import parse_data_cfg
    return dataset_images(parse_data_cfg(default_data())['train'], size, CALIB_IMAGES)


def opencv_runner(model, tmp, threads):
    """OpenCV DNN on the model's Darknet files; fn(x numpy [B,3,H,W]) -> outputs."""
    models.save_weights(model, tmp / 'm.weights')
    (tmp / 'm.cfg').write_text(model.cfg_text())
    return darknet_runner(tmp / 'm.cfg', tmp / 'm.weights', threads)


def onnx_files(model, size, tmp):
    """(FP32 ONNX, INT8 QDQ ONNX) of the fused model with a dynamic batch."""
    import copy

    from utils.export import onnx_bytes, quantize_int8
    fused = copy.deepcopy(model).fuse()
    for p in fused.parameters():
        p.requires_grad_(True)  # MaxPool as MaxPool (see utils.export.onnx_bytes)
    fp32, int8 = tmp / 'fp32.onnx', tmp / 'int8.onnx'
    fp32.write_bytes(onnx_bytes(fused, torch.zeros(1, 3, size, size), dynamic=True))
    quantize_int8(fp32, int8, calibration_images(size))
    return fp32, int8


def bench_model(label, model, size, opt):
    """Rows {batch: {runtime: summary}} for one model."""
    flops = models.layer_flops(model, size)[1] / 1e9
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32, int8 = onnx_files(model, size, tmp)
        eager = model.eval()
        fused = models.optimize_for_inference(model)
        for batch in opt.batches:
            print(f'{label} {size}px batch {batch}: {flops:.2f} GFLOPs per image')
            runners = {'OpenCV DNN': opencv_runner(model, tmp, opt.threads), 'PyTorch eager': torch_runner(eager),
                       'PyTorch fused': torch_runner(fused, channels_last=True)}
            if opt.compile:
                runners['PyTorch compiled'] = torch_runner(models.optimize_for_inference(model, compile=True), True)
            runners.update({'ORT FP32': ort_runner(fp32, opt.threads), 'ORT INT8': ort_runner(int8, opt.threads),
                            'OpenVINO FP32': openvino_runner(fp32, batch, size, opt.threads),
                            'OpenVINO INT8': openvino_runner(int8, batch, size, opt.threads)})
            x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
            times = time_interleaved(runners, x, opt.runs)
            cv_ms = statistics.median(times['OpenCV DNN']) * 1e3 if 'OpenCV DNN' in times else None
            rows[batch] = {name: summarize(t, flops, batch, cv_ms) for name, t in times.items()}
            print('  ' + ', '.join(f'{n} {r["median_ms"]:.1f} ms' for n, r in rows[batch].items()))
    return {'model': label, 'img_size': size, 'gflops': flops, 'batches': rows}


# ----------------------------------------------------------------------------- report

def markdown(results, meta):
    lines = [f'# Runtime benchmark ({meta["date"]})', '',
             f'{meta["machine"]}; {meta["threads"]} threads; torch {meta["torch"]}, onnxruntime {meta["onnxruntime"]}, '
             f'OpenVINO {meta["openvino"]}, OpenCV {meta["opencv"]}; fp32 matmul peak {meta["matmul_gflops"]:.0f} '
             f'GFLOP/s. Random weights, {meta["runs"]} interleaved rounds; median ms (10th-90th percentile), ratio to '
             f'OpenCV DNN in brackets. INT8: static QDQ (convs only, head convs and decode float), calibrated on '
             f'{CALIB_IMAGES} built-in images.', '']
    runtimes = [r for r in RUNTIMES if any(r in m['batches'][b] for m in results for b in m['batches'])]
    for batch in meta['batches']:
        lines += [f'## Batch {batch}', '', '| model | GFLOPs | ' + ' | '.join(runtimes) + ' |',
                  '|---|---|' + '---|' * len(runtimes)]
        for m in results:
            row = m['batches'].get(batch, {})
            cells = []
            for r in runtimes:
                s = row.get(r)
                ratio = f' ({s["ratio_to_opencv"]:.2f})' if s and s['ratio_to_opencv'] else ''
                cells.append(f'{s["median_ms"]:.1f} [{s["p10_ms"]:.1f}-{s["p90_ms"]:.1f}]{ratio}' if s else 'n/a')
            lines.append(f'| {m["model"]} {m["img_size"]} | {m["gflops"]:.2f} | ' + ' | '.join(cells) + ' |')
        lines += ['', f'Achieved GFLOP/s, batch {batch}:', '', '| model | ' + ' | '.join(runtimes) + ' |',
                  '|---|' + '---|' * len(runtimes)]
        for m in results:
            row = m['batches'].get(batch, {})
            lines.append(f'| {m["model"]} {m["img_size"]} | ' + ' | '.join(
                f'{row[r]["gflops_per_s"]:.0f}' if r in row else 'n/a' for r in runtimes) + ' |')
        lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    import cv2
    import onnxruntime
    import openvino

    from utils.general import atomic_write_text
    opt = parse_args(argv)
    torch.set_num_threads(opt.threads)
    t0 = time.time()
    results = []
    for name, size in (QUICK if opt.quick else FULL):
        results.append(bench_model(name, models.Darknet(find_cfg(name), img_size=size).eval(), size, opt))
    for path in opt.extra:
        model, _ = models.load_model('', path, 256, 'cpu')
        results.append(bench_model(Path(path).name, model, 256, opt))
    meta = {'date': time.strftime('%Y-%m-%d %H:%M'), 'machine': f'{platform.processor() or platform.machine()}',
            'threads': opt.threads, 'runs': opt.runs, 'batches': opt.batches, 'torch': torch.__version__,
            'onnxruntime': onnxruntime.__version__, 'openvino': openvino.__version__.split('-')[0],
            'opencv': cv2.__version__, 'matmul_gflops': matmul_peak(opt.threads), 'quick': opt.quick,
            'seconds': round(time.time() - t0, 1)}
    out = Path(opt.out)
    atomic_write_text(out.with_suffix('.json'), json.dumps({'meta': meta, 'results': results}, indent=1))
    atomic_write_text(out.with_suffix('.md'), markdown(results, meta) + '\n')
    print(f'wrote {out.with_suffix(".md")} and .json in {meta["seconds"]:.0f} s')


if __name__ == '__main__':
    main()
