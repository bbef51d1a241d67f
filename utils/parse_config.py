"""Darknet cfg <-> list of section dicts, the `.data` dataset descriptor and the training
hyperparameter YAML.

The parsed cfg (a list of dicts, ``[net]`` first) is the one representation of a
model's structure in this project: the builder, the pruning engine, the exporters
and the summary all read it, and :func:`write_cfg` turns it back into text.

Every dict has a ``'type'`` key (the section name, e.g. ``'convolutional'``) and
typed values: ints, floats, strings, lists of ints (``layers``, ``from``, ``mask``)
and ``anchors`` as a list of ``[w, h]`` pairs. Structural keys are normalised to
Darknet's defaults when the file omits them, so consumers can index them directly
and exported cfgs state every key explicitly (OpenCV's defaults differ from
Darknet's for several of them). Darknet training-only keys are kept verbatim (as
strings) and ignored by the builder.

Grammar (Darknet's): ``[section]`` lines, ``key=value`` lines, ``#`` or ``;``
comments (whole-line or trailing), blank lines. Values are never evaluated.
"""
import math
import os
import re
import warnings
from pathlib import Path

import yaml

__all__ = ['CfgError', 'parse_cfg', 'parse_cfg_text', 'write_cfg', 'cfg_to_text', 'validate_cfg',
           'section_out_channels', 'layer_output_channels', 'layer_output_shapes', 'rewrite_head', 'read_names', 'parse_data_cfg',
           'hyp_path', 'load_hyp', 'ACTIVATIONS']


class CfgError(ValueError):
    """A malformed cfg; the message names the file, line and section index."""


class JoinMismatch(CfgError):
    """A [route]/[shortcut] joins maps of different spatial sizes (``section``: its index
    without [net], ``key``: 'layers' or 'from')."""

    def __init__(self, msg, section, key):
        super().__init__(msg)
        self.section, self.key = section, key


# Activation names accepted in cfgs (aliases map to one canonical name in the builder).
ACTIVATIONS = {'linear', 'leaky', 'relu', 'relu6', 'mish', 'swish', 'silu', 'logistic', 'sigmoid',
               'hardswish', 'h_swish', 'hard_swish', 'hardsigmoid', 'h_sigmoid', 'hard_sigmoid', 'tanh',
               'elu', 'selu', 'gelu', 'none'}

# Value types: int, float, str, 'ints' (comma list of ints), 'floats' (comma list), 'anchors'.
# Each section: {key: (type, default)}; default None means required.
_CONV = {
    'batch_normalize': (int, 0), 'filters': (int, 1), 'size': (int, 1), 'stride': (int, 1),
    'pad': (int, 0), 'padding': (int, 0), 'groups': (int, 1), 'activation': (str, 'logistic'),
}
SCHEMA = {
    'net': {'width': (int, 416), 'height': (int, 416), 'channels': (int, 3)},
    'convolutional': _CONV,
    # Upstream (SpursLipu) extension: depthwise conv, groups = in_channels = filters.
    'depthwise': {k: v for k, v in _CONV.items() if k != 'groups'},
    # Upstream extension: squeeze-excitation, Linear(C, C/r) -> ReLU -> Linear(C/r, C) -> hard-sigmoid.
    'se': {'reduction': (int, 4), 'filters': (int, 0)},
    'route': {'layers': ('ints', None), 'groups': (int, 1), 'group_id': (int, 0)},
    'shortcut': {'from': ('ints', None), 'activation': (str, 'linear'), 'weights_type': (str, 'none'),
                 'weights_normalization': (str, 'none')},
    'scale_channels': {'from': ('ints', None), 'activation': (str, 'linear'), 'scale_wh': (int, 0)},
    'upsample': {'stride': (int, 2), 'scale': (float, 1.0)},
    'maxpool': {'size': (int, None), 'stride': (int, 1), 'padding': (int, None)},
    'avgpool': {},
    'dropout': {'probability': (float, 0.5)},
    'yolo': {'mask': ('ints', None), 'anchors': ('anchors', None), 'classes': (int, 20), 'num': (int, None),
             'jitter': (float, 0.2), 'ignore_thresh': (float, 0.5), 'truth_thresh': (float, 1.0),
             'iou_thresh': (float, 1.0), 'scale_x_y': (float, 1.0), 'new_coords': (int, 0)},
}
SECTION_ALIASES = {'network': 'net', 'conv': 'convolutional', 'max': 'maxpool', 'avg': 'avgpool'}

# Darknet keys that only steer Darknet's own training / NMS; accepted and ignored.
TRAINING_ONLY = {
    'convolutional': {'stopbackward', 'train', 'flipped', 'dot', 'angle', 'grad_centr', 'reverse',
                      'dontload', 'dontloadscales', 'learning_rate', 'stretch', 'stretch_sway', 'rotate',
                      'sway'},
    'yolo': {'random', 'resize', 'nms_kind', 'beta_nms', 'iou_loss', 'iou_normalizer', 'cls_normalizer',
             'obj_normalizer', 'max_delta', 'objectness_smooth', 'label_smooth_eps', 'focal_loss',
             'counters_per_class', 'delta_normalizer', 'rewritten_bbox', 'show_details', 'map',
             'equidistant_point', 'uc_normalizer', 'track_history_size', 'sim_thresh', 'dets_for_track',
             'dets_for_show', 'track_ciou_norm', 'embedding_layer', 'ignore_thresh_for_train'},
    'route': {'stopbackward'},
    'shortcut': {'stopbackward'},
    'maxpool': {'stopbackward'},
    'upsample': {'stopbackward'},
    'depthwise': {'stopbackward'},
}
# Darknet structural keys we do not implement: accepted only at their neutral value.
NEUTRAL = {
    'convolutional': {'dilation': '1', 'stride_x': None, 'stride_y': None, 'antialiasing': '0', 'binary': '0',
                      'xnor': '0', 'coordconv': '0', 'share_index': None, 'assisted_excitation': '0',
                      'deform': '0', 'sway': None},
    'maxpool': {'maxpool_depth': '0', 'antialiasing': '0', 'stride_x': None, 'stride_y': None},
    'upsample': {'reverse': '0'},
}


def _parse_number(text):
    """int when the literal is integral ('13'), else float ('.7', '1e-3'); never eval."""
    text = text.strip()
    if re.fullmatch(r'[+-]?\d+', text):
        return int(text)
    value = float(text)  # raises ValueError on garbage
    if not math.isfinite(value):
        raise ValueError(f'not a finite number: {text!r}')
    return value


def _convert(kind, raw):
    if kind is int:
        value = _parse_number(raw)
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f'expected an integer, got {raw!r}')
            value = int(value)
        return value
    if kind is float:
        return float(_parse_number(raw))
    if kind is str:
        return raw.strip().lower()
    if kind == 'ints':
        return [int(_convert(int, v)) for v in raw.split(',') if v.strip()]
    if kind == 'anchors':
        values = [_parse_number(v) for v in raw.split(',') if v.strip()]
        if len(values) % 2:
            raise ValueError(f'anchors need an even number of values, got {len(values)}')
        return [[values[i], values[i + 1]] for i in range(0, len(values), 2)]
    raise AssertionError(kind)


def _format(value):
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(int(value)) if abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (list, tuple)):  # anchors
            return ',  '.join(','.join(_format(v) for v in pair) for pair in value)
        return ','.join(_format(v) for v in value)
    return str(value)


def parse_cfg_text(text, source='<cfg>'):
    """Parse cfg text into a list of section dicts (``[net]`` first) and validate it.

    Raises :class:`CfgError` naming ``source``, the line number and the section index
    (0 = first section after ``[net]``, as in ``model.module_list``).
    """
    sections, lines_of = [], []  # lines_of[i]: {key: line number} plus '[' for the header line
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = re.split(r'[#;]', raw_line, maxsplit=1)[0].strip()
        if not line:
            continue
        where = f'{source}:{lineno}'
        if line.startswith('['):
            if not line.endswith(']'):
                raise CfgError(f'{where}: section header {line!r} lacks its closing "]"')
            name = line[1:-1].strip().lower()
            name = SECTION_ALIASES.get(name, name)
            if name not in SCHEMA:
                raise CfgError(f'{where}: unknown section [{name}] (section {len(sections) - 1}); supported: '
                               + ', '.join(f'[{s}]' for s in SCHEMA))
            if not sections and name != 'net':
                raise CfgError(f'{where}: the first section must be [net], got [{name}]')
            sections.append({'type': name})
            lines_of.append({'[': lineno})
            continue
        if not sections:
            raise CfgError(f'{where}: {line!r} stands before any [section]')
        if '=' not in line:
            raise CfgError(f'{where}: expected key=value, got {line!r}')
        key, value = (s.strip() for s in line.split('=', 1))
        key = key.lower()
        sec = sections[-1]
        kind = sec['type']
        index = len(sections) - 2
        label = f'{where}: [{kind}] (section {index})' if kind != 'net' else f'{where}: [net]'
        if key in sec:
            raise CfgError(f'{label}: key {key!r} given twice (first at line {lines_of[-1][key]})')
        schema = SCHEMA[kind]
        try:
            if key in schema:
                sec[key] = _convert(schema[key][0], value)
            elif kind == 'net' or key in TRAINING_ONLY.get(kind, ()):
                sec[key] = value  # kept verbatim, ignored by the builder
            elif key in NEUTRAL.get(kind, {}):
                neutral = NEUTRAL[kind][key]
                if neutral is None or value.strip() != neutral:
                    raise CfgError(f'{label}: {key}={value} is not supported by this builder '
                                   f'(remove the key{"" if neutral is None else f" or set it to {neutral}"})')
                sec[key] = value
            else:
                known = sorted(set(schema) | TRAINING_ONLY.get(kind, set()))
                raise CfgError(f'{label}: unknown key {key!r}; known keys: {", ".join(known)}')
        except ValueError as e:
            if isinstance(e, CfgError):
                raise
            raise CfgError(f'{label}: bad value for {key}: {e}') from None
        lines_of[-1][key] = lineno
    if not sections:
        raise CfgError(f'{source}: no sections found (is this a Darknet cfg?)')
    _fill_defaults(sections, source, lines_of)
    validate_cfg(sections, source, lines_of)
    return sections


def _fill_defaults(sections, source, lines_of):
    for i, sec in enumerate(sections):
        kind = sec['type']
        for key, (_, default) in SCHEMA[kind].items():
            if key in sec:
                continue
            if kind == 'maxpool' and key == 'size':
                sec['size'] = sec.get('stride', 1)
            elif kind == 'maxpool' and key == 'padding':
                sec['padding'] = sec['size'] - 1
            elif kind == 'yolo' and key == 'num':
                sec['num'] = len(sec.get('anchors', []))
            elif default is None:
                raise CfgError(f'{source}:{lines_of[i]["["]}: [{kind}] (section {i - 1}) needs {key}=')
            else:
                sec[key] = list(default) if isinstance(default, list) else default


def _resolve(index, i):
    """Darknet layer reference: negative = relative to section i, else absolute."""
    return i + index if index < 0 else index


def section_out_channels(d, i, out_channels, in_channels=3):
    """Output channels of section ``d`` (index ``i``) given the outputs of sections 0..i-1:
    the one rule that the builder, the validator, the shape walk and the layer graph share."""
    kind = d['type']
    if kind in ('convolutional', 'depthwise'):
        return d['filters']
    if kind == 'route':
        return sum(out_channels[_resolve(j, i)] for j in d['layers']) // d['groups']
    if kind == 'scale_channels':
        return out_channels[_resolve(d['from'][0], i)]
    return out_channels[i - 1] if i > 0 else in_channels


def layer_output_channels(module_defs, in_channels=3):
    """Output channel count of every section of ``module_defs`` (without ``[net]``)."""
    out = []
    for i, d in enumerate(module_defs):
        out.append(section_out_channels(d, i, out, in_channels))
    return out


CONV_LIMITS = {'filters': 65536, 'size': 63, 'stride': 64}


def validate_cfg(sections, source='<cfg>', lines_of=None):
    """Check the cross-section rules; raise CfgError naming file, line and section index."""
    channels = sections[0].get('channels', 3) if sections and sections[0]['type'] == 'net' else 3
    defs = sections[1:] if sections and sections[0]['type'] == 'net' else sections
    offset = len(sections) - len(defs)

    def fail(i, key, msg):
        line = ''
        if lines_of is not None:
            lines = lines_of[i + offset]
            line = f':{lines.get(key, lines["["])}'
        raise CfgError(f'{source}{line}: [{defs[i]["type"]}] (section {i}): {msg}')

    if offset:
        for key in ('channels', 'width', 'height'):
            if sections[0].get(key, 1) < 1:
                line = f':{lines_of[0].get(key, lines_of[0]["["])}' if lines_of is not None else ''
                raise CfgError(f'{source}{line}: [net]: {key} must be >= 1, got {sections[0][key]}')
    out_c = []
    for i, d in enumerate(defs):
        kind = d['type']
        prev = out_c[-1] if out_c else channels
        if kind == 'net':
            fail(i, '[', 'a second [net] section')
        if kind in ('convolutional', 'depthwise'):
            for key in ('filters', 'size', 'stride'):
                if d[key] < 1:
                    fail(i, key, f'{key} must be >= 1, got {d[key]}')
            for key, top in CONV_LIMITS.items():  # far beyond any real model: a typo, not a design
                if d[key] > top:
                    fail(i, key, f'{key}={d[key]} is larger than {top} (a typo?); no YOLO cfg comes near it')
            groups = prev if kind == 'depthwise' else d['groups']
            if kind == 'depthwise' and d['filters'] != prev:
                fail(i, 'filters', f'depthwise filters={d["filters"]} must equal its input channels {prev}')
            if groups < 1 or prev % groups or d['filters'] % groups:
                fail(i, 'groups', f'groups={groups} must divide input channels {prev} and filters {d["filters"]}')
            if d['activation'] not in ACTIVATIONS:
                fail(i, 'activation', f'unknown activation {d["activation"]!r}; use one of {sorted(ACTIVATIONS)}')
        if kind in ('route', 'shortcut', 'scale_channels'):
            key = 'layers' if kind == 'route' else 'from'
            refs = d[key]
            if not refs:
                fail(i, key, f'{key}= is empty')
            for j in refs:
                k = _resolve(j, i)
                if not 0 <= k < i:
                    fail(i, key, f'{key}={j} points to section {k}, outside 0..{i - 1}')
                if defs[k]['type'] == 'yolo':
                    fail(i, key, f'{key}={j} points to a [yolo] section ({k})')
            if kind == 'route' and (d['groups'] < 1 or not 0 <= d['group_id'] < d['groups']):
                fail(i, 'groups', f'groups={d["groups"]} group_id={d["group_id"]} is not a valid split')
            if kind == 'route':
                for j in refs:
                    if out_c[_resolve(j, i)] % d['groups']:
                        fail(i, 'groups', f'layer {_resolve(j, i)} has {out_c[_resolve(j, i)]} channels, '
                                          f'not divisible by groups={d["groups"]}')
            if kind == 'shortcut' and d['weights_type'] not in ('none', 'per_feature', 'per_layer', 'per_channel'):
                fail(i, 'weights_type', f'unknown weights_type {d["weights_type"]!r}')
            if kind == 'shortcut' and d['weights_normalization'] not in ('none', 'relu', 'softmax'):
                fail(i, 'weights_normalization', f'unknown weights_normalization {d["weights_normalization"]!r}')
            if kind in ('shortcut', 'scale_channels') and d['activation'] not in ACTIVATIONS:
                fail(i, 'activation', f'unknown activation {d["activation"]!r}')
        if kind == 'maxpool':
            if d['size'] < 1 or d['stride'] < 1 or d['padding'] < 0:
                fail(i, 'size', f'size={d["size"]} stride={d["stride"]} padding={d["padding"]} is invalid')
        if kind == 'upsample' and (d['stride'] < 1 or d['scale'] != 1.0):
            fail(i, 'stride', 'upsample needs stride >= 1 (scale other than 1 is not supported)')
        if kind == 'se':
            c = d['filters'] or prev
            if c != prev:
                fail(i, 'filters', f'se filters={c} must equal its input channels {prev}')
            if d['reduction'] < 1 or c // d['reduction'] < 1:
                fail(i, 'reduction', f'reduction={d["reduction"]} leaves no hidden units for {c} channels')
        if kind == 'dropout' and not 0 <= d['probability'] < 1:
            fail(i, 'probability', 'probability must be in [0, 1)')
        if kind == 'yolo':
            n_anchors = len(d['anchors'])
            if not d['mask']:
                fail(i, 'mask', 'mask= is empty')
            for m in d['mask']:
                if not 0 <= m < n_anchors:
                    fail(i, 'mask', f'mask index {m} outside the {n_anchors} anchors')
            for w, h in d['anchors']:
                if not (w > 0 and h > 0):
                    fail(i, 'anchors', f'anchor {w},{h} must have positive width and height')
            if d['classes'] < 1:
                fail(i, 'classes', 'classes must be >= 1')
            if i == 0 or defs[i - 1]['type'] not in ('convolutional',):
                fail(i, '[', 'a [yolo] section must follow a [convolutional] section')
            expected = len(d['mask']) * (d['classes'] + 5)
            if defs[i - 1]['filters'] != expected:
                where = ''
                if lines_of is not None:
                    where = f' (line {lines_of[i - 1 + offset].get("filters", lines_of[i - 1 + offset]["["])})'
                fail(i, '[', f'the [convolutional] before it (section {i - 1}{where}) has '
                             f'filters={defs[i - 1]["filters"]}, expected len(mask)*(classes+5) = '
                             f'{len(d["mask"])}*({d["classes"]}+5) = {expected}')
        out_c.append(section_out_channels(d, i, out_c, channels))
    if not any(d['type'] == 'yolo' for d in defs):
        raise CfgError(f'{source}: no [yolo] section: this builder needs at least one detection head')
    if offset:  # at the cfg's own input size (Darknet builds there); other sizes are checked at build
        try:
            layer_output_shapes(sections, sections[0]['height'], sections[0]['width'])
        except JoinMismatch as e:
            fail(e.section, e.key, str(e).split(': ', 1)[1])
        except CfgError:  # an empty output at the declared size: --img-size decides, the builder checks it
            pass
    return sections


def parse_cfg(path):
    """Parse a cfg file (see :func:`parse_cfg_text`)."""
    path = str(path)
    if not os.path.isfile(path):
        alt = os.path.join('cfg', path if path.endswith('.cfg') else path + '.cfg')
        if os.path.isfile(alt):
            path = alt
        else:
            raise FileNotFoundError(f'cfg file not found: {path}')
    return parse_cfg_text(Path(path).read_text(encoding='utf-8', errors='replace'), path)


# Defaults that Darknet and OpenCV share: left out when writing, to keep written cfgs readable.
# Everything else (activation, pad, maxpool padding, [yolo] keys, ...) is written explicitly.
_OMIT_IF = {('convolutional', 'padding'): 0, ('convolutional', 'groups'): 1, ('route', 'groups'): 1,
            ('route', 'group_id'): 0, ('shortcut', 'weights_type'): 'none',
            ('shortcut', 'weights_normalization'): 'none', ('upsample', 'scale'): 1.0,
            ('scale_channels', 'scale_wh'): 0, ('depthwise', 'padding'): 0}


def layer_output_shapes(sections, height, width):
    """(channels, height, width) of every section's output for a ``height x width`` input,
    by Darknet's size rules. ``sections`` starts with ``[net]``; the result does not.

    Raises CfgError when a route/shortcut joins maps of different spatial sizes.
    """
    net, defs = sections[0], sections[1:]
    shapes, channels = [], []
    for i, d in enumerate(defs):
        _, h, w = shapes[-1] if shapes else (0, height, width)
        kind = d['type']
        if kind in ('convolutional', 'depthwise'):
            k, s = d['size'], d['stride']
            p = k // 2 if d['pad'] else d['padding']
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind == 'maxpool':
            k, s, p = d['size'], d['stride'], d['padding']
            h, w = (h + p - k) // s + 1, (w + p - k) // s + 1
        elif kind == 'upsample':
            h, w = h * d['stride'], w * d['stride']
        elif kind == 'avgpool':
            h, w = 1, 1
        elif kind == 'route':
            refs = [shapes[_resolve(j, i)] for j in d['layers']]
            if len({r[1:] for r in refs}) > 1:
                raise JoinMismatch(f'[route] (section {i}): layers={d["layers"]} join maps of different sizes '
                                   f'{[r[1:] for r in refs]} at input {height}x{width}', i, 'layers')
            h, w = refs[0][1], refs[0][2]
        elif kind in ('shortcut', 'scale_channels'):
            refs = [shapes[_resolve(j, i)] for j in d['from']]
            if kind == 'shortcut' and any(r[1:] != (h, w) for r in refs):
                raise JoinMismatch(f'[shortcut] (section {i}): from={d["from"]} adds maps of size '
                                   f'{[r[1:] for r in refs]} to {(h, w)} at input {height}x{width}', i, 'from')
            if kind == 'scale_channels':
                h, w = refs[0][1:]
        c = section_out_channels(d, i, channels, net.get('channels', 3))
        channels.append(c)
        if h < 1 or w < 1:
            raise CfgError(f'[{kind}] (section {i}): output would be empty at input {height}x{width}; '
                           f'use a larger --img-size')
        shapes.append((c, h, w))
    return shapes


def cfg_to_text(sections):
    """Write section dicts back to Darknet cfg text; parse(cfg_to_text(s)) == s."""
    chunks = []
    for i, sec in enumerate(sections):
        kind = sec['type']
        lines = [f'# {i - 1}' if kind != 'net' else '', f'[{kind}]']
        schema = SCHEMA[kind]
        keys = [k for k in schema if k in sec] + [k for k in sec if k not in schema and k != 'type']
        keys = [k for k in keys if _OMIT_IF.get((kind, k), object()) != sec[k]]
        lines += [f'{k}={_format(sec[k])}' for k in keys]
        chunks.append('\n'.join(l for l in lines if l != ''))
    return '\n\n'.join(chunks) + '\n'


def write_cfg(sections, path):
    """Write cfg text atomically (temp file + rename)."""
    from utils.general import atomic_write_text
    atomic_write_text(path, cfg_to_text(sections))
    return path


def rewrite_head(sections, classes=None, anchors=None):
    """Return a copy of ``sections`` for another class count and/or anchor set.

    ``anchors``: list of [w, h] pairs (pixels) with as many pairs as the cfg has
    anchors, sorted small to large as Darknet expects. Every ``[yolo]`` gets the new
    values and the ``[convolutional]`` before it gets ``filters = len(mask)*(classes+5)``.
    """
    import copy
    out = copy.deepcopy(sections)
    for i, sec in enumerate(out):
        if sec['type'] != 'yolo':
            continue
        if anchors is not None:
            if len(anchors) != len(sec['anchors']):
                raise CfgError(f'section {i - 1}: the cfg has {len(sec["anchors"])} anchors, '
                               f'{len(anchors)} given')
            sec['anchors'] = [[a[0], a[1]] for a in anchors]
        if classes is not None:
            sec['classes'] = int(classes)
        out[i - 1]['filters'] = len(sec['mask']) * (sec['classes'] + 5)
    validate_cfg(out)
    return out


def read_names(path, nc):
    """The first ``nc`` class names of a ``.names`` file (one a line); '0', '1', ... if the file
    is missing or has fewer."""
    if path and os.path.isfile(path):
        names = [n.strip() for n in Path(path).read_text().splitlines() if n.strip()]
        if len(names) >= nc:
            return names[:nc]
    return [str(i) for i in range(nc)]


def parse_data_cfg(path, required=()):
    """Read a ``.data`` file (``key = value`` lines) into a dict; ``classes`` as int.

    Relative ``train``/``valid``/``names`` paths are resolved against the working
    directory first, then the ``.data`` file's folder. A key of ``required`` that the file
    lacks is a ValueError naming the file and the line to add.
    """
    path = str(path)
    if not os.path.isfile(path) and os.path.isfile(os.path.join('data', path)):
        path = os.path.join('data', path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'data file not found: {path}')
    options = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        if '=' not in line:
            raise ValueError(f'{path}:{lineno}: expected key = value, got {line!r}')
        key, value = (s.strip() for s in line.split('=', 1))
        options[key] = value
    if 'classes' in options:
        try:
            options['classes'] = int(options['classes'])
        except ValueError:
            raise ValueError(f'{path}: classes = {options["classes"]!r} is not an integer') from None
    missing = [k for k in required if k not in options]
    if missing:
        raise ValueError(f'{path}: no {missing[0]}= line; add `{missing[0]} = ...` ('
                         + {'valid': 'the validation image list or folder', 'train': 'the training image list or folder',
                            'classes': 'the number of classes'}.get(missing[0], 'see data/shapes.data') + ')')
    base = os.path.dirname(os.path.abspath(path))
    for key in ('train', 'valid', 'test', 'names', 'hyp'):
        if key in options and not os.path.exists(options[key]):
            alt = os.path.join(base, options[key])
            if os.path.exists(alt):
                options[key] = alt
    return options


HYP_REFERENCE = Path(__file__).resolve().parents[1] / 'data' / 'hyp.yaml'  # documents every key the code reads


def hyp_path(opt):
    """--hyp, else the dataset's own recipe (a `hyp=` line in its .data file), else the v2020 defaults."""
    return opt.hyp or parse_data_cfg(opt.data).get('hyp', 'data/hyp.yaml')


def load_hyp(path):
    """A hyperparameter YAML -> dict; the keys every run needs must be there, unknown ones are a warning."""
    with open(path) as f:
        hyp = yaml.safe_load(f)
    if not isinstance(hyp, dict):
        raise ValueError(f'{path}: expected a mapping of hyperparameters')
    missing = [k for k in ('lr0', 'momentum', 'weight_decay', 'giou', 'obj', 'cls', 'iou_t') if k not in hyp]
    if missing:
        raise ValueError(f'{path}: missing hyperparameters {missing}')
    if HYP_REFERENCE.is_file() and Path(path).resolve() != HYP_REFERENCE:
        unknown = sorted(set(hyp) - set(yaml.safe_load(HYP_REFERENCE.read_text())))
        if unknown:  # a misspelt key would otherwise silently leave its default in force
            warnings.warn(f'{path}: unknown hyperparameters {unknown} are ignored (misspelt? {HYP_REFERENCE.name} '
                          'lists every key the code reads)')
    return hyp
