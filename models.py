"""Darknet-cfg model builder, Darknet ``.weights`` I/O, checkpoints and model summary.

    model = Darknet('cfg/yolov3.cfg', img_size=416)    # or a parsed section list
    load_weights(model, 'weights/yolov3.weights')      # .weights (Darknet) or .pt (checkpoint)
    model.eval(); pred, raw = model(images)            # pred: [B, N, 5+nc]

``model.module_list[i]`` is the module built for cfg section ``i`` (counting from 0
after ``[net]``), so layer indices in cfgs, prune reports and state-dict keys agree.
``model.module_defs`` is the parsed cfg (list of dicts, without ``[net]``): pruning
rewrites it together with the weights and builds a new ``Darknet`` from it.

Command line:
    python3 models.py summary CFG [--img-size 416] [--verbose]
    python3 models.py convert CFG IN OUT          # .pt <-> .weights
    python3 models.py rewrite CFG OUT --classes N [--anchors 10,13,16,30,...]
"""
import argparse
import copy
import os
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.general import atomic_save, atomic_write_bytes
from utils.torch_utils import unwrap  # noqa: F401  (models.unwrap: what most callers import)
from utils.parse_config import (CfgError, cfg_to_text, layer_output_shapes, parse_cfg, parse_cfg_text,
                                rewrite_head, section_out_channels, write_cfg)

BN_EPS = 1e-5  # Darknet's normalisation epsilon
BN_MOMENTUM = 0.1


# ----------------------------------------------------------------------------- layers

def make_activation(name):
    """nn.Module for a Darknet activation name (aliases accepted)."""
    name = {'silu': 'swish', 'sigmoid': 'logistic', 'h_swish': 'hardswish', 'hard_swish': 'hardswish',
            'h_sigmoid': 'hardsigmoid', 'hard_sigmoid': 'hardsigmoid', 'none': 'linear'}.get(name, name)
    table = {
        'linear': nn.Identity, 'leaky': lambda: nn.LeakyReLU(0.1, inplace=True),
        'relu': lambda: nn.ReLU(inplace=True), 'relu6': lambda: nn.ReLU6(inplace=True),
        'mish': lambda: nn.Mish(inplace=True), 'swish': lambda: nn.SiLU(inplace=True),
        'logistic': nn.Sigmoid, 'hardswish': lambda: nn.Hardswish(inplace=True),
        'hardsigmoid': lambda: nn.Hardsigmoid(inplace=True), 'tanh': nn.Tanh, 'elu': lambda: nn.ELU(inplace=True),
        'selu': lambda: nn.SELU(inplace=True), 'gelu': nn.GELU,
    }
    if name not in table:
        raise ValueError(f'unknown activation {name!r}')
    return table[name]()


class ConvBlock(nn.Sequential):
    """Conv2d -> [BatchNorm2d] -> activation. The ``Conv2d`` child may be replaced by any
    module with the same call signature (a fused conv); utils.compress.quant.QuantConvBlock is a
    ConvBlock whose BN belongs to its quantized weight (``fusable`` False)."""

    fusable = True

    def __init__(self, in_ch, d):
        super().__init__()
        k, groups = d['size'], (in_ch if d['type'] == 'depthwise' else d['groups'])
        pad = k // 2 if d['pad'] else d['padding']
        bn = bool(d['batch_normalize'])
        self.add_module('Conv2d', nn.Conv2d(in_ch, d['filters'], k, d['stride'], pad, groups=groups, bias=not bn))
        if bn:
            self.add_module('BatchNorm2d', nn.BatchNorm2d(d['filters'], eps=BN_EPS, momentum=BN_MOMENTUM))
        self.add_module('activation', make_activation(d['activation']))


class MaxPool(nn.Module):
    """Darknet maxpool: ``padding`` (default size-1) split left=p//2, right=p-p//2; padded
    cells never win, so out = (in + p - size)//stride + 1.

    Fast paths avoid materialising a padded copy: symmetric padding and a right-only pad of
    stride-1 cells (yolov3-tiny's size=2 stride=2) map onto nn.MaxPool2d (ceil_mode for the
    latter); otherwise the input is padded by replicating its edge, which for a max equals
    Darknet's ignore-the-padding rule (every window holds the edge cell it copies)."""

    def __init__(self, size, stride, padding):
        super().__init__()
        left, right = padding // 2, padding - padding // 2
        self.pads = None
        # 2x2/2 without left pad, inference: on even maps two element-wise maxima of strided views
        # beat the pooling kernel by ~2x in channels_last (the right pad is never reached); their
        # backward is slow, so training uses the pooling kernel
        self.pairwise = size == stride == 2 and left == 0
        if left == right and left <= size // 2:
            self.pool = nn.MaxPool2d(size, stride, padding=left)
        elif left == 0 and right == stride - 1:
            self.pool = nn.MaxPool2d(size, stride, ceil_mode=True)
        else:
            self.pool, self.pads = nn.MaxPool2d(size, stride), (left, right, left, right)

    def forward(self, x):
        if self.pairwise and not x.requires_grad and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
            rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
            return torch.maximum(rows[..., 0::2], rows[..., 1::2])
        if self.pads is not None:
            x = F.pad(x, self.pads, mode='replicate')
        return self.pool(x)


class Upsample(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.stride, mode='nearest')


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


class Route(nn.Module):
    """Concatenate earlier outputs on channels; with groups, take chunk ``group_id`` of each."""

    def __init__(self, layers, groups=1, group_id=0):
        super().__init__()
        self.layers, self.groups, self.group_id = layers, groups, group_id

    def forward(self, x, outputs):
        xs = [outputs[i] for i in self.layers]
        if self.groups > 1:
            xs = [t.chunk(self.groups, 1)[self.group_id] for t in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


class Shortcut(nn.Module):
    """Darknet [shortcut]: previous output + outputs of ``layers``, optional learnable
    per-input (``per_feature``) or per-input-per-channel (``per_channel``) weights with
    Darknet's normalisations; channels beyond an input's count are left untouched."""

    def __init__(self, layers, channels, activation='linear', weights_type='none', normalization='none'):
        super().__init__()
        self.layers, self.normalization = layers, normalization
        n = len(layers) + 1
        if weights_type in ('per_feature', 'per_layer'):
            self.weight = nn.Parameter(torch.ones(n))
        elif weights_type == 'per_channel':
            self.weight = nn.Parameter(torch.ones(n, channels))
        else:
            self.weight = None
        self.act = make_activation(activation)

    def _weights(self):
        w = self.weight
        if self.normalization == 'relu':
            w = F.relu(w)
            w = w / (w.sum(0, keepdim=True) + 1e-4)
        elif self.normalization == 'softmax':
            w = torch.exp(w - w.max(0, keepdim=True).values)
            w = w / (w.sum(0, keepdim=True) + 1e-4)
        return w.view(w.shape[0], 1, -1, 1, 1)  # [n, 1, 1|C, 1, 1]

    def forward(self, x, outputs):
        w = self._weights() if self.weight is not None else None
        out = x * w[0] if w is not None else x
        c = out.shape[1]
        for k, i in enumerate(self.layers, 1):
            a = outputs[i]
            if w is not None:
                a = a * w[k][:, :a.shape[1]]
            if a.shape[1] == c:
                out = out + a
            else:  # Darknet adds into the channels both tensors have
                m = min(c, a.shape[1])
                out = torch.cat([out[:, :m] + a[:, :m], out[:, m:]], 1)
        return self.act(out)


class ScaleChannels(nn.Module):
    """Darknet [scale_channels]: output of layer ``from`` times this input (channel weights)."""

    def __init__(self, layer, activation='linear'):
        super().__init__()
        self.layers = [layer]
        self.act = make_activation(activation)

    def forward(self, x, outputs):
        return self.act(outputs[self.layers[0]] * x)


class SqueezeExcite(nn.Module):
    """Upstream [se] block: avg-pool -> Linear(C, C/r) -> ReLU -> Linear(C/r, C) -> hard-sigmoid
    -> channel-wise multiply (both Linear layers without bias)."""

    def __init__(self, channels, reduction=4):
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Hardsigmoid(inplace=True))

    def forward(self, x):
        return x * self.fc(x.mean((2, 3))).unsqueeze(-1).unsqueeze(-1)


class YOLOLayer(nn.Module):
    """Detection head. Input [B, A*(5+nc), H, W]; training output [B, A, H, W, 5+nc] raw;
    eval output (pred [B, A*H*W, 5+nc], raw) with pred = cx, cy, w, h (input pixels),
    objectness, class probabilities. Decoding follows Darknet exactly, incl. ``scale_x_y``
    and ``new_coords`` (then the conv already applied logistic and wh = 4*t^2*anchor)."""

    def __init__(self, anchors, nc, scale_x_y=1.0, new_coords=0):
        super().__init__()
        self.register_buffer('anchors', torch.tensor(anchors, dtype=torch.float32), persistent=False)  # [A,2] px
        self.na, self.nc, self.no = len(anchors), nc, nc + 5
        self.scale_x_y, self.new_coords = float(scale_x_y), bool(new_coords)
        self.stride = None  # (sy, sx) of the last forward: input size / feature size
        self._grid = None

    def _make_grid(self, ny, nx, device, dtype):
        if self._grid is None or self._grid.shape[2:4] != (ny, nx) or self._grid.device != device \
                or self._grid.dtype != dtype:
            yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                                    torch.arange(nx, device=device, dtype=dtype), indexing='ij')
            self._grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
        return self._grid

    def forward(self, x, img_hw):
        b, _, ny, nx = x.shape
        self.stride = (img_hw[0] / ny, img_hw[1] / nx)
        p = x.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()  # [B,A,H,W,no]
        if self.training:
            return p
        return self.decode(p, img_hw), p

    def box_xywh(self, t_xy, t_wh, anchors):
        """Darknet's box transform. t_xy, t_wh [..., 2] raw outputs, anchors broadcastable
        [..., 2] -> (xy offset within the cell in cell units, wh in anchor units)."""
        s = self.scale_x_y
        if self.new_coords:
            xy, wh = t_xy, 4 * t_wh.square() * anchors
        else:
            xy, wh = t_xy.sigmoid(), t_wh.exp().clamp(max=1e4) * anchors
        if s != 1:
            xy = xy * s - 0.5 * (s - 1)
        return xy, wh

    def decode(self, p, img_hw):
        """Raw head tensor [B,A,H,W,no] -> [B, A*H*W, no] boxes in input pixels."""
        b, _, ny, nx, _ = p.shape
        grid = self._make_grid(ny, nx, p.device, p.dtype)
        stride = p.new_tensor([img_hw[1] / nx, img_hw[0] / ny])
        anchors = self.anchors.to(p.dtype).view(1, self.na, 1, 1, 2)
        y = p.clone() if self.new_coords else p.sigmoid()  # new_coords: the conv applied logistic
        xy, y[..., 2:4] = self.box_xywh(p[..., :2], p[..., 2:4], anchors)
        y[..., :2] = (xy + grid) * stride
        return y.view(b, -1, self.no)


def create_modules(module_defs, in_channels=3):
    """Build one module per section. Returns (nn.ModuleList, set of layer indices whose
    outputs later sections read)."""
    module_list, out_channels, routs = nn.ModuleList(), [], set()
    for i, d in enumerate(module_defs):
        kind, prev = d['type'], (out_channels[-1] if out_channels else in_channels)
        if kind in ('convolutional', 'depthwise'):
            module = ConvBlock(prev, d)
        elif kind == 'maxpool':
            module = MaxPool(d['size'], d['stride'], d['padding'])
        elif kind == 'upsample':
            module = Upsample(d['stride'])
        elif kind == 'avgpool':
            module = GlobalAvgPool()
        elif kind == 'dropout':
            module = nn.Dropout(d['probability'])
        elif kind == 'se':
            module = SqueezeExcite(prev, d['reduction'])
        elif kind == 'route':
            layers = [j if j >= 0 else i + j for j in d['layers']]
            module = Route(layers, d['groups'], d['group_id'])
        elif kind == 'shortcut':
            layers = [j if j >= 0 else i + j for j in d['from']]
            module = Shortcut(layers, prev, d['activation'], d['weights_type'], d['weights_normalization'])
        elif kind == 'scale_channels':
            j = d['from'][0]
            j = j if j >= 0 else i + j
            module = ScaleChannels(j, d['activation'])
        elif kind == 'yolo':
            anchors = [d['anchors'][m] for m in d['mask']]
            module = YOLOLayer(anchors, d['classes'], d['scale_x_y'], d['new_coords'])
        else:  # the parser rejects unknown sections; this guards programmatic lists
            raise CfgError(f'section {i}: cannot build [{kind}]')
        routs.update(getattr(module, 'layers', ()))
        module_list.append(module)
        out_channels.append(section_out_channels(d, i, out_channels, in_channels))
    return module_list, routs


# ----------------------------------------------------------------------------- model

class Darknet(nn.Module):
    """YOLO model built from a Darknet cfg (path, cfg text or parsed section list).

    forward(x [B,C,H,W] float in [0,1]):
      training: list of raw per-head tensors [B, A, H', W', 5+nc]
      eval:     (pred [B, N, 5+nc], raw list) with rows ordered head (cfg order), anchor,
                grid y, grid x; pred = cx, cy, w, h in input pixels, objectness, class probs.
    ``taps``: a set of layer indices whose outputs are kept in ``self.tapped`` after each
    forward (feature maps for distillation and analysis).
    """

    def __init__(self, cfg, img_size=416, verbose=False):
        super().__init__()
        if isinstance(cfg, (list, tuple)):
            sections, self.cfg_path = copy.deepcopy(list(cfg)), None
        elif isinstance(cfg, str) and '\n' in cfg:
            sections, self.cfg_path = parse_cfg_text(cfg), None
        else:
            sections, self.cfg_path = parse_cfg(cfg), str(cfg)
        self.net_def, self.module_defs = sections[0], sections[1:]
        self.in_channels = self.net_def.get('channels', 3)
        self.module_list, self.routs = create_modules(self.module_defs, self.in_channels)
        self.yolo_layers = [i for i, d in enumerate(self.module_defs) if d['type'] == 'yolo']
        self.nc = self.module_defs[self.yolo_layers[0]]['classes']
        self._kinds = [d['type'] for d in self.module_defs]
        self._takes_outputs = [isinstance(m, (Route, Shortcut, ScaleChannels)) for m in self.module_list]
        self._keep = [i in self.routs for i in range(len(self.module_defs))]
        self.taps, self.tapped = set(), {}
        self.header = (0, 2, 5, 0)  # Darknet .weights header (major, minor, revision, seen)
        self.fused = False
        size = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        self.img_size = tuple(size)
        self.stride = self.head_strides(*self.img_size)
        if verbose:
            print(model_summary(self, self.img_size[0]))

    @property
    def sections(self):
        """The parsed cfg including [net]: what cfg_to_text / write_cfg take."""
        return [self.net_def] + self.module_defs

    def cfg_text(self):
        return cfg_to_text(self.sections)

    def head_strides(self, height, width):
        """Stride of each [yolo] head (input size / feature-map size), from shapes."""
        shapes = layer_output_shapes(self.sections, height, width)
        return torch.tensor([height / shapes[i - 1][1] for i in self.yolo_layers], device='cpu')

    def forward(self, x):
        img_hw = x.shape[-2:]
        outputs, heads = [], []
        taps = self.taps
        for i, module in enumerate(self.module_list):
            kind = self._kinds[i]
            if kind == 'yolo':
                heads.append(module(x, img_hw))
            elif self._takes_outputs[i]:
                x = module(x, outputs)
            else:
                x = module(x)
            outputs.append(x if self._keep[i] else None)
            if taps and i in taps:
                self.tapped[i] = x
        if self.training:
            return heads
        pred = torch.cat([h[0] for h in heads], 1)
        return pred, [h[1] for h in heads]

    def fuse(self):
        """Fold every BatchNorm into its conv (inference only; exact up to float rounding)."""
        for block in self.module_list:
            if isinstance(block, ConvBlock) and hasattr(block, 'BatchNorm2d') and block.fusable:
                block.Conv2d = fuse_conv_and_bn(block.Conv2d, block.BatchNorm2d)
                del block.BatchNorm2d
        self.fused = True
        return self

    def info(self, verbose=False, img_size=416):
        print(model_summary(self, img_size, verbose))


def fuse_conv_and_bn(conv, bn):
    """Conv2d + BatchNorm2d (eval statistics) -> one Conv2d with bias."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=True).to(conv.weight)  # device and dtype
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C]
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


def optimize_for_inference(model, compile=False):
    """Eval-mode copy for fast inference: BN folded into convs, channels_last weights
    (oneDNN's preferred layout). Feed it channels_last inputs under
    ``torch.inference_mode()``. The original model is left untouched.

    compile=True also runs ``torch.compile`` with Inductor's weight freezing (constant
    folding, pre-packed oneDNN weights, conv+activation fusion): ~15-20% faster on CPU,
    at a one-off compile cost of tens of seconds per input shape (needs a C++ compiler)."""
    fast = copy.deepcopy(unwrap(model)).eval().fuse().to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    if compile:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True  # applies to graphs compiled under inference_mode
        fast = torch.compile(fast)
    return fast


# ----------------------------------------------------------------------------- Darknet .weights

def _weight_blobs(model, cutoff=-1):
    """(layer index, [tensors in file order]) for every section that owns weights.

    File order per section (Darknet): conv+BN: beta, gamma, running mean, running var,
    conv weight; conv: bias, weight; [shortcut] with weights: its weights; upstream [se]:
    fc1 weight, fc2 weight."""
    model = unwrap(model)
    n = len(model.module_list) if cutoff is None or cutoff < 0 else min(cutoff, len(model.module_list))
    for i in range(n):
        m = model.module_list[i]
        if isinstance(m, ConvBlock):
            conv = m.Conv2d
            if hasattr(m, 'BatchNorm2d'):
                bn = m.BatchNorm2d
                yield i, [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
            elif model.fused and model.module_defs[i]['batch_normalize']:
                raise ValueError(f'layer {i}: the model is fused (BatchNorm folded); Darknet .weights '
                                 'need the BN parameters: save before calling fuse()')
            else:
                yield i, [conv.bias, conv.weight]
        elif isinstance(m, Shortcut) and m.weight is not None:
            yield i, [m.weight]
        elif isinstance(m, SqueezeExcite):
            yield i, [m.fc[0].weight, m.fc[2].weight]


def _cutoff_from_name(path):
    """`darknet53.conv.74` -> 74: Darknet `partial` files hold layers below that index."""
    m = re.search(r'\.conv\.(\d+)$', os.path.basename(str(path)))
    return int(m.group(1)) if m else -1


def _read_header(f, path):
    head = f.read(12)
    if len(head) < 12:
        raise ValueError(f'{path}: too short for a Darknet .weights header ({len(head)} bytes)')
    major, minor, revision = np.frombuffer(head, dtype='<i4').tolist()
    seen_bytes = 8 if major * 10 + minor >= 2 else 4
    raw = f.read(seen_bytes)
    if len(raw) < seen_bytes:
        raise ValueError(f'{path}: truncated Darknet header')
    seen = int(np.frombuffer(raw, dtype='<i8' if seen_bytes == 8 else '<i4')[0])
    if not (0 <= major <= 1000 and 0 <= minor <= 1000 and 0 <= revision <= 10 ** 6):
        raise ValueError(f'{path}: header ({major}.{minor}.{revision}) does not look like Darknet weights; '
                         'is it a .pt checkpoint?')
    return (major, minor, revision, seen), 12 + seen_bytes


def load_darknet_weights(model, path, cutoff=-1, pretrain=False):
    """Load a Darknet ``.weights`` file into ``model`` (in place); returns loaded layer indices.

    cutoff: load sections ``< cutoff`` only (-1: all; ``*.conv.N`` files imply N).
    pretrain: if the file's detection heads were trained for another class count
    (e.g. 80-class COCO weights into a 3-class cfg), skip the convs that feed [yolo]
    layers and keep them randomly initialised; every other conv is loaded.
    A file whose size does not match raises ValueError stating expected and actual bytes.
    """
    model = unwrap(model)
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weights file not found: {path}')
    if cutoff is None or cutoff < 0:
        cutoff = _cutoff_from_name(path)
    with open(path, 'rb') as f:
        header, header_bytes = _read_header(f, path)
        data = np.fromfile(f, dtype='<f4')
    actual = os.path.getsize(path)  # not header + 4 x floats: 1-3 trailing bytes would pass unseen
    blobs = list(_weight_blobs(model, cutoff))
    sizes = [sum(t.numel() for t in ts) for _, ts in blobs]
    expected = header_bytes + 4 * sum(sizes)
    head_convs = {i - 1 for i in model.yolo_layers}
    skip = set()
    if actual != expected and pretrain:
        # Solve for the file's class count: every head conv has len(mask)*(nc_file+5)
        # filters, 1x1 kernels over the same inputs.
        heads = [(k, i) for k, (i, _) in enumerate(blobs) if i in head_convs]
        base = sum(s for k, s in enumerate(sizes) if blobs[k][0] not in head_convs)
        per_filter = {k: sizes[k] // blobs[k][1][-1].shape[0] for k, _ in heads}  # floats per output filter
        per_class = sum(model.module_list[i + 1].na * per_filter[k] for k, i in heads)
        remaining = data.size - base
        if heads and remaining > 0 and remaining % per_class == 0 and remaining // per_class > 5:
            nc_file = remaining // per_class - 5
            skip = {i for _, i in heads}
            for k, i in heads:
                sizes[k] = model.module_list[i + 1].na * (nc_file + 5) * per_filter[k]
            expected = header_bytes + 4 * sum(sizes)
    size_ok = actual == expected or (cutoff > 0 and actual >= expected)  # partial loads may read a prefix
    if not size_ok:
        hint = (' (the detection heads differ: pass -pt / pretrain=True to skip them)'
                if not pretrain and model.yolo_layers else '')
        raise ValueError(f'{path}: size {actual} bytes does not match the cfg, which needs {expected} bytes'
                         f' ({(expected - header_bytes) // 4} floats after a {header_bytes}-byte header){hint}')
    ptr, loaded = 0, []
    with torch.no_grad():
        for (i, tensors), size in zip(blobs, sizes):
            if i in skip:
                ptr += size
                continue
            for t in tensors:
                n = t.numel()
                t.copy_(torch.from_numpy(data[ptr:ptr + n].copy()).view_as(t))
                ptr += n
            loaded.append(i)
    model.header = header
    return loaded


def darknet_weights_bytes(model, cutoff=-1, header=None):
    """The Darknet ``.weights`` file content for ``model`` as bytes."""
    model = unwrap(model)
    major, minor, revision, seen = header or model.header
    parts = [np.array([major, minor, revision], dtype='<i4').tobytes(),
             np.array([seen], dtype='<i8' if major * 10 + minor >= 2 else '<i4').tobytes()]
    for _, tensors in _weight_blobs(model, cutoff):
        for t in tensors:
            parts.append(t.detach().float().cpu().contiguous().numpy().astype('<f4').tobytes())
    return b''.join(parts)


def save_weights(model, path, cutoff=-1):
    """Write ``model`` as a Darknet ``.weights`` file (atomically); header as loaded, else 0.2.5."""
    return atomic_write_bytes(path, darknet_weights_bytes(model, cutoff))


# ----------------------------------------------------------------------------- .pt checkpoints

def checkpoint_dict(model, optimizer=None, epoch=-1, best_fitness=None, **extra):
    """A self-describing checkpoint: epoch, best_fitness, model (state dict), optimizer (state
    dict or None), cfg (cfg text), plus ``extra`` entries (names, quant, results, ...)."""
    m = unwrap(model)
    return {'epoch': epoch, 'best_fitness': best_fitness, 'model': m.state_dict(),
            'optimizer': optimizer.state_dict() if hasattr(optimizer, 'state_dict') else optimizer,
            'cfg': m.cfg_text(), **extra}


def write_checkpoint(path, ckpt):
    """Atomically save the checkpoint entries ``ckpt`` to ``path`` (a crash leaves the old file)."""
    return atomic_save(lambda tmp: torch.save(ckpt, tmp), path)


def save_checkpoint(path, model, optimizer=None, epoch=-1, best_fitness=None, **extra):
    """Atomically save ``checkpoint_dict(model, ...)`` to ``path``."""
    return write_checkpoint(path, checkpoint_dict(model, optimizer, epoch, best_fitness, **extra))


TRAINING_STATE_KEYS = ('optimizer', 'rng', 'scaler', 'ema_updates')  # what only resuming a run needs


def finalize_checkpoint(path):
    """Rewrite a finished run's checkpoint for use: its EMA weights (when it kept them) become the
    model, and the state only resuming needs (TRAINING_STATE_KEYS) is set to None."""
    ckpt = load_checkpoint(path)
    if 'ema' in ckpt:
        ckpt['model'] = ckpt.pop('ema')
    for k in TRAINING_STATE_KEYS:
        ckpt[k] = None
    return write_checkpoint(path, ckpt)


def load_checkpoint(path, map_location='cpu'):
    """Load a ``.pt`` checkpoint with ``weights_only=True`` (never unpickles arbitrary objects)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (truncated zip), ...
        msg = str(e).split('\n')[0]
        if 'weights_only' in str(e) or 'Unsupported global' in str(e):
            raise ValueError(f'{path}: refused to load: the checkpoint contains pickled Python objects, which '
                             f'could run code. Re-save it as a plain dict of tensors ({msg})') from None
        raise ValueError(f'{path}: not a readable checkpoint (truncated or corrupt?): {msg}') from None
    if isinstance(ckpt, dict) and 'model' not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {'model': ckpt}  # a bare state dict
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        raise ValueError(f'{path}: expected a checkpoint dict with a "model" state dict')
    return ckpt


def weights_checkpoint(weights):
    """The entries of ``weights`` when it names an existing ``.pt``/``.pth`` checkpoint, else None
    (Darknet weights, none given, or a missing file, which each caller reports in its own words)."""
    weights = str(weights or '')
    if not weights.endswith(('.pt', '.pth')) or not os.path.isfile(weights):
        return None
    return load_checkpoint(weights)


def _layer_of(key):
    """'module_list.12.Conv2d.weight' -> 12 (None for keys outside module_list)."""
    m = re.match(r'module_list\.(\d+)\.', key)
    return int(m.group(1)) if m else None


def load_state_dict_matching(model, state_dict, source='<state dict>', pretrain=False):
    """Copy ``state_dict`` into ``model``; returns (loaded, skipped) key lists.

    Every tensor must fit the model: a shape mismatch is a ValueError naming the first
    mismatching layer (in layer order), its state-dict key and both shapes, because loading
    "what fits" silently trains or evaluates a half-random model. The one exception is
    ``pretrain`` (``-pt``): the head convs (the conv right before each [yolo]) of another
    class count are skipped whole and keep their initialisation. Tensors with no place in
    the model are an error; tensors the model has but the file lacks keep their values."""
    model = unwrap(model)
    own = model.state_dict()
    unknown = sorted(k for k in state_dict if k not in own)
    if not any(k in own for k in state_dict):
        raise ValueError(f'{source}: no tensor matches this model (is it for another cfg?)')
    if unknown:
        raise ValueError(f'{source}: {len(unknown)} tensors have no place in this model, e.g. {unknown[:3]}; '
                         'use the cfg the checkpoint was trained with (it is stored in the checkpoint)')
    head_convs = {i - 1 for i in model.yolo_layers}
    mismatched = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    skip_layers = set()
    for key in mismatched:  # own's order is layer order: the first one reported is the first layer
        layer = _layer_of(key)
        if pretrain and layer in head_convs:
            skip_layers.add(layer)
            continue
        if layer in head_convs:
            hint = 'a detection head for another class count: pass -pt (pretrain) to skip the heads'
        else:
            hint = 'the weights were trained with another cfg; a .pt carries its own, so leave out --cfg to use it'
        where = f'layer {layer} ({key})' if layer is not None else key
        raise ValueError(f'{source}: {where} has shape {tuple(state_dict[key].shape)} in the weights but '
                         f'{tuple(own[key].shape)} in the cfg ({hint})')
    matched = {k: v for k, v in state_dict.items() if _layer_of(k) not in skip_layers}
    skipped = sorted(k for k in state_dict if k not in matched)
    model.load_state_dict(matched, strict=False)
    return sorted(matched), skipped


def load_weights(model, path, cutoff=-1, pretrain=False):
    """Load ``.pt`` checkpoints or Darknet weights (anything else) into ``model``; a tensor of
    another shape is an error except for head convs under ``pretrain`` (see load_state_dict_matching)."""
    path = str(path)
    if path.endswith('.pt') or path.endswith('.pth'):
        ckpt = load_checkpoint(path)
        return load_state_dict_matching(model, ckpt['model'], path, pretrain=pretrain)
    return load_darknet_weights(model, path, cutoff=cutoff, pretrain=pretrain)


# Checkpoint entries that describe a model other than the one its cfg builds (the state dict
# holds that model's tensors). The module that writes such an entry registers how the model is
# rebuilt from it: this module is what those modules build on, so it cannot import them.
TRANSFORM_ENTRIES = ('quant',)  # 'quant': utils.compress.quant (quantization-aware training)
CHECKPOINT_TRANSFORMS = {}


def register_checkpoint_transform(key, rebuild):
    """``rebuild(model, entries, source) -> model`` turns the float ``model`` built from a
    checkpoint's cfg into the model its state dict was saved from, as entry ``key`` says."""
    if key not in TRANSFORM_ENTRIES:
        raise ValueError(f'checkpoint entry {key!r} is not in models.TRANSFORM_ENTRIES, so no checkpoint '
                         'would ever be rebuilt with it')
    CHECKPOINT_TRANSFORMS[key] = rebuild


def rebuild_as_saved(model, entries, source):
    """``model``, built from a checkpoint's cfg, rebuilt as the checkpoint ``entries`` say it
    was saved (by the transforms registered for the TRANSFORM_ENTRIES they hold), so that its
    state dict fits. Float checkpoints and Darknet weights (``entries`` None) leave it as it is."""
    for key in TRANSFORM_ENTRIES:
        if not (entries or {}).get(key):
            continue
        if key not in CHECKPOINT_TRANSFORMS:
            raise RuntimeError(f'{source}: the checkpoint has a {key!r} entry but no transform is registered for '
                               f'it: import the module that writes {key!r} entries before loading it')
        model = CHECKPOINT_TRANSFORMS[key](model, entries, source)
    return model


def model_from_checkpoint(path, img_size=416):
    """Build the model described by a self-describing checkpoint (rebuilt as it was saved,
    e.g. quantized) and load its weights."""
    ckpt = load_checkpoint(path)
    if not ckpt.get('cfg'):
        raise ValueError(f'{path}: checkpoint has no cfg text; build the model from its cfg and use load_weights')
    model = rebuild_as_saved(Darknet(ckpt['cfg'], img_size=img_size), ckpt, path)
    model.load_state_dict(ckpt['model'])
    return model, ckpt


def load_model(cfg, weights, img_size=416, device='cpu'):
    """An eval-mode model built from ``cfg``, or from the cfg a ``.pt`` checkpoint carries when
    ``cfg`` is empty, with ``weights`` (.pt or Darknet) loaded; the checkpoint is read once.
    Weights that do not fit ``cfg`` (another shape, or tensors the cfg needs and the checkpoint
    lacks) are an error. A checkpoint saved from a transformed model (a quantization-aware
    run) rebuilds that model (rebuild_as_saved). Returns (model, the checkpoint's entries other
    than its state dict: names, sparsity, quant ... ({} for Darknet weights))."""
    weights = str(weights or '')
    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f'--weights {weights} not found')
    ckpt = load_checkpoint(weights) if weights.endswith(('.pt', '.pth')) else None
    if not cfg and not (ckpt and ckpt.get('cfg')):
        raise ValueError('--cfg is required with Darknet .weights (or pass a .pt checkpoint that carries its cfg)')
    model = Darknet(cfg or ckpt['cfg'], img_size=img_size)
    if ckpt is None and weights:
        load_darknet_weights(model, weights)
    elif ckpt is None:
        print('WARNING: no --weights: evaluating random weights')
    else:  # evaluating a model with some layers left random would report a meaningless mAP
        model = rebuild_as_saved(model, ckpt, weights)
        loaded, _ = load_state_dict_matching(model, ckpt['model'], weights)
        missing = [k for k in model.state_dict() if k not in loaded]
        if missing:
            raise ValueError(f'{weights}: has no tensor for {len(missing)} entries of the cfg, e.g. {missing[:3]}')
    return model.to(device).eval(), {k: v for k, v in (ckpt or {}).items() if k != 'model'}


def convert(cfg, src, dst):
    """Convert between ``.pt`` and Darknet ``.weights`` for ``cfg``; never overwrites ``src``."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f'refusing to overwrite the input {src}')
    model = Darknet(cfg)
    load_weights(model, src)
    if str(dst).endswith('.pt'):
        save_checkpoint(dst, model)
    else:
        save_weights(model, dst)
    return dst


# ----------------------------------------------------------------------------- summary

def count_parameters(model):
    """(parameters, parameters with gradients) as Darknet counts them: conv weights and
    biases, BN gamma and beta (running statistics are buffers, not counted)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def layer_flops(model, img_size=416):
    """FLOPs per layer index (2 x multiply-adds, as Darknet's BFLOPS) from
    ``torch.utils.flop_counter`` over one forward at ``img_size``; run on the meta device,
    so it costs no compute. Convolutions and matmuls are counted; element-wise ops, routes
    and the [yolo] decode are not (they are < 0.1% of Darknet's total)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = unwrap(model)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    with torch.device('meta'):
        meta = Darknet(model.sections, img_size=(h, w)).eval()
    x = torch.zeros(1, model.in_channels, h, w, device='meta')
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        meta(x)
    per_layer = {}
    for name, ops in counter.get_flop_counts().items():
        m = re.fullmatch(r'Darknet\.module_list\.(\d+)', name)
        if m:
            per_layer[int(m.group(1))] = sum(ops.values())
    return per_layer, counter.get_total_flops()


def model_summary(model, img_size=416, verbose=False):
    """Text summary: layers, parameters, gradients, GFLOPs at img_size (+ per-layer table)."""
    model = unwrap(model)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    n_params, n_grads = count_parameters(model)
    per_layer, total = layer_flops(model, (h, w))
    lines = []
    if verbose:
        shapes = layer_output_shapes(model.sections, h, w)
        lines.append(f'{"layer":>5} {"type":<15} {"from":<14} {"output":<18} {"params":>11} {"GFLOPs":>9}')
        for i, (d, m) in enumerate(zip(model.module_defs, model.module_list)):
            src = d.get('layers', d.get('from', ''))
            desc = d['type'] + (f' {d["size"]}x{d["size"]}/{d["stride"]}' if 'size' in d and 'filters' in d else '')
            lines.append(f'{i:>5} {desc:<15} {str(src):<14} {"x".join(map(str, shapes[i])):<18} '
                         f'{sum(p.numel() for p in m.parameters()):>11,} {per_layer.get(i, 0) / 1e9:>9.3f}')
    lines.append(f'Model summary: {len(model.module_list)} layers, {n_params:,} parameters, {n_grads:,} gradients, '
                 f'{total / 1e9:.3f} GFLOPs at {h}x{w}')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description='Darknet model tools', prog='models.py')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('summary', help='layers, parameters, GFLOPs')
    p.add_argument('cfg')
    p.add_argument('--img-size', '--img_size', type=int, default=416)
    p.add_argument('--verbose', action='store_true', help='per-layer table')
    p = sub.add_parser('convert', help='.pt <-> Darknet .weights')
    p.add_argument('cfg')
    p.add_argument('src')
    p.add_argument('dst')
    p = sub.add_parser('rewrite', help='rewrite a cfg for another class count / anchor set')
    p.add_argument('cfg')
    p.add_argument('out')
    p.add_argument('--classes', type=int, default=None)
    p.add_argument('--anchors', default=None, help='comma-separated w,h pairs, small to large')
    opt = parser.parse_args(argv)
    from utils.general import user_errors
    with user_errors(CfgError):
        if opt.command == 'summary':
            print(model_summary(Darknet(opt.cfg, img_size=opt.img_size), opt.img_size, opt.verbose))
        elif opt.command == 'convert':
            convert(opt.cfg, opt.src, opt.dst)
            print(f'{opt.src} -> {opt.dst}')
        elif opt.command == 'rewrite':
            if os.path.abspath(opt.cfg) == os.path.abspath(opt.out):
                raise ValueError(f'refusing to overwrite the input {opt.cfg}; choose another output path')
            anchors = None
            if opt.anchors:
                v = [float(a) for a in opt.anchors.replace(' ', '').split(',') if a]
                anchors = [[int(a) if a.is_integer() else a for a in v[k:k + 2]] for k in range(0, len(v), 2)]
            write_cfg(rewrite_head(parse_cfg(opt.cfg), opt.classes, anchors), opt.out)
            print(f'wrote {opt.out}')


if __name__ == '__main__':
    main()
