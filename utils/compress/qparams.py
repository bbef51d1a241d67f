"""Integer export of a quantized model (``export.py --format qparams``): per quantized conv,
its integer weights and bias, scales and zero points, as one ``.npz`` that
``utils/compress/int_forward.py`` (pure NumPy) runs and an FPGA/C engineer checks hardware against.

Layout (``L`` = the layer index, zero-padded to 3 digits; README "Integer export"):
  cfg               the model's cfg text (the graph: routes, shortcuts, pools, heads)
  meta              JSON: scheme, a_bits, w_bits, bn_fold, fpga, input ("float RGB in [0, 1], NCHW")
  L{L}_in_scale     [] float64   input activation: q = clamp(round(x / in_scale) + in_zero_point,
  L{L}_in_zero_point [] int64                                    in_qmin, in_qmax)
  L{L}_in_qmin, L{L}_in_qmax
  L{L}_w            [out, in/groups, k, k] int   weight codes: w = w_scale[o] * w
  L{L}_w_scale      [out] float64
  L{L}_b            [out] int64   bias at the accumulator's scale in_scale * w_scale[o]
  L{L}_out_mult     [out] float64 y = (sum((q - zp) * w) + b) * out_mult + out_add, then the activation
  L{L}_out_add      [out] float64 (out_add is a float BN shift only when BN is not folded)
  --FPGA adds (every scale = 2^-exp, so rescaling is a shift):
  L{L}_in_exp []    L{L}_w_exp []    L{L}_b_q [out] (w_bits codes)    L{L}_b_exp []
  --reorder TM TN adds L{L}_w_reorder, the weight codes in upstream's tiled stream order.
"""
import json

import numpy as np
import torch

from utils.compress.quant import ActQuant, dorefa_weight_codes, quant_blocks, spec_of, weight_qparams

INT_DTYPES = {2: np.int8, 4: np.int8, 8: np.int8, 16: np.int16, 32: np.int32}


def _exp_of(scale):
    """n with scale == 2^-n (FPGA scales are exact powers of two)."""
    n = -np.log2(np.asarray(scale, dtype=np.float64))
    assert np.all(n == np.round(n)), 'not a power of two'
    return np.round(n).astype(np.int64)


def _codes(t, scale, zp=0):
    """Integer codes of an already fake-quantized tensor (exactly on its grid)."""
    return torch.round(t.detach().double() / scale.double() + zp).long().numpy()


def _activation_qparams(q: ActQuant):
    if q.bits >= 32:
        raise ValueError(f'layer {q.layer}: 32-bit activations have no integer form; export needs a_bits <= 16')
    scale, zp, qmin, qmax = q.qparams()
    return float(scale), int(zp), qmin, qmax


@torch.no_grad()
def layer_qparams(block):
    """Integer form of one QuantConvBlock (eval: running BN statistics) -> {name: array}."""
    spec = block.spec
    w_bits = block.w_bits
    if w_bits >= 32:
        raise ValueError(f'layer {block.act_quant.layer}: 32-bit weights have no integer form; export needs '
                         'w_bits <= 16')
    conv = block.Conv2d
    weight, bias = block.folded() if block.fold else (conv.weight, conv.bias)
    in_scale, in_zp, qmin, qmax = _activation_qparams(block.act_quant)
    out = {'in_scale': np.float64(in_scale), 'in_zero_point': np.int64(in_zp), 'in_qmin': np.int64(qmin),
           'in_qmax': np.int64(qmax)}
    if spec.scheme == 'dorefa':  # w = (m/n)(2k - n): odd integers in [-n, n]
        codes, m = dorefa_weight_codes(weight, w_bits)
        n = 2 ** w_bits - 1
        w_int = (2 * torch.round(codes).long() - n).numpy()
        w_scale = np.full(weight.shape[0], float(m) / n)
        w_dtype = np.int16 if w_bits <= 8 else np.int32
    else:
        w_scale_t = block.weight_qparams(weight)[0]
        w_scale_t = w_scale_t.expand(weight.shape[0]) if w_scale_t.ndim == 0 else w_scale_t
        w_int = _codes(block.quant_weight(weight), w_scale_t.view(-1, 1, 1, 1))
        w_scale = w_scale_t.detach().double().numpy()
        w_dtype = INT_DTYPES[w_bits]
    out['w'] = w_int.astype(w_dtype)
    out['w_scale'] = w_scale
    acc_scale = in_scale * w_scale
    b = bias.double().numpy() if bias is not None else np.zeros(weight.shape[0])
    if spec.fpga and bias is not None:
        b_scale = float(weight_qparams(bias, w_bits, per_channel=False, pow2=True)[0])
        b_q = _codes(block.quant_bias(bias), torch.tensor(b_scale))
        out.update(in_exp=_exp_of(in_scale), w_exp=_exp_of(w_scale[0]), b_q=b_q.astype(INT_DTYPES[w_bits]),
                   b_exp=_exp_of(b_scale))
        b = b_q * b_scale
    out['b'] = np.rint(b / acc_scale).astype(np.int64)
    out['out_mult'], out['out_add'] = acc_scale.copy(), np.zeros(weight.shape[0])
    if not block.fold and hasattr(block, 'BatchNorm2d'):  # a float BN after the integer conv
        bn = block.BatchNorm2d
        a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double().numpy()
        out['out_mult'] = acc_scale * a
        out['out_add'] = bn.bias.double().numpy() - bn.running_mean.double().numpy() * a
    return out


def export_qparams(model):
    """{'cfg', 'meta', 'L###_<name>': array} for every quantized conv of an eval-mode model."""
    spec = spec_of(model)
    if spec is None:
        raise ValueError('the model is not quantized: train with --quantized 1|2 (or give --quantized with --calib N '
                         'for post-training quantization) before exporting qparams')
    model = model.eval()
    arrays = {'cfg': np.array(model.cfg_text()),
              'meta': np.array(json.dumps({**spec.to_dict(), 'input': 'float RGB in [0, 1], NCHW',
                                           'layers': [i for i, _ in quant_blocks(model)]}))}
    for i, block in quant_blocks(model):
        for name, value in layer_qparams(block).items():
            arrays[f'L{i:03d}_{name}'] = value
    return arrays


def head_step_bounds(params, model):
    """Per head: how far its raw output moves when every input of the head conv moves by one
    quantization step (in_scale x the largest L1 norm of a weight row): the tolerance of the
    integer forward against a fake-quant model whose scales are not powers of two."""
    bounds = []
    for yolo in model.yolo_layers:
        key = f'L{yolo - 1:03d}_'
        w = params[key + 'w'] * params[key + 'w_scale'].reshape(-1, 1, 1, 1)
        bounds.append(float(params[key + 'in_scale']) * np.abs(w).reshape(len(w), -1).sum(1).max())
    return bounds


@torch.no_grad()
def check_int_forward(model, params, images):
    """Run the NumPy integer forward and the fake-quant model on ``images`` (float [B,3,H,W]
    in [0, 1]); returns [(max |difference|, tolerance)] per head. FPGA models must be exact."""
    from utils.compress.int_forward import int_forward
    device = next(model.parameters()).device
    raw = model.eval()(torch.as_tensor(images, device=device))[1]
    heads = int_forward(params, np.asarray(images, np.float32))
    exact = spec_of(model).fpga
    return [(float(np.abs(h - r.cpu().numpy()).max()), 0.0 if exact else bound)
            for h, r, bound in zip(heads, raw, head_step_bounds(params, model))]


def save_qparams(model, path, reorder=None):
    """Write the .npz atomically; ``reorder=(TM, TN)`` adds each layer's tiled weight stream
    as ``L###_w_reorder`` (see reorder_tiles)."""
    from utils.general import atomic_save
    arrays = export_qparams(model)
    if reorder:
        for key in [k for k in arrays if k.endswith('_w')]:
            arrays[key + '_reorder'] = reorder_tiles(arrays[key], *reorder)

    def write(tmp):
        with open(tmp, 'wb') as f:  # a file object: np.savez would append .npz to the temp name
            np.savez(f, **arrays)
    atomic_save(write, path)
    return arrays


def reorder_tiles(w, tm, tn):
    """Upstream's ``--reorder TM TN`` weight stream for an accelerator with TM output x TN input
    channel tiles: output tiles (the last partial one last), inside each the input tiles, and
    inside a tile for each kernel position, each output channel, all its input channels.
    w [out, in, k, k] -> 1-D array of the same values."""
    out_c, in_c = w.shape[:2]
    chunks = []
    for o0 in range(0, out_c, tm):
        for i0 in range(0, in_c, tn):
            tile = w[o0:o0 + tm, i0:i0 + tn]  # [tm, tn, k, k]
            chunks.append(tile.reshape(tile.shape[0], tile.shape[1], -1).transpose(2, 0, 1).ravel())
    return np.concatenate(chunks)
