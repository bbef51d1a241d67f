"""utils.deploy.runtime_settings: the one place the deployed and the benchmark runners take their
ONNX Runtime and OpenVINO settings from."""
import pytest

from utils.deploy.runtime_settings import ORT_OPT_LEVELS, openvino_config, ort_session_options


def test_ort_options_defaults_and_levels():
    import onnxruntime as ort
    o = ort_session_options(2)
    assert (o.intra_op_num_threads, o.inter_op_num_threads) == (2, 1)
    assert o.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default, spinning on
        o.get_session_config_entry('session.intra_op.allow_spinning')
    for level, name in ORT_OPT_LEVELS.items():
        assert ort_session_options(1, level).graph_optimization_level == getattr(ort.GraphOptimizationLevel, name)
    assert ort_session_options(1, spinning=False).get_session_config_entry('session.intra_op.allow_spinning') == '0'
    with pytest.raises(ValueError, match='optimisation level'):
        ort_session_options(1, 'fastest')


def test_openvino_config():
    assert openvino_config(2) == {'INFERENCE_PRECISION_HINT': 'f32', 'INFERENCE_NUM_THREADS': 2, 'NUM_STREAMS': 1,
                                  'PERFORMANCE_HINT': 'LATENCY'}
    assert openvino_config(None, precision=None, hint=None, streams=None) == {}
    assert openvino_config(1, cache_dir='ov-cache')['CACHE_DIR'] == 'ov-cache'


def test_backends_and_latency_use_them(tmp_path):
    """An OpenVINO model with a cache folder fills it and gives the same output as without."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from utils.deploy.latency import openvino_runner, ort_runner
    graph = helper.make_graph([helper.make_node('Relu', ['images'], ['pred'])], 'g',
                              [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info('pred', TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / 'relu.onnx'
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), str(path))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = np.maximum(x, 0)
    assert np.array_equal(ort_runner(path, 1, opt_level='basic', spinning=False)(x)[0], ref)
    cache = tmp_path / 'cache'
    out = openvino_runner(path, 1, 8, 1, cache_dir=str(cache))(x)[0]
    assert np.array_equal(out, ref) and any(cache.iterdir())
