"""Quantization (utils/compress/quant.py): the quantizers by hand, BN folding against conv + BN, the
observers' life cycle, and QAT / PTQ runs through train.py and test.py."""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
import test as test_script
import train
from test_train import NO_AUG, hyp_file, run_train, tiny_data  # noqa: F401  (tiny_data is a fixture)
from utils.compress.int_forward import int_forward
from utils.compress.qparams import export_qparams, head_step_bounds, reorder_tiles, save_qparams
from utils.compress.quant import (ActQuant, QuantConvBlock, QuantSpec, calibrate, fake_quant_dorefa_weight, fake_quant_weight,
                         quant_blocks, quantize_as_requested, quantize_model, spec_of, weight_qparams)

TINY = 'cfg/yolov3-tiny-shapes.cfg'
MOBILE = 'cfg/yolov3tiny-mobilenet-small.cfg'


def is_pow2(t):
    e = torch.log2(t.double())
    return bool(torch.equal(e, torch.round(e)))


def random_bn(model, seed=0):
    """BN statistics and affine parameters away from their identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


# ----------------------------------------------------------------------------- quantizers by hand

@pytest.mark.parametrize('bits', [2, 4, 8, 16])
@pytest.mark.parametrize('pow2', [False, True])
def test_weight_quantizer_error_range_and_levels(bits, pow2):
    torch.manual_seed(bits)
    w = torch.randn(6, 3, 3, 3) * torch.tensor([0.01, 0.1, 1, 3, 0.5, 7]).view(-1, 1, 1, 1)
    per_channel = not pow2
    scale, zp, qmin, qmax = weight_qparams(w, bits, per_channel=per_channel, pow2=pow2)
    assert (qmin, qmax) == (-2 ** (bits - 1), 2 ** (bits - 1) - 1) and not zp.any()
    wq = fake_quant_weight(w, bits, per_channel=per_channel, pow2=pow2)
    s = scale.view(-1, 1, 1, 1) if per_channel else scale
    codes = wq / s
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the grid
    codes = codes.round()
    assert codes.min() >= qmin and codes.max() <= qmax
    assert ((wq - w).abs() <= s / 2 + 1e-6 * w.abs().max()).all()  # nothing is clipped: max|w| is in range
    if pow2:
        assert is_pow2(scale)


@pytest.mark.parametrize('bits', [2, 4, 8])
@pytest.mark.parametrize('mode', ['affine', 'pow2', 'dorefa'])
def test_activation_quantizer_range_error_and_ste(bits, mode):
    q = ActQuant(bits, mode, alpha=2.0)
    x = torch.linspace(-1.5, 3.0, 1001)
    q.train()
    q(x)  # first observation copies the range
    q.eval()
    scale, zp, qmin, qmax = q.qparams()
    lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
    if mode == 'pow2':
        assert is_pow2(scale) and (qmin, qmax) == (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
    elif mode == 'dorefa':
        assert (qmin, qmax) == (0, 2 ** bits - 1) and math.isclose(scale, 2.0 / (2 ** bits - 1), rel_tol=1e-6)
    else:
        assert (qmin, qmax) == (0, 2 ** bits - 1) and float(lo) <= -1.5 + 1e-6 and float(hi) >= 3.0 - 1e-5
    x = x.clone().requires_grad_()
    y = q(x)
    codes = y.detach() / scale + zp
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.round().min() >= qmin and codes.round().max() <= qmax
    inside = (x.detach() >= lo) & (x.detach() <= hi)
    assert ((y - x).abs()[inside] <= scale / 2 + 1e-6).all()
    y.sum().backward()  # straight-through where the unclamped code is in range, blocked outside
    code = torch.round(x.detach() / scale) + zp
    assert torch.equal(x.grad, ((code >= qmin) & (code <= qmax)).float())
    assert x.grad[inside].all() and not x.grad[x.detach() > hi + scale].any()


def test_32_bits_is_the_identity():
    w = torch.randn(4, 3, 3, 3)
    assert fake_quant_weight(w, 32) is w and fake_quant_dorefa_weight(w, 32) is w
    q = ActQuant(32)
    x = torch.randn(10)
    assert q(x) is x


def test_dorefa_weight_grid():
    w = torch.randn(8, 4, 3, 3)
    wq = fake_quant_dorefa_weight(w, 4)
    m = torch.tanh(w).abs().max()
    k = (wq / m + 1) * 15 / 2  # integer codes 0..15
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= 0 and k.max() <= 15
    assert (wq - torch.tanh(w)).abs().max() <= m / 15 + 1e-6  # half a step (2m/15) of tanh(w)


def test_observer_moving_average_by_hand_and_frozen_in_eval():
    q = ActQuant(8)
    q.train()
    q(torch.tensor([-1.0, 2.0]))
    assert (float(q.lo), float(q.hi)) == (-1.0, 2.0)  # first batch copied
    q(torch.tensor([-3.0, 4.0]))
    assert math.isclose(float(q.lo), -1.2, rel_tol=1e-6) and math.isclose(float(q.hi), 2.2, rel_tol=1e-6)
    q.eval()
    q(torch.tensor([-100.0, 100.0]))  # upstream moved the range while testing
    assert math.isclose(float(q.lo), -1.2, rel_tol=1e-6) and math.isclose(float(q.hi), 2.2, rel_tol=1e-6)
    with pytest.raises(RuntimeError, match='layer 3 has no activation range yet'):
        ActQuant(8, layer=3).eval()(torch.ones(2))


# ----------------------------------------------------------------------------- BN folding

def test_bn_fold_at_32_bits_equals_conv_plus_bn():
    torch.manual_seed(0)
    float_model = random_bn(models.Darknet(TINY, img_size=128)).eval()
    spec = QuantSpec('google', 32, 32, bn_fold=True)
    folded = quantize_model(copy.deepcopy(float_model), spec).eval()
    x = torch.rand(2, 3, 128, 128)
    for i, block in quant_blocks(folded):
        if not block.fold:
            continue
        inp = torch.randn(2, block.Conv2d.in_channels, 16, 16)
        assert torch.allclose(block(inp), float_model.module_list[i](inp), atol=1e-5), i
    assert torch.allclose(folded(x)[0], float_model(x)[0], rtol=1e-4, atol=1e-3)

    # training: the fold uses the batch statistics, and the running ones move like BatchNorm2d's
    block = quant_blocks(copy.deepcopy(folded))[0][1].train()
    ref = copy.deepcopy(float_model.module_list[0]).train()
    inp = torch.rand(4, 3, 32, 32)
    assert torch.allclose(block(inp), ref(inp), atol=1e-4)
    assert torch.allclose(block.BatchNorm2d.running_mean, ref.BatchNorm2d.running_mean, atol=1e-6)
    assert torch.allclose(block.BatchNorm2d.running_var, ref.BatchNorm2d.running_var, atol=1e-5)


def test_quantize_model_covers_depthwise_and_keeps_float_keys():
    model = models.Darknet(MOBILE, img_size=128)
    float_keys = set(model.state_dict())
    depthwise = [i for i, d in enumerate(model.module_defs) if d['type'] == 'depthwise' or d.get('groups', 1) > 1]
    convs = [i for i, d in enumerate(model.module_defs) if d['type'] in ('convolutional', 'depthwise')]
    q = quantize_model(model, QuantSpec('google', 8, 8, bn_fold=True, fpga=True))
    assert depthwise and [i for i, _ in quant_blocks(q)] == convs  # upstream left depthwise convs float
    assert float_keys <= set(q.state_dict())
    with pytest.raises(ValueError, match='already quantized'):
        quantize_model(q, QuantSpec())


def test_fpga_scales_are_powers_of_two_after_calibration():
    torch.manual_seed(1)
    model = quantize_model(random_bn(models.Darknet(TINY, img_size=128)), QuantSpec('google', 8, 8, True, True))
    calibrate(model, [torch.rand(2, 3, 128, 128)], 2)
    for _, block in quant_blocks(model):
        assert is_pow2(block.act_quant.qparams()[0])
        w, b = block.folded() if block.fold else (block.Conv2d.weight, block.Conv2d.bias)
        assert is_pow2(weight_qparams(w, 8, per_channel=False, pow2=True)[0])
        assert is_pow2(weight_qparams(b, 8, per_channel=False, pow2=True)[0])
    assert is_pow2(quant_blocks(model)[0][1].act_quant.qparams()[0])  # the image too: [0, 1] -> 1/64


def test_spec_errors():
    with pytest.raises(ValueError, match='--FPGA needs --BN_Fold'):
        QuantSpec('google', fpga=True)
    with pytest.raises(ValueError, match='DoReFa has no power-of-two'):
        QuantSpec('dorefa', fpga=True, bn_fold=True)
    with pytest.raises(ValueError, match='expected one of'):
        QuantSpec('google', a_bits=3)


def test_fuse_leaves_quantized_blocks_and_weights_file_holds_the_float_shadow(tmp_path):
    torch.manual_seed(2)
    model = quantize_model(random_bn(models.Darknet(TINY, img_size=128)), QuantSpec('google', 8, 8))
    calibrate(model, [torch.rand(2, 3, 128, 128)], 2)
    x = torch.rand(1, 3, 128, 128)
    before = model(x)[0]
    models.save_weights(model, tmp_path / 'q.weights')
    n_blocks = len(quant_blocks(model))
    model.fuse()
    assert torch.equal(model(x)[0], before) and len(quant_blocks(model)) == n_blocks
    plain = models.Darknet(TINY, img_size=128)
    models.load_darknet_weights(plain, tmp_path / 'q.weights')
    for i, block in quant_blocks(model):
        assert torch.equal(plain.module_list[i].Conv2d.weight, block.Conv2d.weight)


# ----------------------------------------------------------------------------- through the CLI

QAT_RUNS = {
    'g8-fold-fpga': ['--quantized', '1', '--BN_Fold', '--FPGA', '--a-bit', '8', '--w-bit', '8'],
    'dorefa8': ['--quantized', '2', '--a-bit', '8', '--w-bit', '8'],
    'g4-fold': ['--quantized', '1', '--BN_Fold', '--a-bit', '4', '--w-bit', '4'],
}


def evaluate(tmp_path, data, weights, *flags, name='t'):
    argv = ['--data', str(data), '--weights', str(weights), '--img-size', '128', '--workers', '0', '--batch-size',
            '8', '--project', str(tmp_path / 'test'), '--name', name, *flags]
    return test_script.run(test_script.parse_args(argv))


@pytest.mark.parametrize('run', sorted(QAT_RUNS))
def test_qat_checkpoint_reloads_and_evaluates_identically(tmp_path, tiny_data, run):
    flags = QAT_RUNS[run]
    run_train(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '8', '--name', run, *flags)
    best = tmp_path / 'runs' / run / 'weights' / 'best.pt'
    ckpt = models.load_checkpoint(best)
    spec = QuantSpec.from_dict(ckpt['quant'])
    assert spec.a_bits == int(flags[flags.index('--a-bit') + 1]) and spec.bn_fold == ('--BN_Fold' in flags)
    a = evaluate(tmp_path, tiny_data, best, name='bare')
    b = evaluate(tmp_path, tiny_data, best, *flags, name='flags')
    assert (a['map50'], a['map50_95']) == (b['map50'], b['map50_95'])
    model, _ = models.model_from_checkpoint(best)
    assert spec_of(model) == spec
    again = quantize_as_requested(models.load_model('', best, 128)[0], spec, best)  # the flags repeated: same model
    x = torch.rand(2, 3, 128, 128)
    assert torch.equal(model.eval()(x)[0], again(x)[0])
    ranges = [float(b.act_quant.hi - b.act_quant.lo) for _, b in quant_blocks(again)]
    assert all(r > 0 for r in ranges) or spec.scheme == 'dorefa'
    assert float(ckpt['model']['module_list.0.act_quant.hi']) == float(quant_blocks(again)[0][1].act_quant.hi)
    with pytest.raises(ValueError, match='asks for'):
        quantize_as_requested(models.load_model('', best, 128)[0], QuantSpec('google', 8, 16, bn_fold=spec.bn_fold,
                                                                             fpga=spec.fpga)
                              if spec.scheme == 'google' else QuantSpec('google'), best)


def test_qat_resume_is_exact_and_bn_freezes(tmp_path, tiny_data):
    flags = ['--quantized', '1', '--BN_Fold', '--a-bit', '8', '--w-bit', '8', '--bn-freeze', '0.6']
    common = ['--epochs', '3', '--batch-size', '8', '--seed', '3', '--notest', *flags]
    run_train(tmp_path, tiny_data, *common, '--name', 'full')
    run_train(tmp_path, tiny_data, *common, '--name', 'cut', '--stop-after', '1')
    cut = tmp_path / 'runs' / 'cut' / 'weights' / 'last.pt'
    assert not models.load_checkpoint(cut)['model']['module_list.0.bn_frozen']
    train.main(['--resume', str(cut), '--workers', '0'])
    a = models.load_checkpoint(tmp_path / 'runs' / 'full' / 'weights' / 'last.pt')['model']
    b = models.load_checkpoint(cut)['model']
    assert a.keys() == b.keys() and 'module_list.0.act_quant.hi' in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a['module_list.0.bn_frozen']  # frozen after 60% of the 6 steps


def test_qat_from_a_quantized_checkpoint_adopts_its_settings(tmp_path, tiny_data, monkeypatch):
    flags = QAT_RUNS['g8-fold-fpga']
    run_train(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '8', '--notest', '--name', 'q', *flags)
    q = tmp_path / 'runs' / 'q' / 'weights' / 'last.pt'
    reads, load_checkpoint = [], models.load_checkpoint
    monkeypatch.setattr(models, 'load_checkpoint', lambda path, **kw: (reads.append(Path(path)),
                                                                        load_checkpoint(path, **kw))[1])
    run_train(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '8', '--notest', '--name', 'more',
              '--weights', q)  # no flags: continues quantized
    assert reads.count(q) == 1  # its settings and its weights come from one read
    monkeypatch.undo()
    ckpt = models.load_checkpoint(tmp_path / 'runs' / 'more' / 'weights' / 'last.pt')
    assert ckpt['quant'] == models.load_checkpoint(q)['quant']
    with pytest.raises(SystemExit, match='asks for'):
        run_train(tmp_path, tiny_data, '--epochs', '1', '--name', 'bad', '--weights', q, '--quantized', '2')
    with pytest.raises(SystemExit, match='add --quantized 1 or 2'):
        run_train(tmp_path, tiny_data, '--epochs', '1', '--name', 'bad', '--a-bit', '4')


def test_post_training_quantization_in_test_py(tmp_path, tiny_data):
    run_train(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '8', '--notest', '--name', 'float')
    best = tmp_path / 'runs' / 'float' / 'weights' / 'last.pt'
    with pytest.raises(ValueError, match='add --calib N'):
        evaluate(tmp_path, tiny_data, best, '--quantized', '1')
    with pytest.raises(ValueError, match='the model is float'):
        evaluate(tmp_path, tiny_data, best, '--calib', '8')
    fp = evaluate(tmp_path, tiny_data, best, name='fp')
    ptq = evaluate(tmp_path, tiny_data, best, '--quantized', '1', '--calib', '8', name='ptq')
    ptq16 = evaluate(tmp_path, tiny_data, best, '--quantized', '1', '--a-bit', '16', '--w-bit', '16', '--calib',
                     '8', name='ptq16')
    assert abs(ptq16['map50'] - fp['map50']) < 1e-3  # 16 bits: indistinguishable from float
    assert ptq['map50'] >= 0  # runs end to end at 8 bits


# ----------------------------------------------------------------------------- integer export

def quantized_random(cfg, spec, seed=0, size=128):
    torch.manual_seed(seed)
    model = quantize_model(random_bn(models.Darknet(cfg, img_size=size)), spec)
    x = torch.rand(2, 3, size, size)
    calibrate(model, [x], 2)
    return model.eval(), x


@pytest.mark.parametrize('cfg', ['cfg/yolov3-mini-shapes.cfg', MOBILE])
@pytest.mark.parametrize('bits,ranges', [(8, 'minmax'), (4, 'minmax'), (4, 'mse')])
def test_integer_forward_is_bit_exact_for_fpga(cfg, bits, ranges):
    model, x = quantized_random(cfg, QuantSpec('google', bits, bits, bn_fold=True, fpga=True, ranges=ranges))
    params = export_qparams(model)
    with torch.no_grad():
        raw = model(x)[1]
    heads = int_forward(params, x.numpy())
    for h, r in zip(heads, raw):
        assert np.array_equal(h, r.numpy())  # power-of-two scales: float32 PyTorch is exact integer arithmetic
    heads = {i - 1 for i in model.yolo_layers}
    for i, block in quant_blocks(model):
        k = f'L{i:03d}_'
        edge = i == 0 or i in heads  # below 8 bits the image conv and the heads stay at 8 (edge_bits)
        assert (block.a_bits, block.w_bits) == ((8, 8) if edge else (bits, bits))
        assert params[k + 'w'].dtype == np.int8
        assert np.abs(params[k + 'w']).max() <= 2 ** (block.w_bits - 1) - 1
        assert float(params[k + 'in_scale']) == 2.0 ** -int(params[k + 'in_exp'])
        assert np.all(params[k + 'w_scale'] == 2.0 ** -int(params[k + 'w_exp']))


@pytest.mark.parametrize('spec', [QuantSpec('google', 8, 8), QuantSpec('google', 8, 8, bn_fold=True),
                                  QuantSpec('dorefa', 8, 8)], ids=['google', 'google-fold', 'dorefa'])
def test_integer_forward_matches_fake_quant_within_one_step(spec):
    """Other scales are not exact in float32: a rounding tie now and then moves a code by one.
    The heads stay within the effect of a one-step change of every head input."""
    model, x = quantized_random(MOBILE if spec.scheme == 'dorefa' else 'cfg/yolov3-mini-shapes.cfg', spec)
    params = export_qparams(model)
    codes = {}
    for i, block in quant_blocks(model):
        block.act_quant.register_forward_hook(
            lambda mod, inp, out, i=i: codes.__setitem__(i, (out / mod.qparams()[0] + mod.qparams()[1]).round()))
    with torch.no_grad():
        raw = model(x)[1]
    trace = {}
    heads = int_forward(params, x.numpy(), trace)
    for i in trace:
        assert (trace[i] == codes[i].long().numpy()).mean() > 0.85, i
    for h, r, bound in zip(heads, raw, head_step_bounds(params, model)):
        assert np.abs(h - r.numpy()).max() <= bound


def test_mse_ranges():
    """--qrange mse: weights already on a 4-bit grid keep the min/max scale (error 0); a row with
    an outlier gets a clipped scale with less error, its codes within +-code_max; a long-tailed
    activation batch gets a clipped range with less error; with power-of-two scales the chosen
    activation scale is a power of two at most the min/max one."""
    grid = torch.arange(-7, 8, dtype=torch.float32).repeat(4, 2).view(4, 30, 1, 1) * torch.tensor([1, 2, 4, 8.]).view(4, 1, 1, 1)
    s_mm = weight_qparams(grid, 4)[0]
    s_mse, _, lo, hi = weight_qparams(grid, 4, mse=True)
    assert torch.equal(s_mse, s_mm) and (lo, hi) == (-7, 7)
    torch.manual_seed(0)
    w = torch.randn(6, 40, 3, 3)
    w[:, 0, 0, 0] = 12.0  # one outlier per channel
    for code_max in (7, 4):
        errors = []
        for mse in (False, True):
            scale, zp, lo, hi = weight_qparams(w, 4, code_max=code_max, mse=mse)
            q = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, lo, hi)
            errors.append(float((q - w).square().sum()))
            assert (q / scale.view(-1, 1, 1, 1)).round().abs().max() <= code_max
        assert errors[1] < 0.8 * errors[0], errors
    x = torch.rand(2, 8, 32, 32).square() * 4  # long tail towards 4
    x[0, 0, 0, 0] = 40.0
    for mode in ('affine', 'pow2'):
        errors, scales = [], []
        for mse in (False, True):
            q = ActQuant(4, mode=mode, mse=mse).train()
            y = q(x)
            errors.append(float((y - x).square().sum()))
            scales.append(float(q.qparams()[0]))
        assert errors[1] < 0.7 * errors[0] and scales[1] < scales[0], (mode, errors, scales)
        if mode == 'pow2':
            assert math.log2(scales[1]).is_integer()


def test_qparams_file_layout(tmp_path):
    model, _ = quantized_random('cfg/yolov3-tiny-shapes.cfg', QuantSpec('google', 8, 8, bn_fold=True))
    save_qparams(model, tmp_path / 'q.npz', reorder=(4, 3))
    params = dict(np.load(tmp_path / 'q.npz', allow_pickle=False))
    meta = json.loads(str(params['meta']))
    assert meta['a_bits'] == 8 and meta['layers'] == [i for i, _ in quant_blocks(model)]
    k = 'L000_'  # the image: 1/255 and zero point 0, so its codes are the 8-bit pixels themselves
    assert math.isclose(float(params[k + 'in_scale']), 1 / 255, rel_tol=1e-6) and int(params[k + 'in_zero_point']) == 0
    assert params[k + 'w'].dtype == np.int8 and params[k + 'b'].dtype == np.int64
    assert sorted(params[k + 'w_reorder']) == sorted(params[k + 'w'].ravel())
    with pytest.raises(ValueError, match='not quantized'):
        export_qparams(models.Darknet('cfg/yolov3-tiny-shapes.cfg'))


def test_reorder_tiles_by_hand():
    w = np.arange(3 * 2 * 1 * 1).reshape(3, 2, 1, 1)  # out 3, in 2, 1x1
    # TM=2, TN=1: tiles (o 0-1, i 0), (o 0-1, i 1), (o 2, i 0), (o 2, i 1)
    assert reorder_tiles(w, 2, 1).tolist() == [0, 2, 1, 3, 4, 5]
    w = np.arange(2 * 1 * 2 * 1).reshape(2, 1, 2, 1)  # kernel positions first, then output channels
    assert reorder_tiles(w, 2, 1).tolist() == [0, 2, 1, 3]


def test_qat_after_pruning_and_from_darknet_weights(tmp_path, tiny_data):
    """A layer-and-channel-pruned checkpoint quantizes like any model: QAT from its .pt, the
    FPGA integer export of the result is bit-exact; QAT also starts from Darknet .weights."""
    import layer_channel_prune
    from test_prune_cli import FAST, save_ckpt
    ckpt = save_ckpt(tmp_path / 'sparse.pt', 'cfg/yolov3-mini-shapes.cfg', str(tiny_data))
    layer_channel_prune.main(['--weights', ckpt, '--data', str(tiny_data), '--percent', '0.6',
                                       '--shortcuts', '2', '--adapt-bn', '8', *FAST, '--out', str(tmp_path / 'pruned')])
    pruned_pt = str(tmp_path / 'pruned' / 'sparse_layer_channel_0.6_2.pt')
    flags = QAT_RUNS['g8-fold-fpga']
    run_train(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '8', '--notest', '--name', 'qp', '--weights',
              pruned_pt, *flags, cfg='')
    model, _ = models.model_from_checkpoint(tmp_path / 'runs' / 'qp' / 'weights' / 'last.pt', img_size=128)
    assert model.cfg_text() == models.load_checkpoint(pruned_pt)['cfg']  # the pruned architecture, quantized
    import export
    qat = tmp_path / 'runs' / 'qp' / 'weights' / 'last.pt'
    npz, = export.main(['--weights', str(qat), '--format', 'qparams', '--data', str(tiny_data), '--img-size', '128',
                        '--reorder', '4', '4'])
    assert npz == qat.with_name('last_qparams.npz')
    params = dict(np.load(npz, allow_pickle=False))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        raw = model.eval()(x)[1]
    for h, r in zip(int_forward(params, x.numpy()), raw):
        assert np.array_equal(h, r.numpy())
    with pytest.raises(SystemExit, match='not quantized'):
        export.main(['--weights', pruned_pt, '--format', 'qparams', '--data', str(tiny_data), '--img-size', '128'])
    darknet = tmp_path / 'runs' / 'qp' / 'weights' / 'best.weights'  # float shadow weights in Darknet format
    cfg = tmp_path / 'pruned.cfg'
    cfg.write_text(model.cfg_text())
    run_train(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '8', '--notest', '--name', 'qd', '--weights',
              darknet, '--quantized', '1', cfg=str(cfg))
    assert spec_of(models.model_from_checkpoint(tmp_path / 'runs' / 'qd' / 'weights' / 'last.pt')[0]).a_bits == 8


def test_edge_bits_keep_the_image_and_head_convs_at_8_bits():
    model = models.Darknet(TINY, img_size=128)
    heads = {i - 1 for i in model.yolo_layers}
    bits = {i: (b.a_bits, b.w_bits) for i, b in quant_blocks(quantize_model(copy.deepcopy(model),
                                                                            QuantSpec('google', 4, 4)))}
    assert all(v == ((8, 8) if i == 0 or i in heads else (4, 4)) for i, v in bits.items())
    uniform = quantize_model(copy.deepcopy(model), QuantSpec('google', 4, 4, edge_bits=0))
    assert {(b.a_bits, b.w_bits) for _, b in quant_blocks(uniform)} == {(4, 4)}
    assert QuantSpec('google', 8, 8, edge_bits=8) == QuantSpec('google', 8, 8, edge_bits=0)  # no effect at 8 bits
    old = {'scheme': 'google', 'a_bits': 4, 'w_bits': 4, 'bn_fold': False, 'fpga': False, 'bn_freeze': 0.9}
    assert QuantSpec.from_dict(old).edge_bits == 0  # saved before edge_bits: every conv alike
