"""Channel widths for speed: one regular-pruning cut with its kept channel counts rounded to
multiples of each --channel-base, every result timed in every runtime, so the width is chosen
by measured latency rather than by FLOPs.

    python3 bench/bench_widths.py --sparse runs/bench_prune/sparsity/weights/best.pt --percent 0.5
    python3 bench/bench_widths.py --sparse S.pt --bases 1 4 8 16 32 --threads 1 2 --runs 40

Each base runs regular_prune.py (into --out/prune_regular_<percent>_b<base>, skipped when it
exists), then export.py to ONNX and OpenVINO IR; every file is timed in its runtime (OpenCV
DNN on the pruned Darknet files, PyTorch fused, ONNX Runtime, OpenVINO), batch 1, each in its
own process, rounds interleaved (utils.deploy.latency), next to the unpruned model. mAP@0.5 is
the pruning script's (no fine-tuning). Writes --out/results.md and results.json.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from utils.general import atomic_write_text, user_errors  # noqa: E402
from utils.deploy.latency import cpu_info, cpu_text  # noqa: E402
from utils.compress.pipeline import ROOT, export, prune, saved_stage  # noqa: E402

RUNTIMES = ('OpenCV DNN', 'PyTorch fused', 'ONNX Runtime', 'OpenVINO')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sparse', required=True, help='sparsity-trained .pt (train.py -sr --prune 0 or 1)')
    p.add_argument('--percent', type=float, default=0.5, help='regular_prune.py --percent')
    p.add_argument('--bases', type=int, nargs='+', default=[1, 4, 8, 16, 32], help='--channel-base values')
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--runs', type=int, default=40, help='interleaved timed rounds per file')
    p.add_argument('--data', default='data/shapes.data')
    p.add_argument('--img-size', type=int, default=256)
    p.add_argument('--out', default='runs/bench_widths')
    return p.parse_args(argv)


def files_of(out, args):
    """{label: {'pt', 'cfg', 'weights', 'report'}} of the unpruned model and every base."""
    sparse = Path(args.sparse).resolve()
    models_ = {'unpruned': {'pt': sparse, 'report': None}}
    for base in args.bases:
        report = prune(out, sparse, f'regular:{args.percent}:b{base}', args)
        models_[f'base {base}'] = {**{k: Path(v) for k, v in report['files'].items()}, 'report': report}
    return models_


def jobs_for(out, label, files, t, args):
    from utils.deploy.backends import openvino_xml
    from utils.deploy.latency import darknet_job, openvino_job, ort_job, torch_job
    stem = label.replace(' ', '_')
    onnx = export(out / 'deploy' / f'{stem}.onnx', files['pt'], args, 'onnx')
    ov = export(out / 'deploy' / f'{stem}_openvino', files['pt'], args, 'openvino')
    if 'weights' not in files:  # the unpruned checkpoint: its Darknet files for OpenCV DNN
        files['weights'] = export(out / 'deploy' / f'{stem}.weights', files['pt'], args, 'darknet')
        files['cfg'] = files['weights'].with_suffix('.cfg')
    size = args.img_size
    return {f'{label} | {t} | OpenCV DNN': darknet_job(files['cfg'], files['weights'], t, 1, size),
            f'{label} | {t} | PyTorch fused': torch_job(files['pt'], t, 1, size),
            f'{label} | {t} | ONNX Runtime': ort_job(onnx, t, 1, size),
            f'{label} | {t} | OpenVINO': openvino_job(openvino_xml(ov), t, 1, size)}


def main(argv=None):
    from utils.deploy.latency import time_per_process
    args = parse_args(argv)
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    models_ = files_of(out, args)
    times = {}
    for t in args.threads:  # one interleaved run per thread count: 2-thread pools would disturb 1-thread ones
        jobs = {}
        for label, files in models_.items():
            jobs.update(jobs_for(out, label, files, t, args))
        print(f'Timing {len(jobs)} file/runtime pairs at {t} thread(s), {args.runs} interleaved rounds ...', flush=True)
        times.update({k: 1e3 * statistics.median(v) for k, v in time_per_process(jobs, args.runs).items()})
    rows = []
    for label, files in models_.items():
        report = files['report']
        stage = saved_stage(report) if report else None
        row = {'model': label, 'params': stage['params'] if stage else None, 'gflops': stage['gflops'] if stage else None,
               'map50': stage['map50'] if stage else None,
               'widths': [r['after'] for r in report['layers']] if report else None,
               'ms': {f'{t} | {rt}': times.get(f'{label} | {t} | {rt}') for t in args.threads for rt in RUNTIMES}}
        rows.append(row)
    write(out, args, rows)
    print((out / 'results.md').read_text())


def write(out, args, rows):
    cpu = cpu_info()
    cols = [f'{t} | {rt}' for t in args.threads for rt in RUNTIMES]
    lines = [f'# Channel widths: regular_prune.py --percent {args.percent} of {args.sparse}, '
             f'{args.img_size} px, batch 1', '',
             f'CPU: {cpu_text(cpu)}. Median ms, each file in its own process, {args.runs} interleaved rounds per '
             'thread count; mAP@0.5 right after pruning (no fine-tuning). **Bold**: the fastest base per column.', '',
             '| model | params | GFLOPs | mAP@0.5 | ' + ' | '.join(f'{c.split(" | ")[1]} ({c.split(" | ")[0]} thr)'
                                                            for c in cols) + ' |',
             '|---|---|---|---|' + '---|' * len(cols)]
    pruned = [r for r in rows if r['params'] is not None]
    best = {c: min((r for r in pruned if r['ms'][c] is not None), key=lambda r: r['ms'][c], default=None) for c in cols}
    for r in rows:
        cells = []
        for c in cols:
            v = r['ms'][c]
            cell = '' if v is None else f'{v:.2f}'
            cells.append(f'**{cell}**' if best[c] is r and cell else cell)
        info = (f'{r["params"]:,} | {r["gflops"]:.3f} | {r["map50"]:.3f}' if r['params'] is not None else '| | ')
        lines.append(f'| {r["model"]} | {info} | ' + ' | '.join(cells) + ' |')
    atomic_write_text(out / 'results.md', '\n'.join(lines) + '\n')
    atomic_write_text(out / 'results.json', json.dumps({'args': vars(args), 'cpu': cpu, 'rows': rows}, indent=1,
                                                       default=str))


if __name__ == '__main__':
    with user_errors():
        main()
