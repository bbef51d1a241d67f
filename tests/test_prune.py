"""The pruning engine against independent computations: zeroed channels give a compact model
with the same outputs and exactly the parameters a numerical count predicts; beta folding
through every kind of consumer; residual coupling; layer removal with re-indexed references;
OpenCV DNN on the written cfg + weights; upstream's sparsity-set counts."""
import copy

import numpy as np
import pytest
import torch

import models
from darknet_ref import opencv_copy, opencv_outputs, our_outputs_like_opencv, randomize
from utils.compress.layer_graph import LayerGraph
from utils.parse_config import parse_cfg, parse_cfg_text
from utils.compress.prune import (bn_gammas, compact_model, global_threshold, layer_candidates, layer_keep_masks,
                         masked_model, min_keep_masks, removed_groups, round_up_masks, select_blocks,
                         threshold_masks)

SIZE = 96


BIG = {'yolov3', 'yolov3-spp', 'yolov4', 'yolov3-mobilenet'}


def build(name, all_1x1=False, size=SIZE, seed=0):
    """A randomised model of cfg/<name>.cfg; the full-size ones at 1/8 width (same topology,
    1/64 of the compute) to keep the suite fast."""
    sections = parse_cfg(f'cfg/{name}.cfg')
    if name in BIG:
        for k, d in enumerate(sections[1:], 1):
            heads = k + 1 < len(sections) and sections[k + 1]['type'] == 'yolo'
            if d['type'] == 'convolutional' and not heads:
                d['filters'] = max(2, d['filters'] // 8)
                if d['groups'] > 1:
                    d['groups'] = d['filters']
    if all_1x1:  # no zero padding anywhere: folding beta must then be exact
        for d in sections[1:]:
            if d['type'] == 'convolutional' and d['groups'] == 1:
                d['size'] = 1
    return randomize(models.Darknet(sections, img_size=size), seed=seed, size=size)


def plan(model, method, percent=0.5):
    """The removed coupling groups of each method's rule, as the scripts compute them."""
    graph = LayerGraph(model.module_defs)
    mode = 0 if method in ('normal', 'regular') else 1
    scales = bn_gammas(model, graph.prune_set(mode))
    thr = global_threshold(scales, percent)
    masks = threshold_masks(scales, thr, strict=method == 'slim')
    if method == 'regular':
        masks = round_up_masks(scales, masks, 8)
    masks = min_keep_masks(scales, masks, 0.01)  # slim's floor; keeps narrow random layers non-empty for all
    return graph, removed_groups(graph, masks, 'first' if method == 'shortcut' else 'any')


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


def assert_close(a, b, tol=1e-4):
    err = ((a - b).abs() / (1 + a.abs())).max().item()
    assert err < tol, err


def live_parameter_count(model, x):
    """Parameters a compact model needs, counted numerically on a model whose removed channels
    output exactly 0: a conv weight counts when its output channel and its input channel are
    both non-zero somewhere; BN/bias terms count per non-zero output channel. Activations are
    replaced by tanh (zero only at zero, bounded) so that no kept channel is dead by chance (a ReLU
    over a 1x1 map)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        for name in ('activation', 'act'):
            if isinstance(getattr(m, name, None), torch.nn.Module):
                setattr(m, name, torch.nn.Tanh())
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, m=m: seen.__setitem__(m, (inp[0], out)))
             for m in model.modules() if isinstance(m, models.ConvBlock)]
    outputs(model, x)
    for h in hooks:
        h.remove()
    total = 0
    for m in model.modules():
        if isinstance(m, models.ConvBlock):
            inp, out = seen[m]
            conv = m.Conv2d
            live_in = inp.abs().amax((0, 2, 3)) > 0
            live_out = out.abs().amax((0, 2, 3)) > 0
            if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:  # depthwise
                n_in = n_out = int(live_out.sum())
                total += n_out * conv.kernel_size[0] * conv.kernel_size[1]
            else:
                n_in, n_out = int(live_in.sum()), int(live_out.sum())
                if conv.groups > 1:
                    n_in, n_out = conv.in_channels, conv.out_channels
                total += n_out * n_in // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
            total += n_out * (2 if hasattr(m, 'BatchNorm2d') else 1)
        elif isinstance(m, (models.Shortcut, models.SqueezeExcite)):
            total += sum(p.numel() for p in m.parameters())
    return total


def zero_removed(model, graph, removed):
    """The masked model with beta = 0 too: removed channels output exactly act(0) = 0."""
    zeroed = masked_model(model, removed, graph=graph)
    with torch.no_grad():
        for i, keep in layer_keep_masks(graph, removed).items():
            zeroed.module_list[i].BatchNorm2d.bias[~keep] = 0
    return zeroed


# every method on the default model; each other architecture with the methods that exercise its
# particular structure (grouped routes, SPP, depthwise + SE, CSP)
CASES = [('yolov3-mini-shapes', m) for m in ('normal', 'regular', 'shortcut', 'slim')]
CASES += [('yolov3-tiny', 'normal'), ('yolov3-tiny', 'regular'), ('yolov4-tiny', 'shortcut'), ('yolov4-tiny', 'slim'),
          ('yolov3tiny-mobilenet-small', 'normal'), ('yolov3tiny-mobilenet-small', 'slim'), ('yolov3', 'normal'),
          ('yolov3-spp', 'slim'), ('yolov4', 'normal'), ('yolov4', 'shortcut'), ('yolov3-mobilenet', 'slim')]


@pytest.mark.parametrize('name,method', CASES)
def test_compact_equals_zeroed_model_and_counts_match(name, method):
    model = build(name)
    graph, removed = plan(model, method)
    assert removed, 'the plan removes something'
    zeroed = zero_removed(model, graph, removed)
    small = compact_model(zeroed, removed, graph=graph)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    assert_close(outputs(zeroed, x), outputs(small, x))
    n_small = models.count_parameters(small)[0]
    assert n_small < models.count_parameters(model)[0]
    assert n_small == live_parameter_count(zeroed, x)


@pytest.mark.parametrize('name', ['yolov3-mini-shapes', 'yolov4-tiny', 'yolov3tiny-mobilenet-small', 'yolov3-spp'])
def test_beta_folding_is_exact_without_padding(name):
    """With every conv 1x1, the constants of removed channels (beta != 0) and of removed blocks
    reach every consumer through routes, pools, upsamples and residual adds exactly."""
    model = build(name, all_1x1=True)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    for method in ('normal', 'shortcut'):
        graph, removed = plan(model, method)
        masked = masked_model(model, removed, graph=graph)
        assert (outputs(masked, x) - outputs(model, x)).abs().max() > 1e-2  # the removed channels mattered
        assert_close(outputs(masked, x), outputs(compact_model(model, removed, graph=graph), x), 2e-4)
    graph = LayerGraph(model.module_defs)
    if layer_candidates(graph):
        blocks = select_blocks(model, graph, 2)
        assert_close(outputs(masked_model(model, drop_blocks=blocks), x),
                     outputs(compact_model(model, drop_blocks=blocks), x), 2e-4)


TWO_CONVS = """
[net]
width=32
height=32
channels=3
[convolutional]
batch_normalize=1
filters=16
size=3
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=16
size=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=16
size=3
pad=1
activation=leaky
[convolutional]
filters=18
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=1
"""


def test_beta_folding_1x1_exact_kxk_exact_inside_the_border():
    model = randomize(models.Darknet(parse_cfg_text(TWO_CONVS), img_size=32), size=32)
    graph = LayerGraph(model.module_defs)
    with torch.no_grad():  # beta of the removed channels well away from 0
        model.module_list[0].BatchNorm2d.bias[:8] = 1.5
        model.module_list[1].BatchNorm2d.bias[:8] = -2.0
    masks = {0: torch.arange(16) >= 8, 1: torch.arange(16) >= 8}
    removed = removed_groups(graph, masks)
    masked, small = masked_model(model, removed, graph=graph), compact_model(model, removed, graph=graph)
    for m in (masked, small):
        m.taps = {1, 2}
    x = torch.rand(1, 3, 32, 32)
    outputs(masked, x), outputs(small, x)
    # layer 1 (1x1 consumer of layer 0): exact everywhere
    assert torch.allclose(masked.tapped[1][:, 8:], small.tapped[1], atol=1e-5)
    # layer 2 (3x3 consumer of layer 1): exact inside, not at the zero-padded border
    a, b = masked.tapped[2], small.tapped[2]
    assert torch.allclose(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], atol=1e-5)
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize('name', ['yolov3-mini-shapes', 'yolov4'])
def test_residual_groups_keep_identical_masks(name):
    model = build(name)
    for method in ('shortcut', 'slim'):
        graph, removed = plan(model, method, percent=0.6)
        masks = layer_keep_masks(graph, removed)
        full = {i: masks.get(i, torch.ones(graph.out_channels[i], dtype=torch.bool))
                for i in range(len(graph.defs)) if graph.has_bn(i)}
        n_checked = 0
        for s, d in enumerate(graph.defs):
            if d['type'] == 'shortcut':
                src = graph.sources[s][1]
                src_conv = src - 1 if graph.defs[src]['type'] == 'shortcut' else src
                assert torch.equal(full[s - 1], full[src_conv]), (method, s)
                n_checked += int(not full[s - 1].all())
        assert n_checked, 'some residual stage lost channels'


def test_regular_counts_are_multiples_of_the_base():
    model = build('yolov3-mini-shapes')
    graph, removed = plan(model, 'regular', percent=0.7)
    masks = layer_keep_masks(graph, removed)
    assert masks
    for i, m in masks.items():
        assert int(m.sum()) % 8 == 0 and m.sum() > 0, (i, int(m.sum()))


@pytest.mark.parametrize('name,n', [('yolov4', 6), ('yolov3-mini-shapes', 3), ('yolov3tiny-mobilenet-small', 3)])
def test_layer_pruning_copies_every_tensor_and_reindexes(name, n, tmp_path):
    model = build(name)
    graph = LayerGraph(model.module_defs)
    blocks = select_blocks(model, graph, n)
    if name == 'yolov4':  # blocks inside a CSP stage: its routes (-1, -10 ...) span them
        blocks = [(s, j) for s, j in graph.residual_blocks() if 100 < s < 140][:n]
    small = compact_model(model, drop_blocks=blocks, graph=graph)
    assert len(small.module_defs) == len(model.module_defs) - sum(s - j for s, j in blocks)
    x = torch.rand(1, 3, SIZE, SIZE)
    # the masked-block model with the closing conv's beta also 0 adds exactly nothing: equal outputs
    zeroed = masked_model(model, drop_blocks=blocks, graph=graph)
    with torch.no_grad():
        for s, _ in blocks:
            zeroed.module_list[s - 1].BatchNorm2d.bias.zero_()
    assert_close(outputs(zeroed, x), outputs(compact_model(zeroed, drop_blocks=blocks, graph=graph), x))
    # every reference points at the layer it pointed at before (a removed block's output = its source)
    alias = dict(blocks)
    for new_i, d in enumerate(small.module_defs):
        key = {'route': 'layers', 'shortcut': 'from', 'scale_channels': 'from'}.get(d['type'])
        if key:
            old_i = small.origin[new_i]
            for new_ref, old_ref in zip(d[key], model.module_defs[old_i][key]):
                old_t = old_i + old_ref if old_ref < 0 else old_ref
                while old_t in alias:
                    old_t = alias[old_t]
                new_t = new_i + new_ref if new_ref < 0 else new_ref
                assert (new_ref < 0) == (old_ref < 0) and small.origin[new_t] == old_t
    # the written cfg + weights load back into an equal model
    models.save_weights(small, tmp_path / 'p.weights')
    again = models.Darknet(parse_cfg_text(small.cfg_text()), img_size=SIZE)
    models.load_darknet_weights(again, tmp_path / 'p.weights')
    assert torch.equal(outputs(again, x), outputs(small, x))


def test_layer_pruning_refuses_models_without_residual_blocks():
    model = build('yolov3-tiny')
    with pytest.raises(ValueError, match='no removable residual blocks'):
        select_blocks(model, LayerGraph(model.module_defs), 1)
    model = build('yolov3-mini-shapes')
    with pytest.raises(ValueError, match='choose 1..6'):
        select_blocks(model, LayerGraph(model.module_defs), 7)


@pytest.mark.parametrize('name,method,blocks', [('yolov3-tiny', 'normal', 0), ('yolov4-tiny', 'slim', 0),
                                                 ('yolov3-mini-shapes', 'slim', 2)])
def test_pruned_cfg_and_weights_equal_in_opencv(tmp_path, name, method, blocks):
    model = build(name, size=160)
    graph, removed = plan(model, method)
    small = compact_model(model, removed, graph=graph)
    if blocks:
        small = compact_model(small, drop_blocks=select_blocks(small, LayerGraph(small.module_defs), blocks))
    small = randomize(small, size=160)  # BN statistics suited to the smaller net, as adaptive BN would give
    opencv_copy(small, tmp_path / 'p.cfg', tmp_path / 'p.weights')
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    ours, ref = our_outputs_like_opencv(small, x), opencv_outputs(tmp_path / 'p.cfg', tmp_path / 'p.weights', x)
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        assert o.shape == r.shape and o[:, 4].max() - o[:, 4].min() > 0.5
        assert np.abs(o[:, :4] - r[:, :4]).max() < 2e-3
        assert np.abs(o[:, 4:] - r[:, 4:]).max() < 5e-4


# upstream-behaviour.md §5.2: (BN conv layers, channels) penalised by --prune 0, 1, 2
UPSTREAM_COUNTS = {'yolov3': [(42, 13376), (70, 25920), (23, 10560)],
                   'yolov3-spp': [(42, 13376), (70, 25920), (23, 10560)],
                   'yolov3-tiny': [(10, 3056), (10, 3056), (0, 0)],
                   'yolov4': [(76, 25920), (104, 32256), (23, 5312)],
                   'yolov4-tiny': [(15, 2528), (15, 2528), (0, 0)]}


@pytest.mark.parametrize('name', sorted(UPSTREAM_COUNTS))
def test_sparsity_sets_match_upstream_counts(name):
    graph = LayerGraph(parse_cfg(f'cfg/{name}.cfg'))
    for mode, (n_layers, n_channels) in enumerate(UPSTREAM_COUNTS[name]):
        layers = graph.prune_set(mode)
        assert (len(layers), sum(graph.out_channels[i] for i in layers)) == (n_layers, n_channels), mode


def test_layer_graph_producers_consumers_and_groups():
    """yolov4-tiny by hand: the grouped route reads the second half of conv 2; conv 2 is fixed;
    the concat route 6 (layers -1,-2) maps channel ranges of 5 and 4."""
    graph = LayerGraph(parse_cfg('cfg/yolov4-tiny.cfg'))
    assert graph.input_layout(3) == [(2, 32, 64)]
    assert graph.consumers[2] == [3, 8]
    assert graph.input_layout(6) == [(5, 0, 32), (4, 0, 32)]
    assert graph.out_channels[6] == 64 and graph.consumers[4] == [5, 6]
    assert all(int(g) in graph.fixed_groups for g in graph.channel_group[2])
    assert not any(int(g) in graph.fixed_groups for g in graph.channel_group[4])
    assert list(graph.input_groups(6)) == list(graph.channel_group[5]) + list(graph.channel_group[4])
    # yolov3: a residual add couples the two inputs channel by channel
    g3 = LayerGraph(parse_cfg('cfg/yolov3.cfg'))
    assert list(g3.channel_group[3]) == list(g3.channel_group[1]) == list(g3.channel_group[4])
    assert g3.owner_layers(int(g3.channel_group[4][0])) == [1, 3]
