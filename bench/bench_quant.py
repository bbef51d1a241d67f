"""Quantization measured end to end on the built-in dataset: a trained float model fine-tuned
with each quantization-aware recipe on one budget (the float model fine-tuned the same way is
the reference), post-training quantization without training, and the same for a pruned model.

    python3 bench/bench_quant.py --base runs/train/exp/weights/best.pt            # resumable
    python3 bench/bench_quant.py --base B.pt --pruned runs/prune/.../best.pt --epochs 3

Every stage runs the real command lines (train.py, test.py) into --out/<stage>; a stage whose
output exists is skipped. Fine-tuning uses the dataset's recipe at 0.1 x lr0 without burn-in
(upstream also dropped the learning rate tenfold for QAT). Writes --out/results.md and .json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from utils.pipeline import ROOT, evaluate, qat_hyp, train  # noqa: E402  (one way to run and resume stages)

RECIPES = {  # name: (label, train.py / test.py quantization flags)
    'float': ('float (fine-tuned, reference)', []),
    'g8': ('Google 8-bit', ['--quantized', '1']),
    'g8_fold': ('Google 8-bit + BN fold', ['--quantized', '1', '--BN_Fold']),
    'g8_fold_fpga': ('Google 8-bit + BN fold + FPGA', ['--quantized', '1', '--BN_Fold', '--FPGA']),
    'g4_fold_fpga': ('Google 4-bit + BN fold + FPGA', ['--quantized', '1', '--BN_Fold', '--FPGA', '--a-bit', '4',
                                                      '--w-bit', '4']),
    'dorefa8': ('DoReFa 8-bit', ['--quantized', '2']),
}
PTQ = {'ptq8': ('PTQ Google 8-bit (no training)', ['--quantized', '1']),
       'ptq8_fpga': ('PTQ Google 8-bit + BN fold + FPGA', ['--quantized', '1', '--BN_Fold', '--FPGA'])}
PRUNED = ['float', 'g8_fold_fpga', 'ptq8']


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
    return p.parse_args(argv)


def measure(out, prefix, weights, names, args, hyp):
    rows = []
    for name in names:
        t0 = time.time()
        if name in PTQ:
            label, flags = PTQ[name]
            m = evaluate(out, f'{prefix}{name}', weights, args, ['--calib', args.calib, *flags])
            rows.append({'recipe': name, 'label': label, 'map50': m['map50'], 'map50_95': m['map50_95']})
        else:
            label, flags = RECIPES[name]
            _, row = train(out, f'{prefix}{name}', args, ['--weights', weights, '--epochs', args.epochs, '--hyp', hyp,
                                                           *flags])
            rows.append({'recipe': name, 'label': label, 'map50': row['mAP@0.5'], 'map50_95': row['mAP@0.5:0.95']})
        rows[-1]['minutes'] = (time.time() - t0) / 60
        print(rows[-1], flush=True)
    return rows


def write(out, args, groups):
    lines = [f'# Quantization benchmark: {args.data} at {args.img_size} px',
             '', f'Fine-tuning: {args.epochs} epochs from the float model, the dataset\'s recipe at {args.lr_factor} x '
             f'lr0 without burn-in; PTQ: {args.calib} calibration images. mAP from train.py\'s final validation '
             '(test.py for PTQ).', '']
    for title, rows in groups:
        ref = next((r for r in rows if r['recipe'] == 'float'), None)
        lines += [f'## {title}', '', '| recipe | mAP@0.5 | vs float | mAP@0.5:0.95 | minutes |', '|---|---|---|---|---|']
        for r in rows:
            delta = f'{100 * (r["map50"] - ref["map50"]):+.1f} pts' if ref else ''
            lines.append(f'| {r["label"]} | {r["map50"]:.3f} | {delta} | {r["map50_95"]:.3f} | {r["minutes"]:.1f} |')
        lines.append('')
    (out / 'results.md').write_text('\n'.join(lines))
    (out / 'results.json').write_text(json.dumps({'args': vars(args), 'groups': groups}, indent=1))


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
    print((out / 'results.md').read_text())


if __name__ == '__main__':
    main()
