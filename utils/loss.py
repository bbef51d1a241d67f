"""YOLO training loss: GIoU box loss, objectness BCE with GIoU-scaled targets, class BCE.

Target assignment (``build_targets``). Anchors: by default the v2020 rule: for every head,
every target is paired with every anchor of that head whose width-height IoU with the target
(boxes aligned at a common centre) exceeds ``hyp['iou_t']`` (0.2). With ``hyp['match'] ==
'ratio'`` (the YOLOv5 rule) an anchor is used when neither side of target/anchor differs by
more than a factor ``hyp['anchor_t']`` (4). A target may therefore use several anchors of one
head and several heads. Cells: the one holding the box centre; with ``hyp['neighbours']`` also
the two adjacent cells (one in x, one in y) nearest to the centre, which triples the positive
samples and speeds up learning. A neighbour cell sees the centre at an offset in (-0.5, 0) or
(1, 1.5) cell units, which only heads with ``scale_x_y >= 2`` (xy = 2 sigmoid - 0.5) can
predict, so neighbours are refused for other heads. Vectorised: no Python loop over targets.

Decoding of the matched predictions is the model's own (``YOLOLayer.box_xywh``), so
``scale_x_y`` and ``new_coords`` heads train with exactly the boxes they predict.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss


class FocalLoss(nn.Module):
    """Focal wrapper (Lin et al. 2017) around an element-wise BCE: gamma > 0 down-weights
    easy examples; alpha balances positives. Mean reduction."""

    def __init__(self, gamma=1.5, alpha=0.25):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, bce, prob, target):
        p_t = target * prob + (1 - target) * (1 - prob)
        alpha = target * self.alpha + (1 - target) * (1 - self.alpha)
        return (bce * alpha * (1.0 - p_t) ** self.gamma).mean()


def wh_iou(wh1, wh2):
    """IoU of boxes aligned at their centres. wh1 [N,2], wh2 [M,2] -> [N,M]."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter)


class YOLOLoss:
    """Loss for a ``Darknet`` model's training output.

    ``loss, items = YOLOLoss(model, hyp)(heads, targets, img_hw)`` with heads the list of
    [B, A, H, W, 5+nc] tensors, targets [n, 6] = (image index, class, cx, cy, w, h) with
    coordinates normalised to the input image, img_hw the input (height, width).
    Returns the weighted sum (scalar) and detached (box, obj, cls, total) for logging.
    ``gr`` (0..1) blends the objectness target of positives from 1 to their detached GIoU;
    it is ``obj_iou`` (hyp, v2020: 1) once training runs, and the trainer ramps it up from 0
    during burn-in.
    """

    def __init__(self, model, hyp):
        from models import unwrap
        model = unwrap(model)
        self.heads = [model.module_list[i] for i in model.yolo_layers]
        self.nc = model.nc
        self.hyp = hyp
        self.obj_iou = self.gr = hyp.get('obj_iou', 1.0)
        self.cls_gain = hyp['cls'] * self.nc / 80  # class loss shrinks with the class count (v2020)
        self.balance = hyp.get('balance')  # optional per-stride objectness weights, e.g. {8: 4, 16: 1, 32: 0.4}
        gamma = hyp.get('fl_gamma', 0.0)
        self.focal = FocalLoss(gamma) if gamma > 0 else None
        self.cls_pw, self.obj_pw = hyp.get('cls_pw', 1.0), hyp.get('obj_pw', 1.0)
        self.match, self.anchor_t = hyp.get('match', 'iou'), hyp.get('anchor_t', 4.0)
        if self.match not in ('iou', 'ratio'):
            raise ValueError(f"hyp match: {self.match!r}; use 'iou' (v2020: wh-IoU > iou_t) or 'ratio' (YOLOv5: "
                             f"side ratio < anchor_t)")
        self.neighbours = bool(hyp.get('neighbours', 0))
        if self.neighbours:
            for i, layer in zip(model.yolo_layers, self.heads):
                if layer.scale_x_y < 2 or layer.new_coords:
                    raise ValueError(f'hyp neighbours: 1 needs every [yolo] layer to reach 0.5 cell beyond its '
                                     f'cell (scale_x_y=2, new_coords=0), but layer {i} has scale_x_y='
                                     f'{layer.scale_x_y:g}, new_coords={int(layer.new_coords)}; set scale_x_y=2 in '
                                     f'the cfg or neighbours: 0 in the hyp file')

    def build_targets(self, heads, targets, img_hw):
        """Per head: (image idx [n], anchor idx [n], gy [n], gx [n], target box [n,4] as
        (x offset in cell, y offset, w, h) in grid units, class [n], anchor wh [n,2] in grid units)."""
        out = []
        for layer, p in zip(self.heads, heads):
            ny, nx = p.shape[2:4]
            grid_wh = targets.new_tensor([nx, ny])
            anchors = layer.anchors.to(targets) / targets.new_tensor([img_hw[1] / nx, img_hw[0] / ny])
            xy = targets[:, 2:4] * grid_wh  # [nt,2] grid units
            wh = targets[:, 4:6] * grid_wh
            if self.match == 'ratio':
                ratio = wh[None] / anchors[:, None]  # [na, nt, 2]
                use = torch.max(ratio, 1 / ratio).amax(2) < self.anchor_t
            else:
                use = wh_iou(anchors, wh) > self.hyp['iou_t']
            a, t = use.nonzero(as_tuple=True)  # pairs (anchor, target)
            cell = torch.minimum(xy[t].floor(), grid_wh - 1).clamp_(min=0)
            if self.neighbours:
                cell, pair = self._with_neighbours(xy[t], cell, grid_wh)
                a, t = a[pair], t[pair]
            xy, wh = xy[t], wh[t]
            gx, gy = cell[:, 0].long(), cell[:, 1].long()  # inside the grid: clamped above
            tbox = torch.cat((xy - torch.stack((gx, gy), 1), wh), 1)
            out.append((targets[t, 0].long(), a, gy, gx, tbox, targets[t, 1].long(), anchors[a]))
        return out

    @staticmethod
    def _with_neighbours(xy, cell, grid_wh):
        """Centre cells [n,2] of n (anchor, target) pairs -> (cells [m,2], pair index [m]): every
        centre cell, plus per pair the adjacent cell in x and the one in y on the side of the
        centre's nearer cell edge, where that cell is inside the grid (m <= 3n)."""
        n = len(cell)
        step = torch.where(xy - cell < 0.5, -1.0, 1.0)  # [n,2] towards the nearer edge
        inside = ((cell + step) >= 0) & ((cell + step) < grid_wh)  # [n,2]
        x_side = cell + F.pad(step[:, :1], (0, 1))
        y_side = cell + F.pad(step[:, 1:], (1, 0))
        keep = torch.cat((torch.ones_like(inside[:, 0]), inside[:, 0], inside[:, 1]))
        pair = torch.arange(n, device=cell.device).repeat(3)
        return torch.cat((cell, x_side, y_side))[keep], pair[keep]

    def __call__(self, heads, targets, img_hw):
        device = heads[0].device
        lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
        targets = targets.to(device)
        if len(targets) and targets[:, 1].max() >= self.nc:
            raise ValueError(f'a label has class {int(targets[:, 1].max())}, but the model has {self.nc} classes')
        for layer, p, (b, a, gy, gx, tbox, tcls, anchors) in zip(self.heads, heads,
                                                                 self.build_targets(heads, targets, img_hw)):
            p = p.float()
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=device)  # contiguous: viewed flat below
            if len(b):
                ps = p[b, a, gy, gx]  # [n, 5+nc] raw predictions at the assigned cells
                pxy, pwh = layer.box_xywh(ps[:, :2], ps[:, 2:4], anchors)
                giou_loss = generalized_box_iou_loss(box_convert(torch.cat((pxy, pwh), 1), 'cxcywh', 'xyxy'),
                                                     box_convert(tbox, 'cxcywh', 'xyxy'), reduction='none')
                lbox = lbox + giou_loss.mean()
                score = ((1.0 - self.gr) + self.gr * (1.0 - giou_loss).detach().clamp(0)).to(tobj.dtype)
                # a cell assigned to several objects targets the best-fitting one: plain indexing would
                # keep whichever write lands last, which differs between runs (and DDP vs one process)
                cell = ((b * tobj.shape[1] + a) * tobj.shape[2] + gy) * tobj.shape[3] + gx
                tobj.view(-1).scatter_reduce_(0, cell, score, reduce='amax')
                if self.nc > 1:
                    tc = torch.zeros_like(ps[:, 5:])
                    tc[torch.arange(len(b), device=device), tcls] = 1.0
                    lcls = lcls + self._bce(ps[:, 5:], tc, layer.new_coords, self.cls_pw)
            weight = self.balance.get(int(round(img_hw[0] / p.shape[2])), 1.0) if self.balance else 1.0
            lobj = lobj + weight * self._bce(p[..., 4], tobj, layer.new_coords, self.obj_pw)
        lbox, lobj, lcls = lbox * self.hyp['giou'], lobj * self.hyp['obj'], lcls * self.cls_gain
        loss = lbox + lobj + lcls
        return loss, torch.stack((lbox, lobj, lcls, loss)).detach()

    def _bce(self, x, target, probabilities, pos_weight):
        """Mean BCE; ``x`` are logits, or probabilities for new_coords heads (logistic in the conv)."""
        if probabilities:
            prob = x.clamp(1e-7, 1 - 1e-7)
            bce = -(pos_weight * target * prob.log() + (1 - target) * (1 - prob).log())
        else:
            prob = x.sigmoid()
            bce = F.binary_cross_entropy_with_logits(x, target, reduction='none',
                                                     pos_weight=x.new_tensor(pos_weight))
        return self.focal(bce, prob, target) if self.focal else bce.mean()
