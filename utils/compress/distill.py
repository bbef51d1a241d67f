"""Knowledge distillation: a frozen teacher's outputs and feature maps guide the training of
a (pruned) student of the same head layout.

    python3 train.py --weights pruned.pt --t_weights base.pt --KDstr 5     # .pt carries its cfg
    python3 train.py --weights pruned.pt --t_cfg T.cfg --t_weights T.weights --KDstr 3

    from utils.compress.distill import attach_distillation
    attach_distillation(trainer, t_weights='base.pt', strategy=5)          # before trainer.train()

The teacher is loaded once (``model_transforms``), BN folded into its convs, frozen, in eval
mode, on the student's device; it is never wrapped in DDP and never passed through other
model transforms (so never quantized). Every micro-batch (a ``Trainer.loss_terms`` term) it
runs under ``no_grad`` on exactly the batch the student sees (augmented, multi-scale resized),
and the KD loss below is added to the detection loss. T = 3 everywhere; ``KL`` is
``T^2 KL(softmax(t/T) || softmax(s/T))`` summed over rows; every term is a per-image mean
(divided by the batch size), so a DDP run equals a single-process one. ``--kd-weight W``
multiplies every weight below: upstream's keep KD at a few percent of the detection loss.
``--t-precision bf16`` runs the teacher's forward under CPU autocast to bfloat16 (its logits
move by about 0.1, nothing next to T = 3) at about half the float32 time on CPUs with
AVX512-BF16 or AMX; ``auto`` (train.py's default) does so exactly on such CPUs. On CUDA the
teacher runs under the student's AMP autocast.

    KDstr 1  ``kd``:      1e-3 KL over every anchor-cell's whole output row (tx, ty, tw, th, obj, classes)
    KDstr 2  ``kd_cls``:  1e-4 KL over every anchor-cell's (obj, classes) row
             ``kd_box``:  1e-3 sum over matched cells of |box_s - gt|^2 where the student is further
                          from the ground truth than the teacher (|box_s - gt|^2 > |box_t - gt|^2)
    KDstr 3  ``kd_cls`` as 2, ``kd_box``: 1e-3 sum over matched cells of |box_s - box_t|^2
    KDstr 4  3 with 1e-3 ``kd_cls``, plus ``kd_feat``: 1e-3 KL between spatial-softmax attention
             maps A = sum_c |F| (B x HW, softmax over positions) of paired feature maps
    KDstr 5  4 with every attention map multiplied by the fine-grained imitation mask first
    KDstr 6  ``kd_obj``: Bernoulli KL of every cell's objectness (mean, x hyp obj, as the
             objectness loss); ``kd_cls`` / ``kd_box``: class KL and squared box difference,
             averaged over the cells weighted by the teacher's objectness (x the class gain /
             hyp giou): distillation at the detection loss's own scale (not upstream's)

Matched cells are the detection loss's own assignment (``YOLOLoss.build_targets``); boxes
are (sigmoid(t_xy), exp(t_wh) x anchor) in grid units, both decoded with the student's
heads. Upstream summed the box terms over the batch, so their weight grew with the batch
size; here they are per image like the rest.

Feature pairs (``pair_features``): a map is imitated where it leaves a stage: a layer whose
output a layer of another resolution reads (a downsampling conv, an upsample; not a global
pool), or the conv feeding a head conv; the head convs, [yolo] and 1x1 maps are not. The student's and the
teacher's lists must have the same resolutions in the same order, and are paired in order:
channel pruning keeps every layer and layer pruning removes residual blocks inside a stage,
so both keep every stage boundary (upstream paired every conv output by index, which a
layer-pruned student breaks). Where the channel counts of a pair differ, a learned 1x1 conv
(no bias) maps the student's map to the teacher's channels before the attention is taken:
the attention's scale grows with the channel count, and the spatial softmax is sensitive to
it. The adapters are a ``distill_adapters`` submodule of the student, so the optimizer,
the EMA, the device move and DDP's gradient averaging include them, but they are dropped
from the model's state dict (so from every .pt's ``model``, the cfg and the .weights); their
weights travel in the checkpoint's ``distill`` entry for ``--resume``.

Fine-grained mask (Wang et al., CVPR 2019; ``fine_grained_masks``): for every ground-truth box,
the IoU of every anchor of every head placed at every cell centre; the (anchor, cell) pairs
whose IoU exceeds psi = 0.5 x that box's largest IoU over all heads are selected, OR-ed over
the image's boxes. Head strides come from the head tensors' sizes (never from the head
order). A selected cell marks every cell of a feature map that its pixel square overlaps
(``feature_mask``): the full (s_head / s_map)^2 square on finer maps (upstream marked only
its diagonal, and ignored heads finer than the map), the one enclosing cell on coarser maps.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from models import unwrap
from utils.compress.layer_graph import LayerGraph
from utils.general import native_bf16
from utils.parse_config import layer_output_shapes

__all__ = ['STRATEGIES', 'TEMPERATURE', 'PSI', 'WEIGHTS', 'T_PRECISIONS', 'Distiller', 'attach_distillation', 'load_teacher',
           'check_head_layout', 'stage_outputs', 'pair_features', 'soft_kl', 'fine_grained_masks', 'feature_mask']

STRATEGIES = {1: 'output KL', 2: 'obj/cls KL + teacher-bounded boxes', 3: 'obj/cls KL + box imitation',
              4: '3 + feature attention', 5: '4 under the fine-grained mask',
              6: 'objectness-guided outputs at the detection loss\'s scale'}
TEMPERATURE = 3.0
PSI = 0.5  # Wang et al.'s fine-grained mask threshold factor
T_PRECISIONS = ('fp32', 'bf16', 'auto')  # --t-precision of the teacher's forward
WEIGHTS = {1: {'kd': 1e-3}, 2: {'kd_box': 1e-3, 'kd_cls': 1e-4}, 3: {'kd_box': 1e-3, 'kd_cls': 1e-4},
           4: {'kd_box': 1e-3, 'kd_cls': 1e-3, 'kd_feat': 1e-3}, 5: {'kd_box': 1e-3, 'kd_cls': 1e-3, 'kd_feat': 1e-3},
           6: {'kd_obj': 1.0, 'kd_cls': 1.0, 'kd_box': 1.0}}  # 6: each term already carries its detection gain
ADAPTERS = 'distill_adapters'  # the student's submodule holding the 1x1 adapters


# ----------------------------------------------------------------------------- teacher and layout

def load_teacher(cfg, weights, img_size, device):
    """The frozen float teacher: ``weights`` (.pt, whose cfg is used when ``cfg`` is empty, or
    Darknet .weights with ``cfg``) loaded strictly, BN folded into the convs, eval mode, no
    gradients, channels_last, on ``device``."""
    if not weights:
        raise ValueError('--KDstr needs the teacher\'s --t_weights')
    teacher, entries = models.load_model(cfg, weights, img_size=img_size, device=device)
    if entries.get('quant'):  # load_model rebuilds the quantized model such a checkpoint holds
        raise ValueError(f'--t_weights {weights} is a quantization-aware checkpoint; the teacher must be a float '
                         'model (use the float model it was trained from)')
    teacher.fuse().to(memory_format=torch.channels_last).eval()
    teacher.requires_grad_(False)
    return teacher


def check_head_layout(student, teacher, img_size, teacher_name='the teacher'):
    """ValueError naming every part of the head layout (head count, classes, anchors per head,
    strides) in which ``teacher`` differs from ``student``."""
    s, t = unwrap(student), unwrap(teacher)
    if len(s.yolo_layers) != len(t.yolo_layers):
        diffs = [f'heads: student {len(s.yolo_layers)}, teacher {len(t.yolo_layers)}']
    else:
        diffs = []
        if s.nc != t.nc:
            diffs.append(f'classes: student {s.nc}, teacher {t.nc}')
        s_anchors = [s.module_list[i].anchors.tolist() for i in s.yolo_layers]
        t_anchors = [t.module_list[i].anchors.tolist() for i in t.yolo_layers]
        if [len(a) for a in s_anchors] != [len(a) for a in t_anchors]:
            counts = [len(a) for a in s_anchors], [len(a) for a in t_anchors]
            diffs.append(f'anchors per head: student {counts[0]}, teacher {counts[1]}')
        elif s_anchors != t_anchors:
            k = next(k for k, (a, b) in enumerate(zip(s_anchors, t_anchors)) if a != b)
            diffs.append(f'anchors of head {k}: student {_tidy(s_anchors[k])}, teacher {_tidy(t_anchors[k])}')
        s_strides = s.head_strides(img_size, img_size).tolist()
        t_strides = t.head_strides(img_size, img_size).tolist()
        if s_strides != t_strides:
            diffs.append(f'head strides at {img_size} px: student {_tidy(s_strides)}, teacher {_tidy(t_strides)}')
    if diffs:
        raise ValueError(f'{teacher_name} does not fit the student: {"; ".join(diffs)} (distillation needs the same '
                         'head layout: classes, anchors per head, strides)')


def _tidy(value):
    """Numbers for messages: whole floats as ints, others to 2 decimals; lists recursively."""
    if isinstance(value, (list, tuple)):
        return [_tidy(v) for v in value]
    return int(value) if float(value).is_integer() else round(float(value), 2)


def stage_outputs(sections, img_size):
    """[(layer, (stride_y, stride_x))]: the layers whose maps distillation imitates (module
    docstring), in layer order, with their strides at an ``img_size`` square input."""
    defs = sections[1:]
    graph = LayerGraph(sections)
    shapes = layer_output_shapes(sections, img_size, img_size)
    head_convs = {i - 1 for i, d in enumerate(defs) if d['type'] == 'yolo'}
    points = []
    for i, d in enumerate(defs):
        if d['type'] == 'yolo' or i in head_convs or shapes[i][1:] == (1, 1):  # 1x1: nothing spatial to imitate
            continue
        # a global pool (squeeze-excite) reads the map without ending its stage
        if any(j in head_convs or (shapes[j][1:] != shapes[i][1:] and defs[j]['type'] != 'avgpool')
               for j in graph.consumers[i]):
            points.append((i, (img_size / shapes[i][1], img_size / shapes[i][2])))
    return points


def pair_features(student, teacher, img_size):
    """[(student layer, teacher layer, student channels, teacher channels)] of the imitated
    maps, paired in order; a ValueError when the two models' stage resolutions differ."""
    s, t = unwrap(student), unwrap(teacher)
    s_points, t_points = stage_outputs(s.sections, img_size), stage_outputs(t.sections, img_size)
    s_strides, t_strides = [_tidy(p[1]) for p in s_points], [_tidy(p[1]) for p in t_points]
    if s_strides != t_strides:
        raise ValueError(f'feature distillation (--KDstr 4, 5) pairs the maps where stages end, but the student\'s '
                         f'stage strides {s_strides} (layers {[p[0] for p in s_points]}) differ from the '
                         f'teacher\'s {t_strides} (layers {[p[0] for p in t_points]}); use --KDstr 1-3')
    s_ch, t_ch = LayerGraph(s.sections).out_channels, LayerGraph(t.sections).out_channels
    return [(i, j, s_ch[i], t_ch[j]) for (i, _), (j, _) in zip(s_points, t_points)]


def _drop_adapter_state(module, state_dict, prefix, local_metadata):
    """state-dict post hook: the adapters are no part of the saved model."""
    for key in [k for k in state_dict if k.startswith(prefix + ADAPTERS + '.')]:
        del state_dict[key]


def _adapters_not_missing(module, incompatible_keys):
    """load-state-dict post hook: a saved model (which never holds adapters) loads strictly."""
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if ADAPTERS not in k.split('.')]


# ----------------------------------------------------------------------------- loss pieces

def soft_kl(student_logits, teacher_logits, temperature=TEMPERATURE):
    """T^2 * sum over rows of KL(softmax(teacher/T) || softmax(student/T)), softmax along the
    last dim; inputs [..., K], the teacher's without gradient. 0 for identical inputs,
    positive otherwise."""
    log_p_s = _log_softmax(student_logits.float() / temperature)
    with torch.no_grad():
        log_p_t = _log_softmax(teacher_logits.float() / temperature)
    return temperature ** 2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum()


def bernoulli_kl(student_logits, teacher_logits):
    """KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))) elementwise, from logits: the BCE of the
    student against the teacher's probability minus the teacher's own entropy (exactly 0 where
    they agree; the gradient is the BCE's, sigmoid(s) - sigmoid(t))."""
    log_p, log_not_p = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    return log_p.exp() * (log_p - F.logsigmoid(student_logits)) + \
        log_not_p.exp() * (log_not_p - F.logsigmoid(-student_logits))


def objectness_guided_terms(heads, teacher_heads, loss_fn, img_hw):
    """KDstr 6 (after Mehta & Ozturk 2018, in the detection loss's own units): per head,
    ``kd_obj`` the Bernoulli KL of the objectness over every cell (mean, like the objectness
    loss, with its gain and per-stride balance); ``kd_cls`` the class KL and ``kd_box`` the
    squared difference of the decoded (xy in cell, wh in anchors) boxes, each averaged over the
    cells weighted by the teacher's objectness, so background cells (the great majority) teach
    objectness only. Gains: hyp obj, the class loss's cls gain, hyp giou. Returns {name: scalar}."""
    hyp = loss_fn.hyp
    kd_obj = kd_cls = kd_box = heads[0].new_zeros((), dtype=torch.float32)
    for layer, p_s, p_t in zip(loss_fn.heads, heads, teacher_heads):
        p_s, p_t = p_s.float(), p_t.float()
        if layer.new_coords:
            raise ValueError('--KDstr 6 needs logistic heads (new_coords=0)')
        obj_t = p_t[..., 4].sigmoid()
        weight = loss_fn.balance.get(int(round(img_hw[0] / p_s.shape[2])), 1.0) if loss_fn.balance else 1.0
        kd_obj = kd_obj + weight * bernoulli_kl(p_s[..., 4], p_t[..., 4]).mean()
        mass = obj_t.sum().clamp_min(1e-6)
        if p_s.shape[-1] > 5:
            cls = bernoulli_kl(p_s[..., 5:], p_t[..., 5:]).sum(-1)
            kd_cls = kd_cls + (obj_t * cls).sum() / mass
        stride_wh = p_s.new_tensor([img_hw[1] / p_s.shape[3], img_hw[0] / p_s.shape[2]])
        anchors = (layer.anchors.to(p_s) / stride_wh).view(1, -1, 1, 1, 2)
        box_s = torch.cat(layer.box_xywh(p_s[..., :2], p_s[..., 2:4], anchors), -1)
        box_t = torch.cat(layer.box_xywh(p_t[..., :2], p_t[..., 2:4], anchors), -1)
        kd_box = kd_box + (obj_t * (box_s - box_t).square().sum(-1)).sum() / mass
    return {'kd_obj': kd_obj * hyp['obj'], 'kd_cls': kd_cls * loss_fn.cls_gain, 'kd_box': kd_box * hyp['giou']}


def _log_softmax(x):
    """log_softmax along the last dim from element-wise ops and sums: on CPU, torch's kernel
    takes 3x as long (forward + backward) for the short rows (6-10 values) of head outputs."""
    x = x - x.amax(-1, keepdim=True).detach()  # the result does not depend on the shift
    return x - x.exp().sum(-1, keepdim=True).log()


def attention(feature):
    """Attention map of a feature map [B, C, H, W]: sum over channels of |F| -> [B, H, W]."""
    return feature.float().abs().sum(1)


def fine_grained_masks(targets, batch_size, img_hw, anchors, grids, psi=PSI):
    """Wang et al.'s imitation mask of every head (module docstring).

    targets [n, 6] (image, class, cx, cy, w, h normalised to the input), img_hw the input
    (height, width), anchors [[A_k, 2] anchor (w, h) in pixels per head], grids [(H_k, W_k)
    per head] -> [[B, A_k, H_k, W_k] bool per head]."""
    h, w = float(img_hw[0]), float(img_hw[1])
    boxes = targets[:, 2:6].float() * targets.new_tensor([w, h, w, h]).float()  # [n, 4] cx, cy, w, h in px
    ious = [_anchor_ious(boxes, a.float().to(boxes.device), grid, (h, w)) for a, grid in zip(anchors, grids)]
    best = (torch.stack([iou.flatten(1).amax(1) for iou in ious]).amax(0) if len(boxes) else
            boxes.new_zeros(0)).view(-1, 1, 1, 1)  # each box's largest IoU over every head
    image = targets[:, 0].long()
    masks = []
    for iou in ious:
        keep = ((iou > psi * best) & (best > 0)).float()
        per_image = torch.zeros((batch_size, *iou.shape[1:]), device=boxes.device).index_add_(0, image, keep)
        masks.append(per_image > 0)
    return masks


def _anchor_ious(boxes, anchor_wh, grid, img_hw):
    """IoU of boxes [n, 4] (cx, cy, w, h px) with each anchor [A, 2] (w, h px) centred on each
    cell of a grid (H, W) over an img_hw input -> [n, A, H, W]."""
    (ny, nx), (h, w) = grid, img_hw
    cx = ((torch.arange(nx, device=boxes.device) + 0.5) * (w / nx)).view(1, 1, 1, -1)  # cell centres
    cy = ((torch.arange(ny, device=boxes.device) + 0.5) * (h / ny)).view(1, 1, -1, 1)
    aw, ah = anchor_wh[:, 0].view(1, -1, 1, 1), anchor_wh[:, 1].view(1, -1, 1, 1)
    bx, by, bw, bh = (v.view(-1, 1, 1, 1) for v in boxes.unbind(1))
    ix = (torch.minimum(bx + bw / 2, cx + aw / 2) - torch.maximum(bx - bw / 2, cx - aw / 2)).clamp(min=0)
    iy = (torch.minimum(by + bh / 2, cy + ah / 2) - torch.maximum(by - bh / 2, cy - ah / 2)).clamp(min=0)
    inter = ix * iy  # [n, A, H, W]
    return inter / (bw * bh + aw * ah - inter)


def _cell_overlap(size, n_rows, n_cols):
    """[n_rows, n_cols] 1.0 where cell r of an n_rows grid and cell c of an n_cols grid, both
    spanning ``size`` pixels, overlap by a positive length."""
    r = torch.arange(n_rows + 1, dtype=torch.float64) * (size / n_rows)
    c = torch.arange(n_cols + 1, dtype=torch.float64) * (size / n_cols)
    overlap = torch.minimum(r[1:, None], c[None, 1:]) - torch.maximum(r[:-1, None], c[None, :-1])
    return (overlap > 1e-6 * size).float()


def feature_mask(head_masks, img_hw, feature_hw):
    """[B, H_f, W_f] bool: the cells of a feature map (feature_hw over the img_hw input) that
    overlap a selected cell of any head; head_masks [[B, A, H, W] bool per head]."""
    total = 0
    for mask in head_masks:
        cells = mask.any(1).float()  # [B, H, W]
        rows = _cell_overlap(img_hw[0], feature_hw[0], cells.shape[1]).to(cells.device)  # [H_f, H]
        cols = _cell_overlap(img_hw[1], feature_hw[1], cells.shape[2]).to(cells.device)  # [W_f, W]
        total = total + rows @ cells @ cols.T
    return total > 0


# ----------------------------------------------------------------------------- the feature

class Distiller:
    """The distillation feature's state (teacher, feature pairs, adapters) and its Trainer
    hooks (``attach_distillation`` registers them)."""

    def __init__(self, strategy, t_weights='', t_cfg='', teacher=None, weight=1.0, t_precision='fp32'):
        if strategy not in STRATEGIES:
            raise ValueError(f'--KDstr must be one of {sorted(STRATEGIES)}, got {strategy}')
        if not weight > 0:
            raise ValueError(f'--kd-weight must be > 0, got {weight}')
        self.strategy, self.t_weights, self.t_cfg = int(strategy), str(t_weights or ''), str(t_cfg or '')
        self.weight = float(weight)  # --kd-weight: multiplies every term's WEIGHTS entry
        if t_precision not in T_PRECISIONS:
            raise ValueError(f'--t-precision must be one of {T_PRECISIONS}, got {t_precision!r}')
        self.t_precision = t_precision  # 'auto' is resolved against the device by on_model
        self.teacher = teacher  # loaded by on_model unless given (tests)
        self.pairs, self.adapters = [], None
        self.temperature, self.psi = TEMPERATURE, PSI

    @property
    def uses_features(self):
        return self.strategy in (4, 5)

    def settings(self):
        adapters = {k: v.detach().cpu().clone() for k, v in self.adapters.state_dict().items()} if self.adapters else {}
        return {'KDstr': self.strategy, 't_weights': self.t_weights, 't_cfg': self.t_cfg, 'weight': self.weight,
                't_precision': self.t_precision,
                'pairs': [list(p[:2]) for p in self.pairs], 'adapters': adapters}

    def prepare(self, student, img_size):
        """Check the head layout, pair the feature maps (KDstr 4, 5), set both models' taps and
        attach the adapters to ``student``; returns the student."""
        student = unwrap(student)
        check_head_layout(student, self.teacher, img_size, f'teacher {self.t_weights}'.strip())
        if not self.uses_features:
            return student
        self.pairs = pair_features(student, self.teacher, img_size)
        student.taps = set(student.taps) | {i for i, _, _, _ in self.pairs}  # references, no copies
        self.teacher.taps = {j for _, j, _, _ in self.pairs}
        self.adapters = nn.ModuleDict({str(i): nn.Conv2d(cs, ct, 1, bias=False)
                                       for i, _, cs, ct in self.pairs if cs != ct})
        if len(self.adapters):
            device = next(student.parameters()).device
            student.add_module(ADAPTERS, self.adapters.to(device))
            student.register_state_dict_post_hook(_drop_adapter_state)
            student.register_load_state_dict_post_hook(_adapters_not_missing)
        return student

    def loss(self, heads, imgs, targets, loss_fn, student):
        """KD loss of one batch: heads the student's training output ([B, A, H, W, 5+nc] per
        head), imgs [B, C, H, W] exactly as the student saw them, targets [n, 6], loss_fn the
        student's YOLOLoss (its target assignment), student the model whose ``tapped`` maps
        KDstr 4/5 read. Returns (loss scalar, {column: weighted value (detached)})."""
        bf16 = self.t_precision == 'bf16' and imgs.device.type == 'cpu'
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            teacher_heads = [t.float() for t in self.teacher(imgs)[1]]
        for p_s, p_t in zip(heads, teacher_heads):
            if p_s.shape != p_t.shape:
                raise ValueError(f'student head {tuple(p_s.shape)} vs teacher head {tuple(p_t.shape)}: '
                                 'distillation needs the same head layout')
        batch, img_hw, weights = imgs.shape[0], imgs.shape[-2:], WEIGHTS[self.strategy]
        targets = targets.to(heads[0].device)
        if self.strategy == 6:
            terms = objectness_guided_terms(heads, teacher_heads, loss_fn, img_hw)
        elif self.strategy == 1:
            terms = {'kd': sum(soft_kl(s, t, self.temperature) for s, t in zip(heads, teacher_heads)) / batch}
        else:
            terms = {'kd_box': self._box_term(heads, teacher_heads, targets, img_hw, loss_fn) / batch,
                     'kd_cls': sum(soft_kl(s[..., 4:], t[..., 4:], self.temperature)
                                   for s, t in zip(heads, teacher_heads)) / batch}
        if self.uses_features:
            terms['kd_feat'] = self._feature_term(unwrap(student), heads, targets, img_hw, loss_fn) / batch
        weighted = {k: v * (weights[k] * self.weight) for k, v in terms.items()}
        return sum(weighted.values()), {k: v.detach() for k, v in weighted.items()}

    def _box_term(self, heads, teacher_heads, targets, img_hw, loss_fn):
        """KDstr 2: sum of |box_s - gt|^2 where it exceeds |box_t - gt|^2; 3-5: sum of
        |box_s - box_t|^2; over the matched cells of every head."""
        total = heads[0].new_zeros((), dtype=torch.float32)
        for layer, p_s, p_t, (b, a, gy, gx, tbox, _, anchors) in zip(
                loss_fn.heads, heads, teacher_heads, loss_fn.build_targets(heads, targets, img_hw)):
            if not len(b):
                continue
            s, t = p_s[b, a, gy, gx].float(), p_t[b, a, gy, gx].float()
            box_s = torch.cat(layer.box_xywh(s[:, :2], s[:, 2:4], anchors), 1)  # [n, 4] grid units
            box_t = torch.cat(layer.box_xywh(t[:, :2], t[:, 2:4], anchors), 1)
            if self.strategy == 2:
                d_s, d_t = (box_s - tbox).square().sum(1), (box_t - tbox).square().sum(1)
                total = total + d_s[d_s > d_t].sum()
            else:
                total = total + (box_s - box_t).square().sum()
        return total

    def _feature_term(self, student, heads, targets, img_hw, loss_fn):
        """Sum over the paired maps of the attention KL (KDstr 5: under the fine-grained mask)."""
        head_masks = None
        if self.strategy == 5:
            anchors = [layer.anchors for layer in loss_fn.heads]
            head_masks = fine_grained_masks(targets, heads[0].shape[0], img_hw, anchors,
                                            [p.shape[2:4] for p in heads], self.psi)
        total, masks = heads[0].new_zeros((), dtype=torch.float32), {}  # one mask per map size
        for i, j, _, _ in self.pairs:
            f_s, f_t = student.tapped[i], self.teacher.tapped[j].float()
            if str(i) in self.adapters:
                f_s = self.adapters[str(i)](f_s)
            a_s, a_t = attention(f_s), attention(f_t)  # [B, H, W]
            if head_masks is not None:
                size = tuple(a_s.shape[1:])
                if size not in masks:
                    masks[size] = feature_mask(head_masks, img_hw, size).float()
                a_s, a_t = a_s * masks[size], a_t * masks[size]
            total = total + soft_kl(a_s.flatten(1), a_t.flatten(1), self.temperature)
        return total

    # ---------------------------------------------------------------- trainer hooks
    def on_model(self, trainer, model):
        """model_transform: load the teacher (once), check and pair it with the model actually
        trained, attach the adapters (restored under --resume)."""
        if self.teacher is None:
            self.teacher = load_teacher(self.t_cfg, self.t_weights, trainer.img_max, trainer.device)
        if self.t_precision == 'auto':  # CUDA runs the teacher under the student's AMP autocast anyway
            self.t_precision = 'bf16' if trainer.device.type == 'cpu' and native_bf16() else 'fp32'
        model = self.prepare(model, trainer.img_max)
        saved = trainer.resumed_extras.get('distill', {}).get('adapters')
        if saved and self.adapters is not None:
            self.adapters.load_state_dict(saved)
        trainer.ckpt_extras['distill'] = self.settings()
        if trainer.main:
            adapted = [f'{i}' for i in self.adapters] if self.adapters else []
            feats = (f', {len(self.pairs)} feature pairs (student:teacher layers '
                     f'{" ".join(f"{i}:{j}" for i, j, _, _ in self.pairs)}; 1x1 adapters at {adapted or "none"})'
                     if self.uses_features else '')
            scale = f' x {self.weight:g} (--kd-weight)' if self.weight != 1 else ''
            precision = ', teacher in bfloat16 (CPU autocast)' if self.t_precision == 'bf16' else ''
            print(f'Distillation: KDstr {self.strategy} ({STRATEGIES[self.strategy]}){scale} from {self.t_weights}'
                  f'{feats}{precision}')
        return model

    def on_loss(self, trainer, imgs, targets, heads):
        """loss term."""
        return self.loss(heads, imgs, targets, trainer.loss_fn, trainer.model)

    def on_epoch_end(self, trainer, epoch):
        """epoch hook: the adapters' current weights into the checkpoint (for --resume)."""
        trainer.ckpt_extras['distill'] = self.settings()


def attach_distillation(trainer, t_weights, strategy, t_cfg='', weight=1.0, t_precision='fp32'):
    """Register distillation on ``trainer`` (before it builds its model); ``weight`` (--kd-weight)
    multiplies every term; ``t_precision`` (--t-precision) 'fp32', 'bf16' (the teacher's forward
    under CPU autocast) or 'auto' (bf16 on CPUs with native bfloat16). Returns the Distiller."""
    feature = Distiller(strategy, t_weights, t_cfg, weight=weight, t_precision=t_precision)
    trainer.model_transforms.append(feature.on_model)
    trainer.loss_terms.append(feature.on_loss)
    trainer.epoch_hooks.append(feature.on_epoch_end)
    trainer.ckpt_extras['distill'] = feature.settings()
    return feature
