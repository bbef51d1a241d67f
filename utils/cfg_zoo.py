"""The project's own model cfgs, generated from small composable builders.

``python3 utils/cfg_zoo.py --out cfg/`` (re)writes the cfgs of the model zoo:

==============================  ==========================================================
yolov3, yolov3-spp              Darknet-53 + YOLOv3 head (SPP block in the -spp variant)
yolov3-tiny                     7 convs + maxpools, 2 heads
yolov4                          CSPDarknet53 (mish) + SPP + PANet (leaky), 3 heads
yolov4-tiny                     CSP-tiny blocks (route groups=2), 2 heads
yolov3-tiny-shapes              yolov3-tiny at half width for the shapes dataset
yolov4-tiny-shapes              yolov4-tiny at half width for the shapes dataset
yolov3-mini                     Darknet-53 in miniature (stride-2 stem, residual stages) + 3 light heads
yolov3-mini-shapes              yolov3-mini at 256 px with the shapes anchors (train.py's default)
yolov3-mobilenet                MobileNetV3-Large backbone + YOLOv3 head (512/256/128)
yolov3tiny-mobilenet-small      MobileNetV3-Small backbone + yolov3-tiny head
==============================  ==========================================================

Every builder returns fresh section dicts in the representation of
:mod:`utils.parse_config` (typed values, every structural key stated), so
``parse_cfg_text(cfg_to_text(s)) == s``. The five standard models equal the
AlexeyAB Darknet cfgs section by section on every structural key (the tests check
this against ``../shared/darknet-cfg``); their training-only keys follow those cfgs.

MobileNetV3 in native Darknet sections
--------------------------------------
The backbones follow Howard et al. 2019, "Searching for MobileNetV3", Table 1
(Large) and Table 2 (Small): stem ``conv 3x3 s2, 16, hardswish``, then one
*bneck* per table row (kernel k, expansion e, output c, SE, NL, stride s), then
the final ``1x1`` conv (960 / 576, hardswish). A bneck is written as::

    [convolutional] size=1 filters=e activation=NL            (left out when e == input channels)
    [convolutional] size=k stride=s groups=e filters=e activation=NL   (depthwise)
    [avgpool]                                                  \\
    [convolutional] size=1 filters=q activation=relu batch_normalize=0          | squeeze-and-
    [convolutional] size=1 filters=e activation=hardsigmoid batch_normalize=0   | excitation
    [scale_channels] from=-4    (depthwise output x channel weights)           /  (SE rows only)
    [convolutional] size=1 filters=c activation=linear        (projection)
    [shortcut] from=-N activation=linear                       (when s == 1 and input == c)

with ``q = make_divisible(e / 4, 8)`` as in the reference implementations, all
convs except the two SE convs with batch norm, ``pad=1`` everywhere. As in those
implementations (and unlike the paper's Table 2, which marks SE on it) the final
1x1 conv of MobileNetV3-Small has no SE. Darknet's ``[avgpool]`` is a global
average pool, and ``[scale_channels]`` multiplies the ``from`` layer by the
previous layer's per-channel values. The section types are all Darknet's; the
activation names ``hardswish`` / ``hardsigmoid`` are this project's (AlexeyAB
Darknet has neither and falls back to relu for unknown names).

Detection taps: the output of the last section at each stride. Large: stride 8 =
the last 40-channel bneck, stride 16 = the last 112-channel bneck, stride 32 = the
960-channel conv. Small: stride 16 = the last 48-channel bneck, stride 32 = the
576-channel conv. Head convs use leaky as in YOLOv3.
"""
import argparse
import sys
from pathlib import Path

if __name__ == '__main__':  # runnable as a script: make `utils` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.general import atomic_write_text  # noqa: E402
from utils.parse_config import cfg_to_text, layer_output_shapes, validate_cfg  # noqa: E402

__all__ = ['conv', 'route', 'shortcut', 'maxpool', 'upsample', 'avgpool', 'scale_channels', 'yolo', 'yolo_head',
           'net', 'residual_stage', 'csp_stage', 'csp_tiny_block', 'spp', 'conv_set', 'darknet53', 'cspdarknet53',
           'yolov3_head', 'make_divisible', 'squeeze_excite', 'bneck', 'mobilenetv3', 'MOBILENETV3_LARGE',
           'MOBILENETV3_SMALL', 'width_scaler', 'yolov3', 'yolov3_tiny', 'yolov3_tiny_shapes', 'yolov4', 'yolov4_tiny',
           'yolov4_tiny_shapes', 'darknet_mini', 'yolov3_mini', 'yolov3_mini_shapes', 'SHAPES_ANCHORS',
           'SHAPES_ANCHORS9', 'yolov3_mobilenet', 'yolov3tiny_mobilenet_small', 'MODELS', 'build', 'cfg_text',
           'write_zoo', 'stale_files']

COCO_ANCHORS = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]]
TINY_ANCHORS = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]
V4_ANCHORS = [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243], [459, 401]]

# [yolo] training keys of the standard cfgs (the float ones are typed schema keys).
V3_YOLO = {'jitter': 0.3, 'ignore_thresh': 0.7, 'truth_thresh': 1.0, 'random': '1'}
V4_YOLO = {'jitter': 0.3, 'ignore_thresh': 0.7, 'truth_thresh': 1.0, 'iou_thresh': 0.213, 'cls_normalizer': '1.0',
           'iou_normalizer': '0.07', 'iou_loss': 'ciou', 'nms_kind': 'greedynms', 'beta_nms': '0.6',
           'max_delta': '5'}
V4_TINY_YOLO = {'jitter': 0.3, 'scale_x_y': 1.05, 'cls_normalizer': '1.0', 'iou_normalizer': '0.07',
                'iou_loss': 'ciou', 'ignore_thresh': 0.7, 'truth_thresh': 1.0, 'random': '0', 'resize': '1.5',
                'nms_kind': 'greedynms', 'beta_nms': '0.6'}


# ----------------------------------------------------------------------------- sections
def conv(filters, size=1, stride=1, act='leaky', bn=True, groups=1):
    """A ``[convolutional]`` (Darknet ``pad=1``: padding = size // 2)."""
    return {'type': 'convolutional', 'batch_normalize': int(bn), 'filters': filters, 'size': size,
            'stride': stride, 'pad': 1, 'padding': 0, 'groups': groups, 'activation': act}


def route(*layers, groups=1, group_id=0):
    """A ``[route]``: concatenation of ``layers`` (negative = relative), optionally a channel split."""
    return {'type': 'route', 'layers': list(layers), 'groups': groups, 'group_id': group_id}


def shortcut(frm=-3, act='linear'):
    """A ``[shortcut]``: previous layer + layer ``frm``."""
    return {'type': 'shortcut', 'from': [frm], 'activation': act, 'weights_type': 'none',
            'weights_normalization': 'none'}


def maxpool(size, stride):
    """A ``[maxpool]`` with Darknet's default padding (size - 1, split as Darknet does)."""
    return {'type': 'maxpool', 'size': size, 'stride': stride, 'padding': size - 1}


def upsample(stride=2):
    return {'type': 'upsample', 'stride': stride, 'scale': 1.0}


def avgpool():
    """A ``[avgpool]``: Darknet's global average pool (C x H x W -> C x 1 x 1)."""
    return {'type': 'avgpool'}


def scale_channels(frm):
    """A ``[scale_channels]``: layer ``frm`` times the previous layer's per-channel values."""
    return {'type': 'scale_channels', 'from': [frm], 'activation': 'linear', 'scale_wh': 0}


def yolo(mask, anchors, nc, **train):
    """A ``[yolo]`` head over ``anchors`` (pixels) using the anchors listed in ``mask``.

    ``train`` holds the Darknet training keys (jitter, ignore_thresh, scale_x_y, ...)."""
    sec = {'type': 'yolo', 'mask': list(mask), 'anchors': [list(a) for a in anchors], 'classes': nc,
           'num': len(anchors), 'jitter': 0.2, 'ignore_thresh': 0.5, 'truth_thresh': 1.0, 'iou_thresh': 1.0,
           'scale_x_y': 1.0, 'new_coords': 0}
    sec.update(train)
    return sec


def yolo_head(mask, anchors, nc, **train):
    """The linear 1x1 prediction conv (len(mask) * (nc + 5) filters, bias, no BN) + its ``[yolo]``."""
    return [conv(len(mask) * (nc + 5), 1, act='linear', bn=False), yolo(mask, anchors, nc, **train)]


def net(width=416, height=416, batch=64, subdivisions=16, momentum='0.9', learning_rate='0.001',
        max_batches='500200', steps='400000,450000', **extra):
    """The ``[net]`` section: input size (typed) and Darknet's training keys (strings, as parsed)."""
    sec = {'type': 'net', 'batch': str(batch), 'subdivisions': str(subdivisions), 'width': width,
           'height': height, 'channels': 3, 'momentum': momentum, 'decay': '0.0005', 'angle': '0',
           'saturation': '1.5', 'exposure': '1.5', 'hue': '.1', 'learning_rate': learning_rate,
           'burn_in': '1000', 'max_batches': max_batches, 'policy': 'steps', 'steps': steps, 'scales': '.1,.1'}
    sec.update(extra)
    return sec


# ----------------------------------------------------------------------------- blocks
def residual_block(filters, hidden, act='leaky'):
    """1x1 (hidden) -> 3x3 (filters) -> shortcut to the block input."""
    return [conv(hidden, 1, act=act), conv(filters, 3, act=act), shortcut(-3)]


def residual_stage(filters, blocks, act='leaky'):
    """Darknet-53 stage: 3x3 stride-2 conv, then ``blocks`` residual blocks of width filters / 2."""
    sections = [conv(filters, 3, 2, act=act)]
    for _ in range(blocks):
        sections += residual_block(filters, filters // 2, act)
    return sections


def csp_stage(filters, blocks, act='mish', first=False):
    """CSPDarknet53 stage: downsample, split into a bypass 1x1 and a residual path, concatenate, fuse.

    The first stage keeps the full width in both halves (and filters / 2 inside its block)."""
    hidden = filters if first else filters // 2
    inner = hidden // 2 if first else hidden
    sections = [conv(filters, 3, 2, act=act), conv(hidden, 1, act=act), route(-2), conv(hidden, 1, act=act)]
    for _ in range(blocks):
        sections += residual_block(hidden, inner, act)
    # the route sits 3 * blocks + 4 sections after the bypass conv (sections[1])
    sections += [conv(hidden, 1, act=act), route(-1, -(3 * blocks + 4)), conv(filters, 1, act=act)]
    return sections


def csp_tiny_block(filters, act='leaky'):
    """YOLOv4-tiny block: 3x3, second channel half -> two 3x3 -> concat -> 1x1, concat with the
    block's 3x3 output, 2x2 stride-2 maxpool. Its 1x1 (index 5) is the tap for the upper head."""
    half = filters // 2
    return [conv(filters, 3, act=act), route(-1, groups=2, group_id=1), conv(half, 3, act=act),
            conv(half, 3, act=act), route(-1, -2), conv(filters, 1, act=act), route(-6, -1), maxpool(2, 2)]


def spp():
    """Spatial pyramid pooling: 5/9/13 stride-1 maxpools of the previous layer, concatenated with it."""
    return [maxpool(5, 1), route(-2), maxpool(9, 1), route(-4), maxpool(13, 1), route(-1, -3, -5, -6)]


def conv_set(filters, act='leaky', with_spp=False):
    """YOLOv3's 5-conv set 1x1 / 3x3 / 1x1 / 3x3 / 1x1 (filters, 2 * filters alternating);
    ``with_spp`` puts SPP after the third conv and keeps the 1x1 / 3x3 / 1x1 after it."""
    a, b = filters, 2 * filters
    if with_spp:
        return [conv(a, 1, act=act), conv(b, 3, act=act), conv(a, 1, act=act)] + spp() + \
               [conv(a, 1, act=act), conv(b, 3, act=act), conv(a, 1, act=act)]
    return [conv(a, 1, act=act), conv(b, 3, act=act), conv(a, 1, act=act), conv(b, 3, act=act), conv(a, 1, act=act)]


def darknet53(act='leaky'):
    """Darknet-53 backbone; returns (sections, {stride: index of the last section at that stride})."""
    sections, taps = [conv(32, 3, act=act)], {}
    for stride, (filters, blocks) in zip((2, 4, 8, 16, 32), ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))):
        sections += residual_stage(filters, blocks, act)
        taps[stride] = len(sections) - 1
    return sections, taps


def cspdarknet53(act='mish'):
    """CSPDarknet53 backbone; returns (sections, {stride: index of the stage output})."""
    sections, taps = [conv(32, 3, act=act)], {}
    for stride, (filters, blocks) in zip((2, 4, 8, 16, 32), ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))):
        sections += csp_stage(filters, blocks, act, first=stride == 2)
        taps[stride] = len(sections) - 1
    return sections, taps


def yolov3_head(sections, taps, nc, anchors=COCO_ANCHORS, widths=(512, 256, 128), with_spp=False, act='leaky'):
    """Append YOLOv3's head to ``sections`` (which ends with the stride-32 feature map).

    Heads run stride 32 -> 16 -> 8 (masks 6,7,8 / 3,4,5 / 0,1,2); each lower level
    takes the previous conv set's output (route -4), halves it with a 1x1, upsamples
    and concatenates the backbone tap ``taps[16]`` / ``taps[8]`` (absolute index)."""
    masks = ([6, 7, 8], [3, 4, 5], [0, 1, 2])
    for level, (width, mask) in enumerate(zip(widths, masks)):
        if level:
            sections += [route(-4), conv(width, 1, act=act), upsample(2), route(-1, taps[32 >> level])]
        sections += conv_set(width, act, with_spp=with_spp and level == 0)
        sections += [conv(2 * width, 3, act=act)] + yolo_head(mask, anchors, nc, **V3_YOLO)
    return sections


# ----------------------------------------------------------------------------- MobileNetV3
# Howard et al. 2019, Table 1 / Table 2: (kernel, expansion, output, SE, NL, stride) per bneck.
MOBILENETV3_LARGE = [
    (3, 16, 16, False, 'relu', 1), (3, 64, 24, False, 'relu', 2), (3, 72, 24, False, 'relu', 1),
    (5, 72, 40, True, 'relu', 2), (5, 120, 40, True, 'relu', 1), (5, 120, 40, True, 'relu', 1),
    (3, 240, 80, False, 'hardswish', 2), (3, 200, 80, False, 'hardswish', 1),
    (3, 184, 80, False, 'hardswish', 1), (3, 184, 80, False, 'hardswish', 1),
    (3, 480, 112, True, 'hardswish', 1), (3, 672, 112, True, 'hardswish', 1),
    (5, 672, 160, True, 'hardswish', 2), (5, 960, 160, True, 'hardswish', 1), (5, 960, 160, True, 'hardswish', 1),
]
MOBILENETV3_SMALL = [
    (3, 16, 16, True, 'relu', 2), (3, 72, 24, False, 'relu', 2), (3, 88, 24, False, 'relu', 1),
    (5, 96, 40, True, 'hardswish', 2), (5, 240, 40, True, 'hardswish', 1), (5, 240, 40, True, 'hardswish', 1),
    (5, 120, 48, True, 'hardswish', 1), (5, 144, 48, True, 'hardswish', 1),
    (5, 288, 96, True, 'hardswish', 2), (5, 576, 96, True, 'hardswish', 1), (5, 576, 96, True, 'hardswish', 1),
]


def make_divisible(value, divisor=8):
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never more
    than 10 % below ``value`` (the MobileNet reference implementations' rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def squeeze_excite(channels):
    """SE over the previous layer's ``channels``: global pool -> 1x1 relu -> 1x1 hard-sigmoid ->
    scale the layer 4 sections back (the SE input) by the resulting channel weights."""
    squeeze = make_divisible(channels / 4, 8)
    return [avgpool(), conv(squeeze, 1, act='relu', bn=False), conv(channels, 1, act='hardsigmoid', bn=False),
            scale_channels(-4)]


def bneck(in_ch, kernel, exp, out, se, act, stride):
    """MobileNetV3 inverted-residual block (see the module docstring for the section layout)."""
    sections = [] if exp == in_ch else [conv(exp, 1, act=act)]
    sections.append(conv(exp, kernel, stride, act=act, groups=exp))
    if se:
        sections += squeeze_excite(exp)
    sections.append(conv(out, 1, act='linear'))
    if stride == 1 and in_ch == out:
        sections.append(shortcut(-(len(sections) + 1)))  # back to the section before the block
    return sections


def mobilenetv3(table, last_channels):
    """MobileNetV3 backbone (stem, one bneck per ``table`` row, final 1x1 hardswish conv);
    returns (sections, {stride: index of the last section at that stride})."""
    sections, taps, stride, ch = [conv(16, 3, 2, act='hardswish')], {}, 2, 16
    for kernel, exp, out, se, act, s in table:
        if s == 2:
            taps[stride] = len(sections) - 1
            stride *= 2
        sections += bneck(ch, kernel, exp, out, se, act, s)
        ch = out
    sections.append(conv(last_channels, 1, act='hardswish'))
    taps[stride] = len(sections) - 1
    return sections, taps


# ----------------------------------------------------------------------------- models
def yolov3(nc=80, spp=False):
    """YOLOv3 (or YOLOv3-SPP) for ``nc`` classes: list of section dicts, ``[net]`` first."""
    sections, taps = darknet53()
    head = yolov3_head(sections, taps, nc, with_spp=spp)
    return [net(608 if spp else 416, 608 if spp else 416)] + head


def width_scaler(width):
    """filters -> filters x ``width``, rounded to a multiple of 8 (at least 8): the tiny models'
    width multiplier."""
    return lambda filters: max(8, int(round(filters * width / 8)) * 8)


def yolov3_tiny(nc=80, width=1.0, anchors=TINY_ANCHORS, size=416):
    """YOLOv3-tiny: six 3x3 conv + maxpool steps, 2 heads (stride 32, 16). ``width`` scales
    every conv's filters (rounded to multiples of 8), for small datasets and CPUs."""
    w = width_scaler(width)
    sections = []
    for filters in (16, 32, 64, 128, 256):
        sections += [conv(w(filters), 3), maxpool(2, 2)]
    tap16 = len(sections) - 2  # the 256-channel conv before the last stride-2 maxpool
    sections += [conv(w(512), 3), maxpool(2, 1), conv(w(1024), 3), conv(w(256), 1), conv(w(512), 3)]
    sections += yolo_head([3, 4, 5], anchors, nc, **V3_YOLO)
    sections += [route(-4), conv(w(128), 1), upsample(2), route(-1, tap16), conv(w(256), 3)]
    sections += yolo_head([0, 1, 2], anchors, nc, **V3_YOLO)
    return [net(width=size, height=size, subdivisions=2)] + sections


# Anchors for the built-in shapes dataset at 256 px (k-means on its labels: python3 data/anchors.py)
SHAPES_ANCHORS = [[23, 23], [29, 29], [37, 37], [48, 47], [61, 62], [83, 82]]


def yolov3_tiny_shapes(nc=5):
    """yolov3-tiny at half width for the built-in shapes dataset (train.py's default before
    yolov3-mini-shapes; 0.764 mAP@0.5 in the 11-epoch CPU job on shapes version 3)."""
    return yolov3_tiny(nc, width=0.5, anchors=SHAPES_ANCHORS, size=256)


# 9 anchors for the built-in shapes dataset at 256 px (python3 data/anchors.py --data data/shapes.data -n 9
# --img-size 256)
SHAPES_ANCHORS9 = [[22, 21], [26, 27], [31, 31], [36, 37], [44, 43], [51, 53], [64, 62], [74, 77], [93, 93]]


def darknet_mini(widths=(16, 32, 64, 128, 256), blocks=(1, 2, 2, 1)):
    """Darknet-53 in miniature: a 3x3 stride-2 stem conv (``widths[0]`` filters), then one
    :func:`residual_stage` per further width (``blocks`` residual blocks each), so strides 4, 8,
    16, 32. No full-resolution layer: on a CPU the thin high-resolution layers of yolov3-tiny
    cost more time than their FLOPs suggest. Returns (sections, {stride: tap index})."""
    if len(blocks) != len(widths) - 1:
        raise ValueError(f'darknet_mini: need one block count per stage after the stem, got widths={widths} '
                         f'blocks={blocks}')
    sections, taps, stride = [conv(widths[0], 3, 2)], {}, 2
    for filters, n in zip(widths[1:], blocks):
        sections += residual_stage(filters, n)
        stride *= 2
        taps[stride] = len(sections) - 1
    return sections, taps


def yolov3_mini(nc=80, widths=(16, 32, 64, 128, 256), blocks=(1, 2, 2, 1), anchors=COCO_ANCHORS, size=416):
    """:func:`darknet_mini` + a light YOLOv3 head at strides 32, 16, 8 (masks 6-8, 3-5, 0-2).
    Stride 32: 1x1 (w/2) + 3x3 (w), w = the last width; each lower level takes the route 4
    sections back, halves it with a 1x1, upsamples, concatenates the backbone tap and fuses
    with one 3x3 (w/2, then w/4), as yolov3-tiny does for its second head."""
    s, taps = darknet_mini(widths, blocks)
    w = widths[-1]
    s += [conv(w // 2, 1), conv(w, 3)] + yolo_head([6, 7, 8], anchors, nc, **V3_YOLO)
    for level, mask in ((1, [3, 4, 5]), (2, [0, 1, 2])):
        s += [route(-4), conv(w // (2 << level), 1), upsample(2), route(-1, taps[32 >> level]),
              conv(w // (1 << level), 3)]
        s += yolo_head(mask, anchors, nc, **V3_YOLO)
    return [net(size, size, subdivisions=1)] + s


def yolov3_mini_shapes(nc=5):
    """The default model of train.py: :func:`yolov3_mini` at 256 px with the shapes dataset's
    anchors."""
    return yolov3_mini(nc, anchors=SHAPES_ANCHORS9, size=256)


def yolov4(nc=80):
    """YOLOv4: CSPDarknet53 (mish), SPP, PANet neck (leaky), heads stride 8 -> 16 -> 32."""
    s, taps = cspdarknet53()
    s += [conv(512, 1), conv(1024, 3), conv(512, 1)] + spp() + [conv(512, 1), conv(1024, 3), conv(512, 1)]
    p5, ends = len(s) - 1, []
    for width, tap in ((256, taps[16]), (128, taps[8])):  # top-down path
        s += [conv(width, 1), upsample(2), route(tap), conv(width, 1), route(-1, -3)] + conv_set(width)
        ends.append(len(s) - 1)
    p4 = ends[0]  # the stride-16 set's output, concatenated again on the way down
    s += [conv(256, 3)] + yolo_head([0, 1, 2], V4_ANCHORS, nc, scale_x_y=1.2, **V4_YOLO)
    for width, lateral, mask, sxy in ((256, p4, [3, 4, 5], 1.1), (512, p5, [6, 7, 8], 1.05)):  # bottom-up path
        s += [route(-4), conv(width, 3, 2)]
        s += [route(-1, lateral - len(s))] + conv_set(width) + [conv(2 * width, 3)]
        extra = {'random': '1'} if width == 512 else {}
        s += yolo_head(mask, V4_ANCHORS, nc, scale_x_y=sxy, **V4_YOLO, **extra)
    return [net(608, 608, subdivisions=8, momentum='0.949', learning_rate='0.0013', max_batches='500500',
                mosaic='1')] + s


def yolov4_tiny(nc=80, width=1.0, anchors=TINY_ANCHORS, size=416, masks=((3, 4, 5), (1, 2, 3)), head=V4_TINY_YOLO):
    """YOLOv4-tiny: two stride-2 convs, three CSP-tiny blocks, 2 heads (stride 32, 16).
    ``width`` scales every conv's filters as in :func:`yolov3_tiny`; ``masks`` are the
    (stride-32, stride-16) anchor masks (Darknet's cfg leaves anchor 0 unused); ``head`` the
    [yolo] training keys."""
    w = width_scaler(width)
    s = [conv(w(32), 3, 2), conv(w(64), 3, 2)]
    for filters in (64, 128, 256):
        tap16 = len(s) + 5  # the block's 1x1 conv (the last block's is at stride 16)
        s += csp_tiny_block(w(filters))
    s += [conv(w(512), 3), conv(w(256), 1), conv(w(512), 3)] + yolo_head(masks[0], anchors, nc, **head)
    s += [route(-4), conv(w(128), 1), upsample(2), route(-1, tap16), conv(w(256), 3)]
    s += yolo_head(masks[1], anchors, nc, **head)
    return [net(size, size, subdivisions=1, learning_rate='0.00261', max_batches='2000200',
                steps='1600000,1800000')] + s


def yolov4_tiny_shapes(nc=5):
    """YOLOv4-tiny at half width for the built-in shapes dataset (1.48M parameters, 0.65 GFLOPs
    at 256): 0.025 mAP@0.5 above yolov3-tiny-shapes in the 11-epoch CPU job on shapes version 3,
    5% slower. Heads as yolov3-tiny-shapes' (scale_x_y=1), all 6 anchors used."""
    return yolov4_tiny(nc, width=0.5, anchors=SHAPES_ANCHORS, size=256, masks=((3, 4, 5), (0, 1, 2)), head=V3_YOLO)


def yolov3_mobilenet(nc=80):
    """MobileNetV3-Large backbone + YOLOv3 head (widths 512/256/128, COCO anchors)."""
    sections, taps = mobilenetv3(MOBILENETV3_LARGE, 960)
    return [net()] + yolov3_head(sections, taps, nc)


def yolov3tiny_mobilenet_small(nc=80):
    """MobileNetV3-Small backbone + yolov3-tiny head (stride 32 and 16, tiny anchors)."""
    s, taps = mobilenetv3(MOBILENETV3_SMALL, 576)
    s += [conv(256, 1), conv(512, 3)] + yolo_head([3, 4, 5], TINY_ANCHORS, nc, **V3_YOLO)
    s += [route(-4), conv(128, 1), upsample(2), route(-1, taps[16]), conv(256, 3)]
    s += yolo_head([0, 1, 2], TINY_ANCHORS, nc, **V3_YOLO)
    return [net(subdivisions=2)] + s


# the module docstring's MobileNetV3 section, minus its reST markup, heads the MobileNet cfgs
_MOBILENET_NOTE = __doc__[__doc__.index('MobileNetV3 in native'):].strip().replace('``', '').replace('::', ':')

# name -> (builder, description written at the top of the cfg)
MODELS = {
    'yolov3': (yolov3, 'YOLOv3: Darknet-53 backbone, 3 heads (stride 32, 16, 8), COCO anchors.'),
    'yolov3-spp': (lambda nc=80: yolov3(nc, spp=True),
                   'YOLOv3-SPP: YOLOv3 with a 5/9/13 maxpool SPP block in the stride-32 head.'),
    'yolov3-tiny': (yolov3_tiny, 'YOLOv3-tiny: 7 convs with maxpools, 2 heads (stride 32, 16).'),
    'yolov3-tiny-shapes': (yolov3_tiny_shapes, 'YOLOv3-tiny at half width, 256 px, 5 classes, for the built-in shapes '
                                               'dataset\n(anchors from its labels): python3 train.py --cfg '
                                               'cfg/yolov3-tiny-shapes.cfg'),
    'yolov4': (yolov4, 'YOLOv4: CSPDarknet53 (mish) + SPP + PANet (leaky), 3 heads (stride 8, 16, 32).'),
    'yolov4-tiny': (yolov4_tiny, 'YOLOv4-tiny: CSP-tiny blocks (route groups=2 group_id=1), 2 heads.'),
    'yolov4-tiny-shapes': (yolov4_tiny_shapes, 'YOLOv4-tiny at half width, 256 px, 5 classes, for the built-in '
                                               'shapes dataset\n(anchors from its labels): python3 train.py --cfg '
                                               'cfg/yolov4-tiny-shapes.cfg'),
    'yolov3-mini': (yolov3_mini, 'YOLOv3-mini: Darknet-53 in miniature (3x3 stride-2 stem, residual stages of '
                                 '32x1, 64x2,\n128x2, 256x1 blocks) + a light YOLOv3 head at strides 32, 16, 8.'),
    'yolov3-mini-shapes': (yolov3_mini_shapes, 'YOLOv3-mini at 256 px, 5 classes: the default model of train.py for '
                                               'the built-in\nshapes dataset (9 anchors from its labels).'),
    'yolov3-mobilenet': (yolov3_mobilenet, 'YOLOv3-MobileNet: MobileNetV3-Large backbone, YOLOv3 head '
                                           '(512/256/128), COCO anchors.\n\n' + _MOBILENET_NOTE),
    'yolov3tiny-mobilenet-small': (yolov3tiny_mobilenet_small, 'YOLOv3-tiny-MobileNet-Small: MobileNetV3-Small '
                                                              'backbone, yolov3-tiny head, tiny anchors.\n\n'
                                   + _MOBILENET_NOTE),
}


def build(name, nc=None):
    """Section dicts of zoo model ``name`` for ``nc`` classes (None: the model's default), validated
    (references, heads, and the spatial sizes of every route/shortcut at the cfg's input size)."""
    if name not in MODELS:
        raise KeyError(f'unknown model {name!r}; the zoo has: {", ".join(MODELS)}')
    sections = MODELS[name][0]() if nc is None else MODELS[name][0](nc)
    validate_cfg(sections, source=f'cfg_zoo:{name}')
    layer_output_shapes(sections, sections[0]['height'], sections[0]['width'])
    return sections


def _default_nc(name):
    return next(d['classes'] for d in MODELS[name][0]() if d['type'] == 'yolo')


def cfg_text(name, nc=None):
    """The cfg file text: a comment header (what the model is, how it was made) + the sections."""
    about = MODELS[name][1].splitlines() + [
        '', f'Generated by utils/cfg_zoo.py for {nc or _default_nc(name)} classes; change the generator, '
            'not this file:',
        '    python3 utils/cfg_zoo.py --out cfg/']
    header = '\n'.join(f'# {line}'.rstrip() for line in about)
    return header + '\n\n' + cfg_to_text(build(name, nc))


def write_zoo(out_dir, nc=None, names=None):
    """Write ``<out_dir>/<name>.cfg`` for every (or each named) zoo model; returns the paths."""
    paths = []
    for name in names or MODELS:
        path = Path(out_dir) / f'{name}.cfg'
        atomic_write_text(path, cfg_text(name, nc))
        paths.append(path)
    return paths


def stale_files(out_dir, nc=None, names=None):
    """Zoo cfgs in ``out_dir`` that are missing or differ from what the generator writes now."""
    stale = []
    for name in names or MODELS:
        path = Path(out_dir) / f'{name}.cfg'
        if not path.is_file() or path.read_text(encoding='utf-8') != cfg_text(name, nc):
            stale.append(path)
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(description='Generate the model zoo cfgs (yolov3, yolov4, MobileNetV3, ...).')
    parser.add_argument('--out', default='cfg', help='output folder (default: cfg)')
    parser.add_argument('--nc', type=int, default=None, help="number of classes (default: each model's own, "
                                                               "80 for the COCO models)")
    parser.add_argument('--models', nargs='+', choices=list(MODELS), help='only these models (default: all)')
    parser.add_argument('--check', action='store_true',
                        help='write nothing; exit 1 when a cfg in --out is missing or out of date')
    opt = parser.parse_args(argv)
    if opt.nc is not None and opt.nc < 1:
        parser.error(f'--nc must be >= 1, got {opt.nc}')
    if opt.check:
        stale = stale_files(opt.out, opt.nc, opt.models)
        for path in stale:
            print(f'{path}: missing or out of date; run python3 utils/cfg_zoo.py --out {opt.out}')
        return 1 if stale else 0
    for path in write_zoo(opt.out, opt.nc, opt.models):
        sections = build(path.stem, opt.nc)
        print(f'{path}: {len(sections) - 1} layers, {sum(s["type"] == "yolo" for s in sections)} [yolo] heads')
    return 0


if __name__ == '__main__':
    sys.exit(main())
