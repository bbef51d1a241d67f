"""Property-based tests (Hypothesis) of the readers users feed by hand: the cfg parser and
writer, and the Darknet .weights reader. Whatever the input, they either work or raise the
one clear error type (CfgError / ValueError); a cfg survives a write-read round trip; a
.weights file loads only at exactly the size its cfg needs."""
import io
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
from utils.parse_config import CfgError, cfg_to_text, layer_output_shapes, parse_cfg_text

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,  # more: FUZZ_EXAMPLES=N
                suppress_health_check=[HealthCheck.too_slow])
ACTIVATIONS = ['leaky', 'linear', 'relu', 'mish', 'swish', 'logistic']


@st.composite
def networks(draw):
    """Valid cfg text: a chain of convs / maxpools / routes / shortcuts / upsamples that keeps
    every spatial size a whole number, ending in a conv + [yolo] head."""
    nc = draw(st.integers(1, 4))
    lines = ['[net]', 'width=64', 'height=64', 'channels=3']
    channels, stride, layers = [], 1, []
    c_in = 3
    for _ in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(['conv', 'conv', 'maxpool', 'route', 'shortcut', 'upsample']))
        if kind == 'maxpool' and stride < 16:
            lines += ['[maxpool]', 'size=2', 'stride=2']
            stride *= 2
        elif kind == 'route' and len(channels) >= 2:
            back = draw(st.integers(2, len(channels)))
            if layers[-back][1] == stride:  # same spatial size as the current output
                lines += ['[route]', f'layers=-1,-{back}']
                c_in = channels[-1] + channels[-back]
            else:
                continue
        elif kind == 'shortcut' and len(channels) >= 2 and channels[-2] == c_in and layers[-2][1] == stride:
            lines += ['[shortcut]', 'from=-2', f'activation={draw(st.sampled_from(["linear", "leaky"]))}']
        elif kind == 'upsample' and stride >= 2:
            lines += ['[upsample]', 'stride=2']
            stride //= 2
        else:
            filters = draw(st.integers(1, 12))
            size = draw(st.sampled_from([1, 3]))
            s = draw(st.sampled_from([1, 2])) if stride < 16 else 1
            bn = draw(st.booleans())
            lines += ['[convolutional]', f'batch_normalize={int(bn)}', f'filters={filters}', f'size={size}',
                      f'stride={s}', 'pad=1', f'activation={draw(st.sampled_from(ACTIVATIONS))}']
            stride *= s
            c_in = filters
        channels.append(c_in)
        layers.append((kind, stride))
    anchors = ','.join(f'{a},{a}' for a in (8, 16, 24))
    lines += ['[convolutional]', 'size=1', 'stride=1', 'pad=1', f'filters={3 * (nc + 5)}', 'activation=linear',
              '[yolo]', 'mask=0,1,2', f'anchors={anchors}', f'classes={nc}', 'num=3']
    return '\n'.join(lines) + '\n'


@FUZZ
@given(networks())
def test_generated_cfgs_round_trip_and_build(text):
    sections = parse_cfg_text(text)
    again = parse_cfg_text(cfg_to_text(sections))
    assert again == sections
    model = models.Darknet(sections, img_size=64).eval()
    shapes = layer_output_shapes(sections, 64, 64)
    with torch.no_grad():
        pred, raw = model(torch.rand(1, 3, 64, 64))
    head = raw[0]
    assert head.shape[2:4] == tuple(shapes[-2][1:3]) and pred.shape[-1] == head.shape[-1]


@FUZZ
@given(networks(), st.data())
def test_mutated_cfgs_fail_only_with_cfg_errors(text, data):
    """Delete, duplicate or garble one line: the parser and builder accept it or raise CfgError
    (with the source name and a line number when it is a line's fault), nothing else."""
    lines = text.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    how = data.draw(st.sampled_from(['delete', 'duplicate', 'garble', 'value']))
    if how == 'delete':
        del lines[i]
    elif how == 'duplicate':
        lines.insert(i, lines[i])
    elif how == 'garble':
        lines[i] = data.draw(st.text(st.characters(codec='utf-8', exclude_categories=('Cs',)), max_size=20))
    elif '=' in lines[i]:
        key = lines[i].split('=')[0]
        lines[i] = f'{key}={data.draw(st.sampled_from(["-1", "0", "abc", "1e999", "nan", "3.5", "", "99999"]))}'
    try:
        sections = parse_cfg_text('\n'.join(lines), source='fuzz.cfg')
        models.Darknet(sections, img_size=64)
    except CfgError as e:
        assert str(e).startswith('fuzz.cfg')


SMALL = parse_cfg_text('[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nbatch_normalize=1\nfilters=4\n'
                       'size=3\nstride=2\npad=1\nactivation=leaky\n[convolutional]\nsize=1\nstride=1\npad=1\n'
                       'filters=18\nactivation=linear\n[yolo]\nmask=0,1,2\nanchors=4,4,8,8,12,12\nclasses=1\nnum=3\n')


def small_weights():
    torch.manual_seed(0)
    model = models.Darknet(SMALL, img_size=32)
    for p in model.state_dict().values():
        if p.is_floating_point():
            p.uniform_(0.5, 1.5)
    return model, models.darknet_weights_bytes(model)


@FUZZ
@given(st.data())
def test_weights_load_only_at_the_exact_size(tmp_path_factory, data):
    model, blob = small_weights()
    change = data.draw(st.one_of(st.integers(-len(blob), -1), st.integers(1, 64)))
    bad = blob[:len(blob) + change] if change < 0 else blob + data.draw(st.binary(min_size=change, max_size=change))
    path = tmp_path_factory.mktemp('w') / 'bad.weights'
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=str(path)):
        models.load_darknet_weights(models.Darknet(SMALL, img_size=32), path)


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_weights_reader(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp('w') / 'any.weights'
    path.write_bytes(blob)
    _, good = small_weights()
    fresh = models.Darknet(SMALL, img_size=32)
    try:
        models.load_darknet_weights(fresh, path)
    except ValueError as e:
        assert str(path) in str(e)
    else:  # accepted only when the size is exactly right
        assert len(blob) == len(good)


def test_weights_round_trip_is_byte_exact(tmp_path):
    model, blob = small_weights()
    path = tmp_path / 'a.weights'
    path.write_bytes(blob)
    other = models.Darknet(SMALL, img_size=32)
    models.load_darknet_weights(other, path)
    assert models.darknet_weights_bytes(other) == blob
    assert np.frombuffer(io.BytesIO(blob).getbuffer()[20:], '<f4').size == sum(
        t.numel() for k, t in model.state_dict().items() if 'num_batches' not in k)


def test_what_the_fuzzer_found_is_one_clear_line():
    """Found by the mutation fuzzer: a [route] over maps of different sizes (a conv lost its
    pad=1) raised CfgError without the file and line; [net] channels=-1 reached torch."""
    route = ('[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=4\nsize=3\nstride=1\npad=1\n'
             'activation=leaky\n[convolutional]\nfilters=4\nsize=3\nstride=1\nactivation=leaky\n[route]\n'
             'layers=-1,-2\n[convolutional]\nsize=1\nstride=1\npad=1\nfilters=18\nactivation=linear\n[yolo]\n'
             'mask=0,1,2\nanchors=8,8,16,16,24,24\nclasses=1\nnum=3\n')
    with pytest.raises(CfgError, match=r'^fuzz\.cfg:17: \[route\] \(section 2\): layers=\[-1, -2\] join maps'):
        parse_cfg_text(route, source='fuzz.cfg')
    with pytest.raises(CfgError, match=r'^fuzz\.cfg:4: \[net\]: channels must be >= 1, got -1'):
        parse_cfg_text(route.replace('channels=3', 'channels=-1'), source='fuzz.cfg')
