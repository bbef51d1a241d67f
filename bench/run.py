"""Runtime benchmark: one model, every CPU runtime, each in its own process.

    python3 bench/run.py [--quick] [--threads 1 2] [--batch 1 8] [--runs 15] [--extra pruned.pt ...] [--compile]

Models: yolov3-tiny, yolov4-tiny, yolov3, yolov4 at 416 and the default model
(cfg/yolov3-mini-shapes.cfg) at 256, with random weights (the same cfg + weights in every
runtime), plus ``--extra`` checkpoints (pruned, quantization-aware, ...) at 256; batch 1 and 8,
1 and 2 threads. Runtimes: PyTorch eager, PyTorch fused (BN folded, channels_last;
``--compile`` adds torch.compile), ONNX Runtime FP32 and INT8 (static QDQ from utils.deploy.export,
calibrated on 8 built-in images), OpenVINO FP32 and on the INT8 QDQ graph, OpenCV DNN 4.x
(Darknet files). Every (runtime, threads) of a model and batch runs in its own worker process
(utils.deploy.latency.time_per_process): warm-up, then rounds in which the workers take turns one at
a time, so no runtime's idle thread pool spins while another is timed and machine noise hits
all alike. Reported: median ms, spread (10th-90th percentile), achieved GFLOP/s, the ratio to
OpenCV DNN and the 2-thread speed-up; the CPU (model, AVX2/AVX-512/VNNI/AMX) heads the report.
Writes bench/results.md and bench/results.json. ``--quick``: yolov3-tiny and the default
model, batch 1, 5 rounds. Run it on a quiet machine: other processes change the absolute
numbers (the ratios less).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))
import models  # noqa: E402
from bench_inference import find_cfg, matmul_peak  # noqa: E402
from utils.inference import load_inference_model  # noqa: E402
from utils.deploy.latency import (TURN_CALLS, cpu_info, cpu_text, darknet_job, openvino_job, ort_job,  # noqa: E402
                                  summarize_turns, time_per_process, torch_job)

RUNTIMES = ('OpenCV DNN', 'PyTorch eager', 'PyTorch fused', 'PyTorch compiled', 'ORT FP32', 'ORT INT8',
            'OpenVINO FP32', 'OpenVINO INT8')
FULL = [('yolov3-tiny', 416), ('yolov4-tiny', 416), ('yolov3', 416), ('yolov4', 416), ('yolov3-mini-shapes', 256)]
QUICK = [('yolov3-tiny', 416), ('yolov3-mini-shapes', 256)]
CALIB_IMAGES = 8


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='two models, batch 1, 5 rounds')
    ap.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='thread counts, each timed')
    ap.add_argument('--runs', type=int, default=9, help='timed rounds per model and batch')
    ap.add_argument('--calls', type=int, default=TURN_CALLS,
                    help='calls per turn: the first after the other processes\' turns (cold), the rest back to '
                         'back; the tables give the back-to-back median and the first calls beside it')
    ap.add_argument('--batch', '--batches', dest='batches', type=int, nargs='+', default=[1, 8])
    ap.add_argument('--models', nargs='+', default=None, metavar='NAME:SIZE',
                    help='cfg names (cfg/ or tests/data/darknet-cfg/) or .cfg paths and sizes instead of the '
                         'built-in list')
    ap.add_argument('--extra', nargs='*', default=[], help='checkpoints (.pt) to add, at 256 px')
    ap.add_argument('--compile', action='store_true', help='add torch.compile (tens of seconds per model/shape)')
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results'), help='results path without suffix')
    ap.add_argument('--readme', metavar='JSON',
                    help="print the README's batch-1 tables from a results .json; no timing")
    opt = ap.parse_args(argv)
    if opt.quick:
        opt.runs, opt.batches = min(opt.runs, 5), [1]
    opt.models = [(m.rpartition(':')[0], int(m.rpartition(':')[2])) for m in opt.models] if opt.models else (
        QUICK if opt.quick else FULL)
    return opt


# ----------------------------------------------------------------------------- model files

def calibration_images(size):
    """CALIB_IMAGES built-in training images letterboxed to ``size``, float [n,3,s,s] in [0,1]."""
    from utils.datasets import default_data
    from utils.deploy.export import dataset_images
    from utils.parse_config import parse_data_cfg
    return dataset_images(parse_data_cfg(default_data())['train'], size, CALIB_IMAGES)


def model_files(model, size, tmp, pt=None):
    """The files the workers load: Darknet cfg + weights, a .pt (``pt`` when given), FP32 ONNX
    and INT8 QDQ ONNX of the fused model with a dynamic batch; {kind: path}."""
    import copy

    from utils.deploy.export import onnx_bytes, quantize_int8
    files = {'cfg': tmp / 'm.cfg', 'weights': tmp / 'm.weights', 'pt': Path(pt) if pt else tmp / 'm.pt',
             'fp32': tmp / 'fp32.onnx', 'int8': tmp / 'int8.onnx'}
    models.save_weights(model, files['weights'])
    files['cfg'].write_text(model.cfg_text())
    if not pt:
        models.save_checkpoint(files['pt'], model)
    fused = copy.deepcopy(model).fuse()
    for p in fused.parameters():
        p.requires_grad_(True)  # MaxPool as MaxPool (see utils.deploy.export.onnx_bytes)
    files['fp32'].write_bytes(onnx_bytes(fused, torch.zeros(1, 3, size, size), dynamic=True))
    quantize_int8(files['fp32'], files['int8'], calibration_images(size))
    return files


def jobs_for(files, size, batch, threads, compile=False):
    """{runtime: Job} of one model at one batch and thread count."""
    jobs = {'OpenCV DNN': darknet_job(files['cfg'], files['weights'], threads, batch, size),
            'PyTorch eager': torch_job(files['pt'], threads, batch, size, fused=False),
            'PyTorch fused': torch_job(files['pt'], threads, batch, size)}
    if compile:
        jobs['PyTorch compiled'] = torch_job(files['pt'], threads, batch, size, compile=True)
    jobs.update({'ORT FP32': ort_job(files['fp32'], threads, batch, size),
                 'ORT INT8': ort_job(files['int8'], threads, batch, size),
                 'OpenVINO FP32': openvino_job(files['fp32'], threads, batch, size),
                 'OpenVINO INT8': openvino_job(files['int8'], threads, batch, size)})
    return jobs


def plural(n, word):
    return f'{n} {word}{"s" * (n != 1)}'


def entry(runtime, threads):
    """A worker's name in the log lines: 'ORT FP32, 2 threads'."""
    return f'{runtime}, {plural(threads, "thread")}'


def bench_model(label, model, size, opt, pt=None):
    """{'model', 'img_size', 'gflops', 'batches': {batch: {threads: {runtime: summary}}}} for one
    model; every runtime and thread count of a batch is one interleaved per-process run."""
    flops = models.layer_flops(model, size)[1] / 1e9
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = model_files(model, size, Path(tmp), pt)
        for batch in opt.batches:
            print(f'{label} {size}px batch {batch}: {flops:.2f} GFLOPs per image, threads '
                  f'{" and ".join(map(str, opt.threads))}', flush=True)
            entries = {entry(rt, t): (t, rt, job) for t in opt.threads
                       for rt, job in jobs_for(files, size, batch, t, opt.compile).items()}
            times = time_per_process({name: job for name, (_, _, job) in entries.items()}, opt.runs, opt.calls)
            rows[batch] = {}
            for t in opt.threads:
                got = {rt: times[name] for name, (tt, rt, _) in entries.items() if tt == t and name in times}
                rows[batch][t] = summarize_turns(got, opt.calls, {rt: flops for rt in got}, batch, 'OpenCV DNN')
                print(f'  {plural(t, "thread")}: ' + ', '.join(f'{n} {r["median_ms"]:.1f} ms'
                                                            for n, r in rows[batch][t].items()), flush=True)
    return {'model': label, 'img_size': size, 'gflops': flops, 'batches': rows}


# ----------------------------------------------------------------------------- report

def cell(s):
    """'median [p10-p90] (ratio to OpenCV DNN)' of a summary, 'n/a' without one."""
    if not s:
        return 'n/a'
    ratio = f' ({s["ratio_to_opencv"]:.2f})' if s['ratio_to_opencv'] else ''
    return f'{s["median_ms"]:.1f} [{s["p10_ms"]:.1f}-{s["p90_ms"]:.1f}]{ratio}'


def turn_text(calls):
    """How a turn was timed, for the report's heading paragraph."""
    if calls == 1:
        return ', one call a turn (caches and thread pools cold after the other processes\' turns)'
    return (f', {calls} calls a turn: the tables give the {calls - 1} back-to-back calls after each turn\'s first '
            '(a detector on a stream of frames), the first calls, cold after the other processes\' turns, follow '
            'each table')


def load_text(meta):
    load = meta.get('load_average') or [None, None]
    if None in load:
        return ''
    return (f' 1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end (other processes on '
            'the machine change the absolute numbers; the interleaved rounds make them hit every runtime alike).')


def markdown(results, meta):
    """results.md: a latency table per batch and thread count, then per batch the achieved
    GFLOP/s at the most threads and the speed-up of the most threads over the fewest."""
    lines = [f'# Runtime benchmark ({meta["date"]})', '',
             f'CPU: {cpu_text(meta["cpu"])}. torch {meta["torch"]}, onnxruntime {meta["onnxruntime"]}, OpenVINO '
             f'{meta["openvino"]}, OpenCV {meta["opencv"]}; fp32 matmul peak {meta["matmul_gflops"]:.0f} GFLOP/s '
             f'({plural(max(meta["threads"]), "thread")}). Random weights. Every runtime and thread count in its '
             f'own process: warm-up, then {meta["runs"]} rounds in which the processes take turns one at a time'
             f'{turn_text(meta.get("calls", 1))}; median ms (10th-90th percentile), ratio to OpenCV DNN at the same '
             'batch and threads in brackets. '
             f'INT8: static QDQ (convs only, head convs and decode float), calibrated on {CALIB_IMAGES} built-in '
             'images.' + load_text(meta), '']
    runtimes = [r for r in RUNTIMES if any(r in by_rt for m in results for by_t in m['batches'].values()
                                           for by_rt in by_t.values())]
    most, fewest = max(meta['threads']), min(meta['threads'])
    for batch in meta['batches']:
        for t in meta['threads']:
            lines += [f'## Batch {batch}, {plural(t, "thread")}', '', '| model | GFLOPs | ' + ' | '.join(runtimes) +
                      ' |', '|---|---|' + '---|' * len(runtimes)]
            for m in results:
                row = m['batches'].get(batch, {}).get(t, {})
                lines.append(f'| {m["model"]} {m["img_size"]} | {m["gflops"]:.2f} | ' +
                             ' | '.join(cell(row.get(r)) for r in runtimes) + ' |')
            lines.append('')
            if meta.get('calls', 1) > 1:
                lines += [f'First call of each turn (after the other processes\' turns), batch {batch}, '
                          f'{plural(t, "thread")}: median ms', '', '| model | ' + ' | '.join(runtimes) + ' |',
                          '|---|' + '---|' * len(runtimes)]
                for m in results:
                    row = m['batches'].get(batch, {}).get(t, {})
                    lines.append(f'| {m["model"]} {m["img_size"]} | ' + ' | '.join(
                        f'{row[r]["first_call_ms"]:.1f}' if r in row else 'n/a' for r in runtimes) + ' |')
                lines.append('')
        lines += [f'Achieved GFLOP/s, batch {batch}, {plural(most, "thread")}:', '',
                  '| model | ' + ' | '.join(runtimes) + ' |', '|---|' + '---|' * len(runtimes)]
        for m in results:
            row = m['batches'].get(batch, {}).get(most, {})
            lines.append(f'| {m["model"]} {m["img_size"]} | ' + ' | '.join(
                f'{row[r]["gflops_per_s"]:.0f}' if r in row else 'n/a' for r in runtimes) + ' |')
        lines.append('')
        if most != fewest:
            lines += [f'Speed-up of {most} threads over {fewest}, batch {batch} (median over median):', '',
                      '| model | ' + ' | '.join(runtimes) + ' |', '|---|' + '---|' * len(runtimes)]
            for m in results:
                lo, hi = (m['batches'].get(batch, {}).get(t, {}) for t in (fewest, most))
                lines.append(f'| {m["model"]} {m["img_size"]} | ' + ' | '.join(
                    f'{lo[r]["median_ms"] / hi[r]["median_ms"]:.2f}x' if r in lo and r in hi else 'n/a'
                    for r in runtimes) + ' |')
            lines.append('')
    return '\n'.join(lines)


def readme_tables(results, meta, batch=1):
    """The README's tables: per thread count, median ms (ratio to OpenCV DNN) of every runtime."""
    runtimes = [r for r in RUNTIMES if any(r in by_rt for m in results for by_rt in m['batches'].get(
        str(batch), m['batches'].get(batch, {})).values())]
    lines = []
    for t in meta['threads']:
        lines += [f'Batch {batch}, {plural(t, "thread")}:', '', '| model | GFLOPs | ' + ' | '.join(runtimes) + ' |',
                  '|---|---|' + '---|' * len(runtimes)]
        for m in results:
            by_t = m['batches'].get(str(batch), m['batches'].get(batch, {}))
            row = by_t.get(str(t), by_t.get(t, {}))
            cells = []
            for r in runtimes:
                s = row.get(r)
                ms = f'{s["median_ms"]:.1f}' if s and s['median_ms'] < 100 else f'{s["median_ms"]:.0f}' if s else 'n/a'
                cells.append(ms if r == 'OpenCV DNN' or not s or not s['ratio_to_opencv']
                             else f'{ms} ({s["ratio_to_opencv"]:.2f})')
            lines.append(f'| {m["model"]} {m["img_size"]} | {m["gflops"]:.2f} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines)


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def main(argv=None):
    import cv2
    import onnxruntime
    import openvino

    from utils.general import atomic_write_text
    opt = parse_args(argv)
    if opt.readme:
        saved = json.loads(Path(opt.readme).read_text())
        print(readme_tables(saved['results'], saved['meta']))
        return
    t0 = time.time()
    load_before = load_average()
    results = []
    for name, size in opt.models:
        results.append(bench_model(Path(name).stem if name.endswith('.cfg') else name,
                                   models.Darknet(find_cfg(name), img_size=size).eval(), size, opt))
    for path in opt.extra:
        model, _ = load_inference_model(path, img_size=256)
        results.append(bench_model(Path(path).name, model, 256, opt, pt=path))
    torch.set_num_threads(max(opt.threads))
    meta = {'date': time.strftime('%Y-%m-%d %H:%M'), 'cpu': cpu_info(), 'mode': 'per-process',
            'threads': opt.threads, 'runs': opt.runs, 'calls': opt.calls, 'batches': opt.batches,
            'torch': torch.__version__,
            'onnxruntime': onnxruntime.__version__, 'openvino': openvino.__version__.split('-')[0],
            'opencv': cv2.__version__, 'matmul_gflops': matmul_peak(max(opt.threads)), 'quick': opt.quick,
            'seconds': round(time.time() - t0, 1), 'load_average': [load_before, load_average()]}
    out = Path(opt.out)
    atomic_write_text(out.with_suffix('.json'), json.dumps({'meta': meta, 'results': results}, indent=1))
    atomic_write_text(out.with_suffix('.md'), markdown(results, meta) + '\n')
    print(f'CPU: {cpu_text(meta["cpu"])}')
    print(f'wrote {out.with_suffix(".md")} and .json in {meta["seconds"]:.0f} s')


if __name__ == '__main__':
    main()
