"""Model builder, Darknet .weights I/O, checkpoints, summary: against Darknet's and
OpenCV's numbers and hand-worked cases."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import models
from darknet_ref import opencv_copy, opencv_outputs, our_outputs_like_opencv, randomize
from utils.parse_config import CfgError, cfg_to_text, parse_cfg, parse_cfg_text, rewrite_head


def reference_table(darknet_cfg):
    """cfg name -> (params, BFLOPS@416, BFLOPS@608) from SOURCES.md (None where n/a)."""
    table = {}
    for line in (darknet_cfg / 'SOURCES.md').read_text().splitlines():
        m = re.match(r'\| (\S+\.cfg) \| ([\d,]+) \| ([^|]+) \|', line)
        if m:
            flops = re.findall(r'[\d.]+', m.group(3))
            table[m.group(1)] = (int(m.group(2).replace(',', '')), *(map(float, flops) if flops else (None, None)))
    return table


def meta_model(cfg, **kw):
    with torch.device('meta'):  # no memory, no init cost: structure only
        return models.Darknet(cfg, **kw)


def test_every_reference_cfg_builds_with_exact_params_and_flops(darknet_cfg):
    table = reference_table(darknet_cfg)
    assert len(table) == 13
    for name, (params, bflops416, bflops608) in table.items():
        model = meta_model(darknet_cfg / name)
        assert models.count_parameters(model)[0] == params, name
        if bflops416 is not None:
            for size, ref in ((416, bflops416), (608, bflops608)):
                gflops = models.layer_flops(model, size)[1] / 1e9
                assert abs(gflops - ref) / ref < 0.01, (name, size, gflops, ref)


def test_head_strides_from_shapes(darknet_cfg):
    assert meta_model(darknet_cfg / 'yolov3.cfg').stride.tolist() == [32, 16, 8]
    assert meta_model(darknet_cfg / 'yolov4.cfg').stride.tolist() == [8, 16, 32]  # stride-8 head first
    assert meta_model(darknet_cfg / 'yolov4-tiny.cfg').stride.tolist() == [32, 16]


def test_one_class_rewrite_param_count(darknet_cfg):
    sections = rewrite_head(parse_cfg(darknet_cfg / 'yolov3.cfg'), classes=1)
    assert models.count_parameters(meta_model(sections))[0] == 61_523_734
    assert [d['filters'] for i, d in enumerate(sections[1:]) if sections[i + 2:i + 3] and
            sections[i + 2]['type'] == 'yolo'] == [18, 18, 18]


def test_cfg_round_trip_is_identity(darknet_cfg):
    for path in sorted(darknet_cfg.glob('*.cfg')):
        sections = parse_cfg(path)
        assert parse_cfg_text(cfg_to_text(sections)) == sections, path.name


@pytest.mark.parametrize('name', ['yolov3-tiny', 'yolov4-tiny', 'yolov4-csp', 'yolov7-tiny'])
def test_outputs_equal_opencv(darknet_cfg, tmp_path, name):
    """Independent Darknet implementation: OpenCV 4.x DNN on the cfg + weights we write."""
    model = randomize(models.Darknet(darknet_cfg / f'{name}.cfg'))
    opencv_copy(model, tmp_path / 'a.cfg', tmp_path / 'a.weights')
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(1))
    ours, ref = our_outputs_like_opencv(model, x), opencv_outputs(tmp_path / 'a.cfg', tmp_path / 'a.weights', x)
    assert len(ours) == len(ref) == len(model.yolo_layers)
    for o, r in zip(ours, ref):
        assert o.shape == r.shape
        assert o[:, 4].min() < 0.1 and o[:, 4].max() > 0.9  # scores really vary: the test can fail
        assert np.abs(o[:, :4] - r[:, :4]).max() < 2e-3
        assert np.abs(o[:, 4:] - r[:, 4:]).max() < 5e-4


def test_eval_rows_ordered_head_anchor_y_x(darknet_cfg):
    model = randomize(models.Darknet(darknet_cfg / 'yolov4-tiny.cfg'), size=128)
    x = torch.rand(2, 3, 96, 128)  # non-square input
    pred, raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 3, 4, 85), (2, 3, 6, 8, 85)]
    assert pred.shape == (2, 3 * 12 + 3 * 48, 85)
    a, gy, gx = 2, 4, 5  # head 1, anchor 2, cell (y=4, x=5)
    row = 36 + (a * 6 + gy) * 8 + gx
    p = raw[1][1, a, gy, gx]
    anchor = model.module_list[model.yolo_layers[1]].anchors[a]
    s = 1.05  # scale_x_y of this head in yolov4-tiny.cfg
    expect_x = (gx + torch.sigmoid(p[0]) * s - 0.5 * (s - 1)) * 16
    expect_y = (gy + torch.sigmoid(p[1]) * s - 0.5 * (s - 1)) * 16
    assert torch.allclose(pred[1, row, :4], torch.stack([expect_x, expect_y, *(p[2:4].exp() * anchor)]), atol=1e-4)
    assert torch.allclose(pred[1, row, 4:], torch.sigmoid(p[4:]), atol=1e-6)
    model.train()
    assert [tuple(r.shape) for r in model(x)] == [(2, 3, 3, 4, 85), (2, 3, 6, 8, 85)]


def test_new_coords_decode_by_hand():
    cfg = """[net]
width=64
height=64
channels=3
[convolutional]
filters=7
size=1
stride=32
pad=0
activation=logistic
[yolo]
mask=0
anchors=8,16
classes=2
scale_x_y=2.0
new_coords=1
"""
    model = models.Darknet(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    pred, raw = model(x)
    t = raw[0][0, 0, 1, 0]  # cell y=1, x=0; already logistic (the conv's activation)
    assert torch.allclose(pred[0, 2, :4], torch.stack([(0 + 2 * t[0] - 0.5) * 32, (1 + 2 * t[1] - 0.5) * 32,
                                                       4 * t[2] ** 2 * 8, 4 * t[3] ** 2 * 16]), atol=1e-5)
    assert torch.allclose(pred[0, 2, 4:], t[4:])


def test_darknet_maxpool_semantics():
    x = -torch.arange(1., 10.).view(1, 1, 3, 3)  # all negative: a zero pad would win
    pool = models.MaxPool(size=2, stride=1, padding=1)  # yolov3-tiny's size=2 stride=1
    assert pool(x).view(-1).tolist() == [-1, -2, -3, -4, -5, -6, -7, -8, -9]
    assert models.MaxPool(2, 2, 1)(torch.ones(1, 1, 13, 13)).shape[-1] == 7  # (13 + 1 - 2)//2 + 1
    assert models.MaxPool(5, 1, 4)(torch.ones(1, 1, 13, 13)).shape[-1] == 13


def test_weights_write_read_write_byte_identical(darknet_cfg, tmp_path):
    model = randomize(models.Darknet(darknet_cfg / 'yolov4-tiny.cfg'), size=64)
    models.save_weights(model, tmp_path / 'a.weights')
    size = (tmp_path / 'a.weights').stat().st_size
    assert size == 20 + 4 * sum(t.numel() for t in model.state_dict().values() if t.dtype == torch.float32)
    other = models.Darknet(darknet_cfg / 'yolov4-tiny.cfg')
    models.load_darknet_weights(other, tmp_path / 'a.weights')
    models.save_weights(other, tmp_path / 'b.weights')
    assert (tmp_path / 'a.weights').read_bytes() == (tmp_path / 'b.weights').read_bytes()
    for k, v in model.state_dict().items():
        if v.dtype == torch.float32:
            assert torch.equal(v, other.state_dict()[k]), k


def test_old_header_keeps_int32_seen(darknet_cfg, tmp_path):
    model = models.Darknet(darknet_cfg / 'yolov3-tiny.cfg')
    model.header = (0, 1, 0, 12345)
    blob = models.darknet_weights_bytes(model)
    (tmp_path / 'old.weights').write_bytes(blob)
    other = models.Darknet(darknet_cfg / 'yolov3-tiny.cfg')
    models.load_darknet_weights(other, tmp_path / 'old.weights')
    assert other.header == (0, 1, 0, 12345)
    assert models.darknet_weights_bytes(other) == blob
    assert len(blob) == 16 + 4 * 8_852_366 + 4 * sum(m.num_features * 2 for m in model.modules()
                                                     if isinstance(m, torch.nn.BatchNorm2d))


def test_wrong_size_file_states_expected_and_actual(darknet_cfg, tmp_path):
    model = models.Darknet(darknet_cfg / 'yolov3-tiny.cfg')
    blob = models.darknet_weights_bytes(model)
    (tmp_path / 'short.weights').write_bytes(blob[:-8])
    with pytest.raises(ValueError, match=rf'{len(blob) - 8} bytes .* needs {len(blob)} bytes'):
        models.load_darknet_weights(model, tmp_path / 'short.weights')


def test_pretrain_skips_only_the_heads(darknet_cfg, tmp_path):
    coco = randomize(models.Darknet(darknet_cfg / 'yolov4-tiny-3l.cfg'), size=64)
    models.save_weights(coco, tmp_path / 'coco.weights')
    three = models.Darknet(rewrite_head(parse_cfg(darknet_cfg / 'yolov4-tiny-3l.cfg'), classes=3))
    with pytest.raises(ValueError, match='pretrain'):
        models.load_darknet_weights(three, tmp_path / 'coco.weights')
    loaded = models.load_darknet_weights(three, tmp_path / 'coco.weights', pretrain=True)
    convs = [i for i, d in enumerate(three.module_defs) if d['type'] == 'convolutional']
    heads = [i - 1 for i in three.yolo_layers]
    assert len(heads) == 3 and sorted(loaded) == sorted(set(convs) - set(heads))
    for i in loaded:
        for (k, v) in three.module_list[i].state_dict().items():
            if not k.endswith('num_batches_tracked'):  # not part of Darknet files
                assert torch.equal(v, coco.module_list[i].state_dict()[k]), (i, k)


def test_cutoff_partial_file(darknet_cfg, tmp_path):
    model = randomize(models.Darknet(darknet_cfg / 'yolov3-tiny.cfg'), size=64)
    models.save_weights(model, tmp_path / 'yolov3-tiny.conv.15', cutoff=15)
    fresh = models.Darknet(darknet_cfg / 'yolov3-tiny.cfg')
    loaded = models.load_darknet_weights(fresh, tmp_path / 'yolov3-tiny.conv.15')  # cutoff from the name
    assert max(loaded) < 15 and len(loaded) == sum(d['type'] == 'convolutional' for d in fresh.module_defs[:15])
    assert torch.equal(fresh.module_list[12].Conv2d.weight, model.module_list[12].Conv2d.weight)
    assert not torch.equal(fresh.module_list[15].Conv2d.weight, model.module_list[15].Conv2d.weight)


def test_fuse_keeps_outputs(darknet_cfg):
    """The fold is algebra, so in float64 the outputs agree to ~1e-12, whatever kernels the CPU's
    float32 convs pick (their rounding differs between AVX2 and AVX-512 builds); the float32
    fold keeps the dtype and agrees to float32 rounding."""
    model = randomize(models.Darknet(darknet_cfg / 'yolov4-tiny.cfg'), size=128).double()
    x = torch.rand(1, 3, 160, 160, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)[1]
        model.fuse()
        after = model(x)[1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(p.dtype == torch.float64 for p in model.parameters())
    for b, a in zip(before, after):  # raw head outputs (decoded boxes scale with exp(t))
        assert (b - a).abs().max() <= 1e-10 * max(1.0, b.abs().max().item())
    model = randomize(models.Darknet(darknet_cfg / 'yolov4-tiny.cfg'), size=128)
    with torch.no_grad():
        before = model(x.float())[1]
        model.fuse()
        after = model(x.float())[1]
    for b, a in zip(before, after):
        assert (b - a).abs().max() <= 1e-3 * max(1.0, b.abs().max().item())


def test_checkpoint_round_trip_and_pickle_refused(darknet_cfg, tmp_path):
    model = randomize(models.Darknet(darknet_cfg / 'yolov3-tiny.cfg'), size=64)
    models.save_checkpoint(tmp_path / 'a.pt', model, epoch=3, best_fitness=0.5)
    rebuilt, ckpt = models.model_from_checkpoint(tmp_path / 'a.pt')
    assert ckpt['epoch'] == 3 and parse_cfg_text(ckpt['cfg']) == model.sections
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])
    torch.save({'model': model.state_dict(), 'evil': models.MaxPool(2, 2, 1)}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match='pickled'):
        models.load_checkpoint(tmp_path / 'evil.pt')
    (tmp_path / 'cut.pt').write_bytes((tmp_path / 'a.pt').read_bytes()[:1000])
    with pytest.raises(ValueError, match='cut.pt'):
        models.load_checkpoint(tmp_path / 'cut.pt')


def test_cli_convert_round_trip_and_summary(darknet_cfg, tmp_path):
    cfg = darknet_cfg / 'yolov3-tiny.cfg'
    model = randomize(models.Darknet(cfg), size=64)
    models.save_weights(model, tmp_path / 'a.weights')
    run = lambda *a: subprocess.run([sys.executable, 'models.py', *map(str, a)], capture_output=True, text=True)
    assert run('convert', cfg, tmp_path / 'a.weights', tmp_path / 'a.pt').returncode == 0
    assert run('convert', cfg, tmp_path / 'a.pt', tmp_path / 'b.weights').returncode == 0
    assert (tmp_path / 'a.weights').read_bytes() == (tmp_path / 'b.weights').read_bytes()
    out = run('summary', cfg, '--verbose')
    assert out.returncode == 0 and '8,852,366 parameters' in out.stdout and '5.565 GFLOPs' in out.stdout
    assert len(out.stdout.splitlines()) == 1 + 24 + 1
    bad = run('convert', cfg, tmp_path / 'missing.weights', tmp_path / 'x.pt')
    assert bad.returncode != 0 and 'missing.weights' in bad.stderr and 'Traceback' not in bad.stderr


MINI = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
"""


@pytest.mark.parametrize('tail, message', [
    ('[bogus]\n', r'cfg:14: unknown section \[bogus\] \(section 1\)'),
    ('[convolutional]\nfilters=8\nsize=3\nfoo=1\n', r"cfg:17: \[convolutional\] \(section 1\): unknown key 'foo'"),
    ('[convolutional]\nfilters=eight\n', r'cfg:15: \[convolutional\] \(section 1\): bad value for filters'),
    ('[route]\nlayers=-3\n', r'cfg:15: \[route\] \(section 1\): layers=-3 points to section -2'),
    ('[shortcut]\nfrom=4\n', r'cfg:15: \[shortcut\] \(section 1\): from=4 points to section 4'),
    ('[convolutional]\nfilters=20\nsize=1\nactivation=linear\n[yolo]\nmask=0,1\nanchors=1,2,3,4\nclasses=3\n',
     r'cfg:18: \[yolo\] \(section 2\): the \[convolutional\] before it \(section 1 \(line 15\)\) has filters=20, '
     r'expected len\(mask\)\*\(classes\+5\) = 2\*\(3\+5\) = 16'),
])
def test_malformed_cfg_errors_name_file_line_section(tail, message):
    with pytest.raises(CfgError, match=message):
        parse_cfg_text(MINI + '\n' + tail, 'mini.cfg')


def test_extension_layers_and_weights_round_trip(tmp_path):
    """Upstream [depthwise]/[se], Darknet [avgpool]/[scale_channels]/[dropout] and
    weighted [shortcut] build, run, and survive a .weights round trip."""
    cfg = MINI + """
[depthwise]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=h_swish

[se]
reduction=4

[avgpool]

[convolutional]
filters=8
size=1
activation=hardsigmoid

[scale_channels]
from=-3

[shortcut]
from=-5
weights_type=per_channel
weights_normalization=softmax

[dropout]
probability=0.3

[convolutional]
filters=14
size=1
activation=linear

[yolo]
mask=0,1
anchors=4,5,8,9
classes=2
"""
    model = randomize(models.Darknet(cfg), size=32)
    with torch.no_grad():
        model.module_list[6].weight.copy_(torch.randn(2, 8))
    pred, _ = model(torch.rand(1, 3, 32, 32))
    assert pred.shape == (1, 2 * 16 * 16, 7) and torch.isfinite(pred).all()
    models.save_weights(model, tmp_path / 'a.weights')
    other = models.Darknet(cfg)
    models.load_darknet_weights(other, tmp_path / 'a.weights')
    for k, v in model.state_dict().items():
        if not k.endswith('num_batches_tracked'):  # not part of Darknet files
            assert torch.equal(v, other.state_dict()[k]), k


def test_weighted_shortcut_by_hand():
    sc = models.Shortcut([0], channels=2, weights_type='per_feature', normalization='relu')
    with torch.no_grad():
        sc.weight.copy_(torch.tensor([3.0, -1.0]))  # relu -> (3, 0), normalised by 3 + 1e-4
    x, a = torch.ones(1, 2, 1, 1), torch.full((1, 2, 1, 1), 5.0)
    assert torch.allclose(sc(x, [a]), torch.full((1, 2, 1, 1), 3 / 3.0001))
    sc = models.Shortcut([0], channels=3)  # a 2-channel input adds into the first 2 channels
    out = sc(torch.ones(1, 3, 1, 1), [torch.full((1, 2, 1, 1), 2.0)])
    assert out.view(-1).tolist() == [3.0, 3.0, 1.0]


def test_optimize_for_inference_keeps_outputs(darknet_cfg):
    model = randomize(models.Darknet(darknet_cfg / 'yolov3-tiny.cfg'), size=128)
    x = torch.rand(1, 3, 128, 128)
    fast = models.optimize_for_inference(model)
    with torch.inference_mode():
        ref = model(x)[1]
        out = fast(x.contiguous(memory_format=torch.channels_last))[1]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched
    for r, o in zip(ref, out):
        assert (r - o).abs().max() <= 1e-5 * max(1.0, r.abs().max().item())
