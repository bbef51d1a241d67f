"""The pruning workflow measured end to end on the built-in dataset: baseline -> BN-sparsity
training -> each method at a few amounts -> fine-tuning with one budget, with the unpruned
model fine-tuned on the same budget as the reference.

    python3 bench/bench_prune.py                          # default model, shapes (resumable)
    python3 bench/bench_prune.py --base runs/train/exp/weights/best.pt --sr-epochs 10 --ft-epochs 5
    python3 bench/bench_prune.py --plans slim:0.8 slim:0.9 layer_channel:0.8:3

Every stage runs the real command lines (train.py, *_prune.py) into --out/<stage>; a stage
whose output exists is skipped, so an interrupted run continues where it stopped. One
sparsity run (``--prune 1``) serves every method: its penalised set contains those of
``--prune 0`` (normal, regular) and ``--prune 2`` (layer). Writes --out/results.md and
results.json: parameters, GFLOPs, mAP@0.5 and mAP@0.5:0.95 right after pruning (with
adaptive BN) and after fine-tuning, and batch-1 CPU latency measured by the pruning
scripts' timing (fused, a process per model, rounds interleaved with the original, median).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.general import atomic_write_text, user_errors  # noqa: E402
from utils.deploy.latency import cpu_info, cpu_text  # noqa: E402
from utils.compress.pipeline import DEFAULT_PLANS, ROOT, last_row, plan_name, prune, saved_stage, train  # noqa: E402
from frontier import record  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default='cfg/yolov3-mini-shapes.cfg')
    p.add_argument('--data', default='data/shapes.data')
    p.add_argument('--base', default='', help='trained baseline .pt (default: train one with train.py defaults)')
    p.add_argument('--base-epochs', type=int, default=10)
    p.add_argument('--sr-epochs', type=int, default=10)
    p.add_argument('--s', type=float, default=0.05, help='sparsity lambda (0.05 for the Adam shapes recipe in 10 '
                   'epochs; upstream\'s SGD recipes use 0.001 over many more epochs)')
    p.add_argument('--sr-target', type=float, default=None, metavar='P',
                   help='sparsity training prepares a slim cut at --percent P (train.py --sr-target)')
    p.add_argument('--sr-keep', type=float, default=None, metavar='K', help='--sr-target: its --layer_keep')
    p.add_argument('--sr-ramp', type=float, default=None, metavar='R', help='--sr-target: train.py --sr-ramp')
    p.add_argument('--sr-schedule', default=None, choices=['constant', 'step', 'cosine'])
    p.add_argument('--frontier-plan', default='slim:0.76:k0.2',
                   help='the plan whose pruned / fine-tuned mAP@0.5 go to bench/frontier.json as prune80_* (when it '
                        'removes 80%% of the parameters or more; "" = do not record)')
    p.add_argument('--ft-epochs', type=int, default=5, help='fine-tuning budget of every pruned model')
    p.add_argument('--plans', nargs='+', default=DEFAULT_PLANS,
                   help='method:percent (layer: method:shortcuts; layer_channel: method:percent:shortcuts); '
                        'a last :kF sets slim / layer_channel --layer_keep F')
    p.add_argument('--img-size', type=int, default=256)
    p.add_argument('--out', default='runs/bench_prune')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--latency-reps', type=int, default=60, help='interleaved batch-1 forwards per model')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    base = args.base
    if not base:
        base, _ = train(out, 'baseline', args, ['--cfg', args.cfg, '--epochs', args.base_epochs])
    sr_flags = [x for flag, v in (('--sr-target', args.sr_target), ('--sr-keep', args.sr_keep),
                                  ('--sr-ramp', args.sr_ramp), ('--sr-schedule', args.sr_schedule))
                if v is not None for x in (flag, v)]
    sparse, sr_row = train(out, 'sparsity', args, ['--weights', base, '--epochs', args.sr_epochs, '-sr', '--s',
                                                    args.s, '--prune', 1, *sr_flags])
    _, ref_row = train(out, 'finetune_unpruned', args, ['--weights', base, '--epochs', args.ft_epochs])
    rows = []
    for plan in args.plans:
        report = prune(out, sparse, plan, args)
        stages = {s['label']: s for s in report['stages']}
        original, final = report['stages'][0], saved_stage(report)
        pruned_pt = report['files']['pt']
        _, ft_row = train(out, f'finetune_{plan_name(plan)}', args,
                          ['--weights', pruned_pt, '--epochs', args.ft_epochs])
        compact = next(s for s in report['stages'] if s['label'].startswith('compact'))
        adapted = report['stages'][-1] if report['stages'][-1]['label'].endswith('adaptive BN') else None
        rows.append({'plan': plan, 'params': final['params'], 'params_removed': 1 - final['params'] / original['params'],
                     'gflops': final['gflops'], 'flop_ratio': original['gflops'] / final['gflops'],
                     'map50_pruned': compact['map50'], 'map50_adapted': adapted['map50'] if adapted else None,
                     'adaptive_bn_kept': final is adapted, 'map50_saved': final['map50'],
                     'map50_95_saved': final['map50_95'], 'map50_ft': ft_row['mAP@0.5'],
                     'map50_95_ft': ft_row['mAP@0.5:0.95'], 'latency_ms': final['latency_ms'],
                     'speedup': original['latency_ms'] / final['latency_ms'], 'stages': list(stages),
                     'pt': pruned_pt})
        write(out, args, original, sr_row, ref_row, rows, time.time() - t_start)
    time_all(sparse, rows, args)
    write(out, args, original, sr_row, ref_row, rows, time.time() - t_start)
    record_frontier(out, args, sr_row, rows)
    print((out / 'results.md').read_text())


def time_all(sparse, rows, args):
    """Every pruned model and the unpruned one timed together (batch 1, fused, a process each,
    rounds interleaved), so the speed-ups share the machine's conditions; replaces the
    per-script figures."""
    import torch
    import models
    from utils.compress.prune_run import measure_latency
    nets = [models.model_from_checkpoint(sparse)[0]] + [models.model_from_checkpoint(r['pt'])[0] for r in rows]
    print(f'Timing {len(nets)} models together ...', flush=True)
    ms = measure_latency([n.eval() for n in nets], args.img_size, args.latency_reps, torch.device('cpu'))
    for r, t in zip(rows, ms[1:]):
        r.update(latency_ms=t, speedup=ms[0] / t)
    args.original_ms = ms[0]


def record_frontier(out, args, sr_row, rows):
    row = next((r for r in rows if r['plan'] == args.frontier_plan), None)
    if row is None or row['params_removed'] < 0.795:  # 80% to the shown digit
        return
    record({'prune80_no_ft_map50': row['map50_saved'], 'prune80_ft_map50': row['map50_ft']},
           results=out / 'results.json',
           extra={'plan': row['plan'], 'params_removed': round(row['params_removed'], 4),
                  'sparse_map50': round(sr_row['mAP@0.5'], 4), 'ft_epochs': args.ft_epochs,
                  'adaptive_bn_kept': row['adaptive_bn_kept']})


def torch_threads():
    import torch
    return torch.get_num_threads()


def sr_text(args):
    return ''.join(f' --{k.replace("_", "-")} {getattr(args, k)}' for k in ('sr_target', 'sr_keep', 'sr_ramp', 'sr_schedule')
                   if getattr(args, k) is not None)


def fmt(v):
    return '' if v is None else f'{v:.3f}'


def write(out, args, original, sr_row, ref_row, rows, seconds):
    base_csv = Path(args.base).resolve().parent.parent / 'results.csv' if args.base else out / 'baseline' / 'results.csv'
    base = last_row(base_csv) if base_csv.is_file() else None
    lines = [f'# Pruning benchmark: {args.cfg} on {Path(args.data).name} at {args.img_size} px',
             '',
             f'Baseline: mAP@0.5 {base["mAP@0.5"]:.3f}, mAP@0.5:0.95 {base["mAP@0.5:0.95"]:.3f}.' if base else '',
             f'Sparse model (`-sr --s {args.s} --prune 1{sr_text(args)}`, {args.sr_epochs} epochs from the baseline): '
             f'mAP@0.5 {sr_row["mAP@0.5"]:.3f}, mAP@0.5:0.95 {sr_row["mAP@0.5:0.95"]:.3f}, '
             f'{original["params"]:,} parameters, {original["gflops"]:.3f} GFLOPs, '
             f'{getattr(args, "original_ms", original["latency_ms"]):.2f} ms. '
             f'Unpruned baseline fine-tuned {args.ft_epochs} epochs (the reference): mAP@0.5 '
             f'{ref_row["mAP@0.5"]:.3f}, mAP@0.5:0.95 {ref_row["mAP@0.5:0.95"]:.3f}.',
             '',
             '| plan | params | removed | GFLOPs | FLOPs ÷ | mAP@0.5 pruned | + adaptive BN | saved (no fine-tune) | '
             f'fine-tuned ({args.ft_epochs} ep) | mAP@0.5:0.95 fine-tuned | CPU ms | speed-up | speed-up / FLOP ÷ |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["plan"]} | {r["params"]:,} | {100 * r["params_removed"]:.1f}% | {r["gflops"]:.3f} | '
                     f'{r["flop_ratio"]:.2f}x | {r["map50_pruned"]:.3f} | {fmt(r["map50_adapted"])} | '
                     f'{r["map50_saved"]:.3f}{" (adapted)" if r["adaptive_bn_kept"] else ""} | '
                     f'{r["map50_ft"]:.3f} | {r["map50_95_ft"]:.3f} | {r["latency_ms"]:.2f} | {r["speedup"]:.2f}x | '
                     f'{r["speedup"] / r["flop_ratio"]:.0%} |')
    timing = (f'all models timed together, each in its own process, {args.latency_reps} interleaved rounds '
              f'(unpruned: {args.original_ms:.2f} ms)' if hasattr(args, 'original_ms') else 'by each pruning script')
    cpu = cpu_info()
    lines += ['', f'Total time {seconds / 60:.1f} min. CPU latency: batch 1, BN fused, channels_last, median, '
              f'{timing}; {torch_threads()} threads; CPU: {cpu_text(cpu)}.']
    atomic_write_text(out / 'results.md', '\n'.join(lines) + '\n')
    atomic_write_text(out / 'results.json', json.dumps({'args': vars(args), 'cpu': cpu, 'sparse': sr_row,
                                                        'reference': ref_row, 'original': original, 'rows': rows},
                                                       indent=2, default=str))


if __name__ == '__main__':
    with user_errors():  # e.g. a misspelt --plans entry
        main()
