"""utils.inference.load_inference_model: the one loader of test.py, detect.py and export.py, and
the one set of words for a --weights they cannot run."""
import re
from pathlib import Path

import pytest
import torch

import detect
import export
import models
import test as test_script
from test_imports import import_graph
from utils.deploy.backends import ExportedModel
from utils.inference import load_inference_model, weights_kind
from utils.compress.quant import QuantSpec, spec_of

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'cfg' / 'yolov3-tiny-shapes.cfg'
IMG = 128


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A float tiny .pt, its Darknet .weights and its fixed-size ONNX export."""
    from utils.deploy.export import onnx_bytes
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp('inference')
    model = models.Darknet(str(TINY), img_size=IMG).eval()
    models.save_checkpoint(tmp / 'm.pt', model, names=['a', 'b', 'c', 'd', 'e'])
    models.save_weights(model, tmp / 'm.weights')
    fused = models.Darknet(str(TINY), img_size=IMG)
    fused.load_state_dict(model.state_dict())
    fused = fused.eval().fuse()
    for p in fused.parameters():
        p.requires_grad_(True)  # see utils.deploy.export.onnx_bytes
    (tmp / 'm.onnx').write_bytes(onnx_bytes(fused, torch.zeros(1, 3, IMG, IMG)))
    return {'pt': tmp / 'm.pt', 'weights': tmp / 'm.weights', 'onnx': tmp / 'm.onnx', 'model': model, 'dir': tmp}


def test_every_kind_of_weights_loads_to_the_same_predictions(files):
    x = torch.rand(1, 3, IMG, IMG)
    want = files['model'](x)[0]
    pt, entries = load_inference_model(files['pt'], img_size=IMG)
    dark, none = load_inference_model(files['weights'], TINY, img_size=IMG)
    onnx, meta = load_inference_model(files['onnx'])
    assert entries['names'] == ['a', 'b', 'c', 'd', 'e'] and 'model' not in entries and none == {}
    assert isinstance(onnx, ExportedModel) and onnx.input_hw == (IMG, IMG) and meta == {}
    assert not pt.training and not dark.training
    torch.testing.assert_close(pt(x)[0], want, rtol=0, atol=0)
    torch.testing.assert_close(dark(x)[0], want, rtol=0, atol=0)
    torch.testing.assert_close(onnx(x)[0], want, rtol=1e-4, atol=1e-3)


def test_flags_quantize_a_float_checkpoint_and_calibrate_it(files):
    spec = QuantSpec('google', 8, 8)
    with pytest.raises(ValueError, match='add --calib N'):
        load_inference_model(files['pt'], img_size=IMG, quant=spec)
    model, _ = load_inference_model(files['pt'], img_size=IMG, quant=spec, calib=4, data='data/shapes.data')
    assert spec_of(model) == spec and not model.training


def test_weights_kind():
    assert weights_kind('') == '' and weights_kind('x.onnx') == 'export' and weights_kind(ROOT / 'cfg') == 'export'
    assert weights_kind(TINY.with_name('nowhere.xml')) == 'export'  # load_exported says it is not there
    assert weights_kind(ROOT / 'README.md') == 'darknet'  # any other file: Darknet's own checks judge it


@pytest.mark.parametrize('case', ['missing', 'cfg', 'openvino bin', 'quantized export'])
def test_the_three_scripts_say_the_same_about_bad_weights(files, tmp_path, case):
    """test.py, detect.py and export.py end with one identical error line for the same bad --weights
    (export.py refuses an export whatever the flags)."""
    weights, flags = {'missing': (tmp_path / 'nope.pt', []), 'cfg': (TINY, []),
                      'openvino bin': (tmp_path / 'm.bin', []),
                      'quantized export': (files['onnx'], ['--quantized', '1', '--calib', '4'])}[case]
    (tmp_path / 'm.xml').write_text('<net/>')
    (tmp_path / 'm.bin').write_bytes(b'')
    pattern = {'missing': r'--weights .*nope\.pt not found$', 'cfg': r'is a model cfg: pass it as --cfg',
               'openvino bin': r'holds the weights of the OpenVINO model .*m\.xml',
               'quantized export': r'm\.onnx: quantization flags \(--quantized, --calib\) apply to \.pt/\.weights'}[case]
    runs = {'test.py': lambda: test_script.main(['--weights', str(weights), '--project', str(tmp_path / 'runs'),
                                                 '--device', 'cpu', *flags]),
            'detect.py': lambda: detect.main(['--weights', str(weights), '--source', str(ROOT / 'data' / 'shapes' /
                                              'images'), '--project', str(tmp_path / 'runs'), '--device', 'cpu',
                                              *flags])}
    if case != 'quantized export':
        runs['export.py'] = lambda: export.main(['--weights', str(weights), '--out', str(tmp_path / 'out.onnx'),
                                                 *flags])
    messages = {}
    for script, run in runs.items():
        with pytest.raises(SystemExit) as e:
            run()
        messages[script] = str(e.value.code)
    assert len(set(messages.values())) == 1, messages
    msg = messages['test.py']
    assert msg.startswith('error: ') and '\n' not in msg, msg
    assert re.search(pattern, msg), msg
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'out.onnx').exists()


def test_export_refuses_an_export_before_deriving_its_output(files):
    with pytest.raises(SystemExit, match=r'm\.onnx is already an exported model; export\.py reads \.pt'):
        export.main(['--weights', str(files['onnx'])])  # its default output would be the input itself


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_inference_code_does_not_import_the_training_engine():
    graph = import_graph()
    for start in ('utils.inference', 'test', 'detect', 'export', 'utils.deploy.export', 'utils.deploy.backends'):
        assert 'utils.trainer' not in reachable(graph, start), start
    for script in ('test', 'detect', 'export'):
        assert 'utils.inference' in reachable(graph, script), script
