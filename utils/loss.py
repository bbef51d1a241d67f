"""YOLO training loss: GIoU box loss, objectness BCE with GIoU-scaled targets, class BCE.

Target assignment (``build_targets``), the v2020 rule: for every head, every target is
paired with every anchor of that head whose width-height IoU with the target (boxes
aligned at a common centre) exceeds ``hyp['iou_t']`` (0.2). A target may therefore use
several anchors of one head and several heads. The responsible cell is the one holding the
box centre; neighbour cells are not used. Vectorised: no Python loop over targets.

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
    ``gr`` (0..1) blends the objectness target from 1 to the detached GIoU (burn-in).
    """

    def __init__(self, model, hyp):
        from models import unwrap
        model = unwrap(model)
        self.heads = [model.module_list[i] for i in model.yolo_layers]
        self.nc = model.nc
        self.hyp = hyp
        self.gr = 1.0
        self.cls_gain = hyp['cls'] * self.nc / 80  # class loss shrinks with the class count (v2020)
        self.balance = hyp.get('balance')  # optional per-stride objectness weights, e.g. {8: 4, 16: 1, 32: 0.4}
        gamma = hyp.get('fl_gamma', 0.0)
        self.focal = FocalLoss(gamma) if gamma > 0 else None
        self.cls_pw, self.obj_pw = hyp.get('cls_pw', 1.0), hyp.get('obj_pw', 1.0)

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
            a, t = (wh_iou(anchors, wh) > self.hyp['iou_t']).nonzero(as_tuple=True)  # pairs (anchor, target)
            xy, wh = xy[t], wh[t]
            gx = xy[:, 0].long().clamp_(0, nx - 1)
            gy = xy[:, 1].long().clamp_(0, ny - 1)
            tbox = torch.cat((xy - torch.stack((gx, gy), 1), wh), 1)
            out.append((targets[t, 0].long(), a, gy, gx, tbox, targets[t, 1].long(), anchors[a]))
        return out

    def __call__(self, heads, targets, img_hw):
        device = heads[0].device
        lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
        targets = targets.to(device)
        if len(targets) and targets[:, 1].max() >= self.nc:
            raise ValueError(f'a label has class {int(targets[:, 1].max())}, but the model has {self.nc} classes')
        for layer, p, (b, a, gy, gx, tbox, tcls, anchors) in zip(self.heads, heads,
                                                                 self.build_targets(heads, targets, img_hw)):
            p = p.float()
            tobj = torch.zeros_like(p[..., 4])
            if len(b):
                ps = p[b, a, gy, gx]  # [n, 5+nc] raw predictions at the assigned cells
                pxy, pwh = layer.box_xywh(ps[:, :2], ps[:, 2:4], anchors)
                giou_loss = generalized_box_iou_loss(box_convert(torch.cat((pxy, pwh), 1), 'cxcywh', 'xyxy'),
                                                     box_convert(tbox, 'cxcywh', 'xyxy'), reduction='none')
                lbox = lbox + giou_loss.mean()
                tobj[b, a, gy, gx] = (1.0 - self.gr) + self.gr * (1.0 - giou_loss).detach().clamp(0).to(tobj.dtype)
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
