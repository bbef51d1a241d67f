"""bench/frontier.json: entries carry the command that measured them, later runs replace only
their own keys, and nothing but the known figures can be written."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
import frontier  # noqa: E402


def test_record_merges_keys_with_their_commands(tmp_path):
    path = tmp_path / 'frontier.json'
    argv = [str(ROOT / 'bench' / 'bench_prune.py'), '--plans', 'slim:auto:k0.2']
    frontier.record({'prune80_ft_map50': 0.91234, 'prune80_no_ft_map50': 0.85}, path=path, argv=argv,
                    results=ROOT / 'runs' / 'bench_prune' / 'results.json', extra={'plan': 'slim:auto:k0.2'})
    frontier.record({'kd_gain_points': 1.25, 'kd_step_overhead': None}, path=path,
                    argv=['bench/bench_distill.py', '--seeds', '0', '1', '2'])
    frontier.record({'prune80_ft_map50': 0.9}, path=path, argv=argv)
    data = json.loads(path.read_text())
    assert list(data) == ['prune80_no_ft_map50', 'prune80_ft_map50', 'kd_gain_points', 'kd_step_overhead']
    assert data['prune80_ft_map50']['value'] == 0.9 and 'plan' not in data['prune80_ft_map50']
    assert data['prune80_no_ft_map50'] == {**data['prune80_no_ft_map50'], 'value': 0.85, 'plan': 'slim:auto:k0.2',
                                           'results': 'runs/bench_prune/results.json'}
    assert data['prune80_no_ft_map50']['command'] == 'python3 bench/bench_prune.py --plans slim:auto:k0.2'
    assert data['kd_gain_points']['command'] == 'python3 bench/bench_distill.py --seeds 0 1 2'
    assert data['kd_step_overhead']['value'] is None and data['kd_gain_points']['cpu']
    with pytest.raises(ValueError, match='unknown frontier keys'):
        frontier.record({'map': 1.0}, path=path, argv=argv)
