"""The generated model zoo (utils/cfg_zoo.py) against the committed cfgs, the AlexeyAB
reference cfgs carried in tests/data/darknet-cfg, their published parameter counts and
torchvision's independent MobileNetV3."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils import cfg_zoo
from utils.parse_config import (cfg_to_text, layer_output_channels, parse_cfg, parse_cfg_text,
                                rewrite_head)

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / 'cfg'
REF = ROOT / 'tests' / 'data' / 'darknet-cfg'  # unmodified AlexeyAB cfgs (tests/data/README.md)
SHARED = ROOT.parent / 'shared'
STANDARD = ['yolov3', 'yolov3-spp', 'yolov3-tiny', 'yolov4', 'yolov4-tiny']
MOBILENET = ['yolov3-mobilenet', 'yolov3tiny-mobilenet-small']
SHAPES = ['yolov3-tiny-shapes', 'yolov4-tiny-shapes']  # half-width tiny models for data/shapes
MINI = ['yolov3-mini', 'yolov3-mini-shapes']
ALL = STANDARD + MOBILENET + SHAPES + MINI

# tests/data/darknet-cfg/SOURCES.md: conv weights + biases (no-BN convs) + BN gamma + BN beta.
REFERENCE_PARAMS = {'yolov3': 61_949_149, 'yolov3-spp': 62_998_749, 'yolov3-tiny': 8_852_366,
                    'yolov4': 64_363_101, 'yolov4-tiny': 6_056_606}
STRUCTURAL = {
    'net': ('width', 'height', 'channels'),
    'convolutional': ('batch_normalize', 'filters', 'size', 'stride', 'pad', 'padding', 'groups', 'activation'),
    'route': ('layers', 'groups', 'group_id'),
    'shortcut': ('from', 'activation', 'weights_type', 'weights_normalization'),
    'maxpool': ('size', 'stride', 'padding'),
    'upsample': ('stride', 'scale'),
    'avgpool': (),
    'scale_channels': ('from', 'activation', 'scale_wh'),
    'yolo': ('mask', 'anchors', 'classes', 'num', 'scale_x_y', 'new_coords'),
}


def count_params(sections):
    """Parameters of a cfg by hand: k*k*(in/groups)*out per conv, + out biases without BN,
    + 2*out (gamma, beta) with BN. Running BN statistics are not parameters."""
    net, defs = sections[0], sections[1:]
    ins = [net['channels']] + layer_output_channels(defs, net['channels'])
    total = 0
    for d, c_in in zip(defs, ins):
        if d['type'] == 'convolutional':
            total += d['size'] ** 2 * (c_in // d['groups']) * d['filters']
            total += (2 if d['batch_normalize'] else 1) * d['filters']
    return total


@pytest.fixture(scope='module')
def built():
    return {name: cfg_zoo.build(name) for name in ALL}


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize('name', ALL)
def test_committed_cfg_is_what_the_generator_writes(name, built):
    path = CFG / f'{name}.cfg'
    assert path.is_file(), f'{path} missing: run python3 utils/cfg_zoo.py --out cfg/'
    assert path.read_text(encoding='utf-8') == cfg_zoo.cfg_text(name), \
        f'{path} differs from the generator: run python3 utils/cfg_zoo.py --out cfg/'
    parsed = parse_cfg(str(path))
    assert parsed == built[name]
    assert parse_cfg_text(cfg_to_text(parsed)) == parsed


def test_yolov3_mini_layout(built):
    """Stem conv at stride 2 (nothing at full resolution), residual stages of 1, 2, 2, 1 blocks,
    heads at strides 32, 16, 8 fed by the stage outputs; the shapes variant differs only in
    input size, classes and anchors."""
    from models import Darknet
    sections = built['yolov3-mini-shapes']
    defs = sections[1:]
    assert defs[0]['type'] == 'convolutional' and defs[0]['stride'] == 2 and defs[0]['filters'] == 16
    assert sum(d['type'] == 'shortcut' for d in defs) == 1 + 2 + 2 + 1
    assert sum(d['type'] == 'convolutional' and d['stride'] == 2 for d in defs) == 5
    model = Darknet(sections, img_size=256)
    assert model.head_strides(256, 256).tolist() == [32, 16, 8]
    with torch.no_grad():
        outs = model.eval()(torch.zeros(1, 3, 256, 256))[1]
    assert [tuple(o.shape[1:4]) for o in outs] == [(3, 8, 8), (3, 16, 16), (3, 32, 32)]
    yolos = [d for d in defs if d['type'] == 'yolo']
    assert [d['mask'] for d in yolos] == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert all(d['anchors'] == cfg_zoo.SHAPES_ANCHORS9 and d['classes'] == 5 for d in yolos)
    generic = built['yolov3-mini']
    assert [d['type'] for d in generic] == [d['type'] for d in sections]
    assert generic[0]['width'] == 416 and generic[-1]['classes'] == 80


def test_darknet_mini_rejects_mismatched_blocks():
    with pytest.raises(ValueError, match='one block count per stage'):
        cfg_zoo.darknet_mini(widths=(16, 32, 64), blocks=(1, 2, 2))


@pytest.mark.parametrize('small, full', [('yolov3-tiny-shapes', 'yolov3-tiny'), ('yolov4-tiny-shapes', 'yolov4-tiny')])
def test_shapes_models_are_their_standard_model_at_half_width(small, full, built):
    small, full = built[small], cfg_zoo.build(full)
    assert [d['type'] for d in small] == [d['type'] for d in full]
    assert small[0]['width'] == small[0]['height'] == 256
    for a, b in zip(small[1:], full[1:]):
        if a['type'] == 'convolutional':
            head = a['activation'] == 'linear'  # the prediction conv: 3 anchors x (5 + 5 classes)
            assert a['filters'] == (30 if head else b['filters'] // 2)
            assert (a['size'], a['stride'], a['groups']) == (b['size'], b['stride'], b['groups'])
        elif a['type'] == 'yolo':
            assert a['classes'] == 5 and a['anchors'] == cfg_zoo.SHAPES_ANCHORS and a['scale_x_y'] == 1.0
        else:
            assert a == b
    masks = [d['mask'] for d in small if d['type'] == 'yolo']
    assert sorted(sum(masks, [])) == list(range(6))  # every shapes anchor is used once


def test_cli_writes_and_checks(tmp_path):
    assert cfg_zoo.main(['--out', str(tmp_path), '--check']) == 1  # nothing there yet
    assert cfg_zoo.main(['--out', str(tmp_path)]) == 0
    for name in ALL:
        assert (tmp_path / f'{name}.cfg').read_text() == (CFG / f'{name}.cfg').read_text()
    assert cfg_zoo.main(['--out', str(tmp_path), '--check']) == 0
    target = tmp_path / 'yolov4-tiny.cfg'
    target.write_text(target.read_text().replace('filters=512', 'filters=511', 1))
    assert cfg_zoo.stale_files(tmp_path) == [target]
    assert cfg_zoo.main(['--out', str(tmp_path), '--check']) == 1


def test_script_runs_from_any_directory(tmp_path):
    out = tmp_path / 'zoo'
    run = subprocess.run([sys.executable, str(ROOT / 'utils' / 'cfg_zoo.py'), '--out', str(out), '--nc', '3',
                          '--models', 'yolov3-tiny'], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    sections = parse_cfg(str(out / 'yolov3-tiny.cfg'))
    assert [d['classes'] for d in sections if d['type'] == 'yolo'] == [3, 3]
    assert sections == rewrite_head(cfg_zoo.build('yolov3-tiny'), classes=3)


def test_bad_input_is_named():
    with pytest.raises(KeyError, match='yolov3-mobilenet'):
        cfg_zoo.build('yolov5')
    with pytest.raises(SystemExit):
        cfg_zoo.main(['--nc', '0'])


# ----------------------------------------------------------------------------- standard models
@pytest.mark.parametrize('name', STANDARD)
def test_standard_models_equal_darknet_reference(name, built):
    ours, ref = built[name], parse_cfg(str(REF / f'{name}.cfg'))
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a['type'] == b['type'], f'section {i - 1}: [{a["type"]}] vs [{b["type"]}]'
        for key in STRUCTURAL[a['type']]:
            assert a[key] == b[key], f'{name} section {i - 1} [{a["type"]}] {key}: {a[key]!r} vs {b[key]!r}'
    # training-only keys too: only [net] batch / subdivisions differ (ours: the training values
    # the reference cfgs give in comments)
    net_diff = {k for k in set(ours[0]) | set(ref[0]) if ours[0].get(k) != ref[0].get(k)}
    assert net_diff <= {'batch', 'subdivisions'}
    assert ours[1:] == ref[1:]


@pytest.mark.parametrize('name', STANDARD)
def test_standard_parameter_counts(name, built):
    assert count_params(built[name]) == REFERENCE_PARAMS[name]


def test_one_class_yolov3_parameter_count(built):
    assert count_params(rewrite_head(built['yolov3'], classes=1)) == 61_523_734
    assert count_params(cfg_zoo.yolov3(nc=1)) == 61_523_734


def test_count_params_is_independent_of_the_generator():
    """Hand-worked: conv 3->8 k3 BN (216 + 16), depthwise 8->8 k3 BN (72 + 16), head conv 8->18 k1
    with bias (144 + 18)."""
    text = ('[net]\nchannels=3\n[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nactivation=leaky\n'
            '[convolutional]\nbatch_normalize=1\nfilters=8\ngroups=8\nsize=3\nactivation=relu\n'
            '[convolutional]\nfilters=18\nsize=1\nactivation=linear\n'
            '[yolo]\nmask=0,1,2\nanchors=1,1, 2,2, 3,3\nclasses=1\n')
    assert count_params(parse_cfg_text(text)) == 216 + 16 + 72 + 16 + 144 + 18


# ----------------------------------------------------------------------------- MobileNetV3
# make_divisible(c / 4, 8) worked out by hand: nearest multiple of 8, bumped up by 8 when that is
# more than 10 % below c / 4 (72 / 4 = 18 -> 16 < 16.2 -> 24)
SQUEEZE = {16: 8, 72: 24, 96: 24, 120: 32, 144: 40, 240: 64, 288: 72, 480: 120, 576: 144, 672: 168, 960: 240}


def _channels(sections):
    defs = sections[1:]
    return defs, [sections[0]['channels']] + layer_output_channels(defs, sections[0]['channels'])


@pytest.mark.parametrize('name, n_blocks, kernels, n_se, n_shortcut', [
    ('yolov3-mobilenet', 15, [3] * 3 + [5] * 3 + [3] * 6 + [5] * 3, 8, 10),
    ('yolov3tiny-mobilenet-small', 11, [3] * 3 + [5] * 8, 9, 6),
])
def test_mobilenet_depthwise_and_se_wiring(name, n_blocks, kernels, n_se, n_shortcut, built):
    defs, ins = _channels(built[name])
    depthwise = [i for i, d in enumerate(defs) if d['type'] == 'convolutional' and d['groups'] > 1]
    assert len(depthwise) == n_blocks
    assert [defs[i]['size'] for i in depthwise] == kernels
    for i in depthwise:  # groups == filters == input channels: one filter per channel
        assert defs[i]['groups'] == defs[i]['filters'] == ins[i], f'section {i}'
        assert defs[i]['batch_normalize'] == 1
    pools = [i for i, d in enumerate(defs) if d['type'] == 'avgpool']
    assert len(pools) == n_se == sum(d['type'] == 'scale_channels' for d in defs)
    for i in pools:
        c = defs[i - 1]['filters']
        assert i - 1 in depthwise, f'SE at section {i} does not follow a depthwise conv'
        reduce_, expand, scale = defs[i + 1], defs[i + 2], defs[i + 3]
        squeeze = SQUEEZE[c]
        assert (reduce_['type'], reduce_['size'], reduce_['filters'], reduce_['activation'],
                reduce_['batch_normalize']) == ('convolutional', 1, squeeze, 'relu', 0)
        assert (expand['type'], expand['size'], expand['filters'], expand['activation'],
                expand['batch_normalize']) == ('convolutional', 1, c, 'hardsigmoid', 0)
        assert scale['type'] == 'scale_channels' and scale['from'] == [-4]  # -> the depthwise conv
        assert defs[i + 4]['type'] == 'convolutional' and defs[i + 4]['activation'] == 'linear'
    shortcuts = [i for i, d in enumerate(defs) if d['type'] == 'shortcut']
    assert len(shortcuts) == n_shortcut
    for i in shortcuts:  # bneck residual: projection output + the block input
        src = i + defs[i]['from'][0]
        assert defs[i - 1]['activation'] == 'linear' and ins[i] == ins[src + 1]
        first = defs[src + 1]  # the block's first section: its expansion 1x1 or (e == input) its depthwise
        assert first['type'] == 'convolutional' and (first['size'] == 1 or src + 1 in depthwise), f'section {i}'


def test_make_divisible():
    assert {c: cfg_zoo.make_divisible(c / 4) for c in SQUEEZE} == SQUEEZE
    assert cfg_zoo.make_divisible(10.0) == 16  # 8 would be > 10 % below 10


@pytest.mark.parametrize('name, arch, last, taps', [
    ('yolov3-mobilenet', 'mobilenet_v3_large', 960, {8: 40, 16: 112, 32: 960}),
    ('yolov3tiny-mobilenet-small', 'mobilenet_v3_small', 576, {16: 48, 32: 576}),
])
def test_mobilenet_backbone_matches_torchvision(name, arch, last, taps, built):
    """The paper's tables, as torchvision implements them independently: same parameter count
    for the backbone (stem .. final 1x1 conv), and the heads read the documented taps."""
    import torchvision
    table = cfg_zoo.MOBILENETV3_LARGE if last == 960 else cfg_zoo.MOBILENETV3_SMALL
    backbone, tap_idx = cfg_zoo.mobilenetv3(table, last)
    features = getattr(torchvision.models, arch)().features
    assert count_params([built[name][0]] + backbone) == sum(p.numel() for p in features.parameters())
    defs, ins = _channels(built[name])
    assert built[name][1:len(backbone) + 1] == backbone
    assert {s: ins[tap_idx[s] + 1] for s in taps} == taps
    routes = [d['layers'] for d in defs if d['type'] == 'route' and len(d['layers']) == 2]
    assert [r[1] for r in routes] == [tap_idx[s] for s in (16, 8) if s in taps]


def test_mobilenet_parameter_counts(built):
    # upstream's non-native cfgs had 24,209,877 and 3,041,430 (1024-wide last conv, [se] blocks)
    assert count_params(built['yolov3-mobilenet']) == 24_173_357
    assert count_params(built['yolov3tiny-mobilenet-small']) == 2_891_038


# ----------------------------------------------------------------------------- with the model builder
def _darknet():
    models = pytest.importorskip('models')
    if not hasattr(models, 'Darknet'):
        pytest.skip('models.Darknet not available yet')
    return models


@pytest.mark.parametrize('name', ALL)
def test_builder_parameter_count_agrees(name, built):
    models = _darknet()
    model = models.Darknet(str(CFG / f'{name}.cfg'))
    assert sum(p.numel() for p in model.parameters()) == count_params(built[name])


@pytest.mark.parametrize('name, arch, last', [
    ('yolov3tiny-mobilenet-small', 'mobilenet_v3_small', 576),
    ('yolov3-mobilenet', 'mobilenet_v3_large', 960),
])
def test_mobilenet_cfg_computes_torchvision_mobilenetv3(name, arch, last):
    """Build the cfg, copy torchvision's (randomised) MobileNetV3 weights in, and compare the
    backbone output: the native-section form (depthwise groups, avgpool/conv/conv/scale_channels
    SE, shortcut) computes exactly MobileNetV3."""
    import torchvision
    models = _darknet()
    torch.manual_seed(0)
    ref = getattr(torchvision.models, arch)().features.eval()
    model = models.Darknet(str(CFG / f'{name}.cfg')).eval()
    table = cfg_zoo.MOBILENETV3_LARGE if last == 960 else cfg_zoo.MOBILENETV3_SMALL
    end = len(cfg_zoo.mobilenetv3(table, last)[0]) - 1
    convs = lambda m: [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    bns = lambda m: [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]  # noqa: E731
    backbone = torch.nn.ModuleList(model.module_list[:end + 1])
    assert len(convs(ref)) == len(convs(backbone)) and len(bns(ref)) == len(bns(backbone))
    with torch.no_grad():
        for a, b in zip(convs(ref), convs(backbone)):
            b.weight.copy_(a.weight)
            if a.bias is not None:
                a.bias.normal_(0, 0.1)
                b.bias.copy_(a.bias)
        for a, b in zip(bns(ref), bns(backbone)):
            a.weight.uniform_(0.5, 1.5), a.bias.normal_(0, 0.1)
            a.running_mean.normal_(0, 0.1), a.running_var.uniform_(0.5, 1.5)
            a.eps = b.eps
            for key in ('weight', 'bias', 'running_mean', 'running_var'):
                getattr(b, key).copy_(getattr(a, key))
        x = torch.rand(1, 3, 96, 96)
        model.taps = {end}
        model(x)
        got, want = model.tapped[end], ref(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_carried_references_equal_shared():
    """The reference files carried in tests/data are byte-identical to the project's shared
    copies (where a checkout has ../shared: a user's clone does not, and needs none)."""
    if not (SHARED / 'darknet-cfg').is_dir():
        pytest.skip('no ../shared beside this clone: nothing to compare the carried copies with')
    for src in sorted((SHARED / 'darknet-cfg').iterdir()):
        assert (REF / src.name).read_bytes() == src.read_bytes(), f'tests/data/darknet-cfg/{src.name} differs'
    import re
    spec = (SHARED / 'spec' / 'upstream-behaviour.md').read_text()
    table = re.search(r'the inverse of the 80→91 table\s*`\[([\d,\s]+)\]`', spec).group(1)
    carried = (ROOT / 'tests' / 'data' / 'coco_80_to_91.txt').read_text().split()
    assert [int(v) for v in table.replace('\n', '').split(',')] == [int(v) for v in carried]
