"""bench/tune_runtimes.py's decode-outside variant: raw head tensors out of ONNX Runtime or
OpenVINO, decoded in numpy, must give the model's own predictions (scale_x_y included), and
the INT8 raw-heads graph keeps its head convs float as quantize_int8 does on the full graph."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
pytest.importorskip('onnxruntime')

import models  # noqa: E402
from darknet_ref import randomize  # noqa: E402

SIZE = 128


@pytest.fixture(scope='module')
def raw_graph(tmp_path_factory):
    import tune_runtimes
    model = randomize(models.Darknet(str(ROOT / 'cfg/yolov4-tiny.cfg'), img_size=SIZE), size=SIZE).eval()
    fused = model.fuse()
    path = tmp_path_factory.mktemp('raw') / 'raw.onnx'
    tune_runtimes.raw_heads_onnx(fused, SIZE, path)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = fused(x)[0].numpy()
    return tune_runtimes, model, path, x[:1].numpy(), pred[:1]


@pytest.mark.parametrize('runtime', ['ort', 'openvino'])
def test_decode_outside_equals_the_model(raw_graph, runtime):
    if runtime == 'openvino':
        pytest.importorskip('openvino')
    tune_runtimes, model, path, x, pred = raw_graph
    spec = tune_runtimes.decode_spec(model, SIZE)
    assert any(s['scale_x_y'] != 1 for s in spec)  # the scale_x_y branch is exercised
    run = tune_runtimes.decode_outside_runner(path, 1, spec, SIZE, runtime)
    got = run(x)
    assert got.shape == pred.shape
    box_scale = np.abs(pred[..., :4]).max()
    np.testing.assert_allclose(got[..., :4], pred[..., :4], atol=1e-4 * box_scale)
    np.testing.assert_allclose(got[..., 4:], pred[..., 4:], atol=1e-4)


def test_int8_raw_graph_keeps_heads_float(raw_graph, tmp_path):
    import onnx

    from utils.deploy.export import head_conv_nodes, quantize_int8
    tune_runtimes, model, path, x, pred = raw_graph
    images = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    out = tmp_path / 'int8_raw.onnx'
    excluded = quantize_int8(path, out, images)
    heads = head_conv_nodes(onnx.load(str(path)))
    assert len(heads) == len(model.yolo_layers) and set(heads) <= set(excluded)
    proto = onnx.load(str(out))
    produced = {o: n for n in proto.graph.node for o in n.output}
    for output in proto.graph.output:  # each raw head comes straight from a float Conv
        assert produced[output.name].op_type == 'Conv'
