"""data/anchors.py: k-means recovers known anchors, hand-worked fitness/BPR, the CLI writes its
anchors into a cfg."""
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'data'))
import anchors as A  # noqa: E402
import shapes  # noqa: E402
from utils.parse_config import parse_cfg  # noqa: E402

COCO = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]],
                float)


@pytest.mark.parametrize('seed', [0, 2, 4, 5])  # draws where plain k-means++ seeding gets stuck
def test_kmeans_recovers_known_anchors(seed):
    rng = np.random.default_rng(seed)
    true = COCO[rng.permutation(9)]
    wh = np.repeat(true, 300, 0) * np.exp(rng.normal(0, 0.1, (2700, 2)))  # multiplicative noise
    got = A.kmeans_anchors(wh, 9, seed=seed)
    ref = true[np.argsort(true.prod(1))]
    assert got.shape == (9, 2) and (np.diff(got.prod(1)) >= 0).all()  # sorted by area
    ious = np.diag(A.wh_iou(got, ref))
    assert ious.mean() >= 0.9 and ious.min() >= 0.8, ious
    # the genetic step never lowers its own fitness
    before = A._evolution_fitness(wh, got, 0.2)
    evolved = A.evolve_anchors(wh, got, gen=100, seed=0, verbose=False)
    assert A._evolution_fitness(wh, evolved, 0.2) >= before


def test_evolution_repairs_poor_anchors():
    rng = np.random.default_rng(0)
    wh = np.repeat(COCO, 300, 0) * np.exp(rng.normal(0, 0.1, (2700, 2)))
    start = COCO * 1.5  # every anchor 50% too large: fitness 0.58 against 0.86 for the true ones
    evolved = A.evolve_anchors(wh, start, gen=300, seed=0, verbose=False)
    assert A._evolution_fitness(wh, evolved, 0.2) > A._evolution_fitness(wh, start, 0.2) + 0.1


def test_kmeans_is_seeded():
    wh = np.random.default_rng(2).uniform(5, 100, (500, 2))
    np.testing.assert_array_equal(A.kmeans_anchors(wh, 5, seed=7), A.kmeans_anchors(wh, 5, seed=7))
    with pytest.raises(ValueError, match='distinct box sizes'):
        A.kmeans_anchors(np.array([[4.0, 4.0]] * 10), 3)


def test_fitness_hand_worked():
    wh = np.array([[10, 10], [20, 10], [5, 50]], float)
    anchors = np.array([[10, 10], [20, 20]], float)
    # IoU (centre-aligned): box1: 1, 100/400 | box2: 100/200, 200/400 | box3: 50/300, 100/550
    np.testing.assert_allclose(A.wh_iou(wh, anchors), [[1, 0.25], [0.5, 0.5], [1 / 6, 100 / 550]])
    mean_iou, bpr = A.anchor_fitness(wh, anchors, thr=0.2)
    assert mean_iou == pytest.approx((1 + 0.5 + 100 / 550) / 3) and bpr == pytest.approx(2 / 3)  # box3 < 0.2
    assert A.anchor_fitness(wh, anchors, thr=0.15)[1] == 1.0
    # ratio rule: box3 vs (10,10): max(2, 5) = 5; vs (20,20): max(4, 2.5) = 4 (not < 4)
    assert A.anchor_fitness(wh, anchors, thr=4.0)[1] == pytest.approx(2 / 3)
    assert A.anchor_fitness(wh, anchors, thr=4.01)[1] == 1.0
    # evolution fitness counts unmatched boxes as 0
    assert A._evolution_fitness(wh, anchors, 0.2) == pytest.approx(1.5 / 3)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('anch') / 'shapes'
    return Path(shapes.ensure_shapes(root, n_train=12, n_val=1, seed=2, min_size=96, max_size=200))


def test_load_wh_letterbox_scaling(tiny_data):
    wh = A.load_wh(str(tiny_data), 256)
    expected = []
    for line in (tiny_data.parent / 'shapes' / 'train.txt').read_text().split():
        img = tiny_data.parent / 'shapes' / line
        h, w = cv2.imread(str(img)).shape[:2]
        rows = np.loadtxt(str(img).replace('/images/', '/labels/').replace('.jpg', '.txt'), ndmin=2)
        expected.append(rows[:, 3:5] * (w, h) * 256 / max(h, w))
    expected = np.concatenate(expected)
    order = lambda a: a[np.lexsort(a.T)]  # noqa: E731  (the label checker sorts rows per file)
    np.testing.assert_allclose(order(wh), order(expected), rtol=1e-5)


def test_cli_writes_printed_anchors_into_cfg(tiny_data, darknet_cfg, tmp_path, capsys):
    src = darknet_cfg / 'yolov3-tiny.cfg'
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / 'tiny-anchors.cfg'
    got = A.main(['--data', str(tiny_data), '--img-size', '256', '--gen', '100', '--cfg', str(src), '--out', str(out)])
    printed = capsys.readouterr().out
    line = re.search(r'^anchors = (.*)$', printed, re.M).group(1)
    values = [int(v) for v in re.findall(r'\d+', line)]
    assert len(values) == 12 and values == got.ravel().tolist()  # -n taken from the cfg: 6 anchors
    heads = [s for s in parse_cfg(str(out)) if s['type'] == 'yolo']
    assert len(heads) == 2 and all(h['anchors'] == got.tolist() for h in heads)
    assert re.search(r'best possible recall (\d\.\d+), mean best IoU (\d\.\d+)', printed)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # input untouched
    # -n that does not fit the cfg: a clear error, nothing written
    with pytest.raises(SystemExit):
        A.main(['--data', str(tiny_data), '-n', '9', '--cfg', str(src), '--out', str(tmp_path / 'x.cfg')])
    assert '-n 9 but' in capsys.readouterr().err and not (tmp_path / 'x.cfg').exists()


def test_cli_as_script(tiny_data, tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / 'data' / 'anchors.py'), '--data', str(tiny_data), '-n', '3',
                          '--img-size', '128', '--gen', '0', '--thr', '4.0'], capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert 'match rule: size ratio < 4' in res.stdout
    assert re.search(r'^anchors = \d+,\d+,  \d+,\d+,  \d+,\d+$', res.stdout, re.M)
