"""mAP of exported models on this CPU and on an emulated x86 CPU without VNNI (QEMU's Haswell:
AVX2, no AVX-512, no VNNI), where int8 convolutions add u8 x s8 product pairs in saturating
int16 (see utils.deploy.export.int8_overflow_risks).

    python3 bench/bench_int8_cpus.py --weights best_int8.onnx qat_openvino [--data D] [--out DIR]

For each export: test.py runs natively and records every batch its runtime is given; the same
batches then run in the runtime under ``qemu-x86_64 -cpu Haswell`` (only the runtime: NumPy's
own SIMD code is not trusted to QEMU's emulation); test.py replays those outputs, so the
metric code is the native one and the two mAPs differ only by the CPU the runtime ran on.
Needs Debian's qemu-user. Slow: about 2 s per 256 px image under emulation.
Writes --out/results.md and .json.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.deploy import backends  # noqa: E402
from utils.general import atomic_write_text, cpu_flags  # noqa: E402

EMULATED_CPU = 'Haswell'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', nargs='+', default=[], help='exports: .onnx files, OpenVINO .xml or IR folders')
    p.add_argument('--data', default='data/shapes.data')
    p.add_argument('--out', default='runs/bench_int8_cpus')
    p.add_argument('--worker', nargs=2, metavar=('EXPORT', 'DIR'), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_saved_batches(weights, folder):
    """Run ``weights`` on every folder/in_####.npy -> folder/out_####.npy (the emulated side)."""
    model = backends.load_exported(weights, 'cpu', threads=1)
    for path in sorted(Path(folder).glob('in_*.npy')):
        np.save(path.with_name(path.name.replace('in_', 'out_')), model.run(np.load(path)))


def test_py(weights, data, folder, replay):
    """test.py's metrics for ``weights``; the runtime's batches are saved to ``folder``
    (replay=False) or answered from the saved outputs (replay=True, inputs checked equal)."""
    import test as testpy
    calls = iter(range(10 ** 9))
    originals = {cls: cls.run for cls in (backends.OnnxRuntimeModel, backends.OpenVinoModel)}

    def run(self, images):
        path = Path(folder) / f'in_{next(calls):04d}.npy'
        if not replay:
            np.save(path, images)
            return originals[type(self)](self, images)
        if not np.array_equal(np.load(path), images):
            raise RuntimeError(f'{path}: the replayed batch differs from the recorded one')
        return np.load(path.with_name(path.name.replace('in_', 'out_')))

    try:
        for cls in originals:
            cls.run = run
        return testpy.run(testpy.parse_args(['--weights', str(weights), '--data', data, '--workers', '0',
                                             '--project', str(Path(folder) / 'test')]))
    finally:
        for cls, fn in originals.items():
            cls.run = fn


def main(argv=None):
    opt = parse_args(argv)
    if opt.worker:
        return run_saved_batches(*opt.worker)
    if not opt.weights:
        sys.exit('--weights: give one or more exported models')
    if shutil.which('qemu-x86_64') is None:
        sys.exit('qemu-x86_64 not found: install Debian\'s qemu-user (apt-get install qemu-user)')
    out = Path(opt.out)
    rows = []
    for weights in opt.weights:
        folder = out / Path(weights).name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        native = test_py(weights, opt.data, folder, replay=False)
        start = time.time()
        subprocess.run(['qemu-x86_64', '-cpu', EMULATED_CPU, sys.executable, __file__, '--worker', str(weights),
                        str(folder)], check=True, stderr=subprocess.PIPE)
        emulated = test_py(weights, opt.data, folder, replay=True)
        rows.append({'weights': str(weights), 'native_map50': native['map50'], 'emulated_map50': emulated['map50'],
                     'native_map50_95': native['map50_95'], 'emulated_map50_95': emulated['map50_95'],
                     'emulation_s': round(time.time() - start)})
        print(f'{weights}: mAP@0.5 {native["map50"]:.3f} here, {emulated["map50"]:.3f} on an emulated '
              f'{EMULATED_CPU}')
    cpu = cpu_flags()[0]
    lines = [f'# INT8 exports with and without VNNI\n', f'Native CPU: {cpu}; emulated: QEMU {EMULATED_CPU} '
             f'(AVX2, no AVX-512, no VNNI). Data: {opt.data}.\n',
             '| export | mAP@0.5 native | mAP@0.5 emulated | mAP@0.5:0.95 native | emulated |', '|---|---|---|---|---|']
    lines += [f'| {Path(r["weights"]).name} | {r["native_map50"]:.3f} | {r["emulated_map50"]:.3f} | '
              f'{r["native_map50_95"]:.3f} | {r["emulated_map50_95"]:.3f} |' for r in rows]
    atomic_write_text(out / 'results.md', '\n'.join(lines) + '\n')
    atomic_write_text(out / 'results.json', json.dumps({'cpu': cpu, 'emulated': EMULATED_CPU, 'rows': rows},
                                                       indent=1))
    print(f'wrote {out / "results.md"} and .json')


if __name__ == '__main__':
    main()
