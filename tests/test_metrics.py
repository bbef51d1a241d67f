"""Metrics: agreement with pycocotools on synthetic scenes, hand-worked AP, confusion matrix, plots."""
import ast
import contextlib
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.metrics import (IOU_THRESHOLDS, ConfusionMatrix, Evaluator, ap_per_class, fitness, match_predictions)
from utils.plots import plot_ap_curves, plot_confusion_matrices

pycocotools = pytest.importorskip('pycocotools')
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


# ------------------------------------------------------------------------------------ synthetic scenes
def _rand_boxes(rng, n, w=640, h=480, crowded_at=None):
    if crowded_at is not None:  # many overlapping boxes around one point
        cx, cy = crowded_at
        c = np.stack([cx + rng.normal(0, 12, n), cy + rng.normal(0, 12, n)], 1)
        s = rng.uniform(40, 70, (n, 2))
    else:
        c = rng.uniform([0, 0], [w, h], (n, 2))
        s = rng.uniform(8, 200, (n, 2))
    return np.concatenate([c - s / 2, c + s / 2], 1)


def _jitter(rng, boxes, sigma):
    wh = boxes[:, 2:] - boxes[:, :2]
    d = rng.normal(0, 1, boxes.shape) * sigma[:, None] * np.concatenate([wh, wh], 1)
    out = boxes + d
    return np.concatenate([np.minimum(out[:, :2], out[:, 2:] - 1), np.maximum(out[:, 2:], out[:, :2] + 1)], 1)


def make_image(rng, nc, kind='normal'):
    """-> (labels [m,5] cls,x1,y1,x2,y2 ; detections [n,6] x1,y1,x2,y2,conf,cls) for one image."""
    if kind == 'crowded':
        gt = _rand_boxes(rng, 25, crowded_at=(300, 200))
        gcls = np.where(rng.random(25) < 0.8, 0, rng.integers(0, nc, 25))
    elif kind == 'no_gt':
        gt, gcls = np.zeros((0, 4)), np.zeros(0, int)
    else:
        m = rng.poisson(7)
        gt, gcls = _rand_boxes(rng, m), rng.integers(0, nc, m)
    dets, dcls = [], []
    if kind != 'no_det':
        hit = rng.random(len(gt)) < 0.85
        dets.append(_jitter(rng, gt[hit], rng.uniform(0, 0.15, hit.sum())))
        wrong = rng.random(hit.sum()) < 0.1  # right place, wrong class
        dcls.append(np.where(wrong, rng.integers(0, nc, hit.sum()), gcls[hit]))
        dup = rng.random(len(gt)) < 0.25  # duplicates of a GT (some exact copies of another detection)
        dets.append(_jitter(rng, gt[dup], rng.uniform(0, 0.2, dup.sum())))
        dcls.append(gcls[dup])
        n_fp = rng.poisson(4 if kind != 'crowded' else 10)
        dets.append(_rand_boxes(rng, n_fp))
        dcls.append(rng.integers(0, nc, n_fp))
    det = np.concatenate(dets) if dets else np.zeros((0, 4))
    dcls = np.concatenate(dcls) if dcls else np.zeros(0, int)
    if len(det) > 2:  # exact duplicate boxes: IoU ties between detections
        det[-1] = det[0]
        dcls[-1] = dcls[0]
    conf = np.round(rng.uniform(0.001, 1, len(det)), 2)  # rounding creates many score ties
    return np.c_[gcls, gt], np.c_[det, conf, dcls]


def make_dataset(seed, n_img, nc, kinds=None):
    rng = np.random.default_rng(seed)
    kinds = kinds or rng.choice(['normal'] * 7 + ['crowded', 'no_gt', 'no_det'], n_img)
    return [make_image(rng, nc, k) for k in kinds]


def coco_eval(data, nc):
    """pycocotools on the same data: -> (per-class AP [nc] at 0.5:0.95 (nan if no GT), AP50 [nc], stats)."""
    images = [{'id': i + 1, 'width': 640, 'height': 480} for i in range(len(data))]
    anns, res = [], []
    for i, (lab, det) in enumerate(data):
        for c, x1, y1, x2, y2 in lab:
            anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': int(c) + 1, 'iscrowd': 0,
                         'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1)})
        for x1, y1, x2, y2, s, c in det:
            res.append({'image_id': i + 1, 'category_id': int(c) + 1, 'bbox': [x1, y1, x2 - x1, y2 - y1],
                        'score': float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {'images': images, 'annotations': anns,
                      'categories': [{'id': c + 1, 'name': str(c)} for c in range(nc)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval['precision'][:, :, :, 0, 2]  # [T, R, K] at area 'all', maxDets 100
    ap = np.array([prec[:, :, k][prec[:, :, k] > -1].mean() if (prec[:, :, k] > -1).any() else np.nan
                   for k in range(nc)])
    ap50 = np.array([prec[0, :, k].mean() if (prec[0, :, k] > -1).any() else np.nan for k in range(nc)])
    return ap, ap50, ev.stats


def ours(data, nc, batch=8, max_det=100):
    ev = Evaluator(nc, max_det=max_det, confusion=False)
    for s in range(0, len(data), batch):
        chunk = data[s:s + batch]
        ev.update([torch.tensor(d) for _, d in chunk], [torch.tensor(lab) for lab, _ in chunk])
    return ev.compute()


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_pycocotools(seed):
    nc = 5
    data = make_dataset(seed, 60, nc)
    ap, ap50, stats = coco_eval(data, nc)
    m = ours(data, nc)
    res = m['ap_result']
    assert abs(m['map50_95'] - stats[0]) < 2e-3 and abs(m['map50'] - stats[1]) < 2e-3
    assert abs(m['map50_95'] - stats[0]) < 1e-9 and abs(m['map50'] - stats[1]) < 1e-9  # in fact identical
    np.testing.assert_allclose(res.ap.mean(1), ap[res.classes], atol=1e-9)
    np.testing.assert_allclose(res.ap50, ap50[res.classes], atol=1e-9)
    assert set(res.classes) == set(np.flatnonzero(~np.isnan(ap)))


def test_matches_pycocotools_crowded_and_capped():
    """Crowded scenes only, and one image with 150 detections of one class (cocoeval keeps 100)."""
    nc = 3
    data = make_dataset(7, 12, nc, kinds=['crowded'] * 12)
    rng = np.random.default_rng(3)
    lab, _ = data[0]
    many = np.c_[_jitter(rng, np.repeat(lab[:1, 1:], 150, 0), np.full(150, 0.3)),
                 np.round(rng.uniform(0, 1, 150), 2), np.full(150, lab[0, 0])]
    data[0] = (lab, many)
    ap, ap50, stats = coco_eval(data, nc)
    m = ours(data, nc, batch=5)
    assert abs(m['map50_95'] - stats[0]) < 1e-9 and abs(m['map50'] - stats[1]) < 1e-9
    uncapped = ours(data, nc, batch=5, max_det=None)
    assert uncapped['map50_95'] != m['map50_95']  # the cap matters here, so the agreement above is a real check


def test_match_predictions_greedy_by_score_and_ties():
    labels = np.array([[0, 0, 0, 10, 10], [0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], float)
    dets = np.array([[0, 0, 10, 10, 0.5, 0],    # second by score -> second copy of the GT
                     [0, 0, 10, 10, 0.9, 0],    # first by score -> the later of two equal-IoU GTs
                     [0, 0, 10, 10, 0.3, 0],    # both GTs taken -> FP
                     [20, 20, 30, 30, 0.8, 0],  # right place, wrong class -> FP
                     [20, 20, 30, 29, 0.7, 1]])  # IoU 0.9 -> TP up to threshold 0.9, FP at 0.95
    tp = match_predictions(dets, labels)
    assert tp.shape == (5, 10)
    assert tp[0].all() and tp[1].all() and not tp[2].any() and not tp[3].any()
    assert tp[4].tolist() == [True] * 9 + [False]
    t = match_predictions(torch.tensor(dets), torch.tensor(labels))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool and t.numpy().tolist() == tp.tolist()
    # a lower-scored detection with a better IoU loses the GT to the higher-scored one (IoU .9),
    # except at threshold 0.95, where the first cannot match and the GT stays free for the second
    labels = np.array([[0, 0, 0, 10, 10]], float)
    dets = np.array([[0, 0, 10, 9, 0.9, 0], [0, 0, 10, 10, 0.8, 0]], float)
    tp = match_predictions(dets, labels)
    assert tp[0].tolist() == [True] * 9 + [False] and tp[1].tolist() == [False] * 9 + [True]


def test_ap_hand_cases():
    # perfect: every detection a TP at every threshold
    r = ap_per_class(np.ones((4, 10), bool), np.array([.9, .8, .7, .6]), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(r.ap, 1.0)
    assert r.map50 == 1.0 and r.map50_95 == 1.0
    # no detections
    r = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.array([0, 1]))
    assert r.map50 == 0 and r.map50_95 == 0 and r.ap.shape == (2, 10)
    # 3 GT, ranked TP FP TP FP TP: precision 1, 1/2, 2/3, 1/2, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1
    # envelope 1, 2/3, 2/3, 3/5, 3/5; recall points 0..0.33 -> 1 (34), 0.34..0.66 -> 2/3 (33), 0.67..1 -> 3/5 (34)
    tp = np.array([1, 0, 1, 0, 1], bool)[:, None].repeat(10, 1)
    r = ap_per_class(tp, np.array([.9, .8, .7, .6, .5]), np.zeros(5), np.zeros(3))
    np.testing.assert_allclose(r.ap, (34 + 33 * 2 / 3 + 34 * 3 / 5) / 101)
    # P/R/F1 at the confidence maximising F1: keeping all 5 -> P .6 R 1 F1 .75 (best)
    assert r.conf <= 0.5 and abs(r.p[0] - 0.6) < 1e-9 and abs(r.r[0] - 1) < 1e-9 and abs(r.f1[0] - 0.75) < 1e-9
    # only 0.5 matches: AP50 = 1, AP at higher thresholds 0
    tp = np.zeros((2, 10), bool)
    tp[:, 0] = True
    r = ap_per_class(tp, np.array([.9, .8]), np.zeros(2), np.zeros(2))
    assert r.map50 == 1.0 and abs(r.map50_95 - 0.1) < 1e-12
    # detections of a class without GT are ignored, as cocoeval does
    r2 = ap_per_class(np.r_[tp, np.zeros((3, 10), bool)], np.r_[.9, .8, .95, .95, .95], np.r_[0, 0, 3, 3, 3],
                      np.zeros(2))
    assert r2.map50 == 1.0 and list(r2.classes) == [0]


def test_evaluator_dict_and_empty_images():
    ev = Evaluator(3, names=['a', 'b', 'c'])
    lab = torch.tensor([[0, 0, 0, 10, 10], [2, 50, 50, 80, 90.]])
    det = torch.tensor([[0, 0, 10, 10, .9, 0], [50, 50, 80, 90, .8, 2]])
    ev.update([det, torch.zeros(0, 6), det[:1]], [lab, lab[:1], torch.zeros(0, 5)])
    m = ev.compute()
    for k in ('precision', 'recall', 'map50', 'map50_95', 'f1', 'per_class'):
        assert k in m
    pc = {d['class']: d for d in m['per_class']}
    assert pc[0]['images'] == 2 and pc[0]['targets'] == 2 and pc[2]['targets'] == 1
    assert abs(pc[2]['ap'] - 1.0) < 1e-12  # cocoeval's epsilon in P = TP / (TP + FP + eps)
    assert set(pc) == {0, 2} and pc[0]['name'] == 'a'
    # class 0 ranking (tie at 0.9 broken by image order): TP, FP over 2 GT -> AP = 51/101 (recall <= .5 at P=1)
    assert abs(pc[0]['ap50'] - 51 / 101) < 1e-9
    assert m['maps'].shape == (3,) and m['maps'][1] == m['map50_95']
    assert abs(m['fitness'] - fitness(m['map50'], m['map50_95'])) < 1e-12
    with pytest.raises(ValueError, match='out of range'):
        ev.update([torch.tensor([[0, 0, 1, 1, .5, 7.]])], [torch.zeros(0, 5)])


def test_confusion_matrix_hand_case(tmp_path):
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]], float)
    dets = np.array([[0, 0, 10, 10, .9, 0],      # correct class 0
                     [20, 20, 30, 31, .8, 0],    # GT class 1 predicted as 0
                     [0, 1, 10, 10, .7, 0],      # duplicate of GT 0 (already taken) -> background FP
                     [80, 80, 90, 90, .6, 1],    # nowhere near a GT -> background FP
                     [50, 50, 60, 60, .1, 1]])   # below conf -> ignored, GT 2 missed
    cm.process_batch(dets, labels)
    expected = np.array([[1, 1, 1],   # predicted 0: true 0, true 1, background
                         [0, 0, 1],   # predicted 1
                         [0, 1, 0]])  # predicted background (missed GT)
    np.testing.assert_array_equal(cm.matrix, expected)
    paths = plot_confusion_matrices(cm, tmp_path, names=['cat', 'dog'])
    assert [p.name for p in paths] == ['confusion_matrix.png', 'confusion_matrix_normalized.png']
    assert all(p.stat().st_size > 1000 for p in paths)


def test_greedy_confusion_picks_highest_iou_pair_first():
    cm = ConfusionMatrix(nc=2, conf=0.0, iou_thres=0.3)
    # det A overlaps GT0 (IoU .8) and GT1 (IoU .5); det B overlaps GT1 only (IoU .45)
    labels = np.array([[0, 0, 0, 10, 10], [1, 4, 0, 14, 10]], float)
    dets = np.array([[1, 0, 11, 10, .9, 0], [6, 0, 16, 10, .9, 1]], float)
    cm.process_batch(dets, labels)
    assert cm.matrix[0, 0] == 1 and cm.matrix[1, 1] == 1 and cm.matrix.sum() == 2


def test_metric_plots(tmp_path):
    nc = 3
    data = make_dataset(5, 20, nc)
    ev = Evaluator(nc, names=['a', 'b', 'c'])
    ev.update([d for _, d in data], [lab for lab, _ in data])
    plot_ap_curves(ev.compute()['ap_result'], tmp_path, ev.names)
    plot_confusion_matrices(ev.confusion_matrix, tmp_path, ev.names)
    for name in ('pr_curve.png', 'f1_curve.png', 'p_curve.png', 'r_curve.png', 'confusion_matrix.png',
                 'confusion_matrix_normalized.png'):
        img = cv2.imread(str(tmp_path / name))
        assert img is not None and img.std() > 5, name  # a real, non-blank picture


def test_metrics_does_not_import_plots():
    """plots draws what metrics computes; an import of plots anywhere in metrics (a function's
    too) would make the two a circle."""
    tree = ast.parse((Path(__file__).resolve().parents[1] / 'utils' / 'metrics.py').read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.update([node.module] + [f'{node.module}.{a.name}' for a in node.names])
    assert 'utils.plots' not in imported


# ------------------------------------------------------------------------------------ plots
def test_plot_images_draws_boxes(tmp_path):
    from utils.plots import colors, plot_images
    imgs = torch.zeros(2, 3, 64, 96, dtype=torch.uint8)
    # image 1: class 3 box centred (48, 32), 40 x 20 px -> edges at x 28..68, y 22..42 (normalised targets)
    targets = torch.tensor([[1, 3, 48 / 96, 32 / 64, 40 / 96, 20 / 64]])
    out = plot_images(imgs, targets, paths=['a.jpg', 'b.jpg'], fname=tmp_path / 'batch.png', names=None)
    mosaic = cv2.imread(str(out))[:, :, ::-1]  # RGB; 2 images -> 2x2 grid of 64x96 tiles
    assert mosaic.shape == (128, 192, 3)
    tile = mosaic[0:64, 96:192]
    want = np.array(colors(3))
    assert np.abs(tile[42, 35:60].astype(int) - want).max() <= 2  # bottom edge, left of the label text
    assert np.abs(tile[25:40, 28].astype(int) - want).max() <= 2  # left edge
    assert tile[30:36, 35:60].max() == 0  # inside stays black
    assert mosaic[10:54, 10:86].max() < 250  # image 0 has no box (file name text is grey)
    # predictions [n,7] in pixels: below conf_thres -> not drawn; float images in 0..1
    preds = torch.tensor([[0, 1, 48, 32, 40, 20, 0.1]])
    out = plot_images(imgs.float() / 255, preds, fname=tmp_path / 'pred.png', conf_thres=0.25)
    assert cv2.imread(str(out))[0:64, 0:96][5:60, 5:90].max() == 0
    out = plot_images(imgs.float() / 255, preds, fname=tmp_path / 'pred.jpg', conf_thres=0.05, names=['x', 'y'])
    drawn = cv2.imread(str(out))[:, :, ::-1][0:64, 0:96]
    line = drawn[42, 35:60].astype(int)  # class 1 is green; JPEG blurs a 1-px line's chroma
    assert (line[:, 1] > 120).all() and (line[:, 1] > line[:, 0]).all() and (line[:, 1] > line[:, 2]).all()
    assert not list(tmp_path.glob('.*.tmp'))  # atomic writes leave no temp files


def test_plot_labels_and_results(tmp_path):
    from utils.plots import plot_labels, plot_results
    rng = np.random.default_rng(0)
    labels = np.c_[rng.integers(0, 4, 200), rng.uniform(0.1, 0.9, (200, 2)), rng.uniform(0.02, 0.4, (200, 2))]
    out = plot_labels(labels, names=['a', 'b', 'c', 'd'], save_dir=tmp_path)
    assert out.name == 'labels.png' and cv2.imread(str(out)).std() > 5
    fields = 'epoch,lr,box,obj,cls,P,R,mAP@0.5,mAP@0.5:0.95,val_box,val_obj,val_cls'
    lines = [fields] + [','.join(str(v) for v in [e, 0.01, 3 - e, 2, 1, .1 * e, .2 * e, .3, .2, 3, 2, 1])
                        for e in range(4)]
    csv_path = tmp_path / 'results.csv'
    csv_path.write_text('\n'.join(lines) + '\n')
    out = plot_results(csv_path)
    assert out == tmp_path / 'results.png' and cv2.imread(str(out)).std() > 5
    csv_path.write_text('\n'.join(lines[:2] + ['1,0.01,oops,2,1,1,1,1,1,1,1,1']) + '\n')
    with pytest.raises(ValueError, match='results.csv:3'):
        plot_results(csv_path)


def test_ten_thousand_detections_per_image_and_images_without_labels():
    """10,000 low-confidence random boxes per image around the exact ground truth at confidence 1:
    every GT is found first, so AP is 1 at every threshold; a whole set without labels and a
    set without detections give 0, not a crash or a nan."""
    from utils.nms import non_max_suppression
    rng = np.random.default_rng(0)
    labels = [torch.tensor([[0, 10, 10, 60, 60], [1, 100, 40, 180, 120.]]) for _ in range(2)]
    dets = []
    for lab in labels:
        xy = torch.from_numpy(rng.uniform(0, 200, (10_000, 2))).float()
        noise = torch.cat([xy, xy + 5, torch.full((10_000, 1), 0.01), torch.from_numpy(rng.integers(0, 2, (10_000, 1)))
                           .float()], 1)
        dets.append(torch.cat([torch.cat([lab[:, 1:], torch.ones(2, 1), lab[:, :1]], 1), noise]))
    ev = Evaluator(2)
    ev.update(dets, labels)
    m = ev.compute()
    assert m['map50'] == pytest.approx(1.0) and m['map50_95'] == pytest.approx(1.0)
    ev = Evaluator(2)
    ev.update(dets, [torch.zeros(0, 5)] * 2)
    m = ev.compute()
    assert m['map50'] == 0 and m['map50_95'] == 0 and np.isfinite([m['precision'], m['recall']]).all()
    ev = Evaluator(2)
    ev.update([torch.zeros(0, 6)] * 2, labels)
    assert ev.compute()['map50'] == 0
    # NMS over 10,000 candidates per image keeps at most max_det and never fails on an empty batch
    pred = torch.rand(2, 10_000, 7)
    pred[..., :2] *= 200
    pred[..., 2:4] = pred[..., 2:4] * 20 + 1
    out = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=300)
    assert [len(o) for o in out] == [300, 300]
    assert [len(o) for o in non_max_suppression(torch.zeros(2, 0, 7), 0.001, 0.6)] == [0, 0]
