"""Hyperparameter evolution (``train.py --evolve N``).

Each generation picks a parent from the best results so far (fitness-weighted among the top
5), mutates every evolvable hyperparameter multiplicatively (v * clip(1 + g*N(0,1)*U*0.2,
0.3, 3.0) with probability 0.9), clips it to its range, trains a full run (final-epoch
evaluation only) and appends (fitness, metrics, hyps) to ``evolve.csv``, kept sorted by
fitness. The best hyps are written to ``hyp_evolved.yaml``. Both files live in
``runs/evolve/<name>`` (``<--project>/<name>`` when --project is given); re-running with the
same --name continues the search.
"""
import copy
import csv
from pathlib import Path

import numpy as np
import yaml

from utils.general import atomic_write_text

TRAIN_PROJECT, EVOLVE_PROJECT = 'runs/train', 'runs/evolve'

# key: (mutation gain, low, high)
SPACE = {
    'lr0': (1, 1e-5, 1e-1), 'lrf': (1, 0.01, 1.0), 'momentum': (0.3, 0.6, 0.98), 'weight_decay': (1, 0.0, 0.001),
    'warmup_epochs': (1, 0.0, 5.0), 'giou': (1, 0.02, 10.0), 'cls': (1, 0.2, 1000.0), 'obj': (1, 0.2, 300.0),
    'iou_t': (0, 0.1, 0.7), 'anchor_t': (1, 2.0, 8.0), 'obj_iou': (1, 0.0, 1.0),
    'hsv_h': (1, 0.0, 0.1), 'hsv_s': (1, 0.0, 0.9), 'hsv_v': (1, 0.0, 0.9),
    'degrees': (1, 0.0, 45.0), 'translate': (1, 0.0, 0.9), 'scale': (1, 0.0, 0.9), 'shear': (1, 0.0, 10.0),
    'fliplr': (0, 0.0, 1.0), 'mosaic': (1, 0.0, 1.0),
}


def mutate(hyp, rng, sigma=0.2):
    """A mutated copy of ``hyp``; at least one evolvable value changes."""
    keys = [k for k in SPACE if k in hyp and SPACE[k][0] > 0]
    gains = np.array([SPACE[k][0] for k in keys])
    v = np.ones(len(keys))
    while np.all(v == 1):
        v = (gains * (rng.random(len(keys)) < 0.9) * rng.standard_normal(len(keys)) * rng.random() * sigma + 1)
        v = v.clip(0.3, 3.0)
    child = copy.deepcopy(hyp)
    for k, f in zip(keys, v):
        lo, hi = SPACE[k][1:]
        child[k] = float(np.clip(hyp[k] * f, lo, hi))
    return child


def select_parent(rows, base_hyp, rng, top=5):
    """Fitness-weighted choice among the best ``top`` rows (rows sorted best first)."""
    if not rows:
        return base_hyp
    best = rows[:top]
    fit = np.array([r['fitness'] for r in best])
    w = fit - fit.min() + 1e-6
    parent = best[rng.choice(len(best), p=w / w.sum())]
    return {k: (float(parent[k]) if k in parent else v) for k, v in base_hyp.items()}


def read_rows(path):
    if not Path(path).is_file():
        return []
    with open(path) as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: -r['fitness'])


def write_rows(path, rows):
    keys = list(rows[0].keys())
    lines = [','.join(keys)] + [','.join(f'{r[k]:.6g}' for k in keys) for r in rows]
    atomic_write_text(path, '\n'.join(lines) + '\n')


def evolve(opt, configure=None, start_ckpt=None):
    """``opt.evolve`` generations; ``configure(trainer)`` registers feature hooks on each run's Trainer;
    ``start_ckpt``: the --weights checkpoint's entries when the caller has read them (see Trainer)."""
    from utils.metrics import fitness
    from utils.parse_config import hyp_path, load_hyp
    from utils.trainer import Trainer
    opt.hyp = hyp_path(opt)
    base = load_hyp(opt.hyp)
    # train.py's default project is runs/train; a search has its own home unless --project says otherwise
    out = Path(EVOLVE_PROJECT if opt.project in ('', TRAIN_PROJECT) else opt.project) / opt.name
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / 'evolve.csv'
    rng = np.random.default_rng(opt.seed + len(read_rows(csv_path)))
    generations = opt.evolve
    for g in range(generations):
        rows = read_rows(csv_path)
        hyp = mutate(select_parent(rows, base, rng), rng)
        hyp_path = out / 'hyp_candidate.yaml'
        atomic_write_text(hyp_path, yaml.safe_dump(hyp, sort_keys=False))
        run_opt = copy.copy(opt)
        run_opt.hyp, run_opt.evolve, run_opt.notest, run_opt.nosave = str(hyp_path), 0, True, True
        run_opt.project, run_opt.name = str(out), f'gen{len(rows)}'
        print(f'\nEvolve generation {g + 1}/{generations}')
        trainer = Trainer(run_opt, start_ckpt=start_ckpt)
        if configure is not None:
            configure(trainer)
        result = trainer.train()
        metrics = {'precision': result['P'], 'recall': result['R'], 'map50': result['mAP@0.5'],
                   'map50_95': result['mAP@0.5:0.95']}
        hyp_numbers = {k: float(v) for k, v in hyp.items() if isinstance(v, (int, float))}
        row = {'fitness': fitness(metrics['map50'], metrics['map50_95']), **metrics, **hyp_numbers}
        rows = sorted(rows + [row], key=lambda r: -r['fitness'])
        write_rows(csv_path, rows)
        best = {k: (rows[0][k] if k in rows[0] else v) for k, v in base.items()}
        atomic_write_text(out / 'hyp_evolved.yaml', yaml.safe_dump(best, sort_keys=False))
        print(f'generation fitness {row["fitness"]:.4f}, best {rows[0]["fitness"]:.4f} -> {out / "hyp_evolved.yaml"}')
