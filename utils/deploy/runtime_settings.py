"""Runtime settings shared by the deployed runners (utils.deploy.backends: test.py, detect.py) and the
latency runners (utils.deploy.latency: bench/run.py, compress.py, ...), so what the benchmarks time
is what the scripts run. bench/tune_runtimes.py times each alternative against these defaults,
one change at a time; bench/tuning.md holds the measurements behind them.

No torch and no runtime import at module level: the latency workers import this before
their runtime, and only the runtime they time.
"""

# names of onnxruntime.GraphOptimizationLevel members; 'all' (ORT's own default) adds the
# layout transformations (NCHWc convs, QLinearConv in NHWC) to the fusions of 'extended'
ORT_OPT_LEVELS = {'disable': 'ORT_DISABLE_ALL', 'basic': 'ORT_ENABLE_BASIC', 'extended': 'ORT_ENABLE_EXTENDED',
                  'all': 'ORT_ENABLE_ALL'}


def ort_session_options(threads, opt_level='all', spinning=True):
    """onnxruntime.SessionOptions: ``threads`` intra-op threads and one inter-op thread (the
    graphs are a chain: parallel branches gain nothing), graph optimisation ``opt_level``
    (a key of ORT_OPT_LEVELS); ``spinning=False`` lets the intra-op pool sleep between calls."""
    import onnxruntime as ort
    if opt_level not in ORT_OPT_LEVELS:
        raise ValueError(f'ONNX Runtime optimisation level {opt_level!r}: use one of {", ".join(ORT_OPT_LEVELS)}')
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPT_LEVELS[opt_level])
    if not spinning:
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return options


def openvino_config(threads, precision='f32', hint='LATENCY', streams=1, cache_dir=None):
    """The CPU plugin's compile_model config. ``precision`` 'f32' keeps float layers in FP32
    (CPUs with AVX-512 BF16 or AMX would pick bf16 and lose ~3 significant digits; INT8 layers
    of a QDQ graph stay INT8 either way), None lets the plugin choose; ``threads`` None lets
    the hint choose; ``hint`` None (no PERFORMANCE_HINT) and ``streams`` None (the hint's count)
    leave those to the plugin; ``cache_dir`` turns on OpenVINO's compiled-model cache there
    (a shorter compile_model on later loads; inference is the same)."""
    config = {}
    if precision:
        config['INFERENCE_PRECISION_HINT'] = precision
    if threads:
        config['INFERENCE_NUM_THREADS'] = int(threads)
    if streams:
        config['NUM_STREAMS'] = int(streams)
    if hint:
        config['PERFORMANCE_HINT'] = hint
    if cache_dir:
        config['CACHE_DIR'] = str(cache_dir)
    return config
