"""Latency measurement shared by bench/run.py, bench/bench_quant.py and compress.py: one
runner per runtime (``fn(x numpy [B,3,H,W] float32) -> outputs``) and interleaved timing, so
every runtime is timed the same way and machine noise hits all alike."""
import statistics
import time

import numpy as np
import torch


def darknet_runner(cfg_path, weights_path, threads):
    """OpenCV DNN on Darknet cfg + .weights files (e.g. export.py --format darknet)."""
    import cv2
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    names = net.getUnconnectedOutLayersNames()

    def run(x):
        net.setInput(x)
        return net.forward(names)
    return run


def torch_runner(model, channels_last=False):
    def run(x):
        t = torch.from_numpy(x)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(t)
    return run


def ort_runner(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_runner(path, batch, size, threads):
    """OpenVINO compiled for this batch (a static shape is faster than a dynamic one)."""
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([batch, 3, size, size])
    compiled = core.compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32', 'INFERENCE_NUM_THREADS': threads,
                                                 'NUM_STREAMS': 1, 'PERFORMANCE_HINT': 'LATENCY'})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def time_interleaved(runners, x, runs, warmup=2):
    """{name: [seconds]} over ``runs`` rounds, each round calling every runner once in turn.
    A runner that fails (e.g. OpenCV on a batch its layers do not support) is dropped."""
    alive = {}
    for name, run in runners.items():
        try:
            for _ in range(warmup):
                run(x)
            alive[name] = run
        except Exception as e:  # a runtime that cannot run this model/batch gets no row, not a crash
            print(f'  {name}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:100]})')
    times = {name: [] for name in alive}
    for _ in range(runs):
        for name, run in alive.items():
            t = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - t)
    return times


def summarize(seconds, gflops_per_image, batch, opencv_ms):
    ms = np.array(seconds) * 1e3
    median = float(statistics.median(ms))
    return {'median_ms': median, 'p10_ms': float(np.percentile(ms, 10)), 'p90_ms': float(np.percentile(ms, 90)),
            'gflops_per_s': gflops_per_image * batch / (median / 1e3),
            'ratio_to_opencv': median / opencv_ms if opencv_ms else None}
