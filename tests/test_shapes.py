"""data/shapes.py: determinism, tight labels from an independent re-render of the scene,
the occlusion rule, label validity and atomic (re)generation."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'data'))
import shapes  # noqa: E402
from utils.parse_config import parse_data_cfg  # noqa: E402

SMALL = dict(n_train=5, n_val=3, min_size=96, max_size=200)


def tree_digest(root):
    """{relative path: sha256} of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return Path(shapes.ensure_shapes(tmp_path_factory.mktemp('a') / 'shapes', seed=3, **SMALL))


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    again = shapes.ensure_shapes(tmp_path / 'b' / 'shapes', seed=3, **SMALL)
    first, second = tree_digest(small.parent / 'shapes'), tree_digest(Path(again).parent / 'shapes')
    assert len(first) == 2 * (5 + 3) + 3 and first == second
    assert small.read_text() == Path(again).read_text()
    other = tree_digest(Path(shapes.ensure_shapes(tmp_path / 'c' / 'shapes', seed=4, **SMALL)).parent / 'shapes')
    assert other.keys() == first.keys()
    images = [k for k in first if k.endswith('.jpg')]
    assert all(first[k] != other[k] for k in images)


def test_cli_matches_api_in_another_process(small, tmp_path):
    """A separate interpreter (fresh noise bank, fresh OpenCV) writes the same bytes."""
    out = tmp_path / 'cli' / 'shapes'
    args = ['--out', str(out), '--seed', '3'] + [f'--{k.replace("_", "-")}={v}' for k, v in SMALL.items()]
    res = subprocess.run([sys.executable, str(ROOT / 'data' / 'shapes.py'), *args], capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f'shapes dataset ready: {out.parent / "shapes.data"}' in res.stdout
    assert tree_digest(out) == tree_digest(small.parent / 'shapes')


def test_data_file_and_label_rows_valid(small):
    data = parse_data_cfg(str(small))
    assert data['classes'] == len(shapes.CLASSES) == 5
    assert Path(data['names']).read_text().split() == shapes.CLASSES
    for key, n in (('train', 5), ('valid', 3)):
        images = [Path(data[key]).parent / line for line in Path(data[key]).read_text().split()]
        assert len(images) == n
        for img_path in images:
            img = cv2.imread(str(img_path))
            h, w = img.shape[:2]
            assert 96 <= h <= 200 and 96 <= w <= 200 and h % 8 == 0 and w % 8 == 0
            label = Path(str(img_path).replace('/images/', '/labels/')).with_suffix('.txt')
            rows = np.loadtxt(label, ndmin=2)
            assert rows.shape[1] == 5 and len(rows) >= 1
            cls, xywh = rows[:, 0], rows[:, 1:]
            assert (cls == cls.astype(int)).all() and (cls >= 0).all() and (cls < 5).all()
            assert (xywh >= 0).all() and (xywh <= 1).all()
            assert (xywh[:, :2] - xywh[:, 2:] / 2 >= -1e-6).all() and (xywh[:, :2] + xywh[:, 2:] / 2 <= 1 + 1e-6).all()
    # the committed descriptor points at the generated layout, relative to data/
    committed = (ROOT / 'data' / 'shapes.data').read_text().split()
    assert committed == ['classes=5', 'train=shapes/train.txt', 'valid=shapes/val.txt', 'names=shapes.names',
                         'hyp=hyp.shapes.yaml']
    assert (ROOT / 'data' / 'hyp.shapes.yaml').is_file()
    assert (ROOT / 'data' / 'shapes.names').read_text().split() == shapes.CLASSES


def paste(h, w, x0, y0, local):
    """An object's local mask placed on a (2h x 2w)-padded canvas, so off-image pixels are kept."""
    canvas = np.zeros((3 * h, 3 * w), bool)
    canvas[y0 + h:y0 + h + local.shape[0], x0 + w:x0 + w + local.shape[1]] = local
    return canvas


def test_labels_tight_around_visible_pixels_and_occlusion_bounded():
    """Re-render the scene independently: each object alone, then hide what later objects
    cover and what leaves the image; the label must be that mask's box, and the image's
    pixels there must carry the object's colour."""
    n_checked = 0
    for index in range(25):
        img, rows, objects = shapes.make_image(11, index, 96, 256)
        h, w = img.shape[:2]
        full = [paste(h, w, *shapes.object_mask(o['cls'], o['cx'], o['cy'], o['r'], o['rot'])) for o in objects]
        assert len(rows) == len(objects) >= 1  # every drawn object is labelled
        for i, (o, row) in enumerate(zip(objects, rows)):
            later = np.zeros_like(full[i])
            for f in full[i + 1:]:
                later |= f
            visible = (full[i] & ~later)[h:2 * h, w:2 * w]
            area = full[i].sum()
            assert visible.sum() >= shapes.MIN_VISIBLE * area, (index, i)  # occlusion + truncation rule
            ys, xs = np.nonzero(visible)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            cls, cx, cy, bw, bh = row
            assert cls == o['cls']
            got = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            np.testing.assert_allclose(got, [x1, y1, x2, y2], atol=0.01)  # tight (6 decimals in the file)
            assert min(x2 - x1, y2 - y1) >= shapes.MIN_BOX
            # drawn pixels: the object's colour times the 0.85..1.15 texture
            pix = img[visible].astype(float)
            lo = np.clip(np.floor(o['colour'] * 0.85) - 1, 0, 255)
            hi = np.clip(np.ceil(o['colour'] * 1.15) + 1, 0, 255)
            assert ((pix >= lo) & (pix <= hi)).all(), (index, i)
            n_checked += 1
        boxes = [o['box'] for o in objects]
        for i in range(len(boxes)):
            for j in range(i):
                assert shapes._box_iou(boxes[i], boxes[j]) <= shapes.MAX_BOX_IOU
    assert n_checked > 50


def test_object_masks_match_analytic_geometry():
    """Pixels clearly inside the ideal shape are set, clearly outside are not (margin 1.5 px:
    cv2's 8-connected polygon edges may add a pixel at sharp vertices);
    a pixel (x0 + j, y0 + i) is the point (x0 + j, y0 + i) of the drawing coordinates."""
    rng = np.random.default_rng(0)
    for cls in range(5):
        for _ in range(6):
            r, rot = rng.uniform(4.5, 40), rng.uniform(0, 2 * np.pi)
            cx, cy = rng.uniform(50, 60), rng.uniform(50, 60)
            x0, y0, mask = shapes.object_mask(cls, cx, cy, r, rot)
            ii, jj = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
            px, py = x0 + jj - cx, y0 + ii - cy
            dist = np.hypot(px, py)
            if cls == 0:
                depth = r - dist  # > 0 inside
            elif cls == 4:
                t = shapes.ring_thickness(r)
                depth = np.minimum(r - dist, dist - (r - t))
            else:
                poly = shapes.shape_polygon(cls, r, rot).astype(np.float32).reshape(-1, 1, 2)
                depth = np.vectorize(lambda x, y: cv2.pointPolygonTest(poly, (float(x), float(y)), True))(px, py)
            assert mask[depth > 1.5].all() and not mask[depth < -1.5].any(), (cls, r)
            assert mask[0].sum() == mask[-1].sum() == mask[:, 0].sum() == mask[:, -1].sum() == 0  # window holds it


def test_size_and_class_coverage():
    sides, classes, counts = [], set(), []
    for index in range(60):
        img, rows, objects = shapes.make_image(0, index)
        h, w = img.shape[:2]
        counts.append(len(rows))
        for cls, cx, cy, bw, bh in rows:
            sides.append(min(bw * w, bh * h))
            classes.add(cls)
    sides = np.array(sides)
    assert classes == set(range(5))
    small = (sides < shapes.MIN_DIAMETER).sum()  # cut or occluded below the smallest drawn size
    assert sides.min() >= shapes.MIN_BOX and small >= 5 and sides.max() >= 80  # small to large
    assert 1 <= min(counts) and max(counts) <= shapes.MAX_OBJECTS and np.mean(counts) > 3


def test_regenerates_only_on_change_and_atomically(tmp_path, monkeypatch):
    root = tmp_path / 'shapes'
    data = shapes.ensure_shapes(root, n_train=2, n_val=1, seed=1, min_size=64, max_size=96)
    stamp_mtime = (root / 'stamp.json').stat().st_mtime_ns
    calls = []
    real = shapes.generate
    monkeypatch.setattr(shapes, 'generate', lambda *a, **k: calls.append(1) or real(*a, **k))
    assert shapes.ensure_shapes(root, n_train=2, n_val=1, seed=1, min_size=64, max_size=96) == data
    assert not calls and (root / 'stamp.json').stat().st_mtime_ns == stamp_mtime  # up to date: untouched

    def interrupted(out, *a, **k):  # dies half way through writing
        real(out, 1, 0, 2, 64, 96)
        raise KeyboardInterrupt
    monkeypatch.setattr(shapes, 'generate', interrupted)
    with pytest.raises(KeyboardInterrupt):
        shapes.ensure_shapes(root, n_train=2, n_val=1, seed=2, min_size=64, max_size=96)
    assert json.loads((root / 'stamp.json').read_text()) == {  # the old set is intact
        'version': shapes.VERSION, 'n_train': 2, 'n_val': 1, 'seed': 1, 'min_size': 64, 'max_size': 96,
        'max_objects': shapes.MAX_OBJECTS, 'min_diameter': shapes.MIN_DIAMETER}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shapes', 'shapes.data', 'shapes.names']  # no temp left

    stale = tmp_path / '.shapes.tmp-999999999-abc'  # a killed run's temp (no such pid)
    (stale / 'd').mkdir(parents=True)
    monkeypatch.setattr(shapes, 'generate', real)
    shapes.ensure_shapes(root, n_train=3, n_val=1, seed=2, min_size=64, max_size=96)
    assert not stale.exists()
    assert len((root / 'train.txt').read_text().split()) == 3 and '"seed": 2' in (root / 'stamp.json').read_text()


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match='min_size'):
        shapes.ensure_shapes(tmp_path / 's', min_size=300, max_size=200)
    with pytest.raises(ValueError, match='n_train'):
        shapes.ensure_shapes(tmp_path / 's', n_train=-1)
    with pytest.raises(ValueError, match='min_diameter'):
        shapes.ensure_shapes(tmp_path / 's', min_size=64, max_size=96, min_diameter=40)
    with pytest.raises(ValueError, match='max_objects'):
        shapes.ensure_shapes(tmp_path / 's', max_objects=0)


def test_difficulty_knobs_bound_count_and_size():
    """--max-objects and --min-diameter reach the renderer: counts and diameters stay in bounds,
    and the defaults reproduce the default stream exactly."""
    for index in range(20):
        _, rows, objects = shapes.make_image(7, index, 160, 256, max_objects=2, min_diameter=40)
        assert 1 <= len(objects) <= 2 and all(2 * o['r'] >= 40 for o in objects)
        default = shapes.make_image(7, index, 160, 256)
        same = shapes.make_image(7, index, 160, 256, shapes.MAX_OBJECTS, shapes.MIN_DIAMETER)
        assert np.array_equal(default[0], same[0]) and default[1] == same[1]
