"""compress.py (utils/compress/showcase.py on utils/compress/pipeline.py): budgets and one-line errors, the report,
headline and plot written from stage records, and a real tiny run up to fine-tuning that
reports a distillation stage which cannot run and goes on, then resumes without rerunning
anything. (The export, test and benchmark stages take minutes even on tiny data: see README
"Compression showcase" for the measured --quick run.)"""
import json
import sys
import time
from pathlib import Path

import pytest

import compress
import models
from darknet_ref import randomize
from test_train import tiny_data  # noqa: F401  (a fixture)
from utils.compress import showcase as showcase
from utils.compress.pipeline import DEFAULT_PLANS

ROOT = Path(__file__).resolve().parents[1]
IMG = 128
PLAN = 'slim:0.5:k0.2'


@pytest.fixture(scope='module')
def base_ckpt(tmp_path_factory):
    """A float checkpoint as train.py leaves it, with the results.csv row of its epoch (random
    weights: the stages only need to run)."""
    run = tmp_path_factory.mktemp('base')
    model = randomize(models.Darknet('cfg/yolov3-mini-shapes.cfg', img_size=IMG), size=IMG)
    models.save_checkpoint(run / 'weights' / 'best.pt', model, epoch=1,
                           names=['circle', 'square', 'triangle', 'star', 'ring'])
    (run / 'results.csv').write_text('epoch,mAP@0.5,mAP@0.5:0.95\n0,0.25,0.125\n1,0.5,0.25\n')
    return str(run / 'weights' / 'best.pt')


def test_budgets_and_one_line_errors(tmp_path, capsys):
    quick = showcase.fill_budget(compress.parse_args(['--quick']))
    assert (quick.base_epochs, quick.sr_epochs, quick.ft_epochs, quick.qat_epochs) == (3, 2, 2, 1)
    assert quick.plans == ['slim:0.76:k0.2'] and quick.out == 'runs/compress_quick'
    full = showcase.fill_budget(compress.parse_args(['--ft-epochs', '4']))
    assert full.plans == DEFAULT_PLANS and (full.base_epochs, full.ft_epochs) == (10, 4)
    assert full.out == 'runs/compress'  # not the quick run's folder: its stages have other budgets
    sys.path.insert(0, str(ROOT / 'bench'))
    import bench_prune
    assert bench_prune.DEFAULT_PLANS is DEFAULT_PLANS  # one definition of the plans, shared
    weights = tmp_path / 'm.weights'
    weights.write_bytes(b'\0' * 20)
    for argv, message in ((['--plans', 'slimm:0.5'], "unknown method 'slimm'"),
                          (['--plans', 'layer_channel:0.5'], 'takes percent:shortcuts'),
                          (['--pick', 'slim:0.9'], '--pick slim:0.9: not one of the plans'),
                          (['--ft-epochs', '0'], '--ft-epochs must be >= 1'),
                          (['--base', 'nope.pt'], '--base nope.pt not found'),
                          (['--base', str(weights)], 'give a train.py .pt checkpoint'),
                          (['--data', 'nope.data'], '--data nope.data not found')):
        with pytest.raises(SystemExit, match=r'^error: .*' + message.replace('.', r'\.')):
            compress.main(['--quick', '--out', str(tmp_path / 'never'), *argv])
    assert not (tmp_path / 'never').exists()  # refused before any work


def deploy_rows(out, maps, ms):
    """Deploy records as the export/test/benchmark stages leave them, with mAP@0.5 and median
    ms per (model, precision, runtime) from ``maps`` / ``ms`` (default 0.9 / 10 ms)."""
    rows, times = [], {}
    for model, precision, fmt, runtime in showcase.DEPLOY:
        key = f'{model}_{precision[:4]} {fmt}'
        m = maps.get((model, precision, runtime), 0.9)
        rows.append({'key': key, 'model': model, 'precision': precision, 'format': fmt, 'runtime': runtime,
                     'file': str(out / 'deploy' / f'{key}.x'), 'mb': 1.0, 'map50': m, 'map50_95': m - 0.3})
        t = ms.get((model, precision, runtime), 10.0)
        times[f'{key} {runtime}'] = {'median_ms': t, 'p10_ms': t * 0.9, 'p90_ms': t * 1.1, 'first_call_ms': 2 * t}
    return rows, times


def records(out, maps=(), ms=(), kd_error=None):
    model = {'params': 300_000, 'gflops': 0.28, 'mb': 1.2, 'epochs': 2, 'map50': 0.9, 'map50_95': 0.6}
    plain = {'plan': 'slim:0.76:k0.2', 'kind': 'plain', 'name': 'finetune_slim_0.76_k0.2',
             'pt': str(out / 'finetune_slim_0.76_k0.2' / 'weights' / 'best.pt'), **model}
    kd = {'plan': plain['plan'], 'kind': 'distilled (KDstr 3)', 'name': 'distill_slim_0.76_k0.2'}
    kd.update({'error': kd_error} if kd_error else {**model, 'map50': 0.91, 'pt': str(out / 'distill' / 'best.pt')})
    deploy, times = deploy_rows(out, dict(maps), dict(ms))
    times['plan finetune_slim_0.76_k0.2'] = {'median_ms': 6.0, 'p10_ms': 5.9, 'p90_ms': 6.1}
    return {'out': str(out), 'command': 'python3 compress.py --quick', 'timings': {'baseline': 120.0, 'export': 60.0},
            'baseline': {**model, 'pt': str(out / 'baseline' / 'weights' / 'best.pt'), 'params': 1_566_090},
            'sparsity': {**model, 'pt': str(out / 'sparsity' / 'weights' / 'best.pt')},
            'prune': [{'plan': plain['plan'], 'pt': str(out / 'p.pt'), 'params': 300_000, 'gflops': 0.28,
                       'removed': 0.8, 'mb': 1.2, 'map50_pruned': 0.5, 'map50': 0.6, 'map50_95': 0.3}],
            'finetune': [plain, kd], 'student': plain if kd_error else kd,
            'qat': {**model, 'name': 'qat_x', 'pt': str(out / 'qat_x' / 'weights' / 'best.pt')},
            'deploy': deploy, 'latency': {'meta': {'threads': 2, 'runs': 60, 'torch': 't', 'onnxruntime': 'o',
                                                   'openvino': 'v', 'opencv': 'c', 'date': 'd', 'turn_calls': 6},
                                      'times': times}}


def test_headline_picks_the_fastest_within_the_tolerance():
    out = Path('/nowhere')
    fast_qat = {('qat', 'INT8 (QAT)', 'OpenVINO'): 0.895}, {('qat', 'INT8 (QAT)', 'OpenVINO'): 0.9}
    h = showcase.headline(records(out, *fast_qat), 0.01)
    assert (h['runtime'], h['precision'], h['model']) == ('OpenVINO', 'INT8 (QAT)', 'pruned slim:0.76:k0.2 + KD + QAT')
    assert h['speedup'] == pytest.approx(10 / 0.9) and h['delta_points'] == pytest.approx(-0.5)
    assert h['within_tolerance'] and h['target_met']
    # the fastest file lost too much: the fastest one within 1 point wins, and 5x misses the target
    fast = {('qat', 'INT8 (QAT)', 'OpenVINO'): 0.9, ('student', 'INT8 (PTQ)', 'ONNX Runtime'): 2}
    h = showcase.headline(records(out, {('qat', 'INT8 (QAT)', 'OpenVINO'): 0.85}, fast), 0.01)
    assert (h['precision'], h['runtime'], h['speedup'], h['target_met']) == ('INT8 (PTQ)', 'ONNX Runtime', 5, False)
    # nothing within 1 point: the most accurate compressed file, said so
    maps = {(m, p, r): 0.8 for m, p, _, r in showcase.DEPLOY if m != 'baseline'}
    maps[('student', 'FP32', 'OpenCV DNN')] = 0.85
    h = showcase.headline(records(out, maps, {}), 0.01)
    assert (h['precision'], h['runtime'], h['within_tolerance']) == ('FP32', 'OpenCV DNN', False)
    assert 'no compressed model within 1 point' in showcase.headline_text(h, 0.01)
    # mAPs a few thousandths apart are one model's runtimes: the fastest of them, not the third digit
    maps[('student', 'FP32', 'OpenVINO')] = 0.848
    h = showcase.headline(records(out, maps, {('student', 'FP32', 'OpenVINO'): 0.5}), 0.01)
    assert (h['precision'], h['runtime'], h['within_tolerance']) == ('FP32', 'OpenVINO', False)


def test_pick_by_latency_takes_the_fastest_plan_within_the_tolerance(tmp_path, monkeypatch):
    """--pick-by latency: of the plans within --tolerance after plain fine-tuning, the fastest in
    OpenVINO (timed once, kept in pick_latency.json and reused while the candidates are the
    same), not the fewest GFLOPs; --pick-by gflops: the fewest GFLOPs; nothing within the
    tolerance: the most accurate. The report says why."""
    import utils.deploy.latency as latency
    args = showcase.fill_budget(compress.parse_args(['--out', str(tmp_path / 'c'), '--plans', 'slim:0.7',
                                                     'regular:0.5:b8', 'regular:0.5:b16']))
    show = showcase.Showcase(args)
    show.rec['baseline'] = {'map50': 0.9}
    rows = [{'plan': 'slim:0.7', 'name': 'finetune_slim_0.7', 'pt': 'a.pt', 'map50': 0.88, 'gflops': 0.2},
            {'plan': 'regular:0.5:b8', 'name': 'finetune_regular_0.5_b8', 'pt': 'b.pt', 'map50': 0.895, 'gflops': 0.3},
            {'plan': 'regular:0.5:b16', 'name': 'finetune_regular_0.5_b16', 'pt': 'c.pt', 'map50': 0.9, 'gflops': 0.35}]
    ms = {'regular:0.5:b8': 5e-3, 'regular:0.5:b16': 4e-3}
    calls = []
    monkeypatch.setattr(showcase, 'export', lambda path, weights, a, fmt: calls.append(weights) or Path(path))
    monkeypatch.setattr('utils.deploy.backends.openvino_xml', lambda folder: Path(folder) / 'm.xml')
    # each turn's first call is cold (10x slower here): the pick goes by the back-to-back calls
    monkeypatch.setattr(latency, 'time_per_process', lambda jobs, runs, per_turn: {
        k: ([10 * ms[k]] + [ms[k]] * (per_turn - 1)) * 3 for k in jobs})
    assert show.pick(rows)['plan'] == 'regular:0.5:b16'  # slim:0.7 is 2 points below: not a candidate
    assert sorted(calls) == ['b.pt', 'c.pt']
    assert show.pick(rows)['plan'] == 'regular:0.5:b16' and len(calls) == 2  # reused, not re-timed
    assert json.loads((tmp_path / 'c' / 'pick_latency.json').read_text())['ms'] == {'regular:0.5:b8': 5.0,
                                                                                   'regular:0.5:b16': 4.0}
    args.pick_by = 'gflops'
    assert show.pick(rows)['plan'] == 'regular:0.5:b8'
    show.rec['baseline'] = {'map50': 0.95}
    assert show.pick(rows)['plan'] == 'regular:0.5:b16'  # none within: the most accurate
    for plan, message in (('slim:0.7:b8', ':b (--channel-base) is for regular plans'),
                          ('regular:0.5:k0.2', ':k (--layer_keep) is for slim and layer_channel plans')):
        with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
            showcase.parse_plan(plan)
    assert showcase.parse_plan('regular:0.5:b16') == ('regular', ['--percent', '0.5', '--channel-base', '16'])


def test_changed_settings_compare_numbers_only():
    """A finished stage is reused only with the numeric settings it was trained with; flags
    without a value and paths (a resumed run records its own) are not compared."""
    saved = {'s': 0.05, 'prune': 1, 'sr': True, 'KDstr': 3, 'weights': 'runs/x/last.pt', 'epochs': 2}
    extra = ['--weights', 'base.pt', '-sr', '--s', 0.05, '--prune', 1, '--KDstr', 6, '--epochs', 2]
    assert showcase.changed_settings(saved, extra) == ['--KDstr 6 (was 3)']
    assert showcase.changed_settings(saved, ['--s', '0.01', '--new-flag', 3]) == ['--s 0.01 (was 0.05)']
    assert showcase.changed_settings(saved, ['-sr', '--prune', '1']) == []
    teacher = {'t_weights': str(ROOT / 'runs/c/baseline/weights/best.pt'), 'KDstr': 6}  # named relative in the error
    assert showcase.changed_settings(teacher, ['--t_weights', ROOT / 'runs/c/sparsity/weights/best.pt', '--KDstr', 6]) == [
        '--t_weights runs/c/sparsity/weights/best.pt (was runs/c/baseline/weights/best.pt)']
    assert showcase.changed_settings(teacher, ['--t_weights', ROOT / 'runs/c/../c/baseline/weights/best.pt']) == []


def test_latency_stage_reports_back_to_back_calls_and_first_calls(tmp_path, monkeypatch):
    """measure_latency times turns of TURN_CALLS calls: the summary (and so the headline) is
    the back-to-back calls, first_call_ms the median of each turn's cold first call."""
    import utils.deploy.latency as latency
    args = showcase.fill_budget(compress.parse_args(['--quick', '--out', str(tmp_path)]))
    show = showcase.Showcase(args)
    show.rec.update(records(tmp_path))
    monkeypatch.setattr(show, 'sources', lambda: {m: [f'{m}.pt'] for m in ('baseline', 'student', 'qat')})
    monkeypatch.setattr(show, 'model_info', lambda pt: {'gflops': 0.5})
    monkeypatch.setattr('utils.deploy.backends.openvino_xml', lambda folder: Path(folder) / 'm.xml')
    seen = {}

    def fake(jobs, runs, per_turn):
        seen.update(runs=runs, per_turn=per_turn)
        return {k: ([0.05] + [0.01 if 'OpenCV' in k else 0.002] * (per_turn - 1)) * runs for k in jobs}
    monkeypatch.setattr(latency, 'time_per_process', fake)
    keys = [f'{r["key"]} {r["runtime"]}' for r in show.rec['deploy']]
    got = showcase.measure_latency(show, keys)
    assert seen == {'runs': args.latency_runs, 'per_turn': showcase.TURN_CALLS}
    assert got['meta']['turn_calls'] == showcase.TURN_CALLS
    ref = got['times']['baseline_FP32 darknet OpenCV DNN']
    assert ref['median_ms'] == pytest.approx(10) and ref['first_call_ms'] == pytest.approx(50)
    assert ref['runs'] == args.latency_runs * (showcase.TURN_CALLS - 1)
    ov = got['times']['qat_INT8 openvino OpenVINO']
    assert ov['median_ms'] == pytest.approx(2) and ov['ratio_to_opencv'] == pytest.approx(0.2)


def test_a_plan_the_model_cannot_take_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    """A prune script's one-line error reaches the report; the other plans are pruned and
    fine-tuned; every plan failing ends the run with all their errors."""
    from utils.compress import pipeline
    args = showcase.fill_budget(compress.parse_args(['--out', str(tmp_path), '--plans', 'normal:0.55', 'slim:0.7']))
    show = showcase.Showcase(args)
    model = {'params': 100, 'gflops': 1.0, 'mb': 1.0, 'epochs': 1, 'map50': 0.9, 'map50_95': 0.6}
    show.rec.update({'timings': {}, 'sparsity': {**model, 'pt': 'sparse.pt'}, 'baseline': {**model, 'pt': 'b.pt'}})
    log = tmp_path / 'prune_normal_0.55.log'
    log.write_text('Pruning ...\nError: --percent 0.55: layer 20 would lose all 128 channels\n')
    pt = tmp_path / 'slim.pt'
    pt.write_bytes(b'x' * 1024)
    stages = [{'label': 'original', 'params': 100, 'gflops': 1.0, 'map50': 0.9, 'map50_95': 0.6},
              {'label': 'compact', 'params': 30, 'gflops': 0.4, 'map50': 0.5, 'map50_95': 0.3, 'saved': True}]

    def fake_prune(out, weights, plan, a):
        if plan.startswith('normal'):
            pipeline.run(['-c', 'import sys; sys.exit(1)'], log, append=True)
        return {'stages': stages, 'files': {'pt': str(pt)}}
    monkeypatch.setattr(showcase, 'prune', fake_prune)
    show.prune()
    failed, ok = show.rec['prune']
    assert failed['plan'] == 'normal:0.55' and 'layer 20 would lose all 128 channels' in failed['error']
    assert ok['plan'] == 'slim:0.7' and ok['removed'] == pytest.approx(0.7) and ok['map50_pruned'] == 0.5
    trained = []
    monkeypatch.setattr(show, 'trained', lambda name, epochs, extra: trained.append(name) or dict(model))
    monkeypatch.setattr(show, 'pick', lambda rows: rows[0])
    show.finetune()
    assert trained == ['finetune_slim_0.7', 'distill_slim_0.7']
    args.pick = 'normal:0.55'  # the failed plan cannot go on: one clear line
    with pytest.raises(pipeline.StageFailed, match='--pick normal:0.55: that plan was not pruned'):
        showcase.Showcase.pick(show, [{'plan': 'slim:0.7'}])
    args.pick = 'auto'
    assert '| normal:0.55 | **failed**: failed (1): Error: --percent 0.55' in showcase.markdown(show.rec, args)
    assert pipeline.rel(ROOT / 'runs' / 'compress' / 'p.log') == 'runs/compress/p.log'  # how errors name logs
    monkeypatch.setattr(showcase, 'prune', lambda *a: pipeline.run(['-c', 'import sys; sys.exit(1)'], log))
    with pytest.raises(pipeline.StageFailed, match='every plan failed: normal:0.55 .*slim:0.7'):
        show.prune()


def test_report_and_plot_from_records(tmp_path):
    args = showcase.fill_budget(compress.parse_args(['--quick', '--out', str(tmp_path)]))
    show = showcase.Showcase(args)
    qat_ov = ('qat', 'INT8 (QAT)', 'OpenVINO')
    show.rec.update(records(tmp_path, {qat_ov: 0.895}, {qat_ov: 1},
                            kd_error='distillation (train.py ...) failed: see distill.log'))
    show.write_report()
    md = (tmp_path / 'report.md').read_text()
    for section in ('## 1. Baseline', '## 2. Sparsity', '## 3. Pruning', '## 4. Fine-tuning', '## 5. Quantization',
                    '## 6. Deployment', '### Latency by runtime'):
        assert section in md, section
    assert '**Headline:** pruned slim:0.76:k0.2 + QAT, INT8 (QAT), in OpenVINO' in md
    assert '**10.0x faster** (first call of a turn, after the other files\' turns: 2.00 vs 20.00 ms, 10.0x)' in md
    assert '(**-0.5 points**)' in md and 'within 1 point: met' in md
    assert '60 interleaved rounds of 6 calls per file' in md
    assert '| 10.00 (9.00-11.00) | 20.00 | 1.0x |' in md  # the float model in OpenCV DNN: back to back, first call
    assert '| slim:0.76:k0.2 | distilled (KDstr 3) | **failed**: distillation' in md
    assert '| baseline/weights/best.pt | 2 |' in md  # files named relative to --out
    assert 'Picked: slim:0.76:k0.2 (the only plan)' in md  # --quick has one plan: nothing was compared
    assert str(ROOT) not in md
    rec = json.loads((tmp_path / 'report.json').read_text())
    assert rec['headline']['speedup'] == pytest.approx(10) and rec['headline']['target_met']
    png = (tmp_path / 'accuracy_latency.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
    # a report before the benchmark: no headline yet, no plot
    partial = tmp_path / 'partial'
    show = showcase.Showcase(showcase.fill_budget(compress.parse_args(['--quick', '--out', str(partial)])))
    show.rec.update({k: v for k, v in records(partial).items() if k in ('baseline', 'sparsity')})
    show.write_report()
    assert 'Headline: pending' in (partial / 'report.md').read_text()
    assert not (partial / 'accuracy_latency.png').exists()


def test_tiny_run_reports_a_failed_distillation_and_resumes(tmp_path, tiny_data, base_ckpt):
    out = tmp_path / 'c'
    argv = ['--data', str(tiny_data), '--base', base_ckpt, '--img-size', str(IMG), '--workers', '0', '--sr-epochs', '1',
            '--ft-epochs', '1', '--plans', PLAN, '--until', 'finetune', '--out', str(out)]
    stale = out / 'distill_slim_0.5_k0.2'  # as a distillation run killed before its first epoch leaves it
    stale.mkdir(parents=True)
    rec = compress.main(argv)
    assert [r['kind'] for r in rec['finetune']] == ['plain', 'distilled (KDstr 6)']
    assert 'holds an unfinished run without a checkpoint' in rec['finetune'][1]['error']
    assert rec['student']['name'] == 'finetune_slim_0.5_k0.2'  # went on with the plain fine-tuned model
    assert rec['prune'][0]['params'] < rec['baseline']['params'] == rec['sparsity']['params']
    assert (rec['baseline']['map50'], rec['baseline']['map50_95']) == (0.5, 0.25)  # its run's row of its epoch
    md = (out / 'report.md').read_text()
    assert '**failed**' in md and '## 4. Fine-tuning' in md and '## 5.' not in md
    assert set(json.loads((out / 'timings.json').read_text())) == {'baseline', 'sparsity', 'prune', 'finetune'}
    logs = {p: p.stat().st_mtime_ns for p in out.glob('*.log')}
    assert {p.name for p in logs} == {'sparsity.log', 'prune_slim_0.5_k0.2.log', 'finetune_slim_0.5_k0.2.log'}
    t0 = time.time()
    again = compress.main(argv)  # every stage's output exists: nothing runs again
    assert time.time() - t0 < 20
    assert {p: p.stat().st_mtime_ns for p in out.glob('*.log')} == logs
    assert again['student'] == rec['student'] and again['prune'] == rec['prune']
    with pytest.raises(SystemExit, match='sparsity was trained for 1 epoch.*asks for 2'):
        compress.main([*argv, '--sr-epochs', '2'])
    with pytest.raises(SystemExit, match=r'sparsity was trained with other settings \(--s 0.01 \(was 0.05\)\)'):
        compress.main([*argv, '--s', '0.01'])
