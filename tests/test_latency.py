"""utils.deploy.latency: per-process timing (worker protocol, interleaved rounds, failures), cpu_info,
and the summaries the reports read. Invariants only: no assertion on measured speed.

The runner factories below run inside the worker processes (they import this module by name
from the parent's sys.path), so the module imports nothing heavy at the top."""
import os
import time

import pytest

from utils.deploy import latency
from utils.deploy.latency import Job, cpu_info, cpu_text, summarize, time_per_process

SHAPE = (1, 3, 8, 8)


def sleeper(seconds):
    print('library noise on stdout')  # must not corrupt the worker's replies
    return lambda x: time.sleep(seconds)


def recorder(log, name, warmup):
    """Appends 'name kind start end' per call (kind: warm for the first ``warmup`` calls)."""
    calls = []

    def run(x):
        t0 = time.time()
        time.sleep(0.01)
        kind = 'warm' if len(calls) < warmup else 'timed'
        calls.append(1)
        with open(log, 'a') as f:
            f.write(f'{name} {kind} {t0!r} {time.time()!r}\n')
    return run


def broken(at_call, how='raise'):
    """Fails at call ``at_call`` (0: while loading): raises, or exits the process."""
    calls = []

    def fail():
        if how == 'exit':
            os._exit(3)
        raise ValueError('layer type [yolo2] is not supported')
    if at_call == 0:
        fail()

    def run(x):
        calls.append(1)
        if len(calls) == at_call:
            fail()
    return run


def thread_env(threads):
    if os.environ.get('OMP_NUM_THREADS') != str(threads):
        raise RuntimeError(f'OMP_NUM_THREADS is {os.environ.get("OMP_NUM_THREADS")}, not {threads}')
    return lambda x: x.sum()


def test_worker_times_cover_a_known_sleep():
    jobs = {'sleep': Job('test_latency:sleeper', {'seconds': 0.02}, 1, SHAPE)}
    times = time_per_process(jobs, runs=3, per_turn=2, gap=0)
    assert list(times) == ['sleep'] and len(times['sleep']) == 6
    assert all(t >= 0.02 for t in times['sleep']), times


def test_rounds_interleave_one_worker_at_a_time(tmp_path):
    log, names, runs = tmp_path / 'calls.txt', ['a', 'b', 'c'], 4
    jobs = {n: Job('test_latency:recorder', {'log': str(log), 'name': n, 'warmup': 1}, 1, SHAPE) for n in names}
    times = time_per_process(jobs, runs=runs, warmup=1, gap=0)
    assert {n: len(t) for n, t in times.items()} == {n: runs for n in names}
    calls = [line.split() for line in log.read_text().splitlines()]
    assert sorted(c[0] for c in calls if c[1] == 'warm') == names  # each warmed up once, before round 1
    timed = sorted((float(start), float(end), name) for name, kind, start, end in calls if kind == 'timed')
    assert all(end <= nxt for (_, end, _), (nxt, _, _) in zip(timed, timed[1:]))  # never two at once
    order = [name for _, _, name in timed]
    for r in range(runs):  # every worker once per round, the first one rotating
        block = order[3 * r:3 * r + 3]
        assert sorted(block) == names and block[0] == names[r % 3], order


def test_split_turns_by_hand():
    first, later = latency.split_turns([9, 1, 2, 8, 3, 4], 3)  # two turns of 3 calls
    assert first == [9, 8] and later == [1, 2, 3, 4]
    with pytest.raises(ValueError, match='whole turns'):
        latency.split_turns([1, 2, 3, 4], 3)


def test_a_failing_runtime_is_dropped_with_one_line():
    jobs = {'good': Job('test_latency:sleeper', {'seconds': 0.001}, 1, SHAPE),
            'OpenCV DNN': Job('test_latency:broken', {'at_call': 0}, 1, SHAPE),
            'ORT INT8': Job('test_latency:broken', {'at_call': 4}, 1, SHAPE),  # 2 warm-up calls, fails in round 2
            'crashes': Job('test_latency:broken', {'at_call': 3, 'how': 'exit'}, 1, SHAPE),
            'missing': Job('no_such_module:runner', {}, 1, SHAPE)}
    lines = []
    times = time_per_process(jobs, runs=3, gap=0, log=lines.append)
    assert list(times) == ['good'] and len(times['good']) == 3
    assert len(lines) == 4, lines
    by_name = {line.split(':')[0].strip(): line for line in lines}
    assert 'skipped (ValueError: layer type [yolo2] is not supported)' in by_name['OpenCV DNN']
    assert 'dropped in round 2 (ValueError: layer type [yolo2]' in by_name['ORT INT8']
    assert 'dropped in round 1 (worker exited with status 3' in by_name['crashes']
    assert "ModuleNotFoundError: No module named 'no_such_module'" in by_name['missing']


def test_worker_environment_carries_the_thread_count():
    jobs = {f'{t} threads': Job('test_latency:thread_env', {'threads': t}, t, SHAPE) for t in (1, 2)}
    lines = []
    assert set(time_per_process(jobs, runs=1, gap=0, log=lines.append)) == set(jobs), lines


INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
"""
OLDER = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-12700
flags\t\t: fpu sse2 avx avx2 fma avx_vnni
"""


def test_cpu_info_parses_proc_cpuinfo():
    info = cpu_info(INTEL)
    assert info == {'model': 'Intel(R) Xeon(R) Platinum 8480+', 'cores': 2,
                    'flags': {'avx2': True, 'avx512f': True, 'avx512_vnni': True, 'avx_vnni': False, 'amx': True}}
    assert cpu_text(info) == 'Intel(R) Xeon(R) Platinum 8480+, 2 cores (AVX2, AVX-512, AVX512-VNNI, AMX)'
    older = cpu_info(OLDER)
    assert older['cores'] == 1 and older['flags'] == {'avx2': True, 'avx512f': False, 'avx512_vnni': False,
                                                      'avx_vnni': True, 'amx': False}
    assert cpu_text(older).endswith('1 cores (AVX2, AVX-VNNI; no AVX512-VNNI, AMX)')
    bare = cpu_info('')  # not Linux: a name from platform, no flags
    assert bare['model'] and not any(bare['flags'].values()) and bare['cores'] >= 1


def test_summaries_carry_what_the_reports_read():
    import bench.run as bench_run
    from utils.compress.showcase import deployment_lines
    jobs = {'OpenCV DNN': Job('test_latency:sleeper', {'seconds': 0.002}, 1, SHAPE),
            'ORT FP32': Job('test_latency:sleeper', {'seconds': 0.001}, 1, SHAPE)}
    times = time_per_process(jobs, runs=3, per_turn=3, gap=0)
    rows = latency.summarize_turns(times, 3, {rt: 2.0 for rt in times}, 1, 'OpenCV DNN')
    assert rows['OpenCV DNN']['ratio_to_opencv'] == pytest.approx(1) and rows['ORT FP32']['runs'] == 6
    meta = {'date': 'd', 'cpu': cpu_info(INTEL), 'threads': [1], 'runs': 3, 'calls': 3, 'batches': [1], 'torch': 't',
            'onnxruntime': 'o', 'openvino': 'v', 'opencv': 'c', 'matmul_gflops': 100.0}
    md = bench_run.markdown([{'model': 'm', 'img_size': 64, 'gflops': 2.0, 'batches': {1: {1: rows}}}], meta)
    assert 'CPU: Intel(R) Xeon(R) Platinum 8480+, 2 cores' in md and '## Batch 1, 1 thread' in md
    assert f'{rows["ORT FP32"]["median_ms"]:.1f} [{rows["ORT FP32"]["p10_ms"]:.1f}-' in md
    assert '2 back-to-back calls' in md and 'First call of each turn' in md
    assert f'| m 64 | {rows["OpenCV DNN"]["first_call_ms"]:.1f} | {rows["ORT FP32"]["first_call_ms"]:.1f} |' in md
    deploy = [{'model': 'baseline', 'precision': 'FP32', 'runtime': 'OpenCV DNN', 'key': 'baseline FP32 darknet',
               'file': '/x/m.weights', 'mb': 1.0}]
    rec = {'out': '/x', 'deploy': deploy, 'latency': {'meta': {**meta, 'threads': 1},
                                         'times': {'baseline FP32 darknet OpenCV DNN': rows['OpenCV DNN']}}}
    text = '\n'.join(deployment_lines(rec))
    assert 'CPU: Intel(R) Xeon(R) Platinum 8480+' in text and 'each file in its own process' in text


def test_turn_summaries_by_hand():
    """Two turns of 3 calls: the first calls (9, 8 ms) are reported apart from the back-to-back
    ones, and the ratio is to the reference's back-to-back median; one-call turns use every call."""
    times = {'ref': [0.009, 0.004, 0.004, 0.008, 0.004, 0.004], 'fast': [0.005, 0.001, 0.002, 0.007, 0.001, 0.002]}
    rows = latency.summarize_turns(times, 3, {'ref': 1.0, 'fast': 2.0}, 1, 'ref')
    assert rows['ref']['median_ms'] == pytest.approx(4) and rows['ref']['first_call_ms'] == pytest.approx(8.5)
    assert rows['fast']['median_ms'] == pytest.approx(1.5) and rows['fast']['first_call_ms'] == pytest.approx(6)
    assert rows['fast']['ratio_to_opencv'] == pytest.approx(1.5 / 4) and rows['fast']['runs'] == 4
    assert rows['fast']['gflops_per_s'] == pytest.approx(2.0 / 0.0015)
    single = latency.summarize_turns({'a': [0.003, 0.001, 0.002]}, 1, {'a': 1.0}, 1)
    assert single['a']['median_ms'] == pytest.approx(2) and single['a']['first_call_ms'] == pytest.approx(2)
    assert single['a']['runs'] == 3 and single['a']['ratio_to_opencv'] is None
    assert latency.summarize_turns({'a': [0.003, 0.001, 0.002]}, 1)['a']['gflops_per_s'] == 0  # FLOPs unknown


def test_summary_by_hand():
    s = summarize([0.004, 0.001, 0.003, 0.002, 0.005], gflops_per_image=1.0, batch=2, opencv_ms=6.0)
    assert s['median_ms'] == pytest.approx(3) and s['p10_ms'] == pytest.approx(1.4)
    assert s['p90_ms'] == pytest.approx(4.6) and s['gflops_per_s'] == pytest.approx(2 / 0.003)
    assert s['ratio_to_opencv'] == pytest.approx(0.5) and s['runs'] == 5


def test_prune_latency_is_a_per_process_run(monkeypatch):
    import torch

    import models
    from utils.compress import prune_run
    seen = {}

    def spy(jobs, runs, **kw):
        seen.update(jobs=jobs, runs=runs)
        return time_per_process(jobs, runs, **kw)
    monkeypatch.setattr(latency, 'time_per_process', spy)
    small = models.Darknet('cfg/yolov3-mini-shapes.cfg', img_size=64)
    ms = prune_run.measure_latency([small, small], 64, 2, torch.device('cpu'))
    assert len(ms) == 2 and all(m > 0 for m in ms)
    assert seen['runs'] == 2 and [j.shape for j in seen['jobs'].values()] == [(1, 3, 64, 64)] * 2
    assert all(j.factory == 'utils.deploy.latency:torch_file_runner' and j.kwargs['fused'] for j in seen['jobs'].values())
