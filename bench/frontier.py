"""bench/frontier.json: the compression accuracy frontier, one entry per figure, each written by
the benchmark that measured it (never by hand), with the command line that reproduces it.

    from frontier import record                       # in a bench/ script
    record({'prune80_no_ft_map50': 0.91}, results='runs/bench_prune/results.json')

Keys: ``prune80_no_ft_map50`` / ``prune80_ft_map50`` (bench_prune.py), ``qat4_delta_points`` /
``qat4_fpga_delta_points`` (bench_quant.py), ``kd_gain_points`` / ``kd_step_overhead``
(bench_distill.py). An entry keeps the value, the command (``sys.argv`` of the benchmark),
the CPU and the date; a later run of the same benchmark replaces its own keys only.
"""
import datetime
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.general import atomic_write_text  # noqa: E402
from utils.deploy.latency import cpu_info, cpu_text  # noqa: E402

PATH = ROOT / 'bench' / 'frontier.json'
KEYS = ('prune80_no_ft_map50', 'prune80_ft_map50', 'qat4_delta_points', 'qat4_fpga_delta_points', 'kd_gain_points',
        'kd_step_overhead')


def relative(path):
    """``path`` relative to the repository when it lies inside it (no machine paths in the tree)."""
    path = Path(path) if path else None
    if path is None:
        return ''
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def record(values, results='', extra=None, path=PATH, argv=None):
    """Merge {key: number} into ``path`` (atomically), each with the command that produced it."""
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f'unknown frontier keys {sorted(unknown)}; expected some of {KEYS}')
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    argv = sys.argv if argv is None else argv
    command = 'python3 ' + shlex.join([str(Path(argv[0]).resolve().relative_to(ROOT)) if Path(argv[0]).is_file()
                                       else argv[0], *map(str, argv[1:])])
    stamp = {'command': command, 'results': relative(results), 'cpu': cpu_text(cpu_info()),
             'date': datetime.date.today().isoformat(), **(extra or {})}
    for key, value in values.items():
        data[key] = {'value': None if value is None else round(float(value), 4), **stamp}
    atomic_write_text(path, json.dumps({k: data[k] for k in KEYS if k in data}, indent=2) + '\n')
    return data
