"""Reference integer forward of an exported quantized model, in NumPy only (no torch).

    params = dict(np.load('model_qparams.npz'))
    heads = int_forward(params, image)       # image float [B, 3, H, W] in [0, 1]
    # heads: one raw tensor [B, A, H/s, W/s, 5 + nc] per [yolo] layer, as Darknet.forward's raw output

Every quantized conv runs on integers: the input is quantized with the layer's own scale and
zero point, multiplied with the integer weights and summed into an integer accumulator with
the integer bias (int32 range asserted; the sums are computed with float64 BLAS, which is
exact for integers below 2^53), then rescaled: ``y = acc * out_mult + out_add``. With
``--FPGA`` every scale is 2^-n, so both that rescale and the next layer's quantization are
bit shifts (``np.ldexp``, exact). Between convs, the activation function, routes, shortcuts,
pools and upsampling run on the rescaled values, as in the fake-quantized PyTorch model, and
the YOLO heads' raw outputs are returned in float (the decode stays float everywhere).

This is the model an FPGA or C implementation should reproduce: it matches the PyTorch
fake-quant forward (``tests/test_quant.py``) up to codes that a float32 rounding tie moves by
one step.
"""
import json

import numpy as np

ACTIVATIONS = {
    'linear': lambda x: x,
    'leaky': lambda x: np.where(x > 0, x, np.float32(0.1) * x),
    'relu': lambda x: np.maximum(x, 0),
    'relu6': lambda x: np.clip(x, 0, 6),
    'logistic': lambda x: 1 / (1 + np.exp(-x)),
    'swish': lambda x: x / (1 + np.exp(-x)),
    'mish': lambda x: x * np.tanh(np.logaddexp(0, x)),
    'hardswish': lambda x: x * np.clip(x + 3, 0, 6) / 6,
    'hardsigmoid': lambda x: np.clip(x + 3, 0, 6) / 6,
}


def quantize(x, scale, zero_point, qmin, qmax):
    """Float -> integer codes the way torch.fake_quantize does (float32, round half to even)."""
    inv = np.float32(1.0) / np.float32(scale)
    return np.clip(np.rint(x.astype(np.float32) * inv) + zero_point, qmin, qmax).astype(np.int64)


def conv_int(q, w, stride, pad, groups):
    """Integer conv: q [B, C, H, W] int, w [O, C/g, k, k] int -> int64 accumulators [B, O, H', W']."""
    b, c, h, wd = q.shape
    o, cg, k, _ = w.shape
    x = np.pad(q.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.empty((b, o, ho, wo), dtype=np.float64)
    og = o // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        cols = np.empty((b, cg, k, k, ho, wo), dtype=np.float64)  # im2col
        for dy in range(k):
            for dx in range(k):
                cols[:, :, dy, dx] = xs[:, :, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride]
        wg = w[g * og:(g + 1) * og].reshape(og, -1).astype(np.float64)
        out[:, g * og:(g + 1) * og] = np.einsum('ok,bkp->bop', wg, cols.reshape(b, cg * k * k, -1)).reshape(
            b, og, ho, wo)
    acc = np.rint(out).astype(np.int64)
    assert np.abs(acc).max(initial=0) < 2 ** 31, 'accumulator exceeds int32'
    return acc


def maxpool(x, size, stride, padding):
    """Darknet maxpool: padding split left p//2, right p - p//2; padded cells never win."""
    left, right = padding // 2, padding - padding // 2
    x = np.pad(x, ((0, 0), (0, 0), (left, right), (left, right)), mode='edge')
    ho, wo = (x.shape[2] - size) // stride + 1, (x.shape[3] - size) // stride + 1
    out = np.full(x.shape[:2] + (ho, wo), -np.inf, dtype=x.dtype)
    for dy in range(size):
        for dx in range(size):
            out = np.maximum(out, x[:, :, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride])
    return out


def _conv_layer(x, p, i, d, trace=None):
    g = lambda name: p[f'L{i:03d}_{name}']  # noqa: E731
    q = quantize(x, g('in_scale'), g('in_zero_point'), g('in_qmin'), g('in_qmax'))
    if trace is not None:
        trace[i] = q
    k = d['size']
    pad = k // 2 if d['pad'] else d['padding']
    groups = x.shape[1] if d['type'] == 'depthwise' else d['groups']
    acc = conv_int(q - g('in_zero_point'), g('w'), d['stride'], pad, groups) + g('b').reshape(1, -1, 1, 1)
    y = acc * g('out_mult').reshape(1, -1, 1, 1) + g('out_add').reshape(1, -1, 1, 1)
    return ACTIVATIONS[d['activation']](y.astype(np.float32))


def int_forward(params, image, trace=None):
    """Raw head outputs of the exported model for ``image`` (float [B, 3, H, W] in [0, 1]).
    ``trace``: a dict that receives each quantized conv's input codes {layer: int array}."""
    from utils.parse_config import parse_cfg_text
    sections = parse_cfg_text(str(params['cfg']))
    meta = json.loads(str(params['meta']))
    quantized = set(meta['layers'])
    x, outputs, heads = np.asarray(image, dtype=np.float32), [], []
    for i, d in enumerate(sections[1:]):
        kind = d['type']
        if kind in ('convolutional', 'depthwise'):
            if i not in quantized:
                raise ValueError(f'layer {i}: conv without integer parameters in the export')
            x = _conv_layer(x, params, i, d, trace)
        elif kind == 'route':
            xs = [outputs[j if j >= 0 else i + j] for j in d['layers']]
            if d.get('groups', 1) > 1:
                xs = [np.array_split(t, d['groups'], 1)[d['group_id']] for t in xs]
            x = np.concatenate(xs, 1)
        elif kind == 'shortcut' and d.get('weights_type', 'none') == 'none':
            out = x
            for j in d['from']:
                a = outputs[j if j >= 0 else i + j]
                m = min(out.shape[1], a.shape[1])
                out = np.concatenate([out[:, :m] + a[:, :m], out[:, m:]], 1)
            x = ACTIVATIONS[d.get('activation', 'linear')](out)
        elif kind == 'upsample':
            s = d['stride']
            x = x.repeat(s, 2).repeat(s, 3)
        elif kind == 'maxpool':
            x = maxpool(x, d['size'], d['stride'], d['padding'])
        elif kind == 'avgpool':
            x = x.mean((2, 3), keepdims=True)
        elif kind == 'scale_channels':
            j = d['from'][0]
            x = ACTIVATIONS[d.get('activation', 'linear')](outputs[j if j >= 0 else i + j] * x)
        elif kind == 'yolo':
            b, _, h, w = x.shape
            na = len(d['mask']) if d.get('mask') else len(d['anchors'])
            heads.append(x.reshape(b, na, -1, h, w).transpose(0, 1, 3, 4, 2))
        else:
            raise ValueError(f'layer {i}: [{kind}] is not supported by the reference integer forward')
        outputs.append(x)
    return heads
