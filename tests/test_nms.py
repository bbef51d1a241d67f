"""NMS and box helpers: hand cases and a brute-force reference."""
import numpy as np
import pytest
import torch

from utils.nms import clip_boxes, non_max_suppression, xywh2xyxy, xyxy2xywh


def row(cx, cy, w, h, obj, *cls):
    return [cx, cy, w, h, obj, *cls]


def pred(*rows):
    return torch.tensor([rows], dtype=torch.float32)


def test_box_helpers_torch_and_numpy():
    xywh = np.array([[50, 40, 20, 10], [5, 5, 4, 6]], float)
    xyxy = np.array([[40, 35, 60, 45], [3, 2, 7, 8]], float)
    np.testing.assert_allclose(xywh2xyxy(xywh), xyxy)
    np.testing.assert_allclose(xyxy2xywh(xyxy), xywh)
    t = torch.tensor(xywh)
    assert torch.allclose(xyxy2xywh(xywh2xyxy(t)), t) and torch.equal(t, torch.tensor(xywh))  # input untouched
    assert xywh2xyxy(np.array([[2, 2, 3, 3]])).dtype == np.float64  # integers do not truncate halves
    b = np.array([[-5, -1, 700, 500.]])
    assert clip_boxes(b, (480, 640)).tolist() == [[0, 0, 640, 480]]
    bt = torch.tensor([[-5, 10, 700, 500.]])
    assert clip_boxes(bt, (480, 640)).tolist() == [[0, 10, 640, 480]]


def test_same_class_suppressed_other_class_kept_agnostic_suppressed():
    p = pred(row(50, 50, 20, 20, 0.9, 0.9, 0.1),   # class 0, score .81
             row(52, 50, 20, 20, 0.8, 0.9, 0.1),   # class 0, overlaps (IoU .82) -> suppressed
             row(51, 51, 20, 20, 0.7, 0.1, 0.9))   # class 1, overlaps -> kept class-aware
    out = non_max_suppression(p, conf_thres=0.01, iou_thres=0.5)[0]
    assert out.shape == (2, 6) and out[:, 5].tolist() == [0, 1]
    assert torch.allclose(out[0, :4], torch.tensor([40., 40, 60, 60])) and abs(out[0, 4] - 0.81) < 1e-6
    out = non_max_suppression(p, conf_thres=0.01, iou_thres=0.5, agnostic=True)[0]
    assert out.shape == (1, 6) and out[0, 5] == 0


def test_conf_threshold_uses_obj_times_cls():
    p = pred(row(50, 50, 20, 20, 0.5, 0.5), row(150, 50, 20, 20, 0.2, 1.0))
    out = non_max_suppression(p, conf_thres=0.3)[0]
    assert len(out) == 0  # .25 and .2 are both below .3 although obj/cls alone pass
    out = non_max_suppression(p, conf_thres=0.22)[0]
    assert out.shape[0] == 1 and abs(out[0, 4] - 0.25) < 1e-6
    # objectness pre-filter: obj below threshold is dropped even with class prob 1
    assert len(non_max_suppression(pred(row(50, 50, 20, 20, 0.1, 1.0)), conf_thres=0.15)[0]) == 0


def test_multi_label_and_classes_filter():
    p = pred(row(50, 50, 20, 20, 1.0, 0.9, 0.8, 0.01))
    single = non_max_suppression(p, conf_thres=0.1)[0]
    assert single[:, 5].tolist() == [0]
    multi = non_max_suppression(p, conf_thres=0.1, multi_label=True)[0]
    assert sorted(multi[:, 5].tolist()) == [0, 1] and torch.allclose(multi[:, 4], torch.tensor([0.9, 0.8]))
    only1 = non_max_suppression(p, conf_thres=0.1, multi_label=True, classes=[1])[0]
    assert only1[:, 5].tolist() == [1]
    assert len(non_max_suppression(p, conf_thres=0.1, classes=[2])[0]) == 0


def test_max_det_and_size_filter_and_sorting():
    rows = [row(30 * i + 15, 15, 20, 20, 0.1 + 0.05 * i, 1.0) for i in range(10)]  # disjoint boxes
    out = non_max_suppression(pred(*rows), conf_thres=0.01, max_det=3)[0]
    assert out.shape == (3, 6) and torch.allclose(out[:, 4], torch.tensor([0.55, 0.5, 0.45]))
    tiny = pred(row(50, 50, 1.5, 20, 0.9, 1.0), row(90, 50, 20, 20, 0.9, 1.0))
    assert len(non_max_suppression(tiny, conf_thres=0.01)[0]) == 1  # sides must exceed min_wh=2 px
    empty = non_max_suppression(torch.zeros(2, 5, 7))
    assert len(empty) == 2 and all(e.shape == (0, 6) for e in empty)


def test_merge_nms_weighted_mean():
    p = pred(row(50, 50, 20, 20, 1.0, 0.9, 0.0),   # xyxy 40,40,60,60 score .9
             row(54, 50, 20, 20, 1.0, 0.6, 0.0),   # xyxy 44,40,64,60 score .6 (IoU .67 with the first)
             row(51, 50, 20, 20, 1.0, 0.0, 0.5),   # other class: not merged unless agnostic
             row(150, 50, 20, 20, 1.0, 0.3, 0.0))  # far away: its own box
    out = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5, merge=True)[0]
    first = out[out[:, 4] == out[:, 4].max()][0]
    expected = (0.9 * torch.tensor([40., 40, 60, 60]) + 0.6 * torch.tensor([44., 40, 64, 60])) / 1.5
    assert torch.allclose(first[:4], expected, atol=1e-4)
    other = out[out[:, 5] == 1][0]
    assert torch.allclose(other[:4], torch.tensor([41., 40, 61, 60]), atol=1e-4)
    far = out[(out[:, 4] - 0.3).abs() < 1e-6][0]
    assert torch.allclose(far[:4], torch.tensor([140., 40, 160, 60]), atol=1e-4)
    out = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5, merge=True, agnostic=True)[0]
    a, b, c = torch.tensor([40., 40, 60, 60]), torch.tensor([44., 40, 64, 60]), torch.tensor([41., 40, 61, 60])
    assert torch.allclose(out[0, :4], (0.9 * a + 0.6 * b + 0.5 * c) / 2.0, atol=1e-4)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference(p, conf, iou_thres, multi_label):
    """Plain-Python greedy NMS per class, written independently of the library."""
    cands = []
    for cx, cy, w, h, obj, *cls in p.tolist():
        if obj <= conf or not (2 < w < 4096 and 2 < h < 4096):
            continue
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        scores = [(obj * c, j) for j, c in enumerate(cls)]
        for s, j in (scores if multi_label else [max(scores)]):
            if s > conf:
                cands.append((s, j, box))
    cands.sort(key=lambda x: -x[0])
    kept = []
    for s, j, box in cands:
        if all(k[1] != j or _iou(k[2], box) <= iou_thres for k in kept):
            kept.append((s, j, box))
    return kept


@pytest.mark.parametrize('multi_label', [False, True])
def test_matches_bruteforce_reference(multi_label):
    g = torch.Generator().manual_seed(0)
    n, nc = 300, 4
    centres = torch.rand(n, 2, generator=g) * 200
    sizes = torch.rand(n, 2, generator=g) * 60 + 1
    obj = torch.rand(n, 1, generator=g)
    cls = torch.rand(n, nc, generator=g)
    p = torch.cat([centres, sizes, obj, cls], 1)[None].double()
    out = non_max_suppression(p, conf_thres=0.2, iou_thres=0.45, multi_label=multi_label, max_det=1000)[0]
    ref = _reference(p[0], 0.2, 0.45, multi_label)
    assert len(out) == len(ref) > 20
    got = sorted((round(float(r[4]), 9), int(r[5])) for r in out)
    want = sorted((round(s, 9), j) for s, j, _ in ref)
    assert got == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    p = torch.cat([torch.rand(2, 500, 2, generator=g) * 400, torch.rand(2, 500, 2, generator=g) * 80 + 3,
                   torch.rand(2, 500, 1, generator=g), torch.rand(2, 500, 5, generator=g)], 2)
    for kw in ({}, {'multi_label': True}, {'merge': True}, {'agnostic': True}):
        cpu = non_max_suppression(p, conf_thres=0.1, **kw)
        gpu = non_max_suppression(p.cuda(), conf_thres=0.1, **kw)
        for a, b in zip(cpu, gpu):
            assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-3)


def _random_pred(seed, n, nc, spread=200):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 2, generator=g) * spread, torch.rand(n, 2, generator=g) * 60 + 3,
                      torch.rand(n, 1, generator=g), torch.rand(n, nc, generator=g)], 1)[None].double()


def test_prefix_nms_is_exact(monkeypatch):
    """NMS on growing score-ordered prefixes must give the same top max_det as NMS over everything."""
    import utils.nms as nms_mod
    p = _random_pred(3, 400, 6)
    full = non_max_suppression(p, conf_thres=0.05, iou_thres=0.5, multi_label=True, max_det=10000)[0]
    monkeypatch.setattr(nms_mod, '_PREFIX_MIN', 8)
    for max_det in (1, 7, 50, 10000):
        part = non_max_suppression(p, conf_thres=0.05, iou_thres=0.5, multi_label=True, max_det=max_det)[0]
        assert torch.equal(part, full[:max_det])
    monkeypatch.setattr(nms_mod, '_OFFSET_MAX', 0)  # torchvision batched_nms instead of the offset trick
    assert torch.equal(non_max_suppression(p, conf_thres=0.05, iou_thres=0.5, multi_label=True, max_det=10000)[0],
                       full)


def test_offset_trick_keeps_classes_apart_with_negative_coordinates():
    p = pred(row(-40, -40, 60, 60, 0.9, 0.9, 0.0), row(-38, -40, 60, 60, 0.9, 0.0, 0.8),
             row(5000, 10, 60, 60, 0.9, 0.0, 0.7))
    out = non_max_suppression(p, conf_thres=0.01, iou_thres=0.3)[0]
    assert sorted(out[:, 5].tolist()) == [0, 1, 1]


def test_merge_matches_dense_reference():
    p = _random_pred(4, 300, 3, spread=120)
    out = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5, merge=True, multi_label=True)[0]
    plain = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5, multi_label=True)[0]
    # dense reference over all multi-label candidates
    x = p[0][p[0][:, 4] > 0.1]
    s = x[:, 5:] * x[:, 4:5]
    i, j = (s > 0.1).nonzero(as_tuple=True)
    boxes, scores, cls = xywh2xyxy(x[i, :4]), s[i, j], j
    from torchvision.ops import box_iou
    w = (box_iou(plain[:, :4], boxes) > 0.5) * (plain[:, 5:6] == cls[None]) * scores[None]
    assert torch.allclose(out[:, :4], (w @ boxes) / w.sum(1, keepdim=True))
    assert torch.equal(out[:, 4:], plain[:, 4:]) and not torch.allclose(out[:, :4], plain[:, :4])
