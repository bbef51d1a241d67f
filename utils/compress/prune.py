"""The pruning engine: keep masks from BN scales, and a compact model that computes what the
masked model computes.

    graph = LayerGraph(model.module_defs)
    scales = bn_gammas(model, graph.prune_set(0))                 # {layer: |gamma| [C]}
    masks = threshold_masks(scales, global_threshold(scales, 0.5))
    removed = removed_groups(graph, masks, rule='any')            # coupling groups to cut
    small = compact_model(model, removed, graph=graph)            # a new, narrower Darknet
    small = compact_model(model, drop_blocks=select_blocks(model, graph, 4), graph=graph)   # layer pruning

Everything works on the parsed cfg (``model.module_defs``) and the weights: a pruned model
is a new cfg plus tensors copied out of the old ones, never a patched module.

*Masked model* (:func:`masked_model`): a full-size copy whose removed channels have BN scale
0, so each outputs the constant act(beta); for a dropped residual block, the scale of the
conv that closes it is 0, so the block adds the constant act(beta). *Compact model*
(:func:`compact_model`): those channels and blocks are gone, and the constants they added
are folded into every consumer (a conv's BN running mean or bias; through routes, pools,
upsamples and residual adds), so compact == masked up to the zero padding at the border of
k x k consumers (exact for 1 x 1 consumers and when beta = 0).
"""
import copy

import numpy as np
import torch

import models
from models import unwrap
from utils.compress.layer_graph import IMAGE, LayerGraph

__all__ = ['bn_scales', 'bn_gammas', 'global_threshold', 'threshold_masks', 'round_up_masks', 'min_keep_masks',
           'removed_groups', 'layer_keep_masks', 'check_not_empty', 'threshold_removed', 'slim_removed',
           'max_usable_percent', 'masked_model',
           'compact_model', 'layer_candidates', 'select_blocks']


# ----------------------------------------------------------------------------- masks

def bn_scales(model, layers):
    """The BatchNorm weight (gamma) parameters of ``layers`` (of a model or its DDP wrapper)."""
    model = unwrap(model)
    return [model.module_list[i].BatchNorm2d.weight for i in layers]


def bn_gammas(model, layers):
    """{layer: |gamma| (float CPU tensor [C])} of the BN layers ``layers``."""
    return {i: g.detach().abs().float().cpu() for i, g in zip(layers, bn_scales(model, layers))}


def global_threshold(scales, percent):
    """Network Slimming's global threshold: the ``percent`` quantile of all |gamma| in ``scales``
    (the value at index int(N * percent) of the sorted vector)."""
    if not 0 <= percent < 1:
        raise ValueError(f'--percent must be in [0, 1), got {percent}')
    values = torch.cat(list(scales.values())).sort().values
    return float(values[min(int(len(values) * percent), len(values) - 1)])


def threshold_masks(scales, thr, strict=False):
    """{layer: keep mask}: |gamma| >= thr (> thr with ``strict``, slim's rule)."""
    return {i: (g > thr) if strict else (g >= thr) for i, g in scales.items()}


def _top_k(g, k):
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask[g.argsort(descending=True)[:k]] = True
    return mask


def round_up_masks(scales, masks, base):
    """Regular pruning: every kept count rounded up to a multiple of ``base`` (a layer that
    would keep none keeps ``base``), keeping the largest |gamma|; never above the layer width."""
    out = {}
    for i, m in masks.items():
        c = len(m)
        k = int(m.sum())
        k = min(c, max(base, -(-k // base) * base))
        out[i] = _top_k(scales[i], k)
    return out


def min_keep_masks(scales, masks, fraction):
    """Slim's floor: at least max(1, int(C * fraction)) channels (largest |gamma|) per layer."""
    out = {}
    for i, m in masks.items():
        k = max(1, int(len(m) * fraction))
        out[i] = m | _top_k(scales[i], k) if int(m.sum()) < k else m
    return out


def removed_groups(graph, masks, rule='any'):
    """Coupling groups to remove, from per-layer keep masks over candidate layers.

    A group is removable only if it is not fixed and every BN layer gating it is a candidate.
    ``rule`` for a group gated by several layers (a residual stage): 'any' keeps it if any
    layer keeps its channel (slim's union), 'first' lets the lowest-index layer decide
    (shortcut pruning: a stage follows its first conv)."""
    if rule not in ('any', 'first'):
        raise ValueError(rule)
    removed = set()
    for g in graph.prunable_groups(masks):
        owners = sorted(graph.group_owners[g])
        votes = [bool(masks[i][c]) for i, c in owners]
        keep = votes[0] if rule == 'first' else any(votes)
        if not keep:
            removed.add(g)
    return removed


def layer_keep_masks(graph, removed):
    """{layer: keep mask over its output channels} for every BN conv that loses channels."""
    removed_ids = np.array(sorted(removed), dtype=np.int64)
    out = {}
    for i in range(len(graph.defs)):
        if graph.has_bn(i):
            keep = ~np.isin(graph.channel_group[i], removed_ids)
            if not keep.all():
                out[i] = torch.from_numpy(keep)
    return out


def check_not_empty(graph, removed):
    """Raise ValueError naming the first conv that would lose every channel."""
    for i, m in layer_keep_masks(graph, removed).items():
        if not m.any():
            raise ValueError(f'layer {i} would lose all {len(m)} channels')


def threshold_removed(graph, scales, percent, rule='any', strict=False, adjust=None):
    """The coupling groups a global-threshold plan removes: keep masks at the ``percent``
    threshold of ``scales``, ``adjust(scales, masks)`` (a method's per-layer rule: rounding, a
    floor), then ``removed_groups`` by ``rule``. ValueError if a layer would empty."""
    masks = threshold_masks(scales, global_threshold(scales, percent), strict)
    if adjust is not None:
        masks = adjust(scales, masks)
    removed = removed_groups(graph, masks, rule)
    check_not_empty(graph, removed)
    return removed


def slim_removed(graph, scales, percent, layer_keep):
    """Slim pruning's plan (slim_prune.py, and the target of sparsity training with
    ``--sr-target``): strict global threshold, at least ``layer_keep`` of each layer, a residual
    stage keeps the union of its convs' channels."""
    if not 0 <= layer_keep <= 1:
        raise ValueError(f'--layer_keep must be in [0, 1], got {layer_keep}')
    return threshold_removed(graph, scales, percent, rule='any', strict=True,
                             adjust=lambda sc, masks: min_keep_masks(sc, masks, layer_keep))


def max_usable_percent(scales, plan):
    """The largest --percent at which ``plan(percent) -> removed groups`` leaves every layer a
    channel, found by bisection over the sorted |gamma| (``plan`` raises ValueError when a
    layer empties). Returns the exclusive bound: every percent below it works."""
    n = sum(len(g) for g in scales.values())
    lo, hi = 0, n  # index int(n * p): lo works, hi does not (or is the end)

    def ok(k):
        try:
            plan(k / n)
            return True
        except ValueError:
            return False
    if ok(n - 1):
        return 1.0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return hi / n


# ----------------------------------------------------------------------------- layer pruning

def layer_candidates(graph):
    """Residual blocks that layer pruning may remove: (shortcut, source) pairs whose closing conv
    is in the layer-pruning sparsity set (``--prune 2``)."""
    closing = set(graph.prune_set(2))
    return [(s, j) for s, j in graph.residual_blocks() if s - 1 in closing]


def select_blocks(model, graph, n):
    """The ``n`` removable residual blocks whose closing conv has the lowest mean |gamma|."""
    candidates = layer_candidates(graph)
    if not candidates:
        raise ValueError('layer pruning does not apply to this model: it has no removable residual blocks '
                         '([shortcut] layers that add a conv branch to its input)')
    if not 0 < n <= len(candidates):
        raise ValueError(f'--shortcuts {n}: this model has {len(candidates)} removable residual blocks; '
                         f'choose 1..{len(candidates)}')
    scores = bn_gammas(model, [s - 1 for s, _ in candidates])
    ranked = sorted(candidates, key=lambda sj: float(scores[sj[0] - 1].mean()))
    return sorted(ranked[:n])


# ----------------------------------------------------------------------------- masked and compact models

def _dropped_layers(graph, drop_blocks):
    blocks = dict(drop_blocks)
    valid = dict(graph.residual_blocks())
    for s, j in blocks.items():
        if valid.get(s) != j:
            raise ValueError(f'layer {s} is not a removable residual block (from {j})')
    dropped = set()
    for s, j in blocks.items():
        dropped.update(range(j + 1, s + 1))
    return blocks, dropped


def masked_model(model, removed=(), drop_blocks=(), graph=None):
    """Full-size copy with the scales of removed channels (and of the closing conv of each
    dropped block) set to 0."""
    model = models.unwrap(model)
    graph = graph or LayerGraph(model.module_defs, model.in_channels)
    blocks, _ = _dropped_layers(graph, drop_blocks)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for i, keep in layer_keep_masks(graph, removed).items():
            out.module_list[i].BatchNorm2d.weight[~keep] = 0
        for s in blocks:
            out.module_list[s - 1].BatchNorm2d.weight.zero_()
    return out


def _bn_constant(model, i):
    """act(beta) of layer i: what its channels output when their BN scale is 0."""
    block = model.module_list[i]
    beta = block.BatchNorm2d.bias.detach().double().cpu().clone()  # a copy: activations run in place
    return models.make_activation(model.module_defs[i]['activation'])(beta)


def compact_model(model, removed=(), drop_blocks=(), graph=None):
    """A new Darknet without the ``removed`` coupling groups and the ``drop_blocks``
    (shortcut, source) residual blocks, equal to :func:`masked_model` (see module docstring).
    Route/shortcut references, relative or absolute, are re-indexed; every remaining tensor
    is copied."""
    model = models.unwrap(model)
    graph = graph or LayerGraph(model.module_defs, model.in_channels)
    defs, n = graph.defs, len(graph.defs)
    blocks, dropped = _dropped_layers(graph, drop_blocks)
    removed_ids = np.array(sorted(removed), dtype=np.int64)
    check_not_empty(graph, removed)
    keep = [torch.from_numpy(~np.isin(graph.channel_group[i], removed_ids)) for i in range(n)]
    delta = [None] * n  # per output channel: masked output - compact output (a constant; compact = 0 if removed)

    def keep_of(j):
        return torch.ones(graph.in_channels, dtype=torch.bool) if j == IMAGE else keep[j]

    def delta_of(j):
        return torch.zeros(graph.in_channels, dtype=torch.float64) if j == IMAGE else delta[j]

    def gather(i, per_layer):
        return torch.cat([per_layer(j)[a:b] for j, a, b in graph.input_layout(i)])

    def alias(t):
        while t in blocks:  # a dropped block's output is its source's
            t = blocks[t]
        return t

    new_index, new_defs, copies = {}, [], {}
    for i, d in enumerate(defs):
        if i in dropped:
            if i in blocks:
                delta[i] = delta_of(blocks[i]) + _bn_constant(model, i - 1)
            continue
        new_index[i] = len(new_defs)
        nd = copy.deepcopy(d)
        kind = d['type']

        def reindex(refs):
            out = []
            for r in refs:
                t = alias(i + r if r < 0 else r)
                out.append(new_index[t] - new_index[i] if r < 0 else new_index[t])
            return out

        def no_delta(what, value):
            if value.abs().max() > 0:
                raise ValueError(f'layer {i} ([{kind}]): cannot fold the constants of removed channels or blocks '
                                 f'through {what}; keep the channels that feed it')

        if kind in ('convolutional', 'depthwise'):
            block = model.module_list[i]
            conv = block.Conv2d
            w = conv.weight.detach().double().cpu()
            in_keep, in_delta = gather(i, keep_of), gather(i, delta_of)
            groups = conv.groups
            cout, cin_g = w.shape[:2]
            wsum = w.sum((2, 3)).view(groups, cout // groups, cin_g)
            offset = torch.einsum('goc,gc->go', wsum, in_delta.view(groups, cin_g)).reshape(cout)
            out_keep = keep[i]
            if graph.is_depthwise(i):
                new_w = w[out_keep]
                if kind == 'convolutional':
                    nd['groups'] = int(out_keep.sum())
            elif groups > 1:
                if not (in_keep.all() and out_keep.all()):
                    raise ValueError(f'layer {i}: grouped conv channels cannot be pruned')
                new_w = w
            else:
                new_w = w[out_keep][:, in_keep]
            nd['filters'] = int(out_keep.sum())
            t = {'Conv2d.weight': new_w}
            if hasattr(block, 'BatchNorm2d'):
                bn = block.BatchNorm2d
                t['BatchNorm2d.weight'] = bn.weight.detach().double().cpu()[out_keep]
                t['BatchNorm2d.bias'] = bn.bias.detach().double().cpu()[out_keep]
                t['BatchNorm2d.running_mean'] = (bn.running_mean.double().cpu() - offset)[out_keep]
                t['BatchNorm2d.running_var'] = bn.running_var.double().cpu()[out_keep]
                t['BatchNorm2d.num_batches_tracked'] = bn.num_batches_tracked.clone()
                const = _bn_constant(model, i)
                delta[i] = torch.where(out_keep, torch.zeros_like(const), const)
            else:
                t['Conv2d.bias'] = (conv.bias.detach().double().cpu() + offset)[out_keep]
                delta[i] = torch.zeros(cout, dtype=torch.float64)
            copies[new_index[i]] = t
        elif kind == 'route':
            nd['layers'] = reindex(d['layers'])
            delta[i] = gather(i, delta_of)
        elif kind == 'shortcut':
            nd['from'] = reindex(d['from'])
            total = delta[i - 1].clone()
            for j in graph.sources[i][1:]:
                m = min(len(total), len(delta_of(j)))
                total[:m] += delta_of(j)[:m]
            if d['activation'] != 'linear' or d['weights_type'] != 'none':
                no_delta('a weighted or non-linear [shortcut]', torch.cat([delta[i - 1]] +
                                                                          [delta_of(j) for j in graph.sources[i][1:]]))
            delta[i] = total
            if d['weights_type'] != 'none':
                copies[new_index[i]] = {'weight': model.module_list[i].weight.detach().double().cpu()}
        elif kind in ('scale_channels', 'se', 'yolo'):
            if kind == 'scale_channels':
                nd['from'] = reindex(d['from'])
                no_delta('[scale_channels]', torch.cat([delta_of(j) for j in graph.sources[i]]))
                delta[i] = torch.zeros(graph.out_channels[i], dtype=torch.float64)
            else:
                no_delta(f'[{kind}]', delta[i - 1])
                delta[i] = delta[i - 1]
            if kind == 'se':
                copies[new_index[i]] = {k: v.detach().double().cpu() for k, v in
                                        model.module_list[i].state_dict().items()}
        else:  # maxpool, upsample, avgpool, dropout: per-channel constants pass unchanged
            delta[i] = gather(i, delta_of)
        new_defs.append(nd)

    small = models.Darknet([copy.deepcopy(model.net_def)] + new_defs, img_size=model.img_size)
    small.header = model.header
    origin = getattr(model, 'origin', list(range(n)))  # layer index in the model pruning started from
    small.origin = [origin[i] for i in sorted(new_index)]
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for ni, tensors in copies.items():
            own = small.module_list[ni].state_dict()
            for key, value in tensors.items():
                if own[key].shape != value.shape:
                    raise AssertionError(f'layer {ni} {key}: {tuple(value.shape)} vs {tuple(own[key].shape)}')
                own[key].copy_(value.to(own[key].dtype) if value.is_floating_point() else value)
    return small.to(dtype)
