"""Distillation measured on the built-in dataset: a pruned student fine-tuned on one budget
plainly and with each --KDstr from its unpruned teacher; mAP of each, and what the teacher
costs in training time.

    python3 bench/bench_prune.py                   # first: baseline, sparse model, pruned students
    python3 bench/bench_distill.py                 # teacher/student from bench_prune (resumable)
    python3 bench/bench_distill.py --teacher runs/train/exp/weights/best.pt \\
        --student runs/prune/slim/best_slim_0.76.pt --epochs 3 --seeds 0 1

Every run is a real train.py command line into --out/<epochs>ep_<kd|plain>_s<seed>; a run
whose results.csv has all its epochs is skipped, so an interrupted benchmark continues where
it stopped. The teacher's cost is measured twice: the wall time of each run (includes data
loading and the per-epoch validation, and whatever else the machine does meanwhile), and
``--timing-steps`` training steps (``Trainer._step``: forward, loss, backward, optimizer)
on the same batches held in memory, every strategy timed in turn, ``--timing-rounds`` times
interleaved, median. Writes --out/results.md and results.json.
"""
import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'bench'), str(ROOT)]
from utils.general import atomic_write_text  # noqa: E402
from frontier import record  # noqa: E402
STRATEGIES = [0, 1, 2, 3, 4, 5, 6]  # 0 = plain fine-tuning


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--teacher', default='runs/bench_prune/baseline/weights/best.pt', help='unpruned teacher .pt')
    p.add_argument('--student', default='runs/bench_prune/prune_slim_0.76_k0.2/best_slim_0.76.pt',
                   help='pruned student .pt (carries its cfg)')
    p.add_argument('--data', default='data/shapes.data')
    p.add_argument('--img-size', type=int, default=256)
    p.add_argument('--epochs', type=int, nargs='+', default=[5], help='fine-tuning budgets (one series each)')
    p.add_argument('--strategies', type=int, nargs='+', default=STRATEGIES, help='0 = plain fine-tuning')
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--kd-weight', type=float, default=1.0, help='train.py --kd-weight of every distilled run')
    p.add_argument('--t-precision', default=None, choices=['fp32', 'bf16', 'auto'],
                   help="train.py --t-precision of every distilled run (default: train.py's, auto)")
    p.add_argument('--frontier-strategy', type=int, default=None,
                   help='the KDstr whose gain and step overhead go to bench/frontier.json (default: the last of '
                        '--strategies; 0 = do not record)')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--timing-steps', type=int, default=16, help='training steps per strategy per timing round (0: no '
                   'step timing)')
    p.add_argument('--timing-rounds', type=int, default=3)
    p.add_argument('--out', default='runs/bench_distill')
    return p.parse_args(argv)


def run_name(epochs, strategy, seed, kd_weight=1.0):
    weight = f'w{kd_weight:g}' if strategy and kd_weight != 1 else ''
    return f'{epochs}ep_{f"kd{strategy}{weight}" if strategy else "plain"}_s{seed}'


def kd_flags(args, strategy):
    if not strategy:
        return []
    weight = ['--kd-weight', str(args.kd_weight)] if args.kd_weight != 1 else []
    precision = ['--t-precision', args.t_precision] if args.t_precision else []
    return ['--t_weights', args.teacher, '--KDstr', str(strategy), *weight, *precision]


def fine_tune(out, args, epochs, strategy, seed):
    """train.py into out/<run_name> unless it finished before; returns (final results row, wall seconds)."""
    name = run_name(epochs, strategy, seed, args.kd_weight)
    run_dir, timing = out / name, out / f'{name}.json'
    results = run_dir / 'results.csv'
    if not (results.is_file() and timing.is_file() and len(list(csv.DictReader(open(results)))) == epochs):
        if run_dir.exists():
            raise SystemExit(f'{run_dir} holds an unfinished run: remove it and rerun')
        kd = kd_flags(args, strategy)
        cmd = ['train.py', '--weights', args.student, '--data', args.data, '--img-size', args.img_size,
               '--epochs', epochs, '--seed', seed, '--workers', args.workers, '--project', out, '--name', name, *kd]
        print('$', ' '.join(map(str, cmd)), flush=True)
        t0 = time.time()
        with open(out / f'{name}.log', 'w') as log:
            rc = subprocess.call([sys.executable, *map(str, cmd)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if rc:
            raise SystemExit(f'failed ({rc}): see {out / name}.log')
        atomic_write_text(timing, json.dumps({'seconds': time.time() - t0}))
    row = {k: float(v) for k, v in list(csv.DictReader(open(results)))[-1].items()}
    return row, json.loads(timing.read_text())['seconds']


def time_steps(out, args, strategies):
    """{strategy: median seconds per training step} over the same in-memory batches (bench/steptime.py)."""
    from steptime import time_steps as steps_of
    base = ['--weights', args.student, '--data', args.data, '--img-size', args.img_size]
    return steps_of({k: [*base, *kd_flags(args, k)] for k in strategies}, args.timing_steps, args.timing_rounds,
                    out / 'timing')


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    for path in (args.teacher, args.student):
        if not (ROOT / path).is_file() and not Path(path).is_file():
            raise SystemExit(f'{path} not found (run bench/bench_prune.py first, or pass --teacher/--student)')
    rows = []
    for epochs in args.epochs:
        for seed in args.seeds:
            for k in args.strategies:
                row, seconds = fine_tune(out, args, epochs, k, seed)
                rows.append({'epochs': epochs, 'strategy': k, 'seed': seed, 'seconds': seconds,
                             'map50': row['mAP@0.5'], 'map50_95': row['mAP@0.5:0.95'],
                             'kd': {c: row[c] for c in row if c.startswith('kd')}})
                write(out, args, rows, None)
    steps = time_steps(out, args, args.strategies) if args.timing_steps else None
    write(out, args, rows, steps)
    record_frontier(out, args, rows, steps)
    print((out / 'results.md').read_text())


def record_frontier(out, args, rows, steps):
    """kd_gain_points (mean over seeds of the strategy minus plain fine-tuning, longest budget)
    and kd_step_overhead (its ms/step over plain's, minus 1) into bench/frontier.json."""
    k = args.frontier_strategy if args.frontier_strategy is not None else args.strategies[-1]
    epochs = max(args.epochs)
    runs = {s: [r['map50'] for r in rows if r['epochs'] == epochs and r['strategy'] == s] for s in (0, k)}
    if not k or not runs[0] or not runs[k] or len(runs[k]) < 3:  # a gain needs a spread: 3 seeds at least
        return
    gains = [100 * (a - b) for a, b in zip(runs[k], runs[0])]  # per seed: the same seed's plain run
    overhead = steps[0][k] / steps[0][0] - 1 if steps and 0 in steps[0] else None
    record({'kd_gain_points': statistics.mean(gains), 'kd_step_overhead': overhead}, results=out / 'results.json',
           extra={'strategy': k, 'kd_weight': args.kd_weight, 't_precision': args.t_precision or 'auto',
                  'epochs': epochs, 'seeds': args.seeds,
                  'gain_per_seed': [round(g, 2) for g in gains], 'teacher': args.teacher, 'student': args.student})


def write(out, args, rows, steps):
    """results.md: per budget, one line per strategy (mean over seeds, each seed's mAP@0.5 in brackets)."""
    lines = [f'# Distillation benchmark: {args.student} from {args.teacher} on {Path(args.data).name} at '
             f'{args.img_size} px', '']
    weight = f' --kd-weight {args.kd_weight:g}' if args.kd_weight != 1 else ''
    names = {0: 'plain fine-tuning', **{k: f'KDstr {k}{weight}' for k in range(1, 7)}}
    step_ms = steps[0] if steps else {}
    for epochs in args.epochs:
        lines += [f'## {epochs} epochs', '',
                  '| run | mAP@0.5 | Δ vs plain | mAP@0.5:0.95 | Δ vs plain | per seed mAP@0.5 | run time | '
                  'ms/step |',
                  '|---|---|---|---|---|---|---|---|']
        by_k = {}
        for r in rows:
            if r['epochs'] == epochs:
                by_k.setdefault(r['strategy'], []).append(r)
        plain = by_k.get(0)
        base50 = statistics.mean(r['map50'] for r in plain) if plain else None
        base95 = statistics.mean(r['map50_95'] for r in plain) if plain else None
        base_s = statistics.mean(r['seconds'] for r in plain) if plain else None
        for k, runs in by_k.items():
            m50, m95 = statistics.mean(r['map50'] for r in runs), statistics.mean(r['map50_95'] for r in runs)
            sec = statistics.mean(r['seconds'] for r in runs)
            d50 = f'{100 * (m50 - base50):+.1f}' if base50 is not None and k else ''
            d95 = f'{100 * (m95 - base95):+.1f}' if base95 is not None and k else ''
            dt = f' ({100 * (sec / base_s - 1):+.0f}%)' if base_s and k else ''
            ms = step_ms.get(k)
            dms = f' ({100 * (ms / step_ms[0] - 1):+.0f}%)' if ms and k and 0 in step_ms else ''
            per_seed = ' '.join(f'{r["map50"]:.3f}' for r in runs)
            if len(runs) > 1:
                per_seed += f' (sd {100 * statistics.stdev(r["map50"] for r in runs):.1f})'
            step = f'{1000 * ms:.0f}{dms}' if ms else ''
            lines.append(f'| {names[k]} | {m50:.3f} | {d50} | {m95:.3f} | {d95} | {per_seed} | {sec:.0f} s{dt} | '
                         f'{step} |')
        lines.append('')
    if steps:
        lines.append(f'ms/step: median of {args.timing_rounds} interleaved rounds of {args.timing_steps} training '
                     f'steps on the same in-memory batches, {steps[1]} threads. Δ in points (x100).')
    atomic_write_text(out / 'results.md', '\n'.join(lines) + '\n')
    atomic_write_text(out / 'results.json', json.dumps({'args': vars(args), 'rows': rows,
                                                  'ms_per_step': {str(k): v * 1000 for k, v in step_ms.items()}},
                                                 indent=2))


if __name__ == '__main__':
    main()
