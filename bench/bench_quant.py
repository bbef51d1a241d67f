"""Quantization measured end to end on the built-in dataset: a trained float model fine-tuned
with each quantization-aware recipe on one budget (the float model fine-tuned the same way is
the reference), post-training quantization without training, and the same for a pruned model.

    python3 bench/bench_quant.py --base runs/train/exp/weights/best.pt            # resumable
    python3 bench/bench_quant.py --base B.pt --pruned runs/prune/.../best.pt --epochs 3

Every stage runs the real command lines (train.py, test.py, export.py) into --out/<stage>; a
stage whose output exists is skipped. Fine-tuning uses the dataset's recipe at 0.1 x lr0 without
burn-in (upstream also dropped the learning rate tenfold for QAT). Then deployment: the float
model as FP32 ONNX and as ONNX Runtime static INT8, and the 8-bit QAT models as QDQ ONNX with
their own scales, each evaluated by test.py (against test.py --square on its .pt: the export's
square batches) and timed in ONNX Runtime and OpenVINO, batch 1, each file in its own process (rounds interleaved).
Writes --out/results.md and .json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from utils.general import atomic_write_text  # noqa: E402
from utils.deploy.latency import cpu_info, cpu_text  # noqa: E402
from utils.compress.pipeline import ROOT, evaluate, export, qat_hyp, train  # noqa: E402  (one way to run and resume stages)
from frontier import record  # noqa: E402

RECIPES = {  # name: (label, train.py / test.py quantization flags)
    'float': ('float (fine-tuned, reference)', []),
    'g8': ('Google 8-bit', ['--quantized', '1']),
    'g8_fold': ('Google 8-bit + BN fold', ['--quantized', '1', '--BN_Fold']),
    'g8_fold_fpga': ('Google 8-bit + BN fold + FPGA', ['--quantized', '1', '--BN_Fold', '--FPGA']),
    'g4_fold_uniform': ('Google 4-bit + BN fold, every conv at 4 bits', ['--quantized', '1', '--BN_Fold', '--a-bit', '4',
                                                                        '--w-bit', '4', '--edge-bits', '0']),
    'g4_fold_fpga_uniform': ('Google 4-bit + BN fold + FPGA, every conv at 4 bits',
                             ['--quantized', '1', '--BN_Fold', '--FPGA', '--a-bit', '4', '--w-bit', '4', '--edge-bits', '0']),
    'g4_fold': ('Google 4-bit + BN fold (image and head convs at 8)',
                ['--quantized', '1', '--BN_Fold', '--a-bit', '4', '--w-bit', '4']),
    'g4_fold_fpga': ('Google 4-bit + BN fold + FPGA (image and head convs at 8)',
                     ['--quantized', '1', '--BN_Fold', '--FPGA', '--a-bit', '4', '--w-bit', '4']),
    'g4_fold_mse': ('Google 4-bit + BN fold, MSE ranges (image and head convs at 8)',
                    ['--quantized', '1', '--BN_Fold', '--a-bit', '4', '--w-bit', '4', '--qrange', 'mse']),
    'g4_fold_fpga_mse': ('Google 4-bit + BN fold + FPGA, MSE ranges (image and head convs at 8)',
                         ['--quantized', '1', '--BN_Fold', '--FPGA', '--a-bit', '4', '--w-bit', '4', '--qrange', 'mse']),
    'dorefa8': ('DoReFa 8-bit', ['--quantized', '2']),
    # the default 8-bit recipes keep weight codes in [-64, 64] (int8 kernels without VNNI): the
    # cost of that, against the full range
    'g8_full': ('Google 8-bit, full-range weights', ['--quantized', '1', '--full-range']),
    'g8_fold_fpga_full': ('Google 8-bit + BN fold + FPGA, full-range weights',
                          ['--quantized', '1', '--BN_Fold', '--FPGA', '--full-range']),
}
PTQ = {'base': ('float, not fine-tuned (reference of PTQ)', None),
       'ptq8': ('PTQ Google 8-bit (no training)', ['--quantized', '1']),
       'ptq8_fpga': ('PTQ Google 8-bit + BN fold + FPGA', ['--quantized', '1', '--BN_Fold', '--FPGA'])}
PRUNED = ['float', 'g8_fold_fpga', 'base', 'ptq8']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--base', required=True, help='trained float .pt (e.g. the main job\'s best.pt)')
    p.add_argument('--pruned', default='', help='a fine-tuned pruned .pt, measured with a few of the recipes')
    p.add_argument('--data', default='data/shapes.data')
    p.add_argument('--epochs', type=int, default=3, help='fine-tuning budget of every recipe')
    p.add_argument('--lr-factor', type=float, default=0.1)
    p.add_argument('--calib', type=int, default=64, help='PTQ calibration images')
    p.add_argument('--recipes', nargs='+', default=list(RECIPES) + list(PTQ))
    p.add_argument('--img-size', type=int, default=256)
    p.add_argument('--out', default='runs/bench_quant')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--latency-runs', type=int, default=60, help='interleaved batch-1 rounds of the deployment timing')
    p.add_argument('--no-deploy', action='store_true', help='skip the export / runtime stage')
    p.add_argument('--timing-steps', type=int, default=0, help='also time N training steps of every QAT recipe on '
                   'the same in-memory batches, interleaved (bench/steptime.py; 0 = off)')
    p.add_argument('--timing-rounds', type=int, default=3)
    return p.parse_args(argv)


def stage_minutes(stage, minutes):
    """The minutes a stage took when it ran: a rerun that skips it keeps the first figure."""
    path = Path(str(stage) + '.minutes.json')
    if not path.is_file():
        atomic_write_text(path, json.dumps({'minutes': minutes}))
    return json.loads(path.read_text())['minutes']


def measure(out, prefix, weights, names, args, hyp):
    rows = []
    for name in names:
        t0 = time.time()
        if name in PTQ:
            label, flags = PTQ[name]
            m = evaluate(out, f'{prefix}{name}', weights, args, [] if flags is None else ['--calib', args.calib, *flags])
            rows.append({'recipe': name, 'label': label, 'map50': m['map50'], 'map50_95': m['map50_95']})
        else:
            label, flags = RECIPES[name]
            _, row = train(out, f'{prefix}{name}', args, ['--weights', weights, '--epochs', args.epochs, '--hyp', hyp,
                                                           *flags])
            rows.append({'recipe': name, 'label': label, 'map50': row['mAP@0.5'], 'map50_95': row['mAP@0.5:0.95']})
        rows[-1]['minutes'] = stage_minutes(out / f'{prefix}{name}', (time.time() - t0) / 60)
        print(rows[-1], flush=True)
    return rows


DEPLOY = {  # name: (label, the .pt it comes from, export.py flags)
    'fp32': ('float', 'base', []),
    'ptq_int8': ('float, ONNX Runtime static INT8', 'base', ['--int8', '--calib', '100']),
    'qat_g8': ('QAT Google 8-bit (own scales)', 'g8', []),
    'qat_g8_fold_fpga': ('QAT Google 8-bit + BN fold + FPGA (own scales)', 'g8_fold_fpga', []),
}


def deploy(out, args):
    """Export, evaluate and time the float, INT8 and QAT models (see the module docstring)."""
    import statistics

    from utils.deploy.latency import openvino_job, ort_job, time_per_process
    sources = {'base': Path(args.base), **{n: out / n / 'weights' / 'best.pt' for n in RECIPES}}
    rows, jobs = [], {}
    for name, (label, source, flags) in DEPLOY.items():
        if not sources[source].is_file():
            continue
        onnx = export(out / 'deploy' / f'{name}.onnx', sources[source], args, 'onnx', flags)
        ov = export(out / 'deploy' / f'{name}_openvino', sources[source], args, 'openvino', flags)
        m_onnx = evaluate(out, f'test_{name}', onnx, args)
        m_pt = evaluate(out, f'test_{name}_pt', sources[source], args, ['--square'])
        rows.append({'name': name, 'label': label, 'map50_pt': m_pt['map50'], 'map50_onnx': m_onnx['map50'],
                     'map50_95_onnx': m_onnx['map50_95'], 'mb': onnx.stat().st_size / 2 ** 20})
        jobs[f'{name} ORT'] = ort_job(onnx, 2, 1, args.img_size)
        jobs[f'{name} OpenVINO'] = openvino_job(next(ov.glob('*.xml')), 2, 1, args.img_size)
    times = time_per_process(jobs, args.latency_runs)
    for r in rows:
        for rt in ('ORT', 'OpenVINO'):
            r[f'{rt}_ms'] = 1e3 * statistics.median(times[f'{r["name"]} {rt}'])
    return rows


def write(out, args, groups, deployed=()):
    cpu = cpu_info()  # INT8 speed depends on the instruction sets (VNNI, AMX)
    lines = [f'# Quantization benchmark: {args.data} at {args.img_size} px',
             '', f'Fine-tuning: {args.epochs} epochs from the float model, the dataset\'s recipe at {args.lr_factor} x '
             f'lr0 without burn-in; PTQ: {args.calib} calibration images. mAP from train.py\'s final validation '
             '(test.py for PTQ).', '']
    for title, rows in groups:
        refs = {r['recipe']: r for r in rows if r['recipe'] in ('float', 'base')}
        lines += [f'## {title}', '', '| recipe | mAP@0.5 | vs its float reference | mAP@0.5:0.95 | minutes | '
                  'ms/step (interleaved) |', '|---|---|---|---|---|---|']
        for r in rows:  # QAT against the float model fine-tuned alike, PTQ against the model it calibrates
            ref = refs.get('base' if r['recipe'] in PTQ else 'float')
            delta = f'{100 * (r["map50"] - ref["map50"]):+.1f} pts' if ref and ref is not r else ''
            step = f'{r["ms_step"]:.0f}' if 'ms_step' in r else ''
            lines.append(f'| {r["label"]} | {r["map50"]:.3f} | {delta} | {r["map50_95"]:.3f} | {r["minutes"]:.1f} | '
                         f'{step} |')
        lines.append('')
    if deployed:
        ref = {rt: deployed[0][f'{rt}_ms'] for rt in ('ORT', 'OpenVINO')}
        lines += ['## Deployment (ONNX Runtime and OpenVINO, batch 1, 2 threads, each file in its own process, '
                  'interleaved rounds, median ms)', '', f'CPU: {cpu_text(cpu)}.', '',
                  '| model | mAP@0.5 .pt (square) | mAP@0.5 ONNX | mAP@0.5:0.95 ONNX | MB | ORT ms | vs FP32 | '
                  'OpenVINO ms | vs FP32 |', '|---|---|---|---|---|---|---|---|---|']
        for r in deployed:
            lines.append(f'| {r["label"]} | {r["map50_pt"]:.3f} | {r["map50_onnx"]:.3f} | {r["map50_95_onnx"]:.3f} | '
                         f'{r["mb"]:.1f} | {r["ORT_ms"]:.2f} | {r["ORT_ms"] / ref["ORT"]:.2f}x | '
                         f'{r["OpenVINO_ms"]:.2f} | {r["OpenVINO_ms"] / ref["OpenVINO"]:.2f}x |')
        lines.append('')
    atomic_write_text(out / 'results.md', '\n'.join(lines))
    atomic_write_text(out / 'results.json', json.dumps({'args': vars(args), 'groups': groups, 'deploy': list(deployed),
                                                        'cpu': cpu}, indent=1))


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    hyp = qat_hyp(out, args)
    groups = [(f'Default model ({args.base})', measure(out, '', args.base, args.recipes, args, hyp))]
    write(out, args, groups)
    if args.pruned:
        groups.append((f'Pruned model ({args.pruned})', measure(out, 'pruned_', args.pruned,
                                                                 [r for r in args.recipes if r in PRUNED], args, hyp)))
        write(out, args, groups)
    record_frontier(out, args, groups[0][1])
    if args.timing_steps:
        time_recipes(out, args, groups[0][1], hyp)
        write(out, args, groups)
    if not args.no_deploy:
        write(out, args, groups, deploy(out, args))
    print((out / 'results.md').read_text())


def time_recipes(out, args, rows, hyp):
    """ms per training step of every trained recipe in ``rows`` (into each row's 'ms_step')."""
    from steptime import time_steps
    trained = [r for r in rows if r['recipe'] in RECIPES]
    variants = {r['recipe']: ['--weights', args.base, '--data', args.data, '--img-size', args.img_size, '--hyp', hyp,
                              *RECIPES[r['recipe']][1]] for r in trained}
    seconds, threads = time_steps(variants, args.timing_steps, args.timing_rounds, out / 'timing')
    for r in trained:
        r['ms_step'], r['threads'] = 1e3 * seconds[r['recipe']], threads


FRONTIER = {'qat4_delta_points': ('g4_fold', 'g4_fold_mse'), 'qat4_fpga_delta_points': ('g4_fold_fpga', 'g4_fold_fpga_mse')}


def record_frontier(out, args, rows):
    """The best 4-bit recipe (and the best 4-bit FPGA recipe) of this run against the float model
    fine-tuned alike, in mAP@0.5 points, into bench/frontier.json."""
    by = {r['recipe']: r for r in rows}
    if 'float' not in by:
        return
    for key, names in FRONTIER.items():
        ran = [by[n] for n in names if n in by]
        if ran:
            best = max(ran, key=lambda r: r['map50'])
            record({key: 100 * (best['map50'] - by['float']['map50'])}, results=out / 'results.json',
                   extra={'recipe': best['recipe'], 'label': best['label'], 'epochs': args.epochs,
                          'float_map50': round(by['float']['map50'], 4), 'map50': round(best['map50'], 4),
                          'base': args.base})


if __name__ == '__main__':
    main()
