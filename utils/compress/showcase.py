"""The end-to-end compression showcase behind compress.py: baseline -> BN-sparsity training ->
pruning -> fine-tuning with and without distillation -> QAT -> exports -> mAP of every
exported file -> one latency run (a process per file) -> report.md, report.json and an
accuracy-versus-latency plot in --out.

Every stage runs the project's real command lines through utils/compress/pipeline.py (the stages
bench/bench_prune.py and bench/bench_quant.py use), so a stage whose outputs exist is skipped
and an interrupted showcase continues where it stopped; the report is rewritten after every
stage from what the stage folders hold. The latency run times every file in its own process
(utils.deploy.latency.time_per_process, rounds interleaved) and is stored in --out/latency.json.
"""
import csv
import json
import shlex
import sys
import time
from pathlib import Path

from utils.general import atomic_write_text
from utils.deploy.latency import TURN_CALLS
from utils.compress.pipeline import (DEFAULT_PLANS, ROOT, StageFailed, evaluate, export, parse_plan, plan_name, prune,
                                     qat_hyp, rel, saved_stage, train)

QUICK_PLANS = ['slim:0.76:k0.2']  # 80% of the parameters go; fine-tunes back to the baseline's mAP
# epochs per stage: the full budgets are the measured recipes (README "Pruning", bench_quant);
# the quick ones keep the showcase to minutes on 2 CPU cores (times per CPU: README "Compression showcase")
BUDGETS = {'quick': {'base_epochs': 3, 'sr_epochs': 2, 'ft_epochs': 2, 'qat_epochs': 1},
           'full': {'base_epochs': 10, 'sr_epochs': 10, 'ft_epochs': 5, 'qat_epochs': 3}}
QAT_FLAGS = ['--quantized', '1']  # Google 8-bit (bench_quant's g8 recipe): plain QDQ for every runtime
STAGES = ('baseline', 'sparsity', 'prune', 'finetune', 'qat', 'export', 'test', 'benchmark')
RUNTIMES = ('OpenCV DNN', 'PyTorch fused', 'ONNX Runtime', 'OpenVINO')
# what gets exported and timed: (model, precision, format, runtime); model 'student' is the
# chosen pruned model after fine-tuning (plain or distilled, whichever scored higher)
DEPLOY = [('baseline', 'FP32', 'darknet', 'OpenCV DNN'), ('baseline', 'FP32', 'pt', 'PyTorch fused'),
          ('baseline', 'FP32', 'onnx', 'ONNX Runtime'), ('baseline', 'FP32', 'openvino', 'OpenVINO'),
          ('student', 'FP32', 'darknet', 'OpenCV DNN'), ('student', 'FP32', 'pt', 'PyTorch fused'),
          ('student', 'FP32', 'onnx', 'ONNX Runtime'), ('student', 'FP32', 'openvino', 'OpenVINO'),
          ('student', 'INT8 (PTQ)', 'onnx', 'ONNX Runtime'), ('student', 'INT8 (PTQ)', 'openvino', 'OpenVINO'),
          ('qat', 'INT8 (QAT)', 'onnx', 'ONNX Runtime'), ('qat', 'INT8 (QAT)', 'openvino', 'OpenVINO')]
SUFFIX = {'onnx': '.onnx', 'openvino': '_openvino', 'darknet': '.weights'}
TARGET_SPEEDUP = 10  # issue 15: compressed in its fastest runtime >= 10x the float model in OpenCV DNN


def fill_budget(args):
    """Epoch counts and plans not given on the command line come from the --quick or full budget;
    user mistakes raise ValueError (one line via user_errors)."""
    for key, value in BUDGETS['quick' if args.quick else 'full'].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or ('runs/compress_quick' if args.quick else 'runs/compress')
    if args.plans is None:
        args.plans = list(QUICK_PLANS if args.quick else DEFAULT_PLANS)
    for plan in args.plans:
        parse_plan(plan)
    if args.pick not in ('auto', *args.plans):
        raise ValueError(f'--pick {args.pick}: not one of the plans ({" ".join(args.plans)})')
    bad = [k for k in BUDGETS['full'] if getattr(args, k) < 1]
    if bad:
        raise ValueError(f'--{bad[0].replace("_", "-")} must be >= 1')
    if args.until not in STAGES:
        raise ValueError(f'--until {args.until}: choose one of {", ".join(STAGES)}')
    if args.base:
        if not Path(args.base).is_file():
            raise FileNotFoundError(f'--base {args.base} not found')
        if not args.base.endswith(('.pt', '.pth')):
            raise ValueError(f'--base {args.base}: give a train.py .pt checkpoint (it carries its cfg, which the '
                             f'teacher, the exports and the pruning scripts need)')
        args.base = str(Path(args.base).resolve())  # the stages run in the repository root
    if args.data != 'data/shapes.data':  # the built-in default is resolved by every script itself
        if not Path(args.data).is_file():
            raise FileNotFoundError(f'--data {args.data} not found')
        args.data = str(Path(args.data).resolve())
    return args


def portable(obj):
    """``obj`` with every path string inside the repository made relative to it (report.json)."""
    root = f'{ROOT}/'
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj.replace(root, '') if isinstance(obj, str) else obj


def plural(n, word):
    return f'{n} {word}{"" if n == 1 else "s"}'


def size_mb(path):
    path = Path(path)
    files = list(path.iterdir()) if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files) / 2 ** 20


def changed_settings(saved, extra):
    """The numeric settings of ``extra`` (train.py arguments, ['--s', 0.05, ...]) and its
    teacher (--t_weights) that differ from a finished run's opt.yaml ``saved``: ['--s 0.05 (was
    0.01)']. Other paths are not compared (a resumed run records its own --weights)."""
    changed = []
    for flag, value in zip(extra, extra[1:]):
        key = str(flag).lstrip('-').replace('-', '_')
        if not str(flag).startswith('-') or key not in saved or isinstance(value, str) and value.startswith('-'):
            continue
        if key == 't_weights':
            if Path(str(value)).resolve() != Path(str(saved[key])).resolve():
                changed.append(f'{flag} {rel(value)} (was {rel(saved[key])})')
            continue
        try:
            want, had = float(value), float(saved[key])
        except (TypeError, ValueError):
            continue
        if want != had:
            changed.append(f'{flag} {value} (was {saved[key]})')
    return changed


class Showcase:
    """The stages in order; ``self.rec`` collects what the report shows (report.json)."""

    def __init__(self, args):
        self.args = args
        out = Path(args.out)
        self.out = out if out.is_absolute() else ROOT / out
        self.out.mkdir(parents=True, exist_ok=True)
        self.deploy_dir = self.out / 'deploy'
        self.deploy_dir.mkdir(exist_ok=True)
        self.timings_path = self.out / 'timings.json'
        timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        command = 'python3 compress.py ' + shlex.join(sys.argv[1:]) if sys.argv[0].endswith('compress.py') else ''
        self.rec = {'out': str(self.out), 'command': command, 'args': dict(vars(args)), 'timings': timings}
        self._info = {}

    # ------------------------------------------------------------------ driver
    def run(self):
        steps = STAGES[:STAGES.index(self.args.until) + 1]
        t_start = time.time()
        for i, name in enumerate(steps, 1):
            print(f'\n[{i}/{len(steps)}] {name}', flush=True)
            t0 = time.time()
            getattr(self, name)()
            seconds = time.time() - t0
            # all invocations summed: a resumed stage adds the little it took to skip
            self.rec['timings'][name] = self.rec['timings'].get(name, 0.0) + seconds
            atomic_write_text(self.timings_path, json.dumps(self.rec['timings'], indent=1))
            print(f'[{i}/{len(steps)}] {name}: {seconds / 60:.1f} min (total {(time.time() - t_start) / 60:.1f} '
                  f'min)', flush=True)
            self.write_report()
        print((self.out / 'report.md').read_text())
        return self.rec

    def model_info(self, pt):
        """Parameters, GFLOPs at --img-size, file MB and saved epoch of a checkpoint (cached)."""
        if pt not in self._info:
            import models
            import utils.compress.quant  # noqa: F401  (registers how a quantization-aware checkpoint is rebuilt)
            model, ckpt = models.model_from_checkpoint(pt, self.args.img_size)
            self._info[pt] = {'params': models.count_parameters(model)[0],
                              'gflops': models.layer_flops(model, self.args.img_size)[1] / 1e9,
                              'mb': size_mb(pt), 'epoch': ckpt.get('epoch')}
        return dict(self._info[pt])

    def run_metrics(self, pt):
        """mAP of a train.py best.pt from its run's results.csv: the row of the epoch it was saved
        at (best.pt is the fittest epoch, not always the last), or None outside a run folder."""
        results = Path(pt).parent.parent / 'results.csv'
        epoch = self.model_info(pt)['epoch']
        if not results.is_file() or epoch is None:
            return None
        rows = [r for r in csv.DictReader(open(results)) if int(float(r['epoch'])) == int(epoch)]
        return {'map50': float(rows[-1]['mAP@0.5']), 'map50_95': float(rows[-1]['mAP@0.5:0.95'])} if rows else None

    def trained(self, name, epochs, extra):
        """train.py stage ``name`` for ``epochs``; its record (best.pt, its mAP, model size).
        A finished run trained for another number of epochs is refused rather than reused."""
        opt_yaml = self.out / name / 'opt.yaml'
        if opt_yaml.is_file():
            import yaml
            saved = yaml.safe_load(opt_yaml.read_text())
            had = int(saved['epochs'])
            if had != epochs:
                raise StageFailed(f'{rel(self.out / name)} was trained for {plural(had, "epoch")}, this showcase asks for '
                                  f'{epochs}: use another --out (or remove that folder)')
            changed = changed_settings(saved, extra)
            if changed:
                raise StageFailed(f'{rel(self.out / name)} was trained with other settings ({", ".join(changed)}): use '
                                  'another --out (or remove that folder)')
        best, last = train(self.out, name, self.args, [*extra, '--epochs', epochs])
        metrics = self.run_metrics(str(best)) or {'map50': last['mAP@0.5'], 'map50_95': last['mAP@0.5:0.95']}
        return {'pt': str(best), 'epochs': epochs, **metrics, **self.model_info(str(best))}

    # ------------------------------------------------------------------ stages
    def baseline(self):
        a = self.args
        if a.base:  # its run's validation if it comes from train.py, else test.py (rect batches too)
            m = self.run_metrics(a.base) or evaluate(self.out, 'baseline_test', a.base, a)
            self.rec['baseline'] = {'pt': a.base, 'epochs': None, 'map50': m['map50'], 'map50_95': m['map50_95'],
                                    **self.model_info(a.base)}
        else:
            self.rec['baseline'] = self.trained('baseline', a.base_epochs, ['--cfg', a.cfg])

    def sparsity(self):
        a = self.args
        self.rec['sparsity'] = self.trained('sparsity', a.sr_epochs, ['--weights', self.rec['baseline']['pt'], '-sr',
                                                                      '--s', a.s, '--prune', 1])

    def prune(self):
        """Every plan on the sparse model; a plan the model cannot take (e.g. a percent that
        would empty a layer) is reported as failed and the others go on."""
        rows = []
        for plan in self.args.plans:
            try:
                report = prune(self.out, self.rec['sparsity']['pt'], plan, self.args)
            except StageFailed as e:
                print(f'WARNING: plan {plan}: {e}; continuing with the other plans', flush=True)
                rows.append({'plan': plan, 'error': str(e)})
                continue
            original, final = report['stages'][0], saved_stage(report)
            compact = next(s for s in report['stages'] if s['label'].startswith('compact'))
            rows.append({'plan': plan, 'pt': report['files']['pt'], 'params': final['params'],
                         'gflops': final['gflops'], 'removed': 1 - final['params'] / original['params'],
                         'mb': size_mb(report['files']['pt']), 'map50_pruned': compact['map50'],
                         'map50': final['map50'], 'map50_95': final['map50_95'], 'final_stage': final['label']})
        if all('error' in r for r in rows):
            raise StageFailed('prune: every plan failed: ' + '; '.join(f'{r["plan"]} {r["error"]}' for r in rows))
        self.rec['prune'] = rows

    def finetune(self):
        """Plain fine-tuning of every plan; the pick (``--pick``, or by --pick-by among the plans
        within --tolerance of the baseline's mAP@0.5) also with distillation. The teacher is the
        sparsity-trained model the plans were cut from (bench_distill's recipe): it has trained
        longest, and with a short baseline (--quick) it is far ahead of it."""
        a = self.args
        rows = []
        for p in self.rec['prune']:
            if 'error' in p:
                continue
            r = self.trained(f'finetune_{plan_name(p["plan"])}', a.ft_epochs, ['--weights', p['pt']])
            rows.append({'plan': p['plan'], 'kind': 'plain', 'name': f'finetune_{plan_name(p["plan"])}', **r})
        pick = self.pick(rows)
        name = f'distill_{plan_name(pick["plan"])}'
        try:
            r = self.trained(name, a.ft_epochs, ['--weights', self.prune_row(pick['plan'])['pt'],
                                                 '--t_weights', self.rec['sparsity']['pt'], '--KDstr', a.kd])
            rows.append({'plan': pick['plan'], 'kind': f'distilled (KDstr {a.kd})', 'name': name, **r})
        except StageFailed as e:  # distillation is optional to the showcase: say so loudly, go on
            msg = f'distillation (train.py --t_weights ... --KDstr {a.kd}) failed: {e}'
            print(f'WARNING: {msg}; continuing with the plain fine-tuned model', flush=True)
            rows.append({'plan': pick['plan'], 'kind': f'distilled (KDstr {a.kd})', 'name': name, 'error': msg})
        self.rec['finetune'] = rows
        done = [r for r in rows if r['plan'] == pick['plan'] and 'error' not in r]
        self.rec['student'] = max(done, key=lambda r: r['map50'])  # plain wins ties: listed first

    def prune_row(self, plan):
        return next(p for p in self.rec['prune'] if p['plan'] == plan)

    def pick(self, finetuned):
        """The plan that goes on to distillation, QAT and deployment: ``--pick``, else among the
        plans within --tolerance of the baseline the fastest in OpenVINO FP32 (``--pick-by
        latency``, measured by ``pick_latency``) or the fewest GFLOPs, else the most accurate."""
        if self.args.pick != 'auto':
            picked = next((r for r in finetuned if r['plan'] == self.args.pick), None)
            if picked is None:
                raise StageFailed(f'--pick {self.args.pick}: that plan was not pruned and fine-tuned (see the pruning '
                                  'table in report.md); pick another of --plans')
            return picked
        floor = self.rec['baseline']['map50'] - self.args.tolerance
        good = [r for r in finetuned if r['map50'] >= floor]
        if not good:
            return max(finetuned, key=lambda r: r['map50'])
        if getattr(self.args, 'pick_by', 'gflops') == 'latency' and len(good) > 1:
            ms = self.pick_latency(good)
            return min(good, key=lambda r: ms[r['plan']])
        return min(good, key=lambda r: r['gflops'])

    def pick_latency(self, candidates):
        """{plan: median ms} of each candidate's fine-tuned model exported to OpenVINO FP32, batch 1,
        --threads, each in its own process, rounds interleaved; kept in pick_latency.json (reused
        while the candidates are the same)."""
        from utils.deploy.backends import openvino_xml
        from utils.deploy.latency import openvino_job, summarize_turns, time_per_process
        a, path = self.args, self.out / 'pick_latency.json'
        plans = sorted(r['plan'] for r in candidates)
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if (saved.get('plans'), saved.get('threads'), saved.get('turn_calls')) != (plans, a.threads, TURN_CALLS):
            jobs = {}
            for r in candidates:
                ov = export(self.out / 'pick' / f'{r["name"]}_openvino', r['pt'], a, 'openvino')
                jobs[r['plan']] = openvino_job(openvino_xml(ov), a.threads, 1, a.img_size)
            print(f'Picking by latency: {len(jobs)} plans within {100 * a.tolerance:g} point, OpenVINO FP32, '
                  f'{a.latency_runs} interleaved rounds ...', flush=True)
            times = time_per_process(jobs, a.latency_runs, TURN_CALLS)
            missing = [plan for plan in jobs if plan not in times]
            if missing:
                raise StageFailed(f'pick: {", ".join(missing)} could not be timed in OpenVINO (see above)')
            saved = {'plans': plans, 'threads': a.threads, 'runtime': 'OpenVINO FP32', 'turn_calls': TURN_CALLS,
                     'ms': {plan: s['median_ms'] for plan, s in summarize_turns(times, TURN_CALLS).items()}}
            atomic_write_text(path, json.dumps(saved, indent=1))
        self.rec['pick_latency'] = saved
        return saved['ms']

    def qat(self):
        student = self.rec['student']
        self.rec['qat'] = {'name': f'qat_{student["name"]}', **self.trained(
            f'qat_{student["name"]}', self.args.qat_epochs,
            ['--weights', student['pt'], '--hyp', qat_hyp(self.out, self.args), *QAT_FLAGS])}

    def sources(self):
        """model -> (its .pt, the stem its exports are named after)."""
        return {'baseline': (self.rec['baseline']['pt'], 'baseline'),
                'student': (self.rec['student']['pt'], self.rec['student']['name']),
                'qat': (self.rec['qat']['pt'], self.rec['qat']['name'])}

    def export(self):
        rows = []
        for model, precision, fmt, runtime in DEPLOY:
            pt, stem = self.sources()[model]
            int8 = precision == 'INT8 (PTQ)'
            path = pt if fmt == 'pt' else export(self.deploy_dir / f'{stem}{"_int8" if int8 else ""}{SUFFIX[fmt]}',
                                                 pt, self.args, fmt, ['--int8', '--calib', self.args.calib] if int8
                                                 else [])
            rows.append({'key': f'{stem}{"_int8" if int8 else ""} {fmt}', 'model': model, 'precision': precision,
                         'format': fmt, 'runtime': runtime, 'file': str(path), 'mb': size_mb(path)})
        self.rec['deploy'] = rows

    def test(self):
        """test.py of every exported file (fixed-size exports run square batches; the Darknet files
        are evaluated --square too, in PyTorch: export.py checked OpenCV DNN gives the same outputs).
        A .pt row takes its Darknet files' figures: the same weights."""
        for r in self.rec['deploy']:
            if r['format'] == 'pt':
                continue
            flags = ['--cfg', Path(r['file']).with_suffix('.cfg'), '--square'] if r['format'] == 'darknet' else []
            m = evaluate(self.deploy_dir, f'test_{r["key"].replace(" ", "_")}', r['file'], self.args, flags)
            r.update(map50=m['map50'], map50_95=m['map50_95'])
        for r in self.rec['deploy']:
            if r['format'] == 'pt':
                twin = next(d for d in self.rec['deploy'] if d['model'] == r['model'] and d['format'] == 'darknet')
                r.update(map50=twin['map50'], map50_95=twin['map50_95'])

    def benchmark(self):
        """Batch-1 latency of every deployed file in its runtime and of every fine-tuned plan in
        PyTorch (fused), one process each; stored in latency.json (skipped when it has every
        current key, timed per process; delete it to time again)."""
        path = self.out / 'latency.json'
        keys = [f'{r["key"]} {r["runtime"]}' for r in self.rec['deploy']]
        keys += [f'plan {r["name"]}' for r in self.rec['finetune'] if 'error' not in r]
        stored = json.loads(path.read_text()) if path.is_file() else {}
        fresh = stored.get('meta', {}).get('mode') == 'per-process'  # in-process timings are not trusted
        if not (fresh and set(keys) <= set(stored.get('times', {}))):
            stored = measure_latency(self, keys)
            atomic_write_text(path, json.dumps(stored, indent=1))
        self.rec['latency'] = stored

    # ------------------------------------------------------------------ report
    def write_report(self):
        self.rec['headline'] = headline(self.rec, self.args.tolerance)
        atomic_write_text(self.out / 'report.json', json.dumps(portable(self.rec), indent=1, default=str))
        atomic_write_text(self.out / 'report.md', markdown(self.rec, self.args))
        if self.rec.get('latency'):
            plot(self.rec, self.out / 'accuracy_latency.png', self.args.tolerance)


def measure_latency(show, keys):
    """{'meta': ..., 'times': {key: summary}}: ``keys`` (deploy rows and fine-tuned plans), each
    file in its runtime in its own process (utils.deploy.latency.time_per_process), batch 1."""
    from utils.deploy.backends import openvino_xml
    from utils.deploy.latency import darknet_job, openvino_job, ort_job, summarize_turns, time_per_process, torch_job
    a = show.args
    jobs, gflops = {}, {}
    for r in show.rec['deploy']:
        key = f'{r["key"]} {r["runtime"]}'
        pt = show.sources()[r['model']][0]
        gflops[key] = show.model_info(pt)['gflops']
        if r['format'] == 'darknet':
            jobs[key] = darknet_job(Path(r['file']).with_suffix('.cfg'), r['file'], a.threads, 1, a.img_size)
        elif r['format'] == 'pt':
            jobs[key] = torch_job(pt, a.threads, 1, a.img_size)
        elif r['format'] == 'onnx':
            jobs[key] = ort_job(r['file'], a.threads, 1, a.img_size)
        else:
            jobs[key] = openvino_job(openvino_xml(r['file']), a.threads, 1, a.img_size)
    for r in show.rec['finetune']:
        if 'error' not in r:
            jobs[f'plan {r["name"]}'] = torch_job(r['pt'], a.threads, 1, a.img_size)
            gflops[f'plan {r["name"]}'] = r['gflops']
    jobs = {k: jobs[k] for k in keys}
    print(f'Timing {len(jobs)} model/runtime pairs, one process each, {a.latency_runs} interleaved rounds, batch 1, '
          f'{a.threads} threads ...', flush=True)
    times = time_per_process(jobs, a.latency_runs, TURN_CALLS)
    ref = next((k for k in times if k.endswith('OpenCV DNN') and k.startswith('baseline')), None)
    return {'meta': {**meta(a), 'turn_calls': TURN_CALLS}, 'times': summarize_turns(times, TURN_CALLS, gflops, 1, ref)}


def meta(args):
    import cv2
    import onnxruntime
    import openvino
    import torch

    from utils.deploy.latency import cpu_info
    return {'date': time.strftime('%Y-%m-%d %H:%M'), 'cpu': cpu_info(), 'mode': 'per-process',
            'threads': args.threads, 'runs': args.latency_runs, 'torch': torch.__version__,
            'onnxruntime': onnxruntime.__version__, 'openvino': openvino.__version__.split('-')[0],
            'opencv': cv2.__version__}


def main(args):
    """compress.py's work (args from its parser)."""
    return Showcase(fill_budget(args)).run()


# ----------------------------------------------------------------------------- report

def latency(rec, key):
    """The latency summary of a deploy row (dict) or a 'plan <name>' key, or None."""
    times = (rec.get('latency') or {}).get('times', {})
    return times.get(f'{key["key"]} {key["runtime"]}' if isinstance(key, dict) else key)


def model_label(rec, model):
    """'float baseline', 'pruned slim:0.76:k0.2 + KD', ... for a DEPLOY model."""
    if model == 'baseline':
        return 'float baseline'
    student = rec['student']
    label = f'pruned {student["plan"]}' + (' + KD' if student['kind'] != 'plain' else '')
    return label + (' + QAT' if model == 'qat' else '')


SAME_MAP = 0.005  # an export reproduces its model's mAP@0.5 within this (export.py's own target)


def headline(rec, tolerance):
    """The best compressed (file, runtime) against the float model in OpenCV DNN: the fastest
    within ``tolerance`` mAP@0.5 of it, else the most accurate; None before the benchmark."""
    rows = [r for r in rec.get('deploy', []) if 'map50' in r and latency(rec, r)]
    ref = next((r for r in rows if r['model'] == 'baseline' and r['runtime'] == 'OpenCV DNN'), None)
    compressed = [r for r in rows if r['model'] != 'baseline']
    if ref is None or not compressed:
        return None
    ms = {id(r): latency(rec, r)['median_ms'] for r in rows}
    within = [r for r in compressed if r['map50'] >= ref['map50'] - tolerance]
    # else the most accurate, in its fastest runtime: mAPs within SAME_MAP are the same accuracy (the
    # runtimes of one model differ in the third digit, which must not choose the runtime)
    top = max(r['map50'] for r in compressed)
    candidates = within or [r for r in compressed if r['map50'] >= top - SAME_MAP]
    best = min(candidates, key=lambda r: ms[id(r)])
    speedup = ms[id(ref)] / ms[id(best)]
    first = {k: latency(rec, r).get('first_call_ms') for k, r in (('best', best), ('ref', ref))}
    return {'first_call_ms': first['best'], 'ref_first_call_ms': first['ref'],
            'model': model_label(rec, best['model']), 'precision': best['precision'], 'runtime': best['runtime'],
            'file': shown(rec, best['file']), 'ms': ms[id(best)], 'ref_ms': ms[id(ref)], 'speedup': speedup,
            'map50': best['map50'], 'ref_map50': ref['map50'], 'delta_points': 100 * (best['map50'] - ref['map50']),
            'within_tolerance': bool(within), 'target_met': bool(within) and speedup >= TARGET_SPEEDUP}


def headline_text(h, tolerance):
    if h is None:
        return 'Headline: pending (written once the benchmark stage has run).'
    short = (f'speed-up below {TARGET_SPEEDUP}x' if h['within_tolerance'] else
             f'no compressed model within {100 * tolerance:g} point of the float mAP@0.5')
    verdict = 'met' if h['target_met'] else f'not met ({short})'
    first = ''
    if h.get('first_call_ms') and h.get('ref_first_call_ms'):
        first = (f' (first call of a turn, after the other files\' turns: {h["first_call_ms"]:.2f} vs '
                 f'{h["ref_first_call_ms"]:.2f} ms, {h["ref_first_call_ms"] / h["first_call_ms"]:.1f}x)')
    return (f'**Headline:** {h["model"]}, {h["precision"]}, in {h["runtime"]}: {h["ms"]:.2f} ms vs {h["ref_ms"]:.2f} '
            f'ms '
            f'for the float model in OpenCV DNN = **{h["speedup"]:.1f}x faster**{first}, mAP@0.5 {h["map50"]:.3f} vs '
            f'{h["ref_map50"]:.3f} (**{h["delta_points"]:+.1f} points**). Target ≥ {TARGET_SPEEDUP}x within '
            f'{100 * tolerance:g} point: {verdict}.')


def shown(rec, path):
    """A file as the report names it: relative to --out when inside it."""
    try:
        return str(Path(path).relative_to(rec['out']))
    except ValueError:
        return rel(path)


def first_ms(summary):
    return f'{summary["first_call_ms"]:.2f}' if summary and 'first_call_ms' in summary else '—'


def fmt_ms(summary):
    return f'{summary["median_ms"]:.2f}' if summary else '—'


def markdown(rec, args):
    """report.md from ``rec`` (any prefix of the stages)."""
    t = rec['timings']
    lines = [f'# Compression showcase: {Path(args.cfg).name if not args.base else rel(args.base)} on '
             f'{Path(args.data).name} at {args.img_size} px{" (--quick)" if args.quick else ""}', '']
    if rec.get('command'):
        lines += [f'`{rec["command"]}`', '']
    lines += [headline_text(rec.get('headline'), args.tolerance), '',
              f'Time: {sum(t.values()) / 60:.1f} min (' + ', '.join(f'{k} {v / 60:.1f}' for k, v in t.items()) +
              '; all invocations of a resumed run summed). mAP of the training stages: train.py\'s validation of the '
              'epoch best.pt was saved at (rect batches); of the exported files: test.py (square batches of the '
              'export size).', '']
    base = rec.get('baseline')
    if base:
        base_ms = latency(rec, next((f'{r["key"]} {r["runtime"]}' for r in rec.get('deploy', [])
                                     if r['model'] == 'baseline' and r['format'] == 'pt'), ''))
        head = '| model | epochs | params | GFLOPs | mAP@0.5 | mAP@0.5:0.95 | MB (.pt) | PyTorch fused ms |'
        lines += ['## 1. Baseline', '', head, '|---|---|---|---|---|---|---|---|',
                  f'| {shown(rec, base["pt"])} | {base["epochs"] or "given (--base)"} | {base["params"]:,} | '
                  f'{base["gflops"]:.3f} | {base["map50"]:.3f} | {base["map50_95"]:.3f} | {base["mb"]:.1f} | '
                  f'{fmt_ms(base_ms)} |', '']
        sr = rec.get('sparsity')
        if sr:
            lines += [f'## 2. Sparsity training (`-sr --s {args.s} --prune 1`, {plural(sr["epochs"], "epoch")} from '
                      'the baseline)', '', head, '|---|---|---|---|---|---|---|---|',
                      f'| {shown(rec, sr["pt"])} | {sr["epochs"]} | {sr["params"]:,} | {sr["gflops"]:.3f} | '
                      f'{sr["map50"]:.3f} | {sr["map50_95"]:.3f} | {sr["mb"]:.1f} | {fmt_ms(base_ms)} (same '
                      'architecture) |', '']
    if rec.get('prune'):
        lines += ['## 3. Pruning the sparse model (mAP right after pruning, and after adaptive BN)', '',
                  '| plan | params | removed | GFLOPs | mAP@0.5 pruned | + adaptive BN | mAP@0.5:0.95 | MB (.pt) |',
                  '|---|---|---|---|---|---|---|---|']
        for p in rec['prune']:
            if 'error' in p:
                lines.append(f'| {p["plan"]} | **failed**: {p["error"]} |||||||')
                continue
            lines.append(f'| {p["plan"]} | {p["params"]:,} | {100 * p["removed"]:.1f}% | {p["gflops"]:.3f} | '
                         f'{p["map50_pruned"]:.3f} | {p["map50"]:.3f} | {p["map50_95"]:.3f} | {p["mb"]:.1f} |')
        lines.append('')
    if rec.get('finetune'):
        ref_ms = base_ms['median_ms'] if base and base_ms else None
        lines += [f'## 4. Fine-tuning ({plural(args.ft_epochs, "epoch")}; distillation from the sparsity-trained model, --KDstr '
                  f'{args.kd}, on the picked plan)', '',
                  '| plan | fine-tuning | params | GFLOPs | mAP@0.5 | vs baseline | mAP@0.5:0.95 | MB (.pt) | '
                  'PyTorch fused ms | speed-up |', '|---|---|---|---|---|---|---|---|---|---|']
        for r in rec['finetune']:
            if 'error' in r:
                lines.append(f'| {r["plan"]} | {r["kind"]} | **failed**: {r["error"]} |||||||| ')
                continue
            ms = latency(rec, f'plan {r["name"]}')
            speed = f'{ref_ms / ms["median_ms"]:.2f}x' if ms and ref_ms else '—'
            lines.append(f'| {r["plan"]} | {r["kind"]} | {r["params"]:,} | {r["gflops"]:.3f} | {r["map50"]:.3f} | '
                         f'{100 * (r["map50"] - base["map50"]):+.1f} pts | {r["map50_95"]:.3f} | {r["mb"]:.1f} | '
                         f'{fmt_ms(ms)} | {speed} |')
        s = rec['student']
        timed = rec.get('pick_latency')
        if args.pick != 'auto':
            why = '--pick'
        elif len({r['plan'] for r in rec['finetune']}) == 1:
            why = 'the only plan'
        elif timed and s['plan'] in timed['ms']:
            others = ', '.join(f'{plan} {ms:.2f} ms' for plan, ms in sorted(timed['ms'].items(), key=lambda kv: kv[1]))
            why = (f'the fastest in {timed["runtime"]} ({timed["threads"]} threads; {others}) of the plans within '
                   f'{100 * args.tolerance:g} point of the baseline mAP@0.5 after plain fine-tuning')
        else:
            why = (f'the fewest GFLOPs within {100 * args.tolerance:g} point of the baseline mAP@0.5 after plain '
                   'fine-tuning, else the most accurate')
        lines += ['', f'Picked: {s["plan"]} ({why}); it goes on as the {s["kind"]} model (the higher mAP@0.5 of '
                  'plain and distilled).', '']
    q = rec.get('qat')
    if q:
        s = rec['student']
        lines += [f'## 5. Quantization-aware training (Google 8-bit, {plural(q["epochs"], "epoch")} at '
                  f'{args.lr_factor} x lr0 without burn-in, from the picked model)', '',
                  '| model | params | GFLOPs | mAP@0.5 | vs its float model | mAP@0.5:0.95 | MB (.pt) |',
                  '|---|---|---|---|---|---|---|',
                  f'| {shown(rec, q["pt"])} | {s["params"]:,} | {s["gflops"]:.3f} | {q["map50"]:.3f} | '
                  f'{100 * (q["map50"] - s["map50"]):+.1f} pts | {q["map50_95"]:.3f} | {q["mb"]:.1f} |', '']
    if rec.get('deploy'):
        lines += deployment_lines(rec)
    return '\n'.join(lines) + '\n'


def latency_cpu(meta):
    """'CPU: <model>, n cores (instruction sets)' of a latency run's meta ('CPU not recorded'
    for a run stored before the CPU was)."""
    from utils.deploy.latency import cpu_text
    return f'CPU: {cpu_text(meta["cpu"])}' if meta.get('cpu') else 'CPU not recorded'


def deployment_lines(rec):
    ref = next((latency(rec, r) for r in rec['deploy'] if r['model'] == 'baseline' and r['runtime'] == 'OpenCV DNN'),
               None)
    meta = (rec.get('latency') or {}).get('meta')
    calls = meta.get('turn_calls', 1) if meta else 1
    how = (f'{meta["runs"]} interleaved rounds of {calls} calls per file: median ms (10th-90th percentile) of the '
           f'{calls - 1} back-to-back calls after each turn\'s first, and the median of the first calls, which '
           'follow the other files\' turns' if calls > 1 else
           f'{meta["runs"]} interleaved rounds, median ms (10th-90th percentile)') if meta else ''
    timing = (f'{latency_cpu(meta)}; batch 1, {plural(meta["threads"], "thread")}, each file in its own process, '
              f'{how}; torch {meta["torch"]}, '
              f'onnxruntime {meta["onnxruntime"]}, OpenVINO {meta["openvino"]}, OpenCV {meta["opencv"]}, '
              f'{meta["date"]}' if meta else 'latency pending')
    lines = ['## 6. Deployment: every exported file, its test.py mAP and its runtime', '', timing + '.', '',
             '| model | precision | file | runtime | MB | mAP@0.5 | mAP@0.5:0.95 | ms | first call ms | speed-up vs '
             'float in OpenCV DNN |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in rec['deploy']:
        lt = latency(rec, r)
        ms = f'{lt["median_ms"]:.2f} ({lt["p10_ms"]:.2f}-{lt["p90_ms"]:.2f})' if lt else '—'
        speed = f'{ref["median_ms"] / lt["median_ms"]:.1f}x' if lt and ref else '—'
        m50, m95 = (f'{r["map50"]:.3f}', f'{r["map50_95"]:.3f}') if 'map50' in r else ('—', '—')
        lines.append(f'| {model_label(rec, r["model"])} | {r["precision"]} | {shown(rec, r["file"])} | '
                     f'{r["runtime"]} | {r["mb"]:.2f} | {m50} | {m95} | {ms} | {first_ms(lt)} | {speed} |')
    lines += ['', 'A .pt row shows the mAP of its Darknet files (the same weights). OpenVINO runs the IR export.', '',
              '### Latency by runtime (ms)', '', '| model | precision | ' + ' | '.join(RUNTIMES) + ' |',
              '|---|---|' + '---|' * len(RUNTIMES)]
    groups = {}
    for r in rec['deploy']:
        groups.setdefault((r['model'], r['precision']), {})[r['runtime']] = latency(rec, r)
    for (model, precision), by_rt in groups.items():
        lines.append(f'| {model_label(rec, model)} | {precision} | ' +
                     ' | '.join(fmt_ms(by_rt.get(rt)) for rt in RUNTIMES) + ' |')
    return lines + ['', '![accuracy versus latency](accuracy_latency.png)', '']


def plot(rec, path, tolerance):
    """mAP@0.5 against batch-1 latency (log scale): every exported file in its runtime, the
    fine-tuned plans in PyTorch, the float model in OpenCV DNN and the headline marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from utils.plots import save_figure
    from matplotlib.ticker import ScalarFormatter
    fig = Figure(figsize=(10, 5.5), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = {'OpenCV DNN': 's', 'PyTorch fused': 'o', 'ONNX Runtime': '^', 'OpenVINO': 'D'}
    colors = {('baseline', 'FP32'): 'tab:gray', ('student', 'FP32'): 'tab:blue',
              ('student', 'INT8 (PTQ)'): 'tab:orange', ('qat', 'INT8 (QAT)'): 'tab:red'}
    for r in rec.get('deploy', []):
        lt = latency(rec, r)
        if lt and 'map50' in r:
            ax.scatter(lt['median_ms'], r['map50'], marker=markers[r['runtime']],
                       color=colors[r['model'], r['precision']], s=60, zorder=3,
                       label=f'{model_label(rec, r["model"])} {r["precision"]}, {r["runtime"]}')
    plans = [(latency(rec, f'plan {r["name"]}'), r) for r in rec.get('finetune', []) if 'error' not in r]
    for i, (lt, r) in enumerate(p for p in plans if p[0]):
        ax.scatter(lt['median_ms'], r['map50'], marker='x', color='tab:green', zorder=2,
                   label='fine-tuned plans, PyTorch fused (train.py mAP)' if i == 0 else None)
        ax.annotate(f'{r["plan"]}{" KD" if r["kind"] != "plain" else ""}', (lt['median_ms'], r['map50']),
                    fontsize=6, xytext=(3, -8), textcoords='offset points')
    h = rec.get('headline')
    if h:
        ax.axhline(h['ref_map50'] - tolerance, color='tab:gray', ls=':', lw=1,
                   label=f'float mAP@0.5 - {100 * tolerance:g} point')
        ax.axvline(h['ref_ms'] / TARGET_SPEEDUP, color='tab:gray', ls='--', lw=1,
                   label=f'{TARGET_SPEEDUP}x faster than float in OpenCV DNN')
        ax.scatter(h['ms'], h['map50'], s=250, facecolors='none', edgecolors='k', zorder=4,
                   label=f'headline: {h["speedup"]:.1f}x, {h["delta_points"]:+.1f} points')
    ax.set_xscale('log')
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis='x', which='minor', labelsize=7)
    ax.set_xlabel('batch-1 latency (ms, log scale)')
    ax.set_ylabel('mAP@0.5')
    ax.set_title('Accuracy versus latency')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1))
    save_figure(fig, path, dpi=150)
