"""INT8 exports stay correct on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI).

There ONNX Runtime's and OpenVINO's u8 x s8 convolutions multiply activation bytes by weight
codes with ``vpmaddubsw``, which adds adjacent products in int16 and saturates: with weights at
+-127 and activations at 255 a pair sums to 64770 and becomes 32767. The tests here do not
depend on the CPU they run on:
  * a NumPy emulation of that instruction on a hand-worked conv shows when pairs saturate and
    that ``int8_overflow_risks`` flags exactly those graphs;
  * every quantized export (``--int8``, quantization-aware checkpoints) is checked by it: the
    default ones pass, a full-range checkpoint is marked and refused where it would be wrong;
  * where ``qemu-x86_64`` is installed, the tiny conv runs in ONNX Runtime on an emulated
    Haswell (AVX2, no VNNI): the full-range graph is wrong there, the overflow-safe one exact;
  * on a CPU that really has no VNNI, the same holds natively (that test skips elsewhere).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import export
import models
from darknet_ref import randomize
from utils.deploy import backends
from utils.deploy import export as ex
from utils.general import cpu_flags, int8_kernels_saturate
from utils.compress.quant import QuantConvBlock, QuantSpec, calibrate, quantize_model, safe_weight_code_max

ROOT = Path(__file__).resolve().parents[1]
CFG = 'cfg/yolov3-mini-shapes.cfg'
IMG = 64
CIN = 16

pytestmark = pytest.mark.usefixtures('one_thread')


# ----------------------------------------------------------------------------- the arithmetic

def vpmaddubsw_dot(a_bytes, w_codes):
    """sum(a * w) as an x86 CPU without VNNI computes it: adjacent u8 x s8 products added in
    pairs with int16 saturation (vpmaddubsw), the pair sums then added in int32 (vpmaddwd)."""
    prod = a_bytes.astype(np.int64) * w_codes.astype(np.int64)
    pairs = np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767)
    return pairs.sum(-1)


def test_safe_code_limits_by_hand():
    """2 x max byte x code <= 32767: 8-bit activations (unsigned, or signed shifted by 128)
    leave 8-bit weights 64 codes, 4-bit unsigned ones the full 127; wider types are never
    computed in those kernels."""
    assert safe_weight_code_max(8, 0, 255) == 64 and 2 * 255 * 64 <= 32767 < 2 * 255 * 65
    assert safe_weight_code_max(8, -128, 127) == 64
    assert safe_weight_code_max(8, 0, 15) == 127
    assert safe_weight_code_max(8, -8, 7) == 32767 // (2 * 135)  # signed 4-bit codes become bytes 120..135
    assert safe_weight_code_max(4, 0, 255) == 7
    assert safe_weight_code_max(16, 0, 255) == 2 ** 15 - 1
    assert safe_weight_code_max(8, 0, 65535) == 127


def test_emulated_kernel_saturates_exactly_where_the_limit_says():
    """A white image (bytes 255) under weights of one sign: 127 saturates every pair, 65 too,
    64 is exact; for random codes within the limit the emulation always equals the exact sum."""
    a = np.full(2 * CIN, 255)
    for code, exact in ((127, False), (65, False), (64, True)):
        w = np.full(2 * CIN, code)
        assert bool(vpmaddubsw_dot(a, w) == int((a * w).sum())) is exact, code
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 256, (8, 2 * CIN))
        w = rng.integers(-64, 65, 2 * CIN)
        assert (vpmaddubsw_dot(a, w) == (a * w).sum(-1)).all()


# ----------------------------------------------------------------------------- one conv

class OneConv(nn.Module):
    """An 8-bit image quantizer -> conv with fake-quantized per-channel weights whose largest
    code is ``code_max`` -> an output quantizer (ONNX Runtime then runs it as QLinearConv)."""

    def __init__(self, code_max):
        super().__init__()
        self.conv = nn.Conv2d(CIN, 4, 1, bias=False)
        with torch.no_grad():  # one sign per channel: the worst case for pair sums
            self.conv.weight.copy_(torch.rand(4, CIN, 1, 1) * 0.5 + 0.5)
            self.conv.weight[1].neg_()
        self.w_scale = self.conv.weight.detach().abs().amax((1, 2, 3)) / code_max
        self.out_scale = float((self.w_scale.max() * code_max * CIN * 255 / 255) / 120)

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, 1.0 / 255, 0, 0, 255)
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale, torch.zeros(4, dtype=torch.int32),
                                                   0, -128, 127)
        return torch.fake_quantize_per_tensor_affine(F.conv2d(x, w), self.out_scale, 0, -128, 127), None

    def exact(self, x):
        """The output quantizer applied to the exact integer conv of the codes (float64)."""
        codes = torch.round(x.double() * 255)
        w = torch.round(self.conv.weight.detach().double() / self.w_scale.double().view(-1, 1, 1, 1))
        acc = F.conv2d(codes, w) * (self.w_scale.double().view(1, -1, 1, 1) / 255)
        return (torch.clamp(torch.round(acc / self.out_scale), -128, 127) * self.out_scale).numpy()


def one_conv_graph(code_max):
    torch.manual_seed(0)
    module = OneConv(code_max).eval()
    x = torch.ones(1, CIN, 4, 4)
    x[..., 0, 0] = torch.rand(CIN)
    return module, x, onnx.load_from_string(ex.onnx_bytes(module, x))


def test_overflow_check_flags_the_full_range_conv_only():
    """The static check (what every export runs) reads the codes from the graph: the
    full-range conv's worst pair is 2 x 255 x 127, the overflow-safe one passes."""
    _, _, full = one_conv_graph(127)
    _, _, safe = one_conv_graph(64)
    assert [worst for _, worst in ex.int8_overflow_risks(full)] == [2 * 255 * 127]
    assert ex.int8_overflow_risks(safe) == []


QEMU_RUN = r'''
import sys, numpy as np, onnxruntime as ort, openvino as ov
core = ov.Core()
for path in sys.argv[1:]:
    x = np.load(path + '.in.npy')
    s = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    np.save(path + '.ort.npy', s.run(None, {'images': x})[0])
    compiled = core.compile_model(core.read_model(path), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
    np.save(path + '.ov.npy', compiled({0: x})[0])
'''


def output_steps(got, module, x):
    return float(np.abs(got - module.exact(x)).max() / module.out_scale)


def runtime_steps(code_max):
    """{runtime: output steps off the exact reference} of the one-conv graph with weight codes up
    to ``code_max``, run in ONNX Runtime and OpenVINO on this CPU."""
    import onnxruntime as ort
    import openvino as ov
    module, x, proto = one_conv_graph(code_max)
    session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(proto.SerializeToString(), b''), 'CPU',
                                  {'INFERENCE_PRECISION_HINT': 'f32'})
    return {'ort': output_steps(session.run(None, {'images': x.numpy()})[0], module, x),
            'ov': output_steps(compiled({0: x.numpy()})[0], module, x)}


def test_overflow_safe_conv_is_exact_in_both_runtimes():
    """On this CPU, whatever it is, ONNX Runtime's and OpenVINO's int8 conv of the
    overflow-safe graph equal the exact integer reference to the output quantizer's rounding
    (a white image: every pair at its largest)."""
    assert all(steps <= 1 for steps in runtime_steps(64).values()), runtime_steps(64)


@pytest.mark.skipif(not int8_kernels_saturate(), reason='this CPU has VNNI: its int8 sums do not saturate')
def test_on_this_cpu_without_vnni_the_full_range_conv_saturates():
    """Where /proc/cpuinfo shows no VNNI (what the exports refuse full-range weights on), the
    runtimes' kernels really do saturate: the full-range conv comes out many steps wrong."""
    full = runtime_steps(127)
    assert all(steps > 4 for steps in full.values()), full


@pytest.mark.skipif(shutil.which('qemu-x86_64') is None or sys.platform != 'linux',
                    reason='qemu-x86_64 (Debian: qemu-user) emulates a CPU without VNNI')
def test_on_an_emulated_avx2_cpu_only_the_overflow_safe_conv_is_right(tmp_path):
    """ONNX Runtime and OpenVINO under QEMU's Haswell (AVX2, no AVX-512, no VNNI): the kernels
    a user's AVX2-only machine runs. The full-range conv comes out many steps wrong in both
    (what a full-range export does there), the overflow-safe one right."""
    cases = []
    for code_max in (127, 64):
        module, x, proto = one_conv_graph(code_max)
        path = tmp_path / f'conv{code_max}.onnx'
        path.write_bytes(proto.SerializeToString())
        np.save(f'{path}.in.npy', x.numpy())
        cases.append((str(path), module, x))
    subprocess.run(['qemu-x86_64', '-cpu', 'Haswell', sys.executable, '-c', QEMU_RUN, *[c[0] for c in cases]],
                   check=True, capture_output=True, timeout=600)
    (full, full_module, x), (safe, safe_module, _) = cases
    for runtime in ('ort', 'ov'):
        assert output_steps(np.load(f'{full}.{runtime}.npy'), full_module, x) > 4, f'{runtime} should saturate'
        assert output_steps(np.load(f'{safe}.{runtime}.npy'), safe_module, x) <= 1, runtime


# ----------------------------------------------------------------------------- exports

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    return str(shapes.ensure_shapes(tmp_path_factory.mktemp('ov') / 'shapes', n_train=8, n_val=4, seed=3,
                                    min_size=64, max_size=96))


@pytest.fixture(scope='module')
def float_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('f') / 'float.pt'
    models.save_checkpoint(path, randomize(models.Darknet(CFG, img_size=IMG), size=IMG))
    return path


def qat_checkpoint(float_ckpt, data, path, **spec_kw):
    from utils.parse_config import parse_data_cfg
    spec = QuantSpec('google', **spec_kw)
    model = quantize_model(models.load_model(None, str(float_ckpt), IMG, 'cpu')[0], spec)
    images = ex.dataset_images(parse_data_cfg(data)['train'], IMG, 4)
    calibrate(model.eval(), [torch.from_numpy(images)], 4)
    models.save_checkpoint(path, model, quant=spec.to_dict())
    return model


def onnx_meta(path):
    proto = onnx.load(str(path))
    return proto, json.loads({p.key: p.value for p in proto.metadata_props}[backends.META_KEY])


@pytest.mark.parametrize('spec_kw', [{}, {'bn_fold': True, 'fpga': True}], ids=['google', 'fpga'])
def test_quantization_aware_exports_are_overflow_safe_by_default(float_ckpt, data, tmp_path, spec_kw):
    """Default QAT: convs under 8-bit activations keep their weight codes in [-64, 64], so the
    QDQ export passes the check and carries no VNNI requirement."""
    model = qat_checkpoint(float_ckpt, data, tmp_path / 'q.pt', **spec_kw)
    assert {b.w_code_max for b in model.modules() if isinstance(b, QuantConvBlock)} == {64}
    out, = export.main(['--weights', str(tmp_path / 'q.pt'), '--data', data, '--img-size', str(IMG)])
    proto, meta = onnx_meta(out)
    assert ex.int8_overflow_risks(proto) == [] and 'int8_needs_vnni' not in meta


def test_int8_export_weights_fit_the_safe_range(float_ckpt, data, tmp_path):
    """--int8 quantizes weights with ONNX Runtime's reduce_range: codes within [-64, 64]."""
    from onnx import numpy_helper
    out, = export.main(['--weights', str(float_ckpt), '--data', data, '--img-size', str(IMG), '--int8', '--calib',
                        '4', '--out', str(tmp_path / 'i8.onnx')])
    proto = onnx.load(str(out))
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) <= 64
    assert ex.int8_overflow_risks(proto) == []


def test_full_range_checkpoint_is_marked_and_refused_without_vnni(float_ckpt, data, tmp_path, monkeypatch, capsys):
    """A checkpoint trained with --full-range exports with a warning and the int8_needs_vnni
    mark; on a CPU without VNNI (simulated) the export itself refuses, and so does loading
    the marked file in test.py/detect.py (utils.deploy.backends), each with one clear line."""
    qat_checkpoint(float_ckpt, data, tmp_path / 'full.pt', full_range=True)
    args = ['--weights', str(tmp_path / 'full.pt'), '--data', data, '--img-size', str(IMG)]
    for module in (ex, backends):  # a VNNI CPU, simulated (the export also loads its file to check it)
        monkeypatch.setattr(module, 'int8_kernels_saturate', lambda flags=None: False)
    out, = export.main(args)
    proto, meta = onnx_meta(out)
    assert meta['int8_needs_vnni'] is True and ex.int8_overflow_risks(proto)
    assert 'int8_needs_vnni' in capsys.readouterr().out
    monkeypatch.setattr(backends, 'int8_kernels_saturate', lambda flags=None: True)
    with pytest.raises(ValueError, match='no VNNI'):
        backends.OnnxRuntimeModel(out, threads=1)
    monkeypatch.setattr(ex, 'int8_kernels_saturate', lambda flags=None: True)
    with pytest.raises(ValueError, match='has no VNNI'):
        ex.run(export.parse_args([*args, '--out', str(tmp_path / 'again.onnx')]))


def test_old_checkpoints_load_as_full_range():
    """Checkpoints from before overflow-safe weights recorded no setting: they were trained
    with the full range and rebuild that way, so their exports get checked and marked."""
    old = {k: v for k, v in QuantSpec('google').to_dict().items() if k != 'full_range'}
    assert QuantSpec.from_dict(old).full_range is True
    assert QuantSpec.from_dict(QuantSpec('google').to_dict()).full_range is False


def test_cpu_flags_decide_saturation(tmp_path):
    """/proc/cpuinfo parsing: AVX2 without VNNI saturates; AVX-512 VNNI or AVX-VNNI do not."""
    text = 'processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx avx2 fma {}\n\n'
    for extra, saturates in (('', True), ('avx512f avx512bw', True), ('avx512f avx512_vnni', False),
                             ('avx_vnni', False)):
        path = tmp_path / f'cpuinfo{len(extra)}'
        path.write_text(text.format(extra))
        model, flags = cpu_flags(path)
        assert model == 'Test CPU 9000' and int8_kernels_saturate(flags) is saturates
    assert int8_kernels_saturate(frozenset({'neon', 'asimd'})) is False  # not x86


def test_fpga_flag_implies_full_range_and_the_rest_is_safe():
    """--FPGA trains full-range weights (an FPGA adds its own integer sums, and at 64 codes its
    power-of-two scales cost accuracy); the other recipes are overflow-safe unless asked."""
    from utils.compress.quant import spec_from_opt
    from utils.compress.quant_flags import add_quant_args
    import argparse
    parser = argparse.ArgumentParser()
    add_quant_args(parser, train=True)
    spec = lambda *flags: spec_from_opt(parser.parse_args(['--quantized', '1', *flags]))  # noqa: E731
    assert spec().full_range is False and spec('--BN_Fold').full_range is False
    assert spec('--BN_Fold', '--FPGA').full_range is True and spec('--full-range').full_range is True
    with pytest.raises(ValueError, match='--full-range'):
        spec_from_opt(parser.parse_args(['--full-range']))
