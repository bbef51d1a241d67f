"""Quantization-aware convolutions (fake quantization) for Darknet models.

    spec = QuantSpec('google', a_bits=8, w_bits=8, bn_fold=True, fpga=True)
    model = quantize_model(model, spec)     # every [convolutional]/[depthwise] block, in place
    calibrate(model, batches)               # post-training: observe activation ranges
    spec_of(model)                          # the spec a quantized model was built with

What is quantized: each conv block's *input* activation (per tensor) and its weight (per
output channel, or per tensor with ``fpga``); with ``fpga`` also the (BN-folded) bias. Routes,
shortcuts, pools, upsampling, activations, SE blocks and the YOLO decode stay float, as in
upstream (§7 of the spec); depthwise convs are quantized too (upstream silently left them
float). The quantized block keeps the float block's child names (``Conv2d``, ``BatchNorm2d``,
``activation``), so float ``.pt``/``.weights`` load into it and Darknet ``.weights`` written
from it hold the float shadow weights.

Schemes (``--quantized``):
  1 Google/TFLite (Jacob et al. 2018): weights symmetric, signed, per output channel
    (scale = max|w| / (2^(b-1) - 1)); activations asymmetric, unsigned [0, 2^b - 1] with a
    zero point, from a moving average (momentum 0.1) of batch min/max.
    ``fpga``: everything symmetric and per tensor, every scale an exact power of two (the
    smallest 2^-n that holds the range), bias quantized to ``w_bits`` with its own 2^-n scale,
    so all rescaling in hardware is a bit shift. Requires ``bn_fold`` (an FPGA has no BN unit).
  2 DoReFa (Zhou et al. 2016): weights w = m (2 round(u (2^b-1)) / (2^b-1) - 1), u = tanh(W) /
    (2 m) + 1/2, m = max|tanh W|; activations clipped to [0, alpha] and quantized uniformly
    (alpha = 1 for the image, 10 elsewhere). Upstream dropped m and pre-scaled activations by
    0.1 without undoing it, which breaks convs without BN (the heads); both are fixed here.
``bn_fold``: BN folded into the conv weight during training, with batch statistics until the
freeze point, running statistics after it and in eval (Jacob et al. 2018, §3.2).
Observers move in training (and during ``calibrate``) and are frozen in eval (upstream moved
them during testing); the image's quantizer has the fixed range [0, 1] (8 bits: the pixels
themselves; FPGA: 2^-6 as upstream). 32 bits = identity.

Overflow-safe weights (default; ``--full-range`` turns it off): x86 int8 kernels without VNNI
(AVX2, AVX-512 without VNNI) multiply unsigned 8-bit activations by signed 8-bit weights with
``vpmaddubsw``, which adds adjacent products in int16 and saturates; signed activations are
shifted to unsigned first. ONNX Runtime and OpenVINO both do this. So the weight codes of a
conv are limited to ``safe_weight_code_max`` of its activation range: 2 x 255 x 64 = 32640 <=
32767 lets 8-bit weights use [-64, 64] under 8-bit activations (NNCF's "overflow fix"), while
4-bit activations leave 8-bit weights their full range.

Activations use ``torch.fake_quantize_per_tensor_affine`` and Google weights
``torch.fake_quantize_per_channel_affine``: straight-through gradients inside the clip range,
zero outside, and the ONNX exporter turns them into QuantizeLinear/DequantizeLinear pairs.
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import ConvBlock, register_checkpoint_transform
from utils.compress.quant_flags import BITS, RANGES, SCHEMES
from utils.general import INT16_MAX

EMA_MOMENTUM = 0.1  # activation observer: range <- 0.9 range + 0.1 batch range (first batch copied)
MSE_CLIPS = torch.linspace(0.25, 1.0, 16).tolist()  # --qrange mse: candidate fractions of the min/max range
MSE_SAMPLE = 1 << 15  # activation elements the range search looks at per batch (a strided sample)
POW2_STEPS_DOWN = 3  # --qrange mse with power-of-two scales: the min/max scale and up to 3 halvings
DOREFA_ALPHA = 10.0  # clip of DoReFa activations (upstream's 0.1 pre-scale, undone)


@dataclass(frozen=True)
class QuantSpec:
    scheme: str = 'google'  # 'google' | 'dorefa'
    a_bits: int = 8
    w_bits: int = 8
    bn_fold: bool = False
    fpga: bool = False
    bn_freeze: float = 0.9  # fraction of the optimizer steps after which BN folding uses running stats
    edge_bits: int = 8  # the first conv (the image) and the head convs use at least this many bits; 0 = uniform
    full_range: bool = False  # weights use all 2^(b-1)-1 codes even where int8 kernels without VNNI saturate
    ranges: str = 'minmax'  # 'minmax' | 'mse': how weight and activation ranges are set (Google scheme)

    def __post_init__(self):
        if self.scheme not in SCHEMES.values():
            raise ValueError(f'quantization scheme {self.scheme!r}: expected one of {sorted(SCHEMES.values())}')
        for flag, bits in (('--a-bit', self.a_bits), ('--w-bit', self.w_bits)):
            if bits not in BITS:
                raise ValueError(f'{flag} {bits}: expected one of {BITS}')
        if self.fpga and self.scheme != 'google':
            raise ValueError('--FPGA is a variant of --quantized 1 (Google); DoReFa has no power-of-two form')
        if self.fpga and not self.bn_fold:
            raise ValueError('--FPGA needs --BN_Fold: the hardware has no BatchNorm unit, so BN must be folded '
                             'into the quantized weights and bias')
        if self.edge_bits not in (0, *BITS):
            raise ValueError(f'--edge-bits {self.edge_bits}: expected 0 (uniform) or one of {BITS}')
        if self.edge_bits <= min(self.a_bits, self.w_bits):  # no effect: one spelling of "uniform"
            object.__setattr__(self, 'edge_bits', 0)
        if self.ranges not in RANGES:
            raise ValueError(f'--qrange {self.ranges}: expected one of {RANGES}')
        if self.ranges != 'minmax' and self.scheme != 'google':
            raise ValueError('--qrange mse applies to --quantized 1 (Google); DoReFa sets its own ranges')
        if not 0.0 <= self.bn_freeze <= 1.0:
            raise ValueError(f'--bn-freeze {self.bn_freeze}: expected a fraction of the training in [0, 1]')

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d, source='checkpoint'):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f'{source}: unknown quantization settings {unknown} (saved by a newer version?)')
        # checkpoints from before edge_bits quantized every conv alike, and from before
        # full_range used the full weight range
        return cls(**{'edge_bits': 0, 'full_range': True, **d})

    def describe(self):
        name = {'google': 'Google', 'dorefa': 'DoReFa'}[self.scheme]
        extras = ' + BN fold' * self.bn_fold + ' + FPGA (power-of-two scales)' * self.fpga
        if self.edge_bits > min(self.a_bits, self.w_bits):
            extras += f' (first and head convs at {self.edge_bits} bits)'
        if self.ranges == 'mse':
            extras += ' (MSE-optimal ranges)'
        if self.full_range and self.scheme == 'google' and min(self.a_bits, self.w_bits) <= 8:
            extras += ' (full-range weights: int8 kernels without VNNI may saturate)'
        return f'{name} a{self.a_bits}/w{self.w_bits}{extras}'

    def block_bits(self, edge):
        """(activation bits, weight bits) of a conv; ``edge``: the first conv or a head conv."""
        if not edge:
            return self.a_bits, self.w_bits
        return max(self.a_bits, self.edge_bits), max(self.w_bits, self.edge_bits)

    def differences(self, other):
        """['a_bits 8 != 4', ...]: the settings (apart from the training-only bn_freeze) that differ."""
        return [f'{f.name} {getattr(self, f.name)} != {getattr(other, f.name)}' for f in fields(self)
                if f.name != 'bn_freeze' and getattr(self, f.name) != getattr(other, f.name)]


# ----------------------------------------------------------------------------- quantizer arithmetic

def pow2_scale(amax, qmax):
    """The smallest power of two s with amax / s <= qmax (amax: tensor >= 0)."""
    return torch.exp2(torch.ceil(torch.log2(amax.clamp_min(1e-12) / qmax)))


def safe_weight_code_max(w_bits, act_qmin, act_qmax):
    """The largest weight code |q| a conv may use so that an x86 int8 kernel without VNNI cannot
    saturate: activations as unsigned bytes (signed ones shifted by 128, as the runtimes do)
    times weights, summed in pairs in int16: 2 x max byte x |q| <= 32767. Weights or
    activations wider than 8 bits never run in those kernels: the full range."""
    full = 2 ** (w_bits - 1) - 1
    if w_bits > 8 or act_qmin < -128 or act_qmax > 255:
        return full
    max_byte = act_qmax + 128 if act_qmin < 0 else act_qmax
    return min(full, INT16_MAX // (2 * max_byte))


def _quant_error(x, scale, qmin, qmax):
    """Squared quantization error of ``x`` [C, K] (or [K]) at ``scale`` [C] (or []), summed per row."""
    s = scale.unsqueeze(-1) if scale.ndim else scale
    err = (torch.clamp(torch.round(x / s), qmin, qmax) * s - x).square()
    return err.sum(-1)


def _mse_scales(x, base_scale, qmin, qmax, pow2):
    """The scale among ``base_scale`` x MSE_CLIPS (pow2: ``base_scale`` / 2^k, k < POW2_STEPS_DOWN)
    with the least squared error on ``x`` [C, K] / [K] (per row where ``base_scale`` is [C])."""
    factors = [2.0 ** -k for k in range(POW2_STEPS_DOWN)] if pow2 else MSE_CLIPS
    best, best_err = base_scale, None
    for f in factors:
        scale = base_scale * f
        err = _quant_error(x, scale, qmin, qmax)
        if best_err is None:
            best, best_err = scale, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return best


def weight_qparams(w, bits, per_channel=True, pow2=False, code_max=None, mse=False):
    """Symmetric signed quantization of a weight (or bias) tensor: (scale [C] or [], zero
    point int32 like scale, qmin, qmax). Range [-2^(b-1), 2^(b-1)-1]; max|w| maps to
    ``code_max`` (default 2^(b-1)-1; pow2: to at most that), so the codes stay in
    [-code_max, code_max] (a symmetric grid) while the clamp range is the integer type's.
    ``mse``: the scale (per channel) that minimises the squared error, among clipped ranges
    (fractions of max|w|; pow2: halvings); the clamp range is then [-code_max, code_max], so
    clipped weights keep the codes the overflow-safe bound allows."""
    qmax = 2 ** (bits - 1) - 1
    code_max = qmax if code_max is None else code_max
    w = w.detach()
    amax = w.abs().flatten(1).amax(1) if per_channel and w.ndim > 1 else w.abs().amax()
    scale = pow2_scale(amax, code_max) if pow2 else (amax / code_max).clamp_min(1e-12)
    if not mse:
        return scale.float(), torch.zeros_like(scale, dtype=torch.int32), -qmax - 1, qmax
    rows = w.flatten(1) if scale.ndim else w.flatten()
    scale = _mse_scales(rows.float(), scale.float(), -code_max, code_max, pow2)
    return scale.float(), torch.zeros_like(scale, dtype=torch.int32), -code_max, code_max


def fake_quant_weight(w, bits, per_channel=True, pow2=False, code_max=None, mse=False):
    """Quantize-dequantize ``w`` [out, in/g, k, k] (or a bias [out]) with STE gradients."""
    if bits >= 32:
        return w
    scale, zp, qmin, qmax = weight_qparams(w, bits, per_channel, pow2, code_max, mse)
    if scale.ndim == 1:
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(w, scale, zp, qmin, qmax)


def dorefa_weight_codes(w, bits):
    """DoReFa weight grid: (unsigned codes round(u (2^b-1)) with STE, m = max|tanh w|); the
    weight is m (2 codes / (2^b-1) - 1)."""
    t = torch.tanh(w)
    m = t.detach().abs().max().clamp_min(1e-12)
    levels = 2 ** bits - 1
    u = (t / (2 * m) + 0.5) * levels
    return u + (torch.round(u) - u).detach(), m


def fake_quant_dorefa_weight(w, bits):
    if bits >= 32:
        return w
    codes, m = dorefa_weight_codes(w, bits)
    return m * (2 * codes / (2 ** bits - 1) - 1)


class ActQuant(nn.Module):
    """Per-tensor activation quantizer with a min/max observer.

    Buffers ``lo``/``hi``: the observed range (equal = nothing observed yet). The range moves
    in training mode (moving average) and while ``calibrating`` (running min/max over all
    calibration batches); in eval it is frozen. ``mode``: 'affine' (unsigned, zero point),
    'pow2' (signed, symmetric, scale 2^-n) or 'dorefa' (unsigned, fixed clip [0, alpha])."""

    def __init__(self, bits, mode='affine', alpha=DOREFA_ALPHA, layer=None, fixed_range=None, mse=False):
        super().__init__()
        self.bits, self.mode, self.alpha, self.layer, self.mse = bits, mode, alpha, layer, mse
        self.calibrating = False
        # the image's range is known ([0, 1]): at 8 bits its codes are then exactly the pixels
        self.fixed = fixed_range is not None
        lo, hi = fixed_range or (0.0, 0.0)
        self.register_buffer('lo', torch.tensor(float(lo)))
        self.register_buffer('hi', torch.tensor(float(hi)))

    def extra_repr(self):
        return f'bits={self.bits}, mode={self.mode}'

    @property
    def observed(self):
        return bool(self.hi > self.lo) or self.mode == 'dorefa'

    @torch.no_grad()
    def batch_range(self, x):
        """(lo, hi) of a batch: its min/max, or with ``mse`` the clipped range [f lo, f hi]
        (pow2: the min/max scale halved up to twice) whose quantization of a strided sample of
        the batch has the least squared error."""
        lo, hi = x.min().float(), x.max().float()
        if not self.mse or not bool(hi > lo):
            return lo, hi
        flat = x.detach().flatten().float()
        sample = flat[::max(1, flat.numel() // MSE_SAMPLE)]
        qmin, qmax = self.code_range()
        best, best_err = (lo, hi), None
        if self.mode == 'pow2':  # qparams' scale is the power of two that holds max(|lo|, |hi|)
            base = pow2_scale(torch.maximum(lo.abs(), hi.abs()), qmax)
            for k in range(POW2_STEPS_DOWN):
                scale = base * 2.0 ** -k
                err = _quant_error(sample, scale, qmin, qmax)
                if best_err is None or err < best_err:
                    limit = scale * qmax
                    best, best_err = ((lo, hi) if k == 0 else (lo.clamp(min=-limit), hi.clamp(max=limit))), err
            return best
        for f in MSE_CLIPS:
            c_lo, c_hi = (lo * f).clamp(max=0.0), (hi * f).clamp(min=0.0)
            scale = ((c_hi - c_lo) / qmax).clamp_min(1e-12)
            zp = torch.round(-c_lo / scale).clamp(0, qmax)
            err = (torch.clamp(torch.round(sample / scale) + zp, 0, qmax) - zp).mul(scale).sub(sample).square().sum()
            if best_err is None or err < best_err:
                best, best_err = (c_lo, c_hi), err
        return best

    @torch.no_grad()
    def observe(self, x):
        lo, hi = self.batch_range(x)
        if not bool(self.hi > self.lo):  # first observation: copy
            self.lo.copy_(lo)
            self.hi.copy_(hi)
        elif self.calibrating:
            self.lo.copy_(torch.minimum(self.lo, lo))
            self.hi.copy_(torch.maximum(self.hi, hi))
        else:
            self.lo.lerp_(lo, EMA_MOMENTUM)
            self.hi.lerp_(hi, EMA_MOMENTUM)

    def code_range(self):
        """(qmin, qmax) of the integer codes: signed for 'pow2', unsigned otherwise."""
        if self.mode == 'pow2':
            return -2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        return 0, 2 ** self.bits - 1

    def qparams(self):
        """(scale [] float, zero point [] int32, qmin, qmax) for the current range."""
        device = self.lo.device
        qmin, qmax = self.code_range()
        if self.mode == 'dorefa':
            return (torch.tensor(self.alpha / qmax, device=device), torch.zeros((), dtype=torch.int32, device=device),
                    0, qmax)
        if self.mode == 'pow2':
            scale = pow2_scale(torch.maximum(self.lo.abs(), self.hi.abs()), qmax)
            return scale, torch.zeros((), dtype=torch.int32, device=device), qmin, qmax
        # affine: the range must hold 0 exactly (zero padding, ReLU zeros)
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        scale = ((hi - lo) / qmax).clamp_min(1e-12)
        zp = torch.round(-lo / scale).clamp(0, qmax).to(torch.int32)
        return scale, zp, 0, qmax

    def forward(self, x):
        if self.bits >= 32:
            return x
        if self.training or self.calibrating:
            if self.mode != 'dorefa' and not self.fixed:
                self.observe(x)
        elif not self.observed:
            where = f'layer {self.layer}' if self.layer is not None else 'an activation quantizer'
            raise RuntimeError(f'{where} has no activation range yet: calibrate the model first '
                               '(--calib N images) or train it with quantization')
        scale, zp, qmin, qmax = self.qparams()
        if x.dtype != torch.float32:  # autocast (CUDA AMP) hands half tensors; the codes are computed in float
            x = x.float()
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)


# ----------------------------------------------------------------------------- the quantized block

def _conv(x, weight, bias, conv):
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class QuantConvBlock(ConvBlock):
    """A quantized Darknet conv block: input quantizer -> conv with quantized weight (BN
    folded in with ``spec.bn_fold``, else a float BN after it) -> activation.

    Children keep the float block's names (``Conv2d``, ``BatchNorm2d``, ``activation``) plus
    ``act_quant``; buffer ``bn_frozen`` (bn_fold) switches the training fold to running
    statistics and is saved with the model, so ``--resume`` continues exactly."""

    fusable = False  # models.Darknet.fuse leaves it alone: its BN belongs to the quantized weight

    def __init__(self, block, spec, first=False, layer=None, head=False):
        nn.Sequential.__init__(self)  # adopts ``block``'s modules instead of building new ones
        self.spec = spec
        # 4-bit and below keep the first and the head convs at edge_bits (as LSQ / PACT do): the
        # image at 4 bits has 5 power-of-two levels, and the heads' outputs are the detections
        self.a_bits, self.w_bits = spec.block_bits(first or head)
        self.add_module('Conv2d', block.Conv2d)
        if hasattr(block, 'BatchNorm2d'):
            self.add_module('BatchNorm2d', block.BatchNorm2d)
        self.add_module('activation', block.activation)
        mode = 'dorefa' if spec.scheme == 'dorefa' else 'pow2' if spec.fpga else 'affine'
        self.add_module('act_quant', ActQuant(self.a_bits, mode, alpha=1.0 if first else DOREFA_ALPHA, layer=layer,
                                              fixed_range=(0.0, 1.0) if first else None,
                                              mse=spec.ranges == 'mse'))
        self.w_code_max = 2 ** (self.w_bits - 1) - 1 if spec.full_range else \
            safe_weight_code_max(self.w_bits, *self.act_quant.code_range())
        self.fold = spec.bn_fold and hasattr(self, 'BatchNorm2d')
        if self.fold:
            self.register_buffer('bn_frozen', torch.zeros((), dtype=torch.bool))

    def weight_qparams(self, w):
        """(scale, zero point, qmin, qmax) of the Google-scheme weight ``w`` (see weight_qparams)."""
        return weight_qparams(w, self.w_bits, per_channel=not self.spec.fpga, pow2=self.spec.fpga,
                              code_max=self.w_code_max, mse=self.spec.ranges == 'mse')

    def quant_weight(self, w):
        s = self.spec
        if s.scheme == 'dorefa':
            return fake_quant_dorefa_weight(w, self.w_bits)
        return fake_quant_weight(w, self.w_bits, per_channel=not s.fpga, pow2=s.fpga, code_max=self.w_code_max,
                                 mse=s.ranges == 'mse')

    def quant_bias(self, b):
        """Only ``fpga`` quantizes the bias (w_bits, its own 2^-n scale); otherwise it stays
        float here and becomes int32 at the accumulator's scale on integer export."""
        if b is None or not self.spec.fpga:
            return b
        return fake_quant_weight(b, self.w_bits, per_channel=False, pow2=True)

    def folded(self, mean=None, var=None):
        """(weight, bias) with BN folded in, from ``mean``/``var`` (default: running stats)."""
        conv, bn = self.Conv2d, self.BatchNorm2d
        mean = bn.running_mean if mean is None else mean
        var = bn.running_var if var is None else var
        inv_std = bn.weight / torch.sqrt(var + bn.eps)
        weight = conv.weight * inv_std.view(-1, 1, 1, 1)
        bias = bn.bias - mean * inv_std
        if conv.bias is not None:
            bias = bias + conv.bias * inv_std
        return weight, bias

    def forward(self, x):
        x = self.act_quant(x)
        conv = self.Conv2d
        if not self.fold:
            y = _conv(x, self.quant_weight(conv.weight), self.quant_bias(conv.bias), conv)
            if hasattr(self, 'BatchNorm2d'):
                y = self.BatchNorm2d(y)
            return self.activation(y)
        if self.training and not bool(self.bn_frozen):
            mean, var = self._batch_stats(x)
            weight, bias = self.folded(mean, var)
        else:
            weight, bias = self.folded()
        return self.activation(_conv(x, self.quant_weight(weight), self.quant_bias(bias), conv))

    def _batch_stats(self, x):
        """Per-channel mean/var of the float conv output over (N, H, W); updates the BN's
        running statistics like BatchNorm2d does (unbiased variance, its momentum)."""
        conv, bn = self.Conv2d, self.BatchNorm2d
        y = _conv(x, conv.weight, conv.bias, conv)
        var, mean = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
        with torch.no_grad():
            n = y.numel() / y.shape[1]
            bn.running_mean.lerp_(mean.detach(), bn.momentum)
            bn.running_var.lerp_(var.detach() * n / max(n - 1, 1), bn.momentum)
            bn.num_batches_tracked.add_(1)
        return mean, var


# ----------------------------------------------------------------------------- whole models

def quant_blocks(model):
    """[(layer index, QuantConvBlock)] of a model."""
    return [(i, m) for i, m in enumerate(getattr(model, 'module_list', ())) if isinstance(m, QuantConvBlock)]


def spec_of(model):
    """The QuantSpec a model was quantized with, or None for a float model."""
    blocks = quant_blocks(model)
    return blocks[0][1].spec if blocks else None


def quantize_model(model, spec):
    """Replace every conv block of a (float, unfused) Darknet model by a QuantConvBlock, in
    place; returns the model. Its state dict keeps the float keys and adds the observers'."""
    if spec_of(model) is not None:
        raise ValueError('the model is already quantized')
    if getattr(model, 'fused', False):
        raise ValueError('the model is fused (BatchNorm folded for inference): quantize the unfused model')
    in_ch = getattr(model, 'in_channels', 3)
    heads = {i - 1 for i in getattr(model, 'yolo_layers', ())}
    for i, block in enumerate(model.module_list):
        if isinstance(block, ConvBlock):
            first = i == 0 and block.Conv2d.in_channels == in_ch
            model.module_list[i] = QuantConvBlock(block, spec, first=first, layer=i, head=i in heads)
    return model


def resolve_spec(requested, saved, source):
    """The spec to build: ``saved`` (a checkpoint's) unless the command line asked for one
    that contradicts it, which is an error naming the differences."""
    if requested is not None and saved is not None and requested.differences(saved):
        raise ValueError(f'{source} was trained with quantization {saved.describe()}, but the command line asks '
                         f'for {requested.describe()} ({", ".join(requested.differences(saved))}); leave the '
                         'quantization flags out to use the checkpoint\'s')
    return saved if saved is not None else requested


def ckpt_spec(entries, source='checkpoint'):
    """QuantSpec stored in a checkpoint's entries (key ``quant``), or None."""
    d = (entries or {}).get('quant')
    return QuantSpec.from_dict(d, source) if d else None


def _rebuild_quantized(model, entries, source):
    return quantize_model(model, ckpt_spec(entries, source))


register_checkpoint_transform('quant', _rebuild_quantized)


def quantize_as_requested(model, spec, source):
    """``model`` as the command line's ``spec`` asks: a float model is quantized (in place, as
    quantize_model; its activation ranges then need ``calibrate``), a quantized one (rebuilt
    from a quantization-aware checkpoint ``source``) must have been built with ``spec``. No
    spec: the model as it is."""
    if spec is None:
        return model
    have = spec_of(model)
    if have is not None:
        resolve_spec(spec, have, source)
        return model
    return quantize_model(model, spec)


@torch.no_grad()
def calibrate(model, batches, n_images):
    """Post-training quantization: run ``n_images`` images (``batches`` yields float [B,3,H,W]
    in [0, 1]) through the eval-mode model with every observer recording its running
    min/max. BN statistics are not touched."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuant) and not m.fixed]
    if not quantizers:
        raise ValueError('--calib: the model has no quantizers (add --quantized 1 or 2)')
    model.eval()
    for q in quantizers:
        q.lo.zero_()
        q.hi.zero_()
        q.calibrating = True
    seen = 0
    try:
        for imgs in batches:
            model(imgs[:n_images - seen])
            seen += min(len(imgs), n_images - seen)
            if seen >= n_images:
                break
    finally:
        for q in quantizers:
            q.calibrating = False
    if seen == 0:
        raise ValueError('--calib: no calibration images')
    return seen


# ----------------------------------------------------------------------------- CLI and training

def spec_from_opt(opt):
    """QuantSpec asked for on the command line, or None (no --quantized, or --quantized 0).
    Bit or fold flags without --quantized are an error rather than a silent float run."""
    if not opt.quantized:
        given = [f for f, v in (('--a-bit', opt.a_bit), ('--w-bit', opt.w_bit), ('--BN_Fold', opt.bn_fold),
                                ('--FPGA', opt.fpga), ('--edge-bits', opt.edge_bits),
                                ('--full-range', getattr(opt, 'full_range', None)), ('--qrange', getattr(opt, 'qrange', None)))
                 if v is not None and v is not False]
        if given and opt.quantized is None:
            raise ValueError(f'{" ".join(given)}: only used by quantization, which is off; add --quantized 1 or 2')
        if given:
            raise ValueError(f'{" ".join(given)} contradict --quantized 0')
        return None
    return QuantSpec(SCHEMES[opt.quantized], a_bits=opt.a_bit or 8, w_bits=opt.w_bit or 8, bn_fold=opt.bn_fold,
                     fpga=opt.fpga, bn_freeze=getattr(opt, 'bn_freeze', 0.9),
                     edge_bits=8 if opt.edge_bits is None else opt.edge_bits,
                     # an FPGA computes its own integer sums: the range restriction would only cost it
                     # accuracy (power-of-two scales at 64 codes), so --FPGA implies full range
                     full_range=bool(getattr(opt, 'full_range', False)) or opt.fpga,
                     ranges=getattr(opt, 'qrange', None) or 'minmax')


def attach_quantization(trainer, spec):
    """QAT in the Trainer: quantize the model before the optimizer is built (or check that the
    model a quantized ``--weights``/``--resume`` checkpoint rebuilt matches), record the spec
    in every checkpoint, and switch BN folding to running statistics at the freeze point."""
    def transform(tr, model):
        model = quantize_as_requested(model, spec, 'the starting checkpoint')
        if tr.main:
            print(f'Quantization-aware training: {spec.describe()}')
        return model

    def freeze_bn(tr):
        steps = len(tr.train_loader) * tr.epochs / max(tr.accumulate, 1)
        if tr.updates + 1 >= spec.bn_freeze * steps:
            for _, block in quant_blocks(tr.model):
                if block.fold and not bool(block.bn_frozen):
                    block.bn_frozen.fill_(True)

    trainer.model_transforms.append(transform)
    trainer.ckpt_extras['quant'] = spec.to_dict()
    if spec.bn_fold:
        trainer.grad_hooks.append(freeze_bn)
    return trainer


# ----------------------------------------------------------------------------- inference tools

def calibration_batches(data, img_size, batch_size=8, seed=0):
    """Float [B,3,H,W] batches in [0, 1] of a shuffled sample of the .data file's train list,
    letterboxed like evaluation (no augmentation)."""
    from utils.datasets import create_dataloader, resolve_data
    from utils.parse_config import parse_data_cfg
    cfg = parse_data_cfg(resolve_data(data), required=('train', 'classes'))
    loader, _ = create_dataloader(cfg['train'], img_size, batch_size, stride=32, augment=False, rect=False,
                                  workers=0, shuffle=True, seed=seed, nc=int(cfg['classes']))
    for imgs, *_ in loader:
        yield imgs.float() / 255.0


def prepare_for_inference(model, device, calib=0, data=None, img_size=416, source='the model'):
    """utils.inference.load_inference_model after quantize_as_requested: ``calib`` (--calib N)
    calibrates a quantized model's activation ranges on N training images of the .data file
    ``data`` at ``img_size``; a quantized model without ranges (a float checkpoint quantized by
    the flags) needs it. ``source``: what --weights named, for the messages."""
    spec = spec_of(model)
    if spec is None:
        if calib:
            raise ValueError('--calib: the model is float; add --quantized 1 or 2 to quantize it after training')
        return model
    if calib:
        n = calibrate(model, (b.to(device) for b in calibration_batches(data, img_size)), calib)
        print(f'Post-training quantization {spec.describe()}: activation ranges from {n} images of {data}')
    elif not all(q.observed for q in model.modules() if isinstance(q, ActQuant) and q.bits < 32):
        raise ValueError(f'{source} is float and now quantized ({spec.describe()}) but has no '
                         'activation ranges: add --calib N to calibrate them on N training images (post-training '
                         'quantization), or train with these flags (quantization-aware training)')
    else:
        print(f'Quantized model: {spec.describe()}')
    return model


def adopt_checkpoint_spec(opt, start_ckpt):
    """train.py: starting from a quantization-aware ``--weights q.pt`` (``start_ckpt``: its entries,
    None for other weights) with no quantization flags continues with the checkpoint's settings
    (recorded in opt, so opt.yaml and --resume keep them); flags that contradict it are an error."""
    weights = str(opt.weights or '')
    saved = ckpt_spec(start_ckpt, weights)
    if saved is None:
        return opt
    resolve_spec(spec_from_opt(opt), saved, weights)
    opt.quantized = {v: k for k, v in SCHEMES.items()}[saved.scheme]
    opt.a_bit, opt.w_bit, opt.bn_fold, opt.fpga = saved.a_bits, saved.w_bits, saved.bn_fold, saved.fpga
    opt.edge_bits = saved.edge_bits
    return opt
