"""Resumable stages that run the project's real command lines (train.py, the *_prune.py
scripts, test.py, export.py) into one output folder: each stage lands in ``out/<name>`` with
its log in ``out/<name>.log``, and a stage whose output is complete is skipped, so an
interrupted pipeline continues where it stopped (an interrupted training run continues from
its last.pt with ``train.py --resume``). Used by bench/bench_prune.py, bench/bench_quant.py
and compress.py (utils/compress/showcase.py).

Every function takes ``args`` with the common options: ``data``, ``img_size``, ``workers``
(and ``lr_factor`` for ``qat_hyp``).
"""
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from utils.general import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {'normal': 'normal_prune.py', 'regular': 'regular_prune.py', 'shortcut': 'shortcut_prune.py',
           'slim': 'slim_prune.py', 'layer': 'layer_prune.py', 'layer_channel': 'layer_channel_prune.py'}
# normal and shortcut pruning stop where a layer would lose every channel (0.53-0.56 on sparse
# default models, depending on the baseline); slim's --layer_keep floor (k0.2 = 20% of every
# layer) spreads the cut
DEFAULT_PLANS = ['normal:0.5', 'regular:0.5', 'shortcut:0.5', 'slim:0.7', 'slim:0.76:k0.2', 'slim:0.9:k0.3',
                 'layer:3', 'layer_channel:0.76:2:k0.2']


class StageFailed(SystemExit):
    """A stage's command failed: ends a script with its one-line message unless the caller
    chooses to report it and go on."""


def rel(path):
    """``path`` relative to the repository when inside it (reports carry no machine paths)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run(cmd, log, append=False):
    """``python3 cmd...`` in the repository root, output into ``log``; returns its seconds."""
    print('$', ' '.join(map(str, cmd)), flush=True)
    t0 = time.time()
    with open(log, 'a' if append else 'w') as f:
        rc = subprocess.call([sys.executable, *map(str, cmd)], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        lines = [line.strip() for line in Path(log).read_text(errors='replace').splitlines() if line.strip()]
        said = f': {lines[-1][:300]}' if lines else ''  # the script's own one-line error, where it gave one
        raise StageFailed(f'failed ({rc}){said} (see {rel(log)})')
    return time.time() - t0


def last_row(results_csv):
    rows = list(csv.DictReader(open(results_csv)))
    return {k: float(v) for k, v in rows[-1].items()}


def training_finished(run_dir):
    """True when train.py's run folder holds best.pt and a results.csv row for every epoch its
    opt.yaml asked for (best.pt alone appears after the first epoch)."""
    run_dir = Path(run_dir)
    results, opt = run_dir / 'results.csv', run_dir / 'opt.yaml'
    if not ((run_dir / 'weights' / 'best.pt').is_file() and results.is_file() and opt.is_file()):
        return False
    return len(list(csv.DictReader(open(results)))) >= int(yaml.safe_load(opt.read_text())['epochs'])


def train(out, name, args, extra):
    """train.py into out/name (skipped when it finished; an interrupted run is resumed from its
    last.pt); returns (best.pt, final results row)."""
    run_dir = out / name
    best, last = run_dir / 'weights' / 'best.pt', run_dir / 'weights' / 'last.pt'
    if not training_finished(run_dir):
        if last.is_file():
            run(['train.py', '--resume', last, '--workers', args.workers], out / f'{name}.log', append=True)
        elif run_dir.exists():  # train.py would pick name2: the stage would never find its output
            raise StageFailed(f'{run_dir} holds an unfinished run without a checkpoint: remove it and rerun')
        else:
            run(['train.py', '--data', args.data, '--img-size', args.img_size, '--workers', args.workers,
                 '--project', out, '--name', name, *extra], out / f'{name}.log')
        if not training_finished(run_dir):
            raise StageFailed(f'{run_dir}: train.py ended without finishing its epochs; see {out / name}.log')
    return best, last_row(run_dir / 'results.csv')


def plan_name(plan):
    """'slim:0.76:k0.2' -> 'slim_0.76_k0.2' (stage folder names)."""
    return plan.replace(':', '_')


def parse_plan(plan):
    """'method:amount[:amount][:kF][:bN]' -> (method, the pruning script's flags): kF is slim /
    layer_channel's --layer_keep F, bN regular's --channel-base N. ValueError for an unknown
    method, a wrong number of amounts or an option the method does not take."""
    method, *amounts = plan.split(':')
    keep = [a[1:] for a in amounts if a.startswith('k')]
    base = [a[1:] for a in amounts if a.startswith('b')]
    amounts = [a for a in amounts if not a.startswith(('k', 'b'))]
    if method not in SCRIPTS:
        raise ValueError(f'unknown method {method!r} in plan {plan} (choose from {", ".join(SCRIPTS)})')
    if len(amounts) != (2 if method == 'layer_channel' else 1):
        raise ValueError(f'plan {plan}: {method} takes '
                         f'{"percent:shortcuts" if method == "layer_channel" else "one amount"}')
    if keep and method not in ('slim', 'layer_channel'):
        raise ValueError(f'plan {plan}: :k (--layer_keep) is for slim and layer_channel plans')
    if base and method != 'regular':
        raise ValueError(f'plan {plan}: :b (--channel-base) is for regular plans')
    if method == 'layer':
        flags = ['--shortcuts', amounts[0]]
    elif method == 'layer_channel':
        flags = ['--percent', amounts[0], '--shortcuts', amounts[1]]
    else:
        flags = ['--percent', amounts[0]]
    return method, flags + (['--layer_keep', keep[0]] if keep else []) + (['--channel-base', base[0]] if base else [])


def prune(out, sparse, plan, args):
    """The plan's pruning script on ``sparse`` into out/prune_<plan> (skipped when its
    prune_report.json exists); returns the report."""
    method, flags = parse_plan(plan)
    stage = out / f'prune_{plan_name(plan)}'
    report = stage / 'prune_report.json'
    if not report.is_file():
        run([SCRIPTS[method], '--weights', sparse, '--data', args.data, '--img-size', args.img_size,
             '--out', stage, *flags], out / f'prune_{plan_name(plan)}.log')
    return json.loads(report.read_text())


def saved_stage(report):
    """The stage of a prune_report.json whose model the script saved (the compact model, or it
    after adaptive BN where that lowered the held-out loss); reports written before the
    decision existed saved their last stage."""
    return next((st for st in report['stages'] if st.get('saved')), report['stages'][-1])


def qat_hyp(out, args):
    """The dataset's recipe at args.lr_factor x lr0 without burn-in (upstream also dropped the
    learning rate tenfold for QAT), written once into --out."""
    from utils.datasets import resolve_data
    from utils.parse_config import parse_data_cfg
    data = resolve_data(args.data)
    hyp = yaml.safe_load((ROOT / parse_data_cfg(data).get('hyp', 'data/hyp.yaml')).read_text())
    hyp.update(lr0=hyp['lr0'] * args.lr_factor, warmup_epochs=0.0)
    path = out / 'hyp.qat.yaml'
    atomic_write_text(path, yaml.safe_dump(hyp, sort_keys=False))
    return path


def evaluate(out, name, weights, args, flags=()):
    """test.py of ``weights`` (a .pt, Darknet .weights with --cfg in ``flags``, .onnx or an
    OpenVINO folder) into out/name (skipped when its metrics.json exists); returns the metrics."""
    metrics = out / name / 'metrics.json'
    if not metrics.is_file():
        run(['test.py', '--weights', weights, '--data', args.data, '--img-size', args.img_size,
             '--workers', args.workers, '--project', out, '--name', name, *flags], out / f'{name}.log')
    return json.loads(metrics.read_text())


def exported(path, fmt):
    """True when export.py's output for ``fmt`` is complete at ``path``."""
    path = Path(path)
    if fmt == 'openvino':
        return any(path.glob('*.xml')) and any(path.glob('*.bin'))
    if fmt == 'darknet':
        return path.is_file() and path.with_suffix('.cfg').is_file()
    return path.is_file()


def export(path, weights, args, fmt='onnx', flags=()):
    """export.py of ``weights`` to ``path`` (a .onnx, an OpenVINO folder, or a .weights with its
    .cfg next to it), checked by export.py against PyTorch; skipped when it exists."""
    path = Path(path)
    if not exported(path, fmt):
        path.parent.mkdir(parents=True, exist_ok=True)  # for the log next to it
        run(['export.py', '--weights', weights, '--data', args.data, '--img-size', args.img_size, '--format', fmt,
             '--out', path, *flags], path.parent / f'export_{path.name}.log')
    return path
