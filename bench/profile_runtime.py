"""Where the time of one call goes: per-layer profiles of the default model from the runtimes'
own profilers, and the fixed cost of a call that does (almost) nothing.

    python3 bench/profile_runtime.py [--cfg cfg/yolov3-mini-shapes.cfg] [--img-size 256] [--threads 2] [--calls 200]

Profiles (batch 1, random weights with calibrated BN as in tests/darknet_ref.randomize):
OpenVINO INT8 and FP32 (PERF_COUNT, ``request.get_profiling_info()`` after every call), ONNX
Runtime FP32 and INT8 (SessionOptions.enable_profiling: the JSON trace's per-node kernel times
and model_run spans) and OpenCV DNN on the Darknet files (``net.getPerfProfile()``). Per
runtime: the median wall time of a call, the median summed time of the conv layers, of all
other layers, and the rest (wall - layers: the runtime's per-call work outside the layers,
input/output copies, Python), plus the same runtime on a one-op graph (input + 0 -> output, the
model's input shape): the floor any model pays per call. The 10x target of issue 22 is
OpenCV DNN's FP32 time / 10; the table says what is left for the layers once the floor is
paid, and the GFLOP/s the convs would need.

Each runtime runs in its own fresh process (thread counts set before the runtime loads, no
other runtime's idle pool around). Writes bench/profile.md and bench/profile.json.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))
sys.path.insert(0, str(ROOT / 'tests'))

DEFAULT_CFG = 'cfg/yolov3-mini-shapes.cfg'
CONV_TYPES = {'Convolution', 'Conv', 'QLinearConv', 'FusedConv', 'NchwcConv', 'GroupConvolution'}


def med(values):
    return float(statistics.median(values)) if values else 0.0


# ----------------------------------------------------------------------------- per-runtime profilers
# Each returns {'wall_ms', 'conv_ms', 'other_ms', 'layers': {type: ms}, 'top': [(name, type, ms)]}
# with medians over the calls; they run inside a fresh process (see run_child).

def split(per_call, walls):
    """per_call: [[(name, type, ms)] per call] -> medians of conv/other sums and per-type sums."""
    conv = [sum(ms for _, t, ms in c if t in CONV_TYPES) for c in per_call]
    other = [sum(ms for _, t, ms in c if t not in CONV_TYPES) for c in per_call]
    by_type, by_node = {}, {}
    for c in per_call:
        for name, t, ms in c:
            by_type.setdefault(t, []).append(ms)
            by_node.setdefault((name, t), []).append(ms)
    n = len(per_call)
    types = {t: sum(v) / n for t, v in sorted(by_type.items(), key=lambda kv: -sum(kv[1]))}
    top = sorted(((name, t, med(v)) for (name, t), v in by_node.items()), key=lambda r: -r[2])[:8]
    return {'wall_ms': med(walls), 'conv_ms': med(conv), 'other_ms': med(other), 'layers': types, 'top': top,
            'layer_count': len(by_node)}


def profile_openvino(path, size, threads, calls):
    import numpy as np
    import openvino as ov

    from utils.deploy.runtime_settings import openvino_config
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([1, 3, size, size])
    compiled = core.compile_model(model, 'CPU', {**openvino_config(threads), 'PERF_COUNT': True})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(10):
        request.infer({0: x})
    walls, per_call = [], []
    for _ in range(calls):
        t = time.perf_counter()
        request.infer({0: x})
        walls.append((time.perf_counter() - t) * 1e3)
        per_call.append([(p.node_name, p.node_type, p.real_time.total_seconds() * 1e3)
                         for p in request.get_profiling_info() if p.status.name == 'EXECUTED'])
    out = split(per_call, walls)
    precisions = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info['layerType'].astype(str) == 'Convolution':
            p = info['runtimePrecision'].astype(str)
            precisions[p] = precisions.get(p, 0) + 1
    out['conv_precisions'] = precisions
    return out


def profile_ort(path, size, threads, calls):
    import numpy as np
    import onnxruntime as ort

    from utils.deploy.runtime_settings import ort_session_options
    with tempfile.TemporaryDirectory() as tmp:
        options = ort_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / 'ort')
        session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        for _ in range(10):
            session.run(None, {name: x})
        walls = []
        for _ in range(calls):
            t = time.perf_counter()
            session.run(None, {name: x})
            walls.append((time.perf_counter() - t) * 1e3)
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in trace if e.get('cat') == 'Session' and e['name'] == 'model_run'),
                  key=lambda e: e['ts'])[-calls:]
    nodes = [e for e in trace if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time')]
    per_call = []
    for r in runs:
        lo, hi = r['ts'], r['ts'] + r['dur']
        per_call.append([(e['name'].removesuffix('_kernel_time'), e['args'].get('op_name', '?'), e['dur'] / 1e3)
                         for e in nodes if lo <= e['ts'] <= hi])
    out = split(per_call, walls)
    out['model_run_ms'] = med([r['dur'] / 1e3 for r in runs])
    return out


def profile_opencv(cfg, weights, size, threads, calls):
    import cv2
    import numpy as np
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    outs = net.getUnconnectedOutLayersNames()
    names = net.getLayerNames()
    types = {n: net.getLayer(n).type for n in names}
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(5):
        net.setInput(x)
        net.forward(outs)
    walls, per_call = [], []
    freq = cv2.getTickFrequency() / 1e3
    for _ in range(calls):
        t = time.perf_counter()
        net.setInput(x)
        net.forward(outs)
        walls.append((time.perf_counter() - t) * 1e3)
        _, layer_ticks = net.getPerfProfile()
        per_call.append([(n, 'Convolution' if types[n] == 'Convolution' else types[n], float(ticks) / freq)
                         for n, ticks in zip(names, np.asarray(layer_ticks).ravel())])
    return split(per_call, walls)


def floor_call(runtime, path, size, threads, calls):
    """Median ms of a call on the one-op graph at ``path``."""
    import numpy as np
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    if runtime == 'openvino':
        from utils.deploy.latency import openvino_runner
        run = openvino_runner(path, 1, size, threads)
    else:
        from utils.deploy.latency import ort_runner
        run = ort_runner(path, threads)
    for _ in range(10):
        run(x)
    walls = []
    for _ in range(calls):
        t = time.perf_counter()
        run(x)
        walls.append((time.perf_counter() - t) * 1e3)
    return med(walls)


def child(spec):
    """One profile in this (fresh) process: spec {'fn', 'args'}."""
    fn = {'openvino': profile_openvino, 'ort': profile_ort, 'opencv': profile_opencv, 'floor': floor_call}[spec['fn']]
    print(json.dumps(fn(*spec['args'])))


def run_child(fn, args, threads):
    env = dict(os.environ, **{k: str(threads) for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')})
    r = subprocess.run([sys.executable, __file__, '--child', json.dumps({'fn': fn, 'args': args})], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f'{fn} profile failed: {r.stderr.strip().splitlines()[-1:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- files

def one_op_onnx(path, size):
    """images + 0 -> pred: a graph whose call is all fixed cost."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), 'zero')
    graph = helper.make_graph([helper.make_node('Add', ['images', 'zero'], ['pred'])], 'floor',
                              [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info('pred', TensorProto.FLOAT, [1, 3, size, size])], [zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), str(path))


def build(cfg, size, tmp):
    import torch

    import models
    from darknet_ref import randomize
    from run import calibration_images
    from utils.deploy.export import onnx_bytes, quantize_int8
    model = randomize(models.Darknet(str(cfg), img_size=size), size=size)
    files = {'cfg': tmp / 'm.cfg', 'weights': tmp / 'm.weights', 'fp32': tmp / 'fp32.onnx', 'int8': tmp / 'int8.onnx',
             'floor': tmp / 'floor.onnx'}
    files['cfg'].write_text(model.cfg_text())
    models.save_weights(model, files['weights'])
    fused = copy.deepcopy(model).fuse()
    for p in fused.parameters():
        p.requires_grad_(True)  # MaxPool as MaxPool (see utils.deploy.export.onnx_bytes)
    files['fp32'].write_bytes(onnx_bytes(fused, torch.zeros(1, 3, size, size), dynamic=True))
    quantize_int8(files['fp32'], files['int8'], calibration_images(size))
    one_op_onnx(files['floor'], size)
    return files, models.layer_flops(model, size)[1] / 1e9


# ----------------------------------------------------------------------------- report

def markdown(res, meta):
    from utils.deploy.latency import cpu_text
    target = res['OpenCV DNN FP32']['wall_ms'] / 10
    lines = [f'# Where the time goes ({meta["date"]})', '',
             f'CPU: {cpu_text(meta["cpu"])}; {meta["threads"]} thread(s); 1-minute load average '
             f'{meta["load_before"]:.2f} before, {meta["load_after"]:.2f} after. `{meta["cfg"]}` at {meta["img_size"]} '
             f'({meta["gflops"]:.2f} GFLOPs), batch 1, random weights, {meta["calls"]} profiled calls per runtime, '
             'each runtime in a fresh process, medians. Profilers: OpenVINO PERF_COUNT, ONNX Runtime '
             'enable_profiling, OpenCV getPerfProfile. Written by `python3 bench/profile_runtime.py`.', '',
             '"rest" = wall - sum of the layer times: per-call work outside the layers (input and output copies, '
             'scheduling, Python). "floor" = a call of the same runtime on a one-op graph (input + 0) of the same '
             'input shape. Profiling adds a little per layer, so walls here run above bench/results.md.', '',
             '| runtime | wall ms | convs ms | other layers ms | rest ms | floor ms | layers | conv GFLOP/s |',
             '|---|---|---|---|---|---|---|---|']
    for name, r in res.items():
        rest = r['wall_ms'] - r['conv_ms'] - r['other_ms']
        fl = r.get('floor_ms')
        lines.append(f'| {name} | {r["wall_ms"]:.2f} | {r["conv_ms"]:.2f} | {r["other_ms"]:.2f} | {rest:.2f} | '
                     f'{"-" if fl is None else f"{fl:.3f}"} | {r["layer_count"]} | '
                     f'{meta["gflops"] / (r["conv_ms"] / 1e3):.0f} |')
    lines += ['', 'Largest layer types (mean ms per call):', '']
    for name, r in res.items():
        top = ', '.join(f'{t} {ms:.2f}' for t, ms in list(r['layers'].items())[:6])
        lines.append(f'- {name}: {top}' + (f'; conv runtime precisions {r["conv_precisions"]}'
                                           if r.get('conv_precisions') else ''))
    best_name, best = min(((n, r) for n, r in res.items() if not n.startswith('OpenCV')),
                          key=lambda kv: kv[1]['wall_ms'])
    if meta['cfg'] != DEFAULT_CFG:  # the 10x target is the default model's; the big models have ratio targets
        cv = res['OpenCV DNN FP32']
        lines += ['', '## Ratios', '', 'Conv time against OpenCV DNN\'s conv time, and INT8 against its runtime\'s '
                  'FP32 (wall, profiled):', '']
        for rt in ('OpenVINO', 'ORT'):
            f32, i8 = res[f'{rt} FP32'], res[f'{rt} INT8']
            lines.append(f'- {rt}: FP32 convs {f32["conv_ms"]:.1f} ms = {f32["conv_ms"] / cv["conv_ms"]:.2f}x of '
                         f'OpenCV\'s {cv["conv_ms"]:.1f} ms, wall {f32["wall_ms"] / cv["wall_ms"]:.2f}x; INT8 wall '
                         f'{i8["wall_ms"] / f32["wall_ms"]:.2f}x of FP32 (convs {i8["conv_ms"] / f32["conv_ms"]:.2f}x, '
                         f'other layers {i8["other_ms"]:.1f} ms against {f32["other_ms"]:.1f} ms)')
        lines.append('')
        return '\n'.join(lines)
    floor = best.get('floor_ms') or 0.0
    budget = target - floor
    lines += ['', '## The 10x target', '',
              f'OpenCV DNN FP32 here: {res["OpenCV DNN FP32"]["wall_ms"]:.2f} ms, so 10x means {target:.2f} ms per '
              f'call. Fastest profiled runtime: {best_name}, {best["wall_ms"]:.2f} ms '
              f'({res["OpenCV DNN FP32"]["wall_ms"] / best["wall_ms"]:.1f}x): convs {best["conv_ms"]:.2f} ms, other '
              f'layers {best["other_ms"]:.2f} ms, rest {best["wall_ms"] - best["conv_ms"] - best["other_ms"]:.2f} '
              f'ms; its floor per call is {floor:.3f} ms.', '']
    if budget <= 0:
        lines.append(f'The floor alone exceeds {target:.2f} ms: 10x is out of reach for any model in this runtime.')
    else:
        need = meta['gflops'] / (budget / 1e3)
        lines.append(f'With the floor paid, {budget:.2f} ms remain for every layer: {meta["gflops"]:.2f} GFLOPs in '
                     f'that time is {need:.0f} GOP/s sustained over all layers (the convs now reach '
                     f'{meta["gflops"] / (best["conv_ms"] / 1e3):.0f} GOP/s in {best_name}, the fp32 matmul peak of '
                     f'this machine at {meta["threads"]} thread(s) is {meta["matmul_gflops"]:.0f} GFLOP/s).')
    lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cfg', default=str(ROOT / 'cfg' / 'yolov3-mini-shapes.cfg'))
    ap.add_argument('--img-size', type=int, default=256)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--calls', type=int, default=200)
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'profile'), help='results path without suffix')
    opt = ap.parse_args(argv)
    from bench_inference import matmul_peak
    from tune_runtimes import load_average

    from utils.general import atomic_write_text
    from utils.deploy.latency import cpu_info
    meta = {'date': time.strftime('%Y-%m-%d %H:%M'), 'cpu': cpu_info(), 'threads': opt.threads, 'calls': opt.calls,
            'cfg': Path(opt.cfg).resolve().relative_to(ROOT).as_posix() if Path(opt.cfg).resolve().is_relative_to(ROOT)
            else opt.cfg, 'img_size': opt.img_size, 'load_before': load_average()}
    s, t, c = opt.img_size, opt.threads, opt.calls
    with tempfile.TemporaryDirectory() as tmp:
        files, meta['gflops'] = build(opt.cfg, s, Path(tmp))
        f = {k: str(v) for k, v in files.items()}
        res = {'OpenVINO INT8': run_child('openvino', [f['int8'], s, t, c], t),
               'OpenVINO FP32': run_child('openvino', [f['fp32'], s, t, c], t),
               'ORT FP32': run_child('ort', [f['fp32'], s, t, c], t),
               'ORT INT8': run_child('ort', [f['int8'], s, t, c], t),
               'OpenCV DNN FP32': run_child('opencv', [f['cfg'], f['weights'], s, t, c], t)}
        for name in ('OpenVINO INT8', 'OpenVINO FP32'):
            res[name]['floor_ms'] = run_child('floor', ['openvino', f['floor'], s, t, c], t)
        for name in ('ORT FP32', 'ORT INT8'):
            res[name]['floor_ms'] = run_child('floor', ['ort', f['floor'], s, t, c], t)
    import torch
    torch.set_num_threads(t)
    meta['matmul_gflops'] = matmul_peak(t)
    meta['load_after'] = load_average()
    out = Path(opt.out)
    atomic_write_text(out.with_suffix('.json'), json.dumps({'meta': meta, 'results': res}, indent=1))
    atomic_write_text(out.with_suffix('.md'), markdown(res, meta))
    print(markdown(res, meta))


if __name__ == '__main__':
    if sys.argv[1:2] == ['--child']:
        child(json.loads(sys.argv[2]))
    else:
        main()
