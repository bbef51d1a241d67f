"""detect.py and test.py end to end: box rescaling through the letterbox, annotated images and
videos, --save-txt rows, clear errors, metrics.json / COCO JSON checked against pycocotools,
and --task study.

The detect.py checks use a "grid" checkpoint: a yolov3-tiny-shapes model whose head convs are
zeroed and biased so that exactly one anchor (the smallest of the stride-16 head) fires in
every cell with class 2 and confidence ~1. Its detections are therefore known in closed form:
one anchor-sized box per cell centre of the letterboxed input, mapped back to the original image.
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import models

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / 'cfg' / 'yolov3-tiny-shapes.cfg'
NAMES = ['circle', 'square', 'triangle', 'star', 'cross']
GRID_CLS, GRID_STRIDE = 2, 16


def grid_model():
    """-> (model, (anchor_w, anchor_h) of the one firing anchor in input pixels)."""
    model = models.Darknet(str(CFG), img_size=256)
    heads = model.head_strides(256, 256).tolist()
    anchor = None
    with torch.no_grad():
        for li, stride in zip(model.yolo_layers, heads):
            conv, layer = model.module_list[li - 1].Conv2d, model.module_list[li]
            conv.weight.zero_()
            b = conv.bias.view(layer.na, layer.no)
            b.zero_()  # tx = ty = 0 (cell centre), tw = th = 0 (anchor size)
            b[:, 4] = -20.0
            b[:, 5:] = -20.0
            b[:, 5 + GRID_CLS] = 20.0
            if stride == GRID_STRIDE:
                a = int(layer.anchors.prod(1).argmin())
                b[a, 4] = 20.0  # only the smallest anchor of the stride-16 head fires
                anchor = tuple(layer.anchors[a].tolist())
    assert anchor is not None and max(anchor) < 1.5 * GRID_STRIDE, 'boxes of neighbouring cells must not overlap much'
    return model.eval(), anchor


@pytest.fixture(scope='module')
def grid_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'grid.pt'
    model, anchor = grid_model()
    models.save_checkpoint(path, model, names=NAMES)
    return path, anchor


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    root = tmp_path_factory.mktemp('tinycli') / 'shapes'
    return Path(shapes.ensure_shapes(root, n_train=2, n_val=6, seed=3, min_size=96, max_size=160))


def run_script(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def expected_grid_boxes(h0, w0, img_size, anchor):
    """xyxy boxes [n,4] in original pixels that the grid model + detect.py must produce for an
    h0 x w0 image (letterbox auto=True, stride 32, centred padding; clipped, rounded)."""
    r = min(img_size / h0, img_size / w0)
    w, h = int(round(w0 * r)), int(round(h0 * r))
    dw, dh = (img_size - w) % 32, (img_size - h) % 32
    big_w, big_h, left, top = w + dw, h + dh, dw // 2, dh // 2
    cy, cx = np.meshgrid((np.arange(big_h // GRID_STRIDE) + 0.5) * GRID_STRIDE,
                         (np.arange(big_w // GRID_STRIDE) + 0.5) * GRID_STRIDE, indexing='ij')
    cx, cy, (ax, ay) = cx.ravel(), cy.ravel(), (anchor[0] / 2, anchor[1] / 2)
    boxes = np.stack([(cx - ax - left) * w0 / w, (cy - ay - top) * h0 / h, (cx + ax - left) * w0 / w,
                      (cy + ay - top) * h0 / h], 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w0)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h0)
    return boxes.round()


def read_txt(path):
    rows = np.loadtxt(path, ndmin=2)
    assert rows.shape[1] == 6, f'{path}: rows must be cls cx cy w h conf'
    return rows


def assert_txt_matches(path, h0, w0, img_size, anchor):
    rows = read_txt(path)
    assert (rows[:, 0] == GRID_CLS).all()
    assert (rows[:, 5] > 0.99).all() and (rows[:, 5] <= 1).all()
    assert (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all(), 'coordinates must be normalised'
    got = rows[:, 1:5] * [w0, h0, w0, h0]  # cx cy w h in original pixels
    exp = expected_grid_boxes(h0, w0, img_size, anchor)
    exp = np.stack([(exp[:, 0] + exp[:, 2]) / 2, (exp[:, 1] + exp[:, 3]) / 2, exp[:, 2] - exp[:, 0],
                    exp[:, 3] - exp[:, 1]], 1)
    assert len(got) == len(exp), f'{path}: {len(got)} rows, expected {len(exp)}'
    dist = np.linalg.norm(exp[:, None, :2] - got[None, :, :2], axis=2)
    match = dist.argmin(1)
    assert len(set(match.tolist())) == len(exp), f'{path}: boxes do not pair up one to one'
    np.testing.assert_allclose(got[match], exp, atol=1.01, err_msg=str(path))


# ----------------------------------------------------------------------------- box rescaling
@pytest.mark.parametrize('hw', [(141, 317), (317, 141), (61, 143)])
@pytest.mark.parametrize('auto', [False, True])
def test_box_survives_letterbox_and_scale_boxes(hw, auto):
    from utils.augmentations import letterbox
    from utils.datasets import scale_boxes
    h0, w0 = hw
    box = np.array([23, 17, min(w0 - 9, 112), min(h0 - 7, 101)], np.float64)  # x1 y1 x2 y2
    img = np.zeros((h0, w0, 3), np.uint8)
    img[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 255
    lb, ratio, pad = letterbox(img, 256, auto=auto, stride=32)
    assert max(lb.shape[:2]) == 256 and lb.shape[0] % 32 == 0 and lb.shape[1] % 32 == 0
    if not auto:
        assert lb.shape[:2] == (256, 256)
    # find the box where it landed in the letterboxed image (half-intensity edges)
    on = lb[..., 0] >= 128
    cols, rows = np.flatnonzero(on.any(0)), np.flatnonzero(on.any(1))
    found = np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float64)
    for ratio_pad in (None, (ratio, pad)):
        back = scale_boxes(lb.shape[:2], torch.tensor(found), (h0, w0), ratio_pad=ratio_pad)
        np.testing.assert_allclose(back.numpy()[0], box, atol=1.0)
        back_np = scale_boxes(lb.shape[:2], found, (h0, w0), ratio_pad=ratio_pad)
        np.testing.assert_allclose(back_np[0], box, atol=1.0)


# ----------------------------------------------------------------------------- detect.py
def test_detect_folder_images_video_corrupt(tmp_path, grid_ckpt):
    grid_ckpt, anchor = grid_ckpt
    src = tmp_path / 'src'
    src.mkdir()
    rng = np.random.default_rng(0)
    sizes = {'a.jpg': (150, 200), 'b.png': (91, 137)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(src / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (src / 'bad.jpg').write_bytes(b'\x00garbage, not a JPEG\xff' * 20)
    vw = cv2.VideoWriter(str(src / 'clip.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 10, (160, 120))
    assert vw.isOpened()
    for i in range(5):
        vw.write(np.full((120, 160, 3), 30 * i + 20, np.uint8))
    vw.release()

    r = run_script('detect.py', '--weights', grid_ckpt, '--source', src, '--img-size', 256, '--conf-thres', 0.5,
                   '--save-txt', '--project', tmp_path / 'runs', '--name', 'exp', '--device', 'cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'bad.jpg' in r.stderr and 'unreadable' in r.stderr, r.stderr[-2000:]
    assert 'triangle' in r.stdout  # class names come from the checkpoint
    out = tmp_path / 'runs' / 'exp'
    for name, (h, w) in sizes.items():
        im = cv2.imread(str(out / name))
        assert im is not None and im.shape == (h, w, 3), name
        assert not np.array_equal(im, cv2.imread(str(src / name))), f'{name}: nothing drawn'
        assert_txt_matches(out / 'labels' / f'{Path(name).stem}.txt', h, w, 256, anchor)
    assert not (out / 'bad.jpg').exists()

    cap = cv2.VideoCapture(str(out / 'clip.mp4'))
    assert cap.isOpened()
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (160, 120)
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 5
    for k in range(1, 6):
        assert_txt_matches(out / 'labels' / f'clip_{k}.txt', 120, 160, 256, anchor)
    assert sorted(p.name for p in (out / 'labels').iterdir()) == sorted(
        ['a.txt', 'b.txt'] + [f'clip_{k}.txt' for k in range(1, 6)])


def test_detect_missing_source_is_one_clear_line(tmp_path, grid_ckpt):
    missing = tmp_path / 'nowhere' / 'missing.jpg'
    r = run_script('detect.py', '--weights', grid_ckpt[0], '--source', missing, '--project', tmp_path / 'runs',
                   '--device', 'cpu')
    assert r.returncode != 0
    assert 'Traceback' not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and str(missing) in last, last
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir())  # no empty run folder


def test_detect_missing_weights_is_one_clear_line(tmp_path):
    import detect
    missing = tmp_path / 'missing.pt'
    with pytest.raises(SystemExit) as e:  # in-process: the same main() the script runs
        detect.main(['--weights', str(missing), '--source', str(ROOT / 'data'), '--project', str(tmp_path / 'runs')])
    msg = str(e.value.code)
    assert msg.startswith('error: ') and str(missing) in msg and '\n' not in msg, msg
    assert not (tmp_path / 'runs').exists()


# ----------------------------------------------------------------------------- test.py
METRIC_KEYS = {'precision', 'recall', 'map50', 'map50_95', 'f1', 'per_class', 'speed_ms'}


def val_ground_truth(data):
    """COCO GT dict built straight from the label files and image sizes (category ids 0-based)."""
    from utils.parse_config import parse_data_cfg
    cfg = parse_data_cfg(data)
    images, anns = [], []
    for line in Path(cfg['valid']).read_text().split():
        img = Path(line) if Path(line).is_absolute() else Path(cfg['valid']).parent / line
        h, w = cv2.imread(str(img)).shape[:2]
        img_id = int(img.stem)
        images.append({'id': img_id, 'width': w, 'height': h, 'file_name': img.name})
        label = img.parents[2] / 'labels' / img.parent.name / f'{img.stem}.txt'
        for c, cx, cy, bw, bh in np.loadtxt(label, ndmin=2).tolist():
            anns.append({'id': len(anns) + 1, 'image_id': img_id, 'category_id': int(c), 'iscrowd': 0,
                         'bbox': [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h], 'area': bw * w * bh * h})
    return {'images': images, 'annotations': anns, 'categories': [{'id': i, 'name': n} for i, n in enumerate(NAMES)]}


def coco_eval(gt_dict, pred_rows):
    import contextlib
    import io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(pred_rows), 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1], ev.stats[0]


class _BatchSpy:
    """Wraps a loader and remembers the targets of the batch being evaluated."""

    def __init__(self, loader, seen):
        self.loader, self.seen = loader, seen

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.seen['targets'] = batch[1].clone()
            yield batch


class NoisyOracle(nn.Module):
    """A stand-in detector: noisy copies of the current batch's ground truth (in letterboxed input
    pixels, some missed, some with the wrong class) plus random false positives, as [B, N, 5+nc]
    rows (cx, cy, w, h, objectness, class probabilities) like Darknet's eval output."""

    def __init__(self, seen, nc=5, n_rows=40, seed=0):
        super().__init__()
        self.seen, self.nc, self.n_rows = seen, nc, n_rows
        self.dummy = nn.Parameter(torch.zeros(1))
        self.rng = np.random.default_rng(seed)

    def fuse(self):
        return self

    def forward(self, imgs):
        b, _, h, w = imgs.shape
        t = self.seen['targets'].cpu().numpy()
        rng, out = self.rng, np.zeros((b, self.n_rows, 5 + self.nc), np.float32)
        for si in range(b):
            gt = t[t[:, 0] == si, 1:]
            rows = []
            for c, cx, cy, bw, bh in gt:
                if rng.random() < 0.15:
                    continue  # missed
                for _ in range(rng.integers(1, 3)):  # sometimes a near-duplicate
                    box = np.array([cx * w, cy * h, bw * w, bh * h])
                    box += rng.normal(0, 0.08, 4) * np.array([bw * w, bh * h, bw * w, bh * h])
                    cls = int(c) if rng.random() < 0.9 else int(rng.integers(0, self.nc))
                    rows.append((box, rng.beta(5, 2), cls))
            for _ in range(rng.integers(2, 8)):  # false positives
                s = rng.uniform(8, 0.5 * min(h, w), 2)
                rows.append((np.r_[rng.uniform([0, 0], [w, h]), s], rng.beta(2, 5), int(rng.integers(0, self.nc))))
            for k, (box, score, cls) in enumerate(rows[:self.n_rows]):
                out[si, k, :4] = box
                out[si, k, 4] = score
                out[si, k, 5 + cls] = 1.0
        return torch.from_numpy(out), None


@pytest.fixture()
def oracle(monkeypatch):
    import test as testpy
    import utils.datasets
    seen, real = {}, utils.datasets.create_dataloader

    def spy(*a, **k):
        loader, dataset = real(*a, **k)
        return _BatchSpy(loader, seen), dataset

    monkeypatch.setattr(utils.datasets, 'create_dataloader', spy)
    model = NoisyOracle(seen)
    monkeypatch.setattr(models, 'load_model', lambda *a, **k: (model, {}))
    return testpy


def test_test_py_cli_writes_metrics_and_coco_json(tmp_path, tiny_data, grid_ckpt):
    grid_ckpt, anchor = grid_ckpt
    r = run_script('test.py', '--weights', grid_ckpt, '--data', tiny_data, '--img-size', 160, '--batch-size', 4,
                   '--workers', 0, '--save-json', '--project', tmp_path, '--name', 'exp', '--device', 'cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / 'exp'
    metrics = json.loads((out / 'metrics.json').read_text())
    assert METRIC_KEYS <= set(metrics)
    assert set(metrics['speed_ms']) >= {'inference', 'nms', 'total'} and metrics['speed_ms']['total'] > 0
    gt = val_ground_truth(tiny_data)
    sizes = {im['id']: (im['width'], im['height']) for im in gt['images']}
    rows = json.loads((out / 'predictions.json').read_text())
    assert rows and {r['image_id'] for r in rows} == set(sizes)  # the grid model fires on every image
    for row in rows:
        assert type(row['image_id']) is int and row['category_id'] == GRID_CLS  # 0-based, not COCO ids
        x, y, bw, bh = row['bbox']
        w0, h0 = sizes[row['image_id']]
        assert 0 <= x and 0 <= y and x + bw <= w0 + 1e-3 and y + bh <= h0 + 1e-3 and bw >= 0 and bh >= 0
        assert 0.99 < row['score'] <= 1
    # unclipped boxes are the 11x11 anchor scaled back by the letterbox's per-axis ratio
    for img_id, (w0, h0) in sizes.items():
        wh = np.array([r['bbox'][2:] for r in rows if r['image_id'] == img_id])
        r = 160 / max(w0, h0)
        expect = np.array(anchor) * [w0 / round(w0 * r), h0 / round(h0 * r)]
        np.testing.assert_allclose(wh.max(0), expect, atol=0.01)


def test_test_py_metrics_match_pycocotools(tmp_path, tiny_data, oracle):
    opt = oracle.parse_args(['--data', str(tiny_data), '--img-size', '160', '--batch-size', '4', '--workers', '0',
                             '--save-json', '--project', str(tmp_path), '--name', 'exp', '--device', 'cpu'])
    metrics = oracle.run(opt)
    out = tmp_path / 'exp'
    saved = json.loads((out / 'metrics.json').read_text())
    assert METRIC_KEYS <= set(saved)
    assert saved['map50'] == pytest.approx(metrics['map50'])
    rows = json.loads((out / 'predictions.json').read_text())
    assert all(type(r['image_id']) is int and 0 <= r['category_id'] < 5 for r in rows)
    map50, map50_95 = coco_eval(val_ground_truth(tiny_data), rows)
    assert 0.3 < map50 < 0.999  # a non-trivial detector: most boxes found, not all
    assert metrics['map50'] == pytest.approx(map50, abs=0.002)
    assert metrics['map50_95'] == pytest.approx(map50_95, abs=0.002)
    assert {c['class'] for c in saved['per_class']} <= set(range(5)) and saved['per_class']


def test_test_py_study(tmp_path, tiny_data, oracle):
    oracle.main(['--task', 'study', '--study-sizes', '160', '128', '--data', str(tiny_data), '--img-size', '160',
                 '--batch-size', '4', '--workers', '0', '--project', str(tmp_path), '--name', 'study',
                 '--device', 'cpu'])
    out = tmp_path / 'study'
    rows = list(csv.DictReader(open(out / 'study.csv')))
    assert [int(r['img_size']) for r in rows] == [128, 160]
    for r in rows:
        assert 0.3 < float(r['map50']) <= 1 and 0 < float(r['map50_95']) <= float(r['map50'])
        assert float(r['ms_per_image']) >= 0
    last = json.loads((out / 'metrics.json').read_text())  # written by the last size evaluated
    assert float(rows[-1]['map50']) == pytest.approx(last['map50'], abs=1e-5)
    png = cv2.imread(str(out / 'study.png'))
    assert png is not None and png.shape[1] > png.shape[0] > 100
    assert not list(out.glob('.*.tmp'))
    with pytest.raises(SystemExit, match='multiples of 32'):
        oracle.main(['--task', 'study', '--study-sizes', '100', '--data', str(tiny_data), '--project', str(tmp_path)])


def test_test_py_single_cls_keeps_every_label(tmp_path, tiny_data, oracle):
    """--single-cls merges classes: labels of class >= 1 are still evaluated (not dropped as out of range)
    and the mAP is pycocotools' with every class id set to 0."""
    opt = oracle.parse_args(['--data', str(tiny_data), '--img-size', '160', '--batch-size', '4', '--workers', '0',
                             '--save-json', '--single-cls', '--project', str(tmp_path), '--name', 'sc',
                             '--device', 'cpu'])
    metrics = oracle.run(opt)
    gt = val_ground_truth(tiny_data)
    assert {a['category_id'] for a in gt['annotations']} - {0}  # the data has other classes to merge
    for a in gt['annotations']:
        a['category_id'] = 0
    gt['categories'] = [{'id': 0, 'name': 'object'}]
    rows = json.loads((tmp_path / 'sc' / 'predictions.json').read_text())
    assert {r['category_id'] for r in rows} == {0}
    map50, map50_95 = coco_eval(gt, rows)
    assert metrics['map50'] == pytest.approx(map50, abs=0.002) and map50 > 0.3
    assert metrics['map50_95'] == pytest.approx(map50_95, abs=0.002)


def test_test_py_data_without_valid_is_one_clear_line(tmp_path):
    import test as testpy
    data = tmp_path / 'novalid.data'
    data.write_text('classes = 5\ntrain = train.txt\n')
    with pytest.raises(SystemExit) as e:  # was a KeyError traceback
        testpy.main(['--data', str(data), '--weights', '', '--project', str(tmp_path / 'runs')])
    msg = str(e.value.code)
    assert msg.startswith('error: ') and str(data) in msg and 'no valid= line' in msg and '\n' not in msg, msg
    assert not (tmp_path / 'runs').exists()


def test_detect_default_source_exists():
    """`python3 detect.py --weights best.pt` with no --source runs on the built-in validation images
    (the old default, data/samples, did not exist)."""
    import detect
    assert detect.parse_args(['--weights', 'x.pt']).source == ''
    src = Path(detect.default_source())
    assert src.is_file() and src.read_text().split()


def test_no_absolute_paths_of_a_machine_in_the_tree():
    tracked = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip('not a git checkout')
    roots = ['/' + d + '/' for d in ('work', 'root', 'home')]  # spelled so that this file does not match
    bad = [f for f in tracked if f.endswith(('.py', '.sh', '.txt', '.yaml', '.cfg', '.data'))
           and any(r in (ROOT / f).read_text(errors='replace') for r in roots)]
    assert not bad, bad


# ----------------------------------------------------------------------------- --help
ENTRY_SCRIPTS = ['train.py', 'test.py', 'detect.py', 'export.py', 'compress.py', 'normal_prune.py',
                 'regular_prune.py', 'shortcut_prune.py', 'slim_prune.py', 'layer_prune.py', 'layer_channel_prune.py',
                 'data/convert.py', 'data/anchors.py', 'data/shapes.py']
HELP_PROBE = '''
import contextlib, io, runpy, sys
sys.path.insert(0, '.')
sys.argv = [SCRIPT, '--help']
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out):
        runpy.run_path(SCRIPT, run_name='__main__')
except SystemExit as e:
    assert e.code in (0, None), e.code
assert 'usage:' in out.getvalue(), out.getvalue()
print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])
'''


@pytest.mark.parametrize('script', ENTRY_SCRIPTS)
def test_help_does_not_import_torch(script):
    """--help is instant and works before torch is installed: parsers are built from torch-free
    modules (utils/compress/quant_flags.py, utils/compress/prune_flags.py), the work imports torch after parsing."""
    assert (ROOT / script).is_file()
    r = subprocess.run([sys.executable, '-c', HELP_PROBE.replace('SCRIPT', repr(script))], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == '[]', f'{script} --help imported {r.stdout.strip()}'
