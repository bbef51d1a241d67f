"""Runtime tuning, one change at a time: ONNX Runtime and OpenVINO settings and graph variants
timed against the project's defaults, each in its own worker process (utils.deploy.latency).

    python3 bench/tune_runtimes.py [--models yolov3-mini-shapes:256 yolov3:416] [--threads 1 2] [--runs 20]

Per model and thread count, one interleaved per-process run holds every entry below (all
batch 1): a baseline per runtime and precision (the defaults of utils.deploy.runtime_settings on the
graphs bench/run.py times: fused FP32 ONNX with a dynamic batch, the static INT8 QDQ of
utils.deploy.export.quantize_int8) and each alternative, which differs from its baseline in one
thing only:

- ONNX Runtime: graph optimisation level (basic, extended against all), intra-op spinning
  off, onnxslim on the graph, a static batch, the YOLO decode outside the graph (raw head
  tensors out of ONNX Runtime, decoded with numpy), for INT8 QDQ that also quantizes the
  conv outputs (LeakyReLU, Add, Concat, Resize, MaxPool quantized too, so ONNX Runtime can
  fuse DQ -> Conv -> Q into QLinearConv) and the same in the QOperator format;
- OpenVINO: no PERFORMANCE_HINT, no INFERENCE_NUM_THREADS (the hint picks), NUM_STREAMS left
  to the hint, bf16 (a different precision: reported, never a default here), onnxslim and
  the QLinearConv-friendly INT8 graph; its model cache changes compile_model time, not
  inference, so it is timed separately (cold compile vs a load from the cache, fresh
  processes).

Every graph variant is checked against the baseline's output (max relative difference) and
every INT8 graph with utils.deploy.export.int8_overflow_risks. Reported: median ms, 10th-90th
percentile, the ratio to the baseline. Writes bench/tuning.md and bench/tuning.json. Random
weights with BN statistics calibrated on a random batch (tests/darknet_ref.randomize), INT8
calibrated on 8 built-in images.
"""
import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))
sys.path.insert(0, str(ROOT / 'tests'))
import models  # noqa: E402
from bench_inference import find_cfg  # noqa: E402
from darknet_ref import randomize  # noqa: E402
from utils.deploy.export import INPUT_NAME, int8_overflow_risks, onnx_bytes, quantize_int8, simplify  # noqa: E402
from utils.general import atomic_write_text  # noqa: E402
from utils.deploy.latency import Job, cpu_info, cpu_text, openvino_job, ort_job, summarize, time_per_process  # noqa: E402

CALIB_IMAGES = 8
# ops quantized besides Conv so that every conv output feeds a QuantizeLinear (ONNX Runtime
# fuses DQ -> Conv -> Q into QLinearConv only then); the decode ops stay float
CONV_OUTPUT_OPS = ['Conv', 'LeakyRelu', 'Add', 'Concat', 'Resize', 'MaxPool']


# ----------------------------------------------------------------------------- graph variants

class RawHeads(torch.nn.Module):
    """The model up to its head convs: the raw tensors each YOLO layer decodes, as outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.yolo = [m for m in model.module_list if isinstance(m, models.YOLOLayer)]

    def forward(self, x):
        raw = []
        hooks = [m.register_forward_pre_hook(lambda mod, args: raw.append(args[0])) for m in self.yolo]
        try:
            self.model(x)
        finally:
            for h in hooks:
                h.remove()
        return tuple(raw)


def raw_heads_onnx(model, size, path):
    """ONNX of the fused model without its decode: outputs raw0..rawN [B, A*(5+nc), h, w]."""
    import io
    import warnings
    buffer = io.BytesIO()
    n = len(model.yolo_layers)
    names = [f'raw{i}' for i in range(n)]
    axes = {INPUT_NAME: {0: 'batch'}, **{k: {0: 'batch'} for k in names}}
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(RawHeads(model).eval(), (torch.zeros(1, 3, size, size),), buffer, opset_version=17,
                          dynamo=False, input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes)
    path.write_bytes(buffer.getvalue())


def decode_spec(model, size):
    """What numpy needs to decode each head as models.YOLOLayer does: [{anchors, nc, scale_x_y}]."""
    heads = [m for m in model.module_list if isinstance(m, models.YOLOLayer)]
    if any(h.new_coords for h in heads):
        raise ValueError('decode outside the graph: new_coords heads are not implemented here')
    return [{'anchors': h.anchors.tolist(), 'nc': h.nc, 'scale_x_y': h.scale_x_y} for h in heads]


def numpy_decoder(spec, size):
    """fn(raw list) -> pred [B, N, 5+nc], models.YOLOLayer.decode in numpy (grids precomputed)."""
    cache = {}

    def decode(raws):
        out = []
        for p, s in zip(raws, spec):
            b, _, ny, nx = p.shape
            na, no = len(s['anchors']), s['nc'] + 5
            key = (len(out), ny, nx)
            if key not in cache:
                yv, xv = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing='ij')
                cache[key] = (np.stack((xv, yv), 2)[None, None], np.array([size / nx, size / ny], np.float32),
                              np.array(s['anchors'], np.float32).reshape(1, na, 1, 1, 2))
            grid, stride, anchors = cache[key]
            p = p.reshape(b, na, no, ny, nx).transpose(0, 1, 3, 4, 2)
            y = 1 / (1 + np.exp(-p))
            k = s['scale_x_y']
            xy = y[..., :2] * k - 0.5 * (k - 1) if k != 1 else y[..., :2]
            y[..., :2] = (xy + grid) * stride
            y[..., 2:4] = np.minimum(np.exp(p[..., 2:4]), 1e4) * anchors
            out.append(y.reshape(b, -1, no))
        return np.concatenate(out, 1)
    return decode


def decode_outside_runner(path, threads, spec, size, runtime='ort'):
    """ONNX Runtime (``runtime`` 'ort') or OpenVINO ('openvino') on the raw-heads graph, then the
    numpy decode: the pair, timed as one call."""
    decode = numpy_decoder(spec, size)
    if runtime == 'openvino':
        import openvino as ov

        from utils.deploy.runtime_settings import openvino_config
        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape([1, 3, size, size])
        compiled = core.compile_model(model, 'CPU', openvino_config(threads))
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)

        def run(x):
            result = request.infer({0: x})
            return decode([result[o] for o in outputs])
        return run
    import onnxruntime as ort

    from utils.deploy.runtime_settings import ort_session_options
    session = ort.InferenceSession(str(path), ort_session_options(threads), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda x: decode(session.run(None, {name: x}))


def decode_outside_job(path, threads, batch, size, spec, runtime='ort'):
    return Job('tune_runtimes:decode_outside_runner', {'path': str(path), 'threads': threads, 'spec': spec,
                                                        'size': size, 'runtime': runtime},
               threads, (batch, 3, size, size))


def quantize_variant(fp32_path, out_path, images, op_types, fmt):
    """quantize_int8's recipe (S8S8, per-channel weights in [-64, 64], MinMax, head convs
    float) with other quantized op types or the QOperator format."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    from utils.deploy.export import head_conv_nodes

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / 'prepared.onnx'
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        proto = onnx.load(str(prepared))
        heads = head_conv_nodes(proto)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        reduce_range=True, op_types_to_quantize=op_types,
                        nodes_to_exclude=heads + decode_nodes(proto, heads),
                        calibrate_method=CalibrationMethod.MinMax)


def decode_nodes(proto, heads):
    """Names of the nodes downstream of the head convs (the decode and its output Concat):
    quantized, pixel boxes and probabilities would share one 8-bit scale."""
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in proto.graph.node}
    seen, todo = set(), [t for h in heads for t in by_name[h].output]
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.name not in seen:
                seen.add(node.name)
                todo.extend(node.output)
    return sorted(seen)


def slim_file(src, dst):
    import onnx
    dst.write_bytes(simplify(onnx.load(str(src))).SerializeToString())


def optimized_ops(path):
    """{op type: count} of the graph ONNX Runtime runs (after its optimisations)."""
    import onnx
    import onnxruntime as ort

    from utils.deploy.export import op_counts
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / 'opt.onnx')
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        return op_counts(onnx.load(options.optimized_model_filepath))


def build_files(model, size, tmp):
    """{name: path} of every graph the experiments load."""
    from run import calibration_images
    images = calibration_images(size)
    fused = copy.deepcopy(model).fuse()
    for p in fused.parameters():
        p.requires_grad_(True)  # MaxPool as MaxPool (see utils.deploy.export.onnx_bytes)
    f = {k: tmp / f'{k}.onnx' for k in ('fp32', 'fp32_static', 'fp32_slim', 'raw', 'int8', 'int8_slim',
                                        'int8_convout', 'int8_qop', 'int8_raw')}
    f['fp32'].write_bytes(onnx_bytes(fused, torch.zeros(1, 3, size, size), dynamic=True))
    f['fp32_static'].write_bytes(onnx_bytes(fused, torch.zeros(1, 3, size, size), dynamic=False))
    slim_file(f['fp32'], f['fp32_slim'])
    raw_heads_onnx(fused, size, f['raw'])
    quantize_int8(f['fp32'], f['int8'], images)
    slim_file(f['int8'], f['int8_slim'])
    quantize_variant(f['fp32'], f['int8_convout'], images, CONV_OUTPUT_OPS, 'QDQ')
    quantize_variant(f['fp32'], f['int8_qop'], images, CONV_OUTPUT_OPS, 'QOperator')
    quantize_int8(f['raw'], f['int8_raw'], images)  # the head convs are the graph's outputs: they stay float
    return f, images


def check_files(files, model, size, images):
    """{file: {'max_rel_diff_vs_baseline', 'int8_overflow_risks', 'ort_ops'}}: FP32 variants
    against the FP32 baseline, INT8 ones against the INT8 baseline, in ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    from utils.deploy.export import detection_agreement, relative_diff
    x = images

    def run(path):
        s = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        return [s.run(None, {INPUT_NAME: x[i:i + 1]}) for i in range(len(x))]
    decode = numpy_decoder(decode_spec(model, size), size)
    out = {}
    ref = {'fp32': np.concatenate([r[0] for r in run(files['fp32'])]),
           'int8': np.concatenate([r[0] for r in run(files['int8'])])}
    for name, path in files.items():
        got = run(path)
        pred = np.concatenate([decode(r) if name.endswith('raw') else r[0] for r in got])
        base = 'int8' if name.startswith('int8') else 'fp32'
        entry = {'baseline': base, 'max_rel_diff_vs_baseline': float(relative_diff(pred, ref[base])),
                 'ort_ops': optimized_ops(path)}
        if base == 'int8':
            entry['int8_overflow_risks'] = len(int8_overflow_risks(onnx.load(str(path))))
            entry['f1_vs_fp32'] = detection_agreement(ref['fp32'], pred)[0]
        out[name] = entry
    return out


# ----------------------------------------------------------------------------- experiments

def experiments(files, spec, size, threads):
    """[(group, name, change, Job)]: the first entry of each group is its baseline."""
    def ort(path, **kw):
        return ort_job(path, threads, 1, size, **kw)

    def ov(path, **kw):
        return openvino_job(path, threads, 1, size, **kw)
    return [
        ('ORT FP32', 'baseline', 'defaults: opt level all, spinning on, dynamic batch, decode in graph',
         ort(files['fp32'])),
        ('ORT FP32', 'opt basic', 'graph optimisation level basic', ort(files['fp32'], opt_level='basic')),
        ('ORT FP32', 'opt extended', 'graph optimisation level extended', ort(files['fp32'], opt_level='extended')),
        ('ORT FP32', 'no spinning', 'session.intra_op.allow_spinning 0', ort(files['fp32'], spinning=False)),
        ('ORT FP32', 'onnxslim', 'onnxslim on the graph', ort(files['fp32_slim'])),
        ('ORT FP32', 'static batch', 'batch fixed at 1 in the graph', ort(files['fp32_static'])),
        ('ORT FP32', 'decode outside', 'raw heads from ORT, decode in numpy', decode_outside_job(
            files['raw'], threads, 1, size, spec)),
        ('ORT INT8', 'baseline', 'quantize_int8: QDQ on conv inputs only', ort(files['int8'])),
        ('ORT INT8', 'opt extended', 'graph optimisation level extended', ort(files['int8'], opt_level='extended')),
        ('ORT INT8', 'no spinning', 'session.intra_op.allow_spinning 0', ort(files['int8'], spinning=False)),
        ('ORT INT8', 'onnxslim', 'onnxslim on the graph', ort(files['int8_slim'])),
        ('ORT INT8', 'QDQ conv outputs', 'conv outputs quantized too (QLinearConv fusion)', ort(files['int8_convout'])),
        ('ORT INT8', 'QOperator', 'QOperator format, same ops', ort(files['int8_qop'])),
        ('ORT INT8', 'decode outside', 'raw heads from ORT, decode in numpy', decode_outside_job(
            files['int8_raw'], threads, 1, size, spec)),
        ('OpenVINO FP32', 'baseline', 'defaults: f32, LATENCY, threads set, 1 stream', ov(files['fp32'])),
        ('OpenVINO FP32', 'no hint', 'no PERFORMANCE_HINT', ov(files['fp32'], hint=None)),
        ('OpenVINO FP32', 'hint threads', 'no INFERENCE_NUM_THREADS: the plugin uses every core', Job(
            'utils.deploy.latency:openvino_runner', {**ov(files['fp32']).kwargs, 'threads': None}, threads,
            (1, 3, size, size))),
        ('OpenVINO FP32', 'hint streams', 'NUM_STREAMS from the hint', ov(files['fp32'], streams=None)),
        ('OpenVINO FP32', 'onnxslim', 'onnxslim on the graph', ov(files['fp32_slim'])),
        ('OpenVINO FP32', 'decode outside', 'raw heads from OpenVINO, decode in numpy', decode_outside_job(
            files['raw'], threads, 1, size, spec, 'openvino')),
        ('OpenVINO FP32', 'bf16 (other precision)', 'INFERENCE_PRECISION_HINT not set: bf16 on this CPU',
         ov(files['fp32'], precision=None)),
        ('OpenVINO INT8', 'baseline', 'quantize_int8 graph, defaults', ov(files['int8'])),
        ('OpenVINO INT8', 'no hint', 'no PERFORMANCE_HINT', ov(files['int8'], hint=None)),
        ('OpenVINO INT8', 'onnxslim', 'onnxslim on the graph', ov(files['int8_slim'])),
        ('OpenVINO INT8', 'QDQ conv outputs', 'conv outputs quantized too', ov(files['int8_convout'])),
        ('OpenVINO INT8', 'decode outside', 'raw heads from OpenVINO, decode in numpy', decode_outside_job(
            files['int8_raw'], threads, 1, size, spec, 'openvino')),
    ]


CACHE_PROBE = r'''
import sys, time, json
sys.path.insert(0, sys.argv[1])
import openvino as ov
from utils.deploy.runtime_settings import openvino_config
core = ov.Core()
model = core.read_model(sys.argv[2])
model.reshape([1, 3, int(sys.argv[3]), int(sys.argv[3])])
t = time.perf_counter()
core.compile_model(model, 'CPU', openvino_config(int(sys.argv[4]), cache_dir=sys.argv[5] or None))
print(json.dumps(time.perf_counter() - t))
'''


def cache_timing(path, size, threads, repeats=3):
    """{'no cache', 'cache hit'}: median compile_model seconds in fresh processes, without
    OpenVINO's model cache and loading from a filled one."""
    out = {'no cache': [], 'cache hit': []}
    with tempfile.TemporaryDirectory() as cache:
        def probe(cache_dir):
            r = subprocess.run([sys.executable, '-c', CACHE_PROBE, str(ROOT), str(path), str(size), str(threads),
                                cache_dir], capture_output=True, text=True, check=True)
            return json.loads(r.stdout.strip().splitlines()[-1])
        probe(cache)  # fills the cache
        for _ in range(repeats):
            out['no cache'].append(probe(''))
            out['cache hit'].append(probe(cache))
    return {k: statistics.median(v) for k, v in out.items()}


def tune_model(name, size, opt):
    model = randomize(models.Darknet(find_cfg(name), img_size=size), size=size)
    spec = decode_spec(model, size)
    gflops = models.layer_flops(model, size)[1] / 1e9
    result = {'model': name, 'img_size': size, 'gflops': gflops, 'threads': {}}
    with tempfile.TemporaryDirectory() as tmp:
        files, images = build_files(model, size, Path(tmp))
        result['files'] = check_files(files, model, size, images)
        result['openvino_compile_s'] = {
            kind: cache_timing(files[kind], size, max(opt.threads)) for kind in ('fp32', 'int8')}
        for t in opt.threads:
            exps = experiments(files, spec, size, t)
            print(f'{name} {size}: {t} thread(s), {len(exps)} entries, {opt.runs} rounds', flush=True)
            times = time_per_process({f'{g} | {n}': job for g, n, _, job in exps}, opt.runs, per_turn=opt.per_turn)
            rows, base = [], {}
            for g, n, change, _ in exps:
                key = f'{g} | {n}'
                if key not in times:
                    rows.append({'group': g, 'name': n, 'change': change, 'failed': True})
                    continue
                s = summarize(times[key], gflops, 1, None)
                if n == 'baseline':
                    base[g] = s['median_ms']
                s.update(group=g, name=n, change=change, vs_baseline=s['median_ms'] / base[g] if g in base else None)
                rows.append(s)
                print(f'  {key}: {s["median_ms"]:.2f} ms [{s["p10_ms"]:.2f}-{s["p90_ms"]:.2f}]'
                      + (f' x{s["vs_baseline"]:.2f}' if s['vs_baseline'] else ''), flush=True)
            result['threads'][t] = rows
    return result


def load_average():
    try:
        return float(Path('/proc/loadavg').read_text().split()[0])
    except OSError:
        return None


def markdown(results, meta):
    lines = [f'# Runtime tuning ({meta["date"]})', '',
             f'CPU: {cpu_text(meta["cpu"])}. onnxruntime {meta["onnxruntime"]}, OpenVINO {meta["openvino"]}. '
             f'1-minute load average {meta["load_before"]:.2f} before, {meta["load_after"]:.2f} after (a shared '
             f'machine). Batch 1, random weights; every entry in its own process, {meta["runs"]} interleaved rounds '
             f'of {meta["per_turn"]} calls; median ms [10th-90th percentile] and the ratio to the group\'s baseline '
             '(below 1: faster). Written by `python3 bench/tune_runtimes.py`.', '']
    for r in results:
        lines += [f'## {r["model"]} {r["img_size"]} ({r["gflops"]:.2f} GFLOPs)', '']
        threads = sorted(r['threads'], key=int)
        lines += ['| runtime | change | ' + ' | '.join(f'{t} thread(s)' for t in threads) + ' |',
                  '|---|---|' + '---|' * len(threads)]
        first = r['threads'][threads[0]]
        for k, row in enumerate(first):
            cells = []
            for t in threads:
                s = r['threads'][t][k]
                cells.append('failed' if s.get('failed') else
                             f'{s["median_ms"]:.2f} [{s["p10_ms"]:.2f}-{s["p90_ms"]:.2f}]' +
                             (f' x{s["vs_baseline"]:.2f}' if s['name'] != 'baseline' and s.get('vs_baseline') else ''))
            lines.append(f'| {row["group"]} | {row["name"]}: {row["change"]} | ' + ' | '.join(cells) + ' |')
        lines += ['', f'Graph variants (ONNX Runtime, the {CALIB_IMAGES} calibration images): max relative difference '
                  'to the baseline of the same precision, for INT8 the F1 of its detections against FP32\'s '
                  '(utils.deploy.export.detection_agreement, conf >= 0.25; random weights), int8 overflow risks '
                  '(utils.deploy.export.int8_overflow_risks), and the ops ONNX Runtime runs after its optimisations:', '',
                  '| graph | max rel diff | F1 vs FP32 | overflow risks | QLinearConv | Conv | Q | DQ | nodes |',
                  '|---|---|---|---|---|---|---|---|---|']
        for name, e in r['files'].items():
            ops = e['ort_ops']
            f1 = f'{e["f1_vs_fp32"]:.3f}' if 'f1_vs_fp32' in e else '-'
            risks = e.get('int8_overflow_risks', '-')
            lines.append(f'| {name} | {e["max_rel_diff_vs_baseline"]:.1e} | {f1} | {risks} | '
                         f'{ops.get("QLinearConv", 0)} | {ops.get("Conv", 0) + ops.get("FusedConv", 0)} | '
                         f'{ops.get("QuantizeLinear", 0)} | {ops.get("DequantizeLinear", 0)} | {sum(ops.values())} |')
        c = r['openvino_compile_s']
        lines += ['', 'OpenVINO compile_model (fresh processes, median of 3): ' + '; '.join(
            f'{k.upper()} {v["no cache"] * 1e3:.0f} ms without the model cache, {v["cache hit"] * 1e3:.0f} ms from it'
            for k, v in c.items()) + '.', '']
    return '\n'.join(lines)


def main(argv=None):
    import onnxruntime
    import openvino
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['yolov3-mini-shapes:256'], metavar='NAME:SIZE')
    ap.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--runs', type=int, default=20, help='interleaved rounds')
    ap.add_argument('--per-turn', type=int, default=5, help='timed calls per turn')
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'tuning'), help='results path without suffix')
    opt = ap.parse_args(argv)
    meta = {'date': time.strftime('%Y-%m-%d %H:%M'), 'cpu': cpu_info(), 'onnxruntime': onnxruntime.__version__,
            'openvino': openvino.__version__.split('-')[0], 'runs': opt.runs, 'per_turn': opt.per_turn,
            'threads': opt.threads, 'load_before': load_average()}
    results = [tune_model(m.rpartition(':')[0], int(m.rpartition(':')[2]), opt) for m in opt.models]
    meta['load_after'] = load_average()
    out = Path(opt.out)
    atomic_write_text(out.with_suffix('.json'), json.dumps({'meta': meta, 'results': results}, indent=1))
    atomic_write_text(out.with_suffix('.md'), markdown(results, meta) + '\n')
    print(f'wrote {out.with_suffix(".md")} and .json')


if __name__ == '__main__':
    main()
