"""export.py and the exported models in test.py/detect.py: ONNX FP32 against PyTorch (fixed and
dynamic batch), OpenVINO against ONNX, Darknet files bit-exact and in OpenCV DNN, a pruned
model, fake-quant ops as QDQ (a tiny module and a quantization-aware default model), static
INT8 QDQ with the decode in float and its mAP in test.py, and clear errors.

Models are the default cfg (yolov3-mini-shapes) at 128 px: random weights with calibrated BN
for the float checks, and a model overfitted on four images (~15 s of training) where mAP
must mean something."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

import export
import models
from darknet_ref import opencv_outputs, our_outputs_like_opencv, randomize
from utils.deploy import export as ex
from utils.deploy.backends import OnnxRuntimeModel, OpenVinoModel
from utils.compress.quant import safe_weight_code_max

ROOT = Path(__file__).resolve().parents[1]
CFG = 'cfg/yolov3-mini-shapes.cfg'  # the default model
IMG = 128
FAST = ['--img-size', str(IMG)]
NO_AUG = {'hsv_h': 0.0, 'hsv_s': 0.0, 'hsv_v': 0.0, 'degrees': 0.0, 'translate': 0.0, 'scale': 0.0, 'shear': 0.0,
          'perspective': 0.0, 'flipud': 0.0, 'fliplr': 0.0, 'mosaic': 0.0}
INT8_MAP_TOL = 0.05  # mAP@0.5 of the INT8 export within 0.05 of PyTorch on the four fitted images


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread


def shapes_data(root, **kw):
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    return str(shapes.ensure_shapes(root, **kw))


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    return shapes_data(tmp_path_factory.mktemp('exp') / 'shapes', n_train=8, n_val=4, seed=1, min_size=96,
                       max_size=160)


def names_of(data):
    from utils.parse_config import parse_data_cfg
    return Path(parse_data_cfg(data)['names']).read_text().split()


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory, tiny_data):
    """The default model with random weights and calibrated BN, as a train.py checkpoint."""
    path = tmp_path_factory.mktemp('ckpt') / 'mini.pt'
    models.save_checkpoint(path, randomize(models.Darknet(CFG, img_size=IMG), size=IMG), names=names_of(tiny_data))
    return path


@pytest.fixture(scope='module')
def fitted(tmp_path_factory):
    """(checkpoint, .data) of the default model overfitted on four images (valid = train)."""
    import train
    root = tmp_path_factory.mktemp('fit')
    data = shapes_data(root / 'four', n_train=4, n_val=0, seed=5, min_size=128, max_size=128)
    Path(data).write_text(Path(data).read_text().replace('four/val.txt', 'four/train.txt'))
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.yaml').read_text())
    hyp.update(lr0=0.01, warmup_epochs=5, **NO_AUG)
    (root / 'hyp.yaml').write_text(yaml.safe_dump(hyp))
    train.main(['--data', data, '--cfg', CFG, '--img-size', str(IMG), '--workers', '0', '--project',
                str(root / 'runs'), '--epochs', '60', '--batch-size', '4', '--nbs', '4', '--adam', '--notest',
                '--hyp', str(root / 'hyp.yaml'), '--name', 'fit'])
    return root / 'runs' / 'fit' / 'weights' / 'last.pt', data


def torch_pred(path, x):
    model, _ = models.model_from_checkpoint(path, img_size=IMG)
    with torch.no_grad():
        return model.eval().fuse()(x)[0].numpy()


def images(data, n):
    from utils.parse_config import parse_data_cfg
    return ex.dataset_images(parse_data_cfg(data)['valid'], IMG, n, spread=False)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- float exports

def test_onnx_fp32_equals_pytorch_with_dynamic_batch(ckpt, tiny_data):
    digest = sha256(ckpt)
    out, = export.main(['--weights', str(ckpt), '--data', tiny_data, '--dynamic', *FAST])
    assert out == ckpt.with_suffix('.onnx') and sha256(ckpt) == digest  # next to the weights; input untouched
    runtime = OnnxRuntimeModel(out, threads=1)
    assert runtime.batch_size is None and runtime.input_hw == (IMG, IMG) and runtime.nc == 5
    assert runtime.names == names_of(tiny_data) and runtime.precision == 'fp32'
    x = images(tiny_data, 3)
    ref = torch_pred(ckpt, torch.from_numpy(x))
    for n in (1, 3):
        test = runtime.run(x[:n])
        assert test.shape == ref[:n].shape
        assert ex.relative_diff(test, ref[:n]) <= 1e-4


def test_fixed_batch_export_chunks_and_openvino_equals_onnx(ckpt, tiny_data, tmp_path):
    onnx_path, = export.main(['--weights', str(ckpt), '--data', tiny_data, '--batch-size', '2', '--simplify',
                              '--out', str(tmp_path / 'b2.onnx'), *FAST])
    ir, = export.main(['--weights', str(ckpt), '--data', tiny_data, '--batch-size', '2', '--format', 'openvino',
                       *FAST])
    assert ir == ckpt.parent / 'mini_openvino' and (ir / 'mini.xml').is_file() and (ir / 'mini.bin').is_file()
    ort_model, ov_model = OnnxRuntimeModel(onnx_path, threads=1), OpenVinoModel(str(ir / 'mini.xml'), threads=1)
    assert ort_model.batch_size == ov_model.batch_size == 2 and ov_model.names == names_of(tiny_data)
    x = torch.from_numpy(images(tiny_data, 3))  # 3 images through a batch-2 graph: 2 + 1 padded
    ref = torch_pred(ckpt, x)
    a, b = ort_model(x)[0].numpy(), ov_model(x)[0].numpy()
    assert ex.relative_diff(a, ref) <= 1e-4 and ex.relative_diff(b, a) <= 1e-4


def test_darknet_export_bit_exact_and_in_opencv(ckpt, tiny_data):
    cfg_path, weights_path = export.main(['--weights', str(ckpt), '--data', tiny_data, '--format', 'darknet',
                                          *FAST])
    assert (cfg_path, weights_path) == (ckpt.with_suffix('.cfg'), ckpt.with_suffix('.weights'))
    source, _ = models.model_from_checkpoint(ckpt, img_size=IMG)
    dark = models.Darknet(str(cfg_path), img_size=IMG)
    models.load_darknet_weights(dark, weights_path)
    assert source.state_dict().keys() == dark.state_dict().keys()
    for k, v in source.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.equal(v, dark.state_dict()[k]), k
    # OpenCV DNN on the written files, through the tests' own reader of its output layout
    text = cfg_path.read_text().replace('[yolo]', '[yolo]\nthresh=0')  # OpenCV zeroes scores <= thresh
    (cfg_path.parent / 'cv.cfg').write_text(text)
    x = torch.from_numpy(images(tiny_data, 1))
    for ours, cv in zip(our_outputs_like_opencv(source, x), opencv_outputs(cfg_path.parent / 'cv.cfg',
                                                                            weights_path, x)):
        assert np.abs(cv - ours).max() <= 1e-3 * (1 + np.abs(ours).max())  # OpenCV's BN eps is 1e-6, not 1e-5
    # exporting the Darknet files themselves would overwrite them: refused, files unchanged
    digest = sha256(weights_path)
    with pytest.raises(SystemExit, match='refusing to overwrite the input'):
        export.main(['--weights', str(weights_path), '--cfg', str(cfg_path), '--format', 'darknet', *FAST])
    assert sha256(weights_path) == digest


def test_pruned_model_exports(tmp_path, tiny_data):
    import slim_prune
    from test_prune_cli import SPARSITY
    src = tmp_path / 'sparse.pt'
    models.save_checkpoint(src, randomize(models.Darknet(CFG, img_size=IMG), size=IMG), names=names_of(tiny_data),
                           sparsity=SPARSITY)
    _, paths = slim_prune.main(['--weights', str(src), '--data', tiny_data, '--adapt-bn', '0', '--img-size',
                                str(IMG), '--latency-reps', '1', '--workers', '0', '--out', str(tmp_path / 'p')])
    pruned = Path(paths['pt'])
    out, = export.main(['--weights', str(pruned), '--data', tiny_data, *FAST])
    graph = onnx.load(str(out))
    widths = {int(t.dims[0]) for t in graph.graph.initializer if len(t.dims) == 4}
    full = {d['filters'] for d in models.Darknet(CFG).module_defs if 'filters' in d}
    assert widths - full, 'the graph must hold the pruned (narrower) convs'
    x = torch.from_numpy(images(tiny_data, 2))
    assert ex.relative_diff(OnnxRuntimeModel(out, threads=1)(x)[0].numpy(), torch_pred(pruned, x)) <= 1e-4
    # and as Darknet files for OpenCV DNN (export.py runs them in OpenCV: exit status 0 = equal outputs)
    cfg_path, weights_path = export.main(['--weights', str(pruned), '--data', tiny_data, '--format', 'darknet',
                                          '--out', str(tmp_path / 'dk' / 'pruned.weights'), *FAST])
    assert cfg_path.read_text() == Path(paths['cfg']).read_text()
    assert weights_path.read_bytes() == Path(paths['weights']).read_bytes()


# ----------------------------------------------------------------------------- quantized exports

class TinyFakeQuant(nn.Module):
    """Fake-quantized input (per tensor) -> conv with fake-quantized weights (per channel) ->
    fake-quantized output (per tensor): the ops a quantization-aware conv calls."""

    def __init__(self, act_range, weight_range):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act_range, self.weight_range = act_range, weight_range
        # the codes a quantization-aware conv uses: overflow-safe under 8-bit activations
        code_max = safe_weight_code_max(8 if weight_range[1] > 7 else 4, *act_range)
        self.w_scale = self.conv.weight.detach().abs().amax((1, 2, 3)) / code_max
        self.out_scale = 0.05

    def forward(self, x):
        lo, hi = self.act_range
        x = torch.fake_quantize_per_tensor_affine(x, 1.0 / hi, 0, lo, hi)  # [0, 1] images
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale,
                                                   torch.zeros(8, dtype=torch.int32), 0, *self.weight_range)
        y = F.conv2d(x, w, self.conv.bias, padding=1)
        return torch.fake_quantize_per_tensor_affine(y, self.out_scale, 0, -128, 127), None  # like (pred, raw)


@pytest.mark.parametrize('act_range, weight_range', [((0, 255), (-128, 127)), ((0, 15), (-8, 7)),
                                                     ((0, 255), (-127, 127))])
def test_fake_quant_ops_export_as_qdq(act_range, weight_range):
    """TorchScript exporter (dynamo=False) + our symbolics: every fake-quant op becomes
    QuantizeLinear/DequantizeLinear (4-bit and narrow ranges with an integer Clip), and ONNX
    Runtime reproduces PyTorch within one step of the output quantizer, on any x86 CPU: the
    weight codes are overflow-safe (tests/test_int8_overflow.py)."""
    torch.manual_seed(0)
    module = TinyFakeQuant(act_range, weight_range).eval()
    x = torch.rand(2, 3, 16, 16)
    proto = onnx.load_from_string(ex.onnx_bytes(module, x))
    counts = ex.op_counts(proto)
    assert counts.get('QuantizeLinear') == counts.get('DequantizeLinear') == 3
    assert not any(n.domain not in ('', 'ai.onnx') for n in proto.graph.node)
    assert ex.int8_overflow_risks(proto) == []
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=['CPUExecutionProvider'])
    got = session.run(None, {'images': x.numpy()})[0]
    with torch.no_grad():
        want = module(x)[0].numpy()
    assert np.abs(got - want).max() <= module.out_scale + 1e-6
    assert np.mean(got == want) > 0.95  # off by a step only where x / s and x * (1 / s) round apart


def test_quantization_aware_checkpoint_exports_its_own_scales(ckpt, tiny_data, tmp_path):
    """A quantization-aware checkpoint (utils.compress.quant: 4-bit, BN fold, power-of-two scales, the
    observers' ranges in its state dict) exports as QDQ with no flags, carrying the model's
    own activation scales; with power-of-two scales ONNX Runtime's arithmetic is exact, so it
    equals PyTorch's fake quantization to float rounding."""
    from utils.compress.quant import ActQuant, QuantSpec, calibrate, quantize_model
    spec = QuantSpec('google', a_bits=4, w_bits=4, bn_fold=True, fpga=True)
    model = quantize_model(models.model_from_checkpoint(ckpt, img_size=IMG)[0], spec)
    calibrate(model.eval(), [torch.from_numpy(ex.dataset_images(train_list(tiny_data), IMG, 4))], 4)
    qat = tmp_path / 'qat.pt'
    models.save_checkpoint(qat, model, names=names_of(tiny_data), quant=spec.to_dict())
    out, = export.main(['--weights', str(qat), '--data', tiny_data, *FAST])
    proto = onnx.load(str(out))
    runtime = OnnxRuntimeModel(out, threads=1)
    assert runtime.precision == 'qat' and ex.op_counts(proto)['QuantizeLinear'] > 0
    own = {float(q.qparams()[0]) for q in model.modules() if isinstance(q, ActQuant)}
    assert own <= scales_feeding(proto, 'QuantizeLinear')
    check = torch.from_numpy(images(tiny_data, 2))
    with torch.no_grad():
        ref = model(check)[0].numpy()
    assert ex.relative_diff(runtime(check)[0].numpy(), ref) <= 1e-4


def train_list(data):
    from utils.parse_config import parse_data_cfg
    return parse_data_cfg(data)['train']


def scales_feeding(proto, op_type):
    """Scalar scale values (input 1) of every ``op_type`` node, from initializers or Constant nodes."""
    from onnx import numpy_helper
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == 'Constant':
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return {float(values[n.input[1]]) for n in proto.graph.node
            if n.op_type == op_type and n.input[1] in values and values[n.input[1]].size == 1}


def test_int8_qdq_around_convs_only_and_map_in_test_py(fitted, tmp_path, capsys):
    """Static INT8: Q/DQ pairs only at conv inputs, weights and outputs; the head convs and the
    decode in float; test.py on the .onnx gives PyTorch's mAP within INT8_MAP_TOL."""
    import test as testpy
    from utils.evaluation import evaluate
    from utils.datasets import create_dataloader
    weights, data = fitted
    out, = export.main(['--weights', str(weights), '--data', data, '--int8', '--calib', '4',
                        '--out', str(tmp_path / 'int8.onnx'), *FAST])
    proto = onnx.load(str(out))
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_output = {o: n for n in proto.graph.node for o in n.output}
    pairs = [(q, c) for q in proto.graph.node if q.op_type == 'QuantizeLinear' for c in consumers[q.output[0]]]
    assert pairs and all(dq.op_type == 'DequantizeLinear' for _, dq in pairs)
    for q, dq in pairs:  # each pair quantizes a conv's input, weight or output
        producer = by_output.get(q.input[0])
        assert (producer is not None and producer.op_type == 'Conv') or \
            any(c.op_type == 'Conv' for c in consumers[dq.output[0]]), q.name
    heads = ex.head_conv_nodes(proto)
    assert len(heads) == 3
    for node in proto.graph.node:
        feeders = [by_output[i].op_type for i in node.input if i in by_output]
        if node.name in heads or node.op_type in ('Sigmoid', 'Exp', 'Mul', 'ScatterND', 'Reshape', 'Transpose'):
            assert 'DequantizeLinear' not in feeders, f'{node.name} ({node.op_type}) must run in float'
        if node.name in heads:
            assert all(c.op_type != 'QuantizeLinear' for c in consumers[node.output[0]])
    assert OnnxRuntimeModel(out, threads=1).precision == 'int8'

    metrics = testpy.run(testpy.parse_args(['--weights', str(out), '--data', data, '--img-size', '160',
                                            '--workers', '0', '--project', str(tmp_path / 'runs'), '--device',
                                            'cpu']))
    log = capsys.readouterr().out
    assert f'--img-size 160 -> {IMG}' in log and 'square' in log
    model, _ = models.load_model('', str(weights), IMG, 'cpu')
    loader, _ = create_dataloader(train_list(data), IMG, 16, augment=False, rect=False, workers=0, nc=5)
    names = names_of(data)
    reference = evaluate(model.fuse(), loader, names)
    assert reference['map50'] > 0.5, 'the fitted model must detect something for the comparison to mean anything'
    assert abs(metrics['map50'] - reference['map50']) <= INT8_MAP_TOL, (metrics['map50'], reference['map50'])


def test_fp32_exports_give_the_pt_map_in_test_py(fitted, tmp_path):
    """test.py on the FP32 .onnx and on its OpenVINO IR reproduces test.py --square on the .pt
    (the same square batches) to 0.001 mAP."""
    import test as testpy
    weights, data = fitted

    def map_of(path, *flags):
        return testpy.run(testpy.parse_args(['--weights', str(path), '--data', data, '--img-size', str(IMG),
                                             '--workers', '0', '--project', str(tmp_path / 'runs'), *flags]))
    onnx_path, = export.main(['--weights', str(weights), '--data', data, '--out', str(tmp_path / 'm.onnx'), *FAST])
    ir, = export.main(['--weights', str(weights), '--data', data, '--format', 'openvino',
                       '--out', str(tmp_path / 'm_openvino'), *FAST])
    reference = map_of(weights, '--square')
    assert reference['map50'] > 0.5
    for exported in (onnx_path, ir):
        got = map_of(exported)
        assert abs(got['map50'] - reference['map50']) <= 0.001 and abs(got['map50_95'] - reference['map50_95']) <= 0.001


# ----------------------------------------------------------------------------- errors

def test_not_a_model_is_one_clear_line(tmp_path, tiny_data):
    junk = tmp_path / 'notes.pt'
    junk.write_text('not a checkpoint\n')
    r = subprocess.run([sys.executable, 'export.py', '--weights', str(junk), '--data', tiny_data], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and str(junk) in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.pt']  # nothing written
    fake = tmp_path / 'fake.weights'
    fake.write_bytes(b'\x00' * 100)
    for argv, message in ((['--weights', str(fake), '--cfg', CFG], 'does not match the cfg'),
                          (['--weights', str(tmp_path / 'x.onnx')], 'already an exported model'),
                          (['--weights', str(junk), '--int8', '--format', 'darknet'], '--int8 applies to')):
        with pytest.raises(SystemExit, match=message):
            export.main([*argv, '--data', tiny_data])


def narrow(cfg, factor=8):
    """The cfg at 1/factor width (even filter counts; depthwise groups follow their filters;
    head convs unchanged): the same graph (route groups, Mish, SE, depthwise) at test cost."""
    from utils.parse_config import parse_cfg
    sections = parse_cfg(cfg)
    heads = {i - 1 for i, d in enumerate(sections[1:]) if d['type'] == 'yolo'}
    for i, d in enumerate(sections[1:]):
        if d['type'] == 'convolutional' and i not in heads:
            depthwise = d['groups'] > 1 and d['groups'] == d['filters']
            d['filters'] = max(2, d['filters'] // factor // 2 * 2)
            if depthwise:
                d['groups'] = d['filters']
    return sections


@pytest.mark.parametrize('name', ['yolov3-tiny', 'yolov4-tiny', 'yolov4', 'yolov3-mobilenet'])
def test_model_zoo_exports_equal_pytorch_in_both_runtimes(name, tmp_path):
    """Every supported architecture (route groups, Mish, SPP, depthwise + SE) exports with a
    dynamic batch; ONNX Runtime (batch 1 and 4) and OpenVINO reproduce PyTorch within 1e-4."""
    model = randomize(models.Darknet(narrow(ROOT / 'cfg' / f'{name}.cfg'), img_size=IMG), size=IMG).eval()
    with torch.no_grad():  # heads of a trained model's magnitude: random ones give exp(t) boxes of 1e6 px
        for i in model.yolo_layers:
            conv = model.module_list[i - 1].Conv2d
            conv.weight.mul_(0.5 / conv.weight.abs().sum((1, 2, 3), keepdim=True).clamp_min(1e-6))
            conv.bias.zero_()
    x = torch.rand(4, 3, IMG, IMG)
    with torch.no_grad():
        ref = model(x)[0].numpy()
    path = tmp_path / f'{name}.onnx'
    path.write_bytes(ex.onnx_bytes(model, x[:1], dynamic=True))
    runtime = OnnxRuntimeModel(path, threads=1)
    for n in (1, 4):
        assert ex.relative_diff(runtime.run(x[:n].numpy()), ref[:n]) <= 1e-4
    xml = ex.export_openvino(path, tmp_path / f'{name}_openvino', {'names': None, 'nc': model.nc,
                                                                     'stride': model.stride.tolist(),
                                                                     'img_size': [IMG, IMG], 'precision': 'fp32'})
    assert ex.relative_diff(OpenVinoModel(str(xml), threads=1).run(x.numpy()), ref) <= 1e-4
