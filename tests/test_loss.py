"""Loss: hand-made target assignment, perfect predictions, gradients, class-count checks."""
import math

import pytest
import torch

import models
from utils.loss import YOLOLoss, wh_iou

HYP = {'giou': 3.54, 'obj': 64.3, 'cls': 37.4, 'iou_t': 0.2, 'cls_pw': 1.0, 'obj_pw': 1.0, 'fl_gamma': 0.0}

CFG = """[net]
width=64
height=64
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=16
size=1
activation=linear

[yolo]
mask=0,1
anchors=4,4,  12,6,  24,24,  40,40
classes=3
{extra}
[route]
layers=-3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=16
size=1
activation=linear

[yolo]
mask=2,3
anchors=4,4,  12,6,  24,24,  40,40
classes=3
{extra}
"""


def model(extra=''):
    return models.Darknet(CFG.format(extra=extra), img_size=64)


def test_wh_iou_by_hand():
    assert torch.allclose(wh_iou(torch.tensor([[2., 2.]]), torch.tensor([[1., 4.], [2., 2.]])),
                          torch.tensor([[2 / 6, 1.0]]))


def test_assignment_picks_expected_anchors_and_cells():
    m = model()
    heads = m(torch.zeros(1, 3, 64, 64))  # strides 4 (16x16 grid) and 8 (8x8)
    # a 12x6 px box centred at (10, 30): matches anchor 1 (12x6, IoU 1) and anchor 0 (4x4: 16/72 = 0.22 > 0.2)
    # on head 0; on head 1 anchors 24x24, 40x40 have IoU 72/576 and 72/1600 -> none
    targets = torch.tensor([[0, 2, 10 / 64, 30 / 64, 12 / 64, 6 / 64]])
    loss = YOLOLoss(m, HYP)
    (b0, a0, gy0, gx0, tbox0, tcls0, anch0), (b1, *_) = loss.build_targets(heads, targets, (64, 64))
    assert sorted(a0.tolist()) == [0, 1] and len(b1) == 0
    assert gx0.tolist() == [2, 2] and gy0.tolist() == [7, 7]  # cell = floor(centre / stride 4)
    assert torch.allclose(tbox0, torch.tensor([[0.5, 0.5, 3.0, 1.5]] * 2))  # offsets and wh in grid units
    assert tcls0.tolist() == [2, 2]
    assert torch.allclose(anch0[a0 == 1], torch.tensor([[3.0, 1.5]]))
    # a large box goes to head 1's 24x24 anchor at cell (3, 1)
    targets = torch.tensor([[0, 0, 12 / 64, 28 / 64, 26 / 64, 22 / 64]])
    (b0, *_), (b1, a1, gy1, gx1, *_) = loss.build_targets(heads, targets, (64, 64))
    assert a1.tolist() == [0, 1] and gx1.tolist() == [1, 1] and gy1.tolist() == [3, 3]


def test_ratio_matching_and_neighbour_cells_by_hand():
    m = model('scale_x_y=2.0')
    heads = m(torch.zeros(1, 3, 64, 64))
    loss = YOLOLoss(m, dict(HYP, match='ratio', anchor_t=4.0, neighbours=1))
    # 12x6 px at (9, 31): head 0 (stride 4) sees wh (3, 1.5) cells: side ratios vs anchor 0 (1x1) are
    # (3, 1.5) < 4 and vs anchor 1 (3x1.5) 1 -> both anchors. Centre (2.25, 7.75) lies in cell (2, 7),
    # nearer its left and bottom edges -> x neighbour (1, 7) and y neighbour (2, 8).
    # Head 1 (stride 8): wh (1.5, 0.75) vs 3x3 is a ratio of 4 (not < 4), vs 5x5 6.7 -> none.
    targets = torch.tensor([[0, 2, 9 / 64, 31 / 64, 12 / 64, 6 / 64]])
    (b0, a0, gy0, gx0, tbox0, tcls0, anch0), (b1, *_) = loss.build_targets(heads, targets, (64, 64))
    assert len(b1) == 0
    got = sorted(zip(a0.tolist(), gx0.tolist(), gy0.tolist(), tbox0[:, 0].tolist(), tbox0[:, 1].tolist()))
    want = sorted((a, gx, gy, 2.25 - gx, 7.75 - gy) for a in (0, 1) for gx, gy in ((2, 7), (1, 7), (2, 8)))
    assert len(got) == 6 and all(g[:3] == w[:3] and abs(g[3] - w[3]) < 1e-5 and abs(g[4] - w[4]) < 1e-5
                                 for g, w in zip(got, want))
    assert torch.all((tbox0[:, :2] > -0.5) & (tbox0[:, :2] < 1.5))  # reachable by 2 sigmoid - 0.5
    # at the grid's corner the outside neighbours are dropped: only the centre cell (0, 0) remains
    targets = torch.tensor([[0, 0, 1 / 64, 1 / 64, 4 / 64, 4 / 64]])
    (b0, a0, gy0, gx0, *_), _ = loss.build_targets(heads, targets, (64, 64))
    assert sorted(a0.tolist()) == [0, 1] and gx0.tolist() == [0, 0] and gy0.tolist() == [0, 0]
    # v2020 iou rule on the same model: the 12x6 box takes both anchors of head 0, centre cell only
    (b0, a0, gy0, gx0, *_), _ = YOLOLoss(m, HYP).build_targets(heads, targets.new_tensor(
        [[0, 2, 9 / 64, 31 / 64, 12 / 64, 6 / 64]]), (64, 64))
    assert sorted(a0.tolist()) == [0, 1] and gx0.tolist() == [2, 2] and gy0.tolist() == [7, 7]


def test_neighbours_need_heads_that_reach_them():
    with pytest.raises(ValueError, match='scale_x_y=2'):
        YOLOLoss(model(), dict(HYP, neighbours=1))
    with pytest.raises(ValueError, match='match'):
        YOLOLoss(model(), dict(HYP, match='centre'))


@pytest.mark.parametrize('extra,hyp', [('', {}), ('scale_x_y=2.0\nnew_coords=1', {}),
                                       ('scale_x_y=2.0', {'match': 'ratio', 'neighbours': 1})])
def test_perfect_predictions_give_near_zero_box_loss(extra, hyp):
    m = model(extra).train()
    targets = torch.tensor([[0, 1, 10 / 64, 30 / 64, 12 / 64, 6 / 64], [1, 0, 40 / 64, 20 / 64, 30 / 64, 28 / 64]])
    heads = [torch.zeros_like(h) for h in m(torch.zeros(2, 3, 64, 64))]
    loss = YOLOLoss(m, dict(HYP, **hyp))
    for layer, h, (b, a, gy, gx, tbox, tcls, anchors) in zip(loss.heads, heads,
                                                             loss.build_targets(heads, targets, (64, 64))):
        if layer.new_coords:  # invert xy = 2t - 0.5, wh = 4 t^2 anchor
            h[b, a, gy, gx, 0:2] = (tbox[:, :2] + 0.5) / 2
            h[b, a, gy, gx, 2:4] = (tbox[:, 2:4] / anchors / 4).sqrt()
        else:  # invert xy = s sigmoid(t) - (s - 1) / 2
            s = layer.scale_x_y
            h[b, a, gy, gx, 0:2] = torch.logit((tbox[:, :2] + 0.5 * (s - 1)) / s)
            h[b, a, gy, gx, 2:4] = (tbox[:, 2:4] / anchors).log()
    _, (lbox, lobj, lcls, total) = loss(heads, targets, (64, 64))
    assert lbox < 1e-5 and total > lbox


def test_loss_trains_and_rejects_out_of_range_classes():
    torch.manual_seed(0)
    m = model().train()
    x = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 10 / 64, 30 / 64, 12 / 64, 6 / 64], [1, 2, 40 / 64, 20 / 64, 30 / 64, 28 / 64]])
    loss_fn = YOLOLoss(m, HYP)
    opt = torch.optim.Adam(m.parameters(), 0.01)
    first = None
    for _ in range(60):
        loss, items = loss_fn(m(x), targets, (64, 64))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first and torch.isfinite(items).all()
    with pytest.raises(ValueError, match='class 3'):
        loss_fn(m(x), torch.tensor([[0, 3, .5, .5, .1, .1]]), (64, 64))


def test_no_targets_only_objectness():
    m = model().train()
    heads = m(torch.rand(1, 3, 64, 64))
    _, (lbox, lobj, lcls, total) = YOLOLoss(m, HYP)(heads, torch.zeros(0, 6), (64, 64))
    assert lbox == 0 and lcls == 0 and lobj > 0 and math.isclose(total.item(), lobj.item())


def test_balance_weights_each_heads_objectness_by_stride():
    """hyp balance {stride: w}: lobj = obj x sum_heads w x mean BCE(objectness logits, target);
    with no targets every target is 0, so each head's term is computed here independently."""
    m = model().train()
    heads = m(torch.rand(2, 3, 64, 64))
    assert [64 // h.shape[2] for h in heads] == [4, 8]
    per_head = [torch.nn.functional.binary_cross_entropy_with_logits(h[..., 4], torch.zeros_like(h[..., 4])).item()
                for h in heads]
    for balance, weights in ((None, (1, 1)), ({4: 4.0, 8: 0.4}, (4.0, 0.4)), ({8: 3.0}, (1, 3.0))):
        lobj = YOLOLoss(m, dict(HYP, balance=balance))(heads, torch.zeros(0, 6), (64, 64))[1][1].item()
        expected = HYP['obj'] * sum(w * b for w, b in zip(weights, per_head))
        assert math.isclose(lobj, expected, rel_tol=1e-5), (balance, lobj, expected)


def test_obj_iou_sets_the_objectness_target_of_positives():
    """obj_iou 0: every positive's objectness target is 1, so confident positives and confident
    negatives cost ~nothing even with poor boxes; obj_iou 1 (v2020): the target is the box's
    GIoU, so the same confident-but-misplaced positives are penalised, obj_iou 0.5 in between."""
    m = model().train()
    targets = torch.tensor([[0, 1, 10 / 64, 30 / 64, 12 / 64, 6 / 64], [1, 0, 40 / 64, 20 / 64, 30 / 64, 28 / 64]])
    heads = [torch.zeros_like(h) for h in m(torch.zeros(2, 3, 64, 64))]
    probe = YOLOLoss(m, HYP)
    for h, (b, a, gy, gx, *_) in zip(heads, probe.build_targets(heads, targets, (64, 64))):
        h[..., 4] = -30.0
        h[b, a, gy, gx, 4] = 30.0  # boxes left at t = 0: centred in the cell, anchor-sized
    lobj = {g: YOLOLoss(m, dict(HYP, obj_iou=g))(heads, targets, (64, 64))[1][1].item() for g in (0.0, 0.5, 1.0)}
    assert lobj[0.0] < 1e-6
    assert 0.01 < lobj[0.5] < lobj[1.0]


def test_a_cell_shared_by_two_objects_targets_the_better_box():
    """Two objects on the same stride-8 cell and anchors: the objectness target there is the
    higher of their GIoUs, so the loss does not depend on the order of the labels (a plain
    indexed write keeps whichever object comes last)."""
    torch.manual_seed(0)
    m = model().train()
    heads = [torch.randn_like(h) * 0.5 for h in m(torch.zeros(1, 3, 64, 64))]
    good, poor = [0, 1, 20 / 64, 20 / 64, 24 / 64, 24 / 64], [0, 2, 21 / 64, 19 / 64, 30 / 64, 16 / 64]
    loss = YOLOLoss(m, HYP)
    (b, a, gy, gx, *_), = loss.build_targets(heads, torch.tensor([good, poor]), (64, 64))[1:]
    assert len(b) == 4 and len(set(zip(a.tolist(), gy.tolist(), gx.tolist()))) == 2  # 2 anchors x 2 objects
    first = loss(heads, torch.tensor([good, poor]), (64, 64))[1]
    second = loss(heads, torch.tensor([poor, good]), (64, 64))[1]
    assert torch.equal(first, second)
    alone = [loss(heads, torch.tensor([t]), (64, 64))[1][1] for t in (good, poor)]
    assert first[1] <= max(alone) + 1e-6  # objectness loss: the better target wins, not a blend
