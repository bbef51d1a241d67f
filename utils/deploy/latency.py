"""Latency measurement shared by bench/run.py, bench/bench_quant.py, bench/bench_prune.py,
compress.py and the pruning scripts: one runner per runtime (``fn(x numpy [B,3,H,W] float32) ->
outputs``) and per-process timing.

Every (runtime, model file, threads, batch) runs in its own fresh worker process
(``python3 -m utils.deploy.latency --worker``): it sets its thread counts before it loads its runtime,
loads the model, warms up, then waits. The parent gives the workers turns one at a time (round
r: every live worker once, the starting worker rotating), with a short gap after each turn.
In one process the runtimes' idle thread pools spin while another runtime runs, and a runtime
that spins after its call (ONNX Runtime does for ~40 ms) would still steal cores from the next
worker without the gap; one worker at a time keeps the 2 cores of a small machine for the
runtime being timed, and interleaved rounds make machine noise hit every entry alike.

    jobs = {'ORT FP32': ort_job('m.onnx', threads=2, batch=1, size=416), ...}
    times = time_per_process(jobs, runs=15, per_turn=TURN_CALLS)   # {name: [seconds]}, failures dropped
    rows = summarize_turns(times, TURN_CALLS, {n: gflops for n in times}, batch=1, ref='OpenCV DNN')

``cpu_info()`` names the CPU and the instruction sets INT8 speed depends on (AVX2, AVX-512,
VNNI, AMX); every results file records it.
"""
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from utils.general import parse_cpuinfo
from utils.deploy.runtime_settings import openvino_config, ort_session_options

ROOT = Path(__file__).resolve().parents[2]
# OpenMP / BLAS pools size themselves when their library loads, so a worker's environment
# carries the count before any import; the runners set their runtime's own knob as well
THREAD_ENV = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')
GAP_S = 0.05  # after each turn: ONNX Runtime's pool spins ~40 ms after a call (measured on 2 cores)
# calls per turn in the reports: the first follows the other workers' turns (caches and thread
# pools cold), the rest run back to back, as a detector on a stream of frames runs; both are
# reported, the back-to-back median is the headline figure
TURN_CALLS = 6


# ----------------------------------------------------------------------------- runners

def darknet_runner(cfg_path, weights_path, threads):
    """OpenCV DNN on Darknet cfg + .weights files (e.g. export.py --format darknet)."""
    import cv2
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    names = net.getUnconnectedOutLayersNames()

    def run(x):
        net.setInput(x)
        return net.forward(names)
    return run


def torch_runner(model, channels_last=False, device='cpu'):
    """An in-memory PyTorch model under inference mode; on CUDA the call waits for the GPU and
    the input is copied to it once per array (the copy is not timed)."""
    import torch
    device = torch.device(device)
    cache = {}

    def run(x):
        if id(x) not in cache:
            cache.clear()
            t = torch.from_numpy(x).to(device)
            cache[id(x)] = t.contiguous(memory_format=torch.channels_last) if channels_last else t
        with torch.inference_mode():
            out = model(cache[id(x)])
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return out
    return run


def torch_file_runner(pt, img_size, threads, fused=True, compile=False, device='cpu'):
    """PyTorch on a self-describing .pt checkpoint: eager (``fused=False``) or BN folded and
    channels_last (models.optimize_for_inference; ``compile`` adds torch.compile)."""
    import torch

    import models
    import utils.compress.quant  # noqa: F401  (registers how a quantization-aware checkpoint is rebuilt)
    torch.set_num_threads(threads)
    model = models.model_from_checkpoint(pt, img_size)[0].eval()
    if fused or compile:
        model = models.optimize_for_inference(model, compile=compile)
    return torch_runner(model.to(device), channels_last=fused or compile, device=device)


def ort_runner(path, threads, opt_level='all', spinning=True):
    """ONNX Runtime, CPU execution provider, ``threads`` intra-op threads, the session options
    the deployed runner uses (utils.deploy.runtime_settings.ort_session_options)."""
    import onnxruntime as ort
    options = ort_session_options(threads, opt_level, spinning)
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_runner(path, batch, size, threads, precision='f32', hint='LATENCY', streams=1, cache_dir=None):
    """OpenVINO compiled for this batch (a static shape is faster than a dynamic one) with the
    deployed runner's config (utils.deploy.runtime_settings.openvino_config)."""
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([batch, 3, size, size])
    compiled = core.compile_model(model, 'CPU', openvino_config(threads, precision, hint, streams, cache_dir))
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


# ----------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class Job:
    """One worker's work: ``factory`` ('module:function', called with ``kwargs``, plain JSON
    types) returns the runner; ``threads`` goes to the worker's environment; the input is
    ``shape`` [B,C,H,W] float32 uniform in [0,1)."""
    factory: str
    kwargs: dict
    threads: int
    shape: tuple


def darknet_job(cfg, weights, threads, batch, size):
    return Job('utils.deploy.latency:darknet_runner', {'cfg_path': str(cfg), 'weights_path': str(weights),
                                                'threads': threads}, threads, (batch, 3, size, size))


def torch_job(pt, threads, batch, size, fused=True, compile=False, device='cpu', channels=3):
    return Job('utils.deploy.latency:torch_file_runner', {'pt': str(pt), 'img_size': size, 'threads': threads,
                                                   'fused': fused, 'compile': compile, 'device': str(device)},
               threads, (batch, channels, size, size))


def ort_job(path, threads, batch, size, **settings):
    """``settings``: ort_runner's keywords (opt_level, spinning) where they differ from the defaults."""
    return Job('utils.deploy.latency:ort_runner', {'path': str(path), 'threads': threads, **settings}, threads,
               (batch, 3, size, size))


def openvino_job(path, threads, batch, size, **settings):
    """``settings``: openvino_runner's keywords (precision, hint, streams, cache_dir)."""
    return Job('utils.deploy.latency:openvino_runner', {'path': str(path), 'batch': batch, 'size': size,
                                                 'threads': threads, **settings}, threads, (batch, 3, size, size))


# ----------------------------------------------------------------------------- worker side

def one_line(e):
    """'Type: first line of the message' (at most 100 characters of it)."""
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0][:100] if text else ""}'.rstrip(': ')


def build_runner(factory, kwargs):
    module, name = factory.split(':')
    return getattr(importlib.import_module(module), name)(**kwargs)


def worker(inp, out):
    """The worker loop on line-delimited JSON: reads the job, answers {'ready': true} after the
    warm-up (or {'error': ...}); then each message [w, k] runs w untimed and k timed calls and
    answers {'times': [seconds] * k}; null ends it."""
    def send(obj):
        out.write(json.dumps(obj) + '\n')
        out.flush()
    spec = json.loads(inp.readline())
    sys.path.extend(p for p in spec['sys_path'] if p not in sys.path)  # where the factory's module lives
    try:
        run = build_runner(spec['factory'], spec['kwargs'])
        x = np.random.default_rng(0).random(spec['shape'], dtype=np.float32)
        for _ in range(spec['warmup']):
            run(x)
    except Exception as e:  # the parent reports it and drops this job
        return send({'error': one_line(e)})
    send({'ready': True})
    for line in inp:
        turn = json.loads(line)
        if turn is None:
            return
        warm, k = turn
        times = []
        try:
            for _ in range(warm):
                run(x)
            for _ in range(k):
                t = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t)
        except Exception as e:
            return send({'error': one_line(e)})
        send({'times': times})


def worker_main():
    """Entry point of ``python3 -m utils.deploy.latency --worker``: fd 1 becomes the reply channel and
    everything the runtimes print goes to stderr, so no library output corrupts a reply."""
    out = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker(sys.stdin, out)


# ----------------------------------------------------------------------------- parent side

class WorkerFailed(RuntimeError):
    pass


class Worker:
    """A started worker process for one Job (its stderr kept in a temp file for error lines)."""

    def __init__(self, name, job, warmup):
        self.name = name
        env = dict(os.environ, **{k: str(job.threads) for k in THREAD_ENV})
        # it runs in the parent's working folder (relative model paths mean the same there), so
        # the project root reaches it through PYTHONPATH
        env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
        self.log = tempfile.TemporaryFile('w+')
        self.proc = subprocess.Popen([sys.executable, '-m', 'utils.deploy.latency', '--worker'], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.send({**asdict(job), 'warmup': warmup, 'sys_path': [p for p in sys.path if p]})

    def send(self, obj):
        try:
            self.proc.stdin.write(json.dumps(obj) + '\n')
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process is gone; receive() says why

    def receive(self, key):
        """The reply's ``key`` entry; WorkerFailed (with the worker's error) otherwise."""
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line.strip() else {'error': self.died()}
        if key not in reply:
            raise WorkerFailed(reply.get('error', f'unexpected reply {line[:80]!r}'))
        return reply[key]

    def died(self):
        """Why a worker closed its pipe without a reply: its exit status and last stderr line."""
        code = self.proc.wait()
        self.log.seek(0)
        last = [ln for ln in self.log.read().splitlines() if ln.strip()][-1:]
        return f'worker exited with status {code}' + (f' ({last[0].strip()[:120]})' if last else '')

    def turn(self, warm, k):
        """``warm`` untimed calls, then k timed ones: [seconds] * k."""
        self.send([warm, k])
        return self.receive('times')

    def close(self):
        self.send(None)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.log):
            try:
                f.close()
            except OSError:  # stdin's buffered stop message to a worker that already exited
                pass


def rotated(items, r):
    """``items`` starting at index r (mod its length): round r's turn order."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def time_per_process(jobs, runs, per_turn=1, warmup=2, gap=GAP_S, turn_warmup=0, log=print):
    """{name: [seconds]} (``runs`` * ``per_turn`` each) for ``jobs`` {name: Job}, each in its
    own worker process, rounds interleaved (see the module docstring); a turn is
    ``turn_warmup`` untimed calls, then ``per_turn`` timed ones, then ``gap`` seconds idle. A
    job that fails (e.g. OpenCV on a batch its layers do not support) is dropped with one line
    naming it."""
    workers = [Worker(name, job, warmup) for name, job in jobs.items()]  # load in parallel, time one at a time
    times, alive = {}, []
    try:
        for w in workers:
            try:
                w.receive('ready')
                alive.append(w)
                times[w.name] = []
            except WorkerFailed as e:
                log(f'  {w.name}: skipped ({e})')
        for r in range(runs):
            for w in rotated(alive, r):
                try:
                    times[w.name] += w.turn(turn_warmup, per_turn)
                except WorkerFailed as e:
                    log(f'  {w.name}: dropped in round {r + 1} ({e})')
                    alive.remove(w)
                    del times[w.name]
                time.sleep(gap)
    finally:
        for w in workers:
            w.close()
    return times


# ----------------------------------------------------------------------------- results

def split_turns(seconds, per_turn):
    """(first calls, later calls) of time_per_process(..., per_turn) times: the first call of
    each turn runs after the other workers' turns (caches and thread pools cold), the later ones
    back to back, as a detector on a stream of frames runs."""
    if len(seconds) % per_turn:
        raise ValueError(f'{len(seconds)} times are not whole turns of {per_turn} calls')
    turns = [seconds[i:i + per_turn] for i in range(0, len(seconds), per_turn)]
    return [t[0] for t in turns], [x for t in turns for x in t[1:]]


def summarize(seconds, gflops_per_image, batch, opencv_ms):
    """Median, 10th and 90th percentile (ms) of ``seconds``, achieved GFLOP/s and the ratio to
    ``opencv_ms`` (None without one)."""
    ms = np.array(seconds) * 1e3
    median = float(statistics.median(ms))
    return {'median_ms': median, 'p10_ms': float(np.percentile(ms, 10)), 'p90_ms': float(np.percentile(ms, 90)),
            'runs': len(ms), 'gflops_per_s': gflops_per_image * batch / (median / 1e3),
            'ratio_to_opencv': median / opencv_ms if opencv_ms else None}


def summarize_turns(times, per_turn, gflops=None, batch=1, ref=None):
    """{name: summary} of time_per_process(..., per_turn) ``times``: summarize() of the
    back-to-back calls (all calls when a turn is one call) with 'first_call_ms', the median first
    call of a turn, beside it; ``gflops`` {name: GFLOPs per image} (None: GFLOP/s reads 0);
    ratios to the back-to-back median of ``ref`` (a name in ``times``; None: no ratios)."""
    turns = {}
    for name, seconds in times.items():
        first, later = split_turns(seconds, per_turn)
        turns[name] = first, later or first
    ref_ms = 1e3 * statistics.median(turns[ref][1]) if ref in turns else None
    rows = {}
    for name, (first, later) in turns.items():
        rows[name] = summarize(later, gflops[name] if gflops else 0.0, batch, ref_ms)
        rows[name]['first_call_ms'] = 1e3 * statistics.median(first)
    return rows


def cpu_info(text=None):
    """{'model': str, 'flags': {avx2, avx512f, avx512_vnni, avx_vnni, amx: bool}, 'cores': int}
    from /proc/cpuinfo text (read when ``text`` is None); without one (not Linux) the model is
    platform.processor() and the flags are unknown (all False)."""
    if text is None:
        try:
            text = Path('/proc/cpuinfo').read_text()
        except OSError:
            text = ''
    model, flags, processors = parse_cpuinfo(text)
    return {'model': model or platform.processor() or platform.machine(), 'cores': processors or os.cpu_count() or 1,
            'flags': {'avx2': 'avx2' in flags, 'avx512f': 'avx512f' in flags, 'avx512_vnni': 'avx512_vnni' in flags,
                      'avx_vnni': 'avx_vnni' in flags, 'amx': any(f.startswith('amx') for f in flags)}}


def cpu_text(info):
    """'AMD EPYC, 2 cores (AVX2, AVX-512, AVX512-VNNI, AVX-VNNI; no AMX)' for a cpu_info()."""
    names = {'avx2': 'AVX2', 'avx512f': 'AVX-512', 'avx512_vnni': 'AVX512-VNNI', 'avx_vnni': 'AVX-VNNI',
             'amx': 'AMX'}
    has = [names[k] for k, v in info['flags'].items() if v]
    lacks = [names[k] for k in ('avx512_vnni', 'amx') if not info['flags'].get(k)]
    sets = ', '.join(has) or 'no AVX2'
    return f'{info["model"]}, {info["cores"]} cores ({sets}' + (f'; no {", ".join(lacks)})' if lacks else ')')


if __name__ == '__main__':
    if sys.argv[1:] != ['--worker']:
        sys.exit('usage: python3 -m utils.deploy.latency --worker (started by utils.deploy.latency.time_per_process)')
    worker_main()
