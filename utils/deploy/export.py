"""Export a model to ONNX (FP32, static INT8 QDQ, or a quantization-aware model's own QDQ),
OpenVINO IR and Darknet cfg + .weights; every export is checked against PyTorch on a real
image right after it is written. ``export.py`` is the command line; ``run(opt)`` does the work.

Graph layout (ONNX and OpenVINO): input ``images`` float32 [B, 3, H, W] in [0, 1] (RGB,
letterboxed as test.py does), output ``pred`` float32 [B, N, 5+nc] = the PyTorch eval output
(cx, cy, w, h in input pixels, objectness, class probabilities; rows head, anchor, y, x).
H and W are fixed; B is fixed or dynamic (``--dynamic``). Metadata (class names, strides,
input size, precision) travels in the ONNX ``metadata_props`` / OpenVINO ``rt_info`` under
``utils.deploy.backends.META_KEY``.

Quantized graphs:
  * post-training INT8 (``--int8``): ``onnxruntime.quantization.quantize_static``, QDQ format,
    signed 8-bit activations and per-channel weights in [-64, 64] (``reduce_range``: see
    ``int8_overflow_risks``), calibrated on training images. Only
    Conv nodes are quantized and the head convs (those whose output reaches the decode
    without passing another conv) stay float, so the decode (sigmoid, exp, grid arithmetic,
    concat) and the raw head outputs it amplifies run in float.
  * quantization-aware models (convs calling ``torch.fake_quantize_per_*_affine``): exported
    as they are, every fake-quant op becoming a QuantizeLinear/DequantizeLinear pair with the
    model's own scales and zero points (see ``fake_quant_symbolics``).
  Every quantized graph is checked for int8 overflow (``int8_overflow_risks``): x86 CPUs without
  VNNI add u8 x s8 product pairs in int16 and saturate unless 2 x max byte x max |weight code|
  <= 32767. A graph that passes is correct on every x86 CPU; one that does not (a checkpoint
  trained with ``--full-range``, or from before overflow-safe weights) is marked
  ``int8_needs_vnni`` in its metadata, refused on this CPU if it lacks VNNI, and refused by
  utils.deploy.backends on such CPUs.

Tolerances of the check (``verify_*``): FP32 graphs max |runtime - torch| / (1 + |torch|)
<= FP32_TOL over all outputs (boxes in pixels, scores); Darknet files in OpenCV DNN: the same
measure against PyTorch run with OpenCV's BN epsilon (1e-6, Darknet's is 1e-5), <= FP32_TOL;
quantized graphs: the detections after NMS
(conf >= INT8_CONF, IoU 0.6) must agree with PyTorch's: F1 of the one-to-one matching at
IoU >= 0.5 with the same class >= INT8_MIN_F1.
"""
import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.deploy.backends import META_KEY, OnnxRuntimeModel, OpenVinoModel
from utils.general import (INT16_MAX, atomic_write_bytes, atomic_write_text, cpu_flags, int8_kernels_saturate,
                           new_temp_dir)
from utils.inference import load_inference_model, weights_kind

FORMATS = ('onnx', 'openvino', 'darknet', 'qparams')
MIN_OPSET, MAX_OPSET = 13, 20  # 13: per-channel QDQ; 20: the TorchScript exporter's last opset
FP32_TOL = 1e-4
OPENCV_BN_EPS = 1e-6  # OpenCV DNN's BatchNorm epsilon (Darknet and our models: 1e-5)
INT8_CONF, INT8_MIN_F1 = 0.25, 0.8
CHECK_IMAGES = 4  # validation images every export is checked on (at least --batch-size)
INPUT_NAME, OUTPUT_NAME = 'images', 'pred'


# ----------------------------------------------------------------------------- fake-quant ops -> QDQ

def _fake_quant_nodes(g, x, scale, zero_point, qmin, qmax, axis=None):
    """ONNX nodes computing torch's fake_quantize: clamp(round(x/s) + z, qmin, qmax) - z) * s.

    An integer range that fits int8 ([-128, 127]) or uint8 ([0, 255]) becomes
    QuantizeLinear -> [Clip to the narrower range] -> DequantizeLinear (narrow ranges: 4-bit,
    symmetric [-127, 127], ... are exact this way, the Clip running on the integers); a wider
    range (16 bits) has no 8-bit representation and is written as the float arithmetic
    (Round is half-to-even in both ONNX and torch)."""
    onnx_int8, onnx_uint8, onnx_float = 3, 2, 1  # TensorProto data types
    axis_kw = {} if axis is None else {'axis_i': axis}
    scale = g.op('Cast', scale, to_i=onnx_float)
    if qmin >= -128 and qmax <= 127 or qmin >= 0 and qmax <= 255:
        signed = qmin < 0
        int_type, type_lo, type_hi = (onnx_int8, -128, 127) if signed else (onnx_uint8, 0, 255)
        zp = g.op('Cast', zero_point, to_i=int_type)
        q = g.op('QuantizeLinear', x, scale, zp, **axis_kw)
        if (qmin, qmax) != (type_lo, type_hi):
            dtype = torch.int8 if signed else torch.uint8
            lo = g.op('Constant', value_t=torch.tensor(qmin, dtype=dtype))
            hi = g.op('Constant', value_t=torch.tensor(qmax, dtype=dtype))
            q = g.op('Clip', q, lo, hi)
        return g.op('DequantizeLinear', q, scale, zp, **axis_kw)
    if axis is not None:  # broadcast the per-channel parameters along ``axis``
        rank = x.type().dim()
        shape = g.op('Constant', value_t=torch.tensor([-1 if d == axis else 1 for d in range(rank)]))
        scale = g.op('Reshape', scale, shape)
        zero_point = g.op('Reshape', zero_point, shape)
    zp = g.op('Cast', zero_point, to_i=onnx_float)
    # x * (1 / s) rather than x / s: torch's kernel multiplies by the reciprocal, and the two
    # round differently at ties
    inv_scale = g.op('Reciprocal', scale)
    q = g.op('Add', g.op('Round', g.op('Mul', x, inv_scale)), zp)
    q = g.op('Clip', q, g.op('Constant', value_t=torch.tensor(float(qmin))),
             g.op('Constant', value_t=torch.tensor(float(qmax))))
    return g.op('Mul', g.op('Sub', q, zp), scale)


@contextlib.contextmanager
def fake_quant_symbolics(opset):
    """Register our ONNX translations of ``aten::fake_quantize_per_tensor_affine`` and
    ``..._per_channel_affine`` (and ``aten::exp2``, which power-of-two scales use) for the
    TorchScript exporter while the block runs.

    The built-in ones accept only the ranges (-128, 127), (0, 255), (0, 127) and refuse the
    4-bit and narrow symmetric ranges QAT uses; ours handle any range (see _fake_quant_nodes)."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper, unregister_custom_op_symbolic

    @symbolic_helper.parse_args('v', 'v', 'v', 'i', 'i')
    def per_tensor(g, x, scale, zero_point, qmin, qmax):
        return _fake_quant_nodes(g, x, scale, zero_point, qmin, qmax)

    @symbolic_helper.parse_args('v', 'v', 'v', 'i', 'i', 'i')
    def per_channel(g, x, scale, zero_point, axis, qmin, qmax):
        return _fake_quant_nodes(g, x, scale, zero_point, qmin, qmax, axis)

    def exp2(g, x):  # power-of-two scales (utils.compress.quant's FPGA mode); no built-in translation
        return g.op('Pow', g.op('Constant', value_t=torch.tensor(2.0)), x)

    ops = {'aten::fake_quantize_per_tensor_affine': per_tensor,
           'aten::fake_quantize_per_channel_affine': per_channel, 'aten::exp2': exp2}
    for name, fn in ops.items():
        register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in ops:
            unregister_custom_op_symbolic(name, opset)


# ----------------------------------------------------------------------------- ONNX

class PredOnly(nn.Module):
    """The eval model's decoded output alone: x [B,3,H,W] -> pred [B, N, 5+nc] (the raw head
    tensors the eval forward also returns are training/analysis data, not deployed)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def onnx_bytes(model, example, dynamic=False, opset=17):
    """Serialized ONNX of ``model`` (eval mode) traced on ``example`` [B,3,H,W] with the
    TorchScript exporter (``dynamo=False``): it translates fake-quant ops to QDQ, and the
    dynamo exporter needs onnxscript, which the export requirements do not carry."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f'--opset {opset}: use {MIN_OPSET}..{MAX_OPSET} (13 is the first with per-channel '
                         f'QuantizeLinear, {MAX_OPSET} the last of the TorchScript exporter)')
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}} if dynamic else None
    # Gradients on (as in training) make MaxPool export as MaxPool: the eval model's
    # no-grad fast path (strided maxima of slices) would become Slice/Max chains
    # The tracer warns where Python numbers derive from shapes (decode grid, strides): they are
    # constants of a graph whose H and W are fixed, which is what an export with fixed H, W wants
    with fake_quant_symbolics(opset), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', 'You are using the legacy TorchScript', DeprecationWarning)  # chosen
        warnings.filterwarnings('ignore', 'The feature will be removed', DeprecationWarning)  # its internals
        torch.onnx.export(PredOnly(model).eval(), (example,), buffer, opset_version=opset, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)
    return buffer.getvalue()


def set_metadata(proto, meta):
    """Store ``meta`` (JSON-able dict) in the ONNX model's metadata_props (replacing ours)."""
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    return proto


def update_metadata_file(path, **entries):
    """Add ``entries`` to the metadata of the ONNX file at ``path`` (rewritten atomically)."""
    import onnx
    proto = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}.get(META_KEY, '{}'))
    atomic_write_bytes(path, set_metadata(proto, {**meta, **entries}).SerializeToString())


def simplify(proto):
    """onnxslim's graph simplification (constant folding, dead nodes, shape ops)."""
    import onnxslim
    return onnxslim.slim(drop_empty_reduce_axes(proto))


def drop_empty_reduce_axes(proto):
    """Remove ``axes=[]`` attributes of Reduce* nodes (torch writes them for a reduction over
    all dimensions, e.g. a per-tensor weight range), which onnxslim cannot write back; a
    missing ``axes`` attribute means the same: reduce over all dimensions."""
    for node in proto.graph.node:
        if node.op_type.startswith('Reduce'):
            kept = [a for a in node.attribute if not (a.name == 'axes' and not a.ints)]
            if len(kept) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)
    return proto


def op_counts(proto):
    counts = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def head_conv_nodes(proto):
    """Names of the Conv nodes whose output reaches a graph output without passing another
    Conv: the detection-head convs feeding the decode."""
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}

    def reaches_output(tensor, seen):
        if tensor in outputs:
            return True
        for node in consumers.get(tensor, []):
            if node.op_type == 'Conv' or id(node) in seen:
                continue
            seen.add(id(node))
            if any(reaches_output(t, seen) for t in node.output):
                return True
        return False

    return [n.name for n in proto.graph.node if n.op_type == 'Conv' and reaches_output(n.output[0], set())]


def _constants(proto):
    """{tensor name: numpy array} of the graph's initializers and Constant nodes."""
    from onnx import numpy_helper
    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == 'Constant':
            for attr in node.attribute:
                if attr.name == 'value':
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _integer_range(tensor, producers, values):
    """(lo, hi, signed) of the integer codes feeding a DequantizeLinear: the range of the
    quantized type, narrowed by a Clip with constant bounds (4-bit, symmetric ranges)."""
    node = producers.get(tensor)
    if node is not None and node.op_type == 'Clip':
        lo, hi, signed = _integer_range(node.input[0], producers, values)
        if len(node.input) > 1 and node.input[1] in values:
            lo = max(lo, int(values[node.input[1]]))
        if len(node.input) > 2 and node.input[2] in values:
            hi = min(hi, int(values[node.input[2]]))
        return lo, hi, signed
    if node is not None and node.op_type == 'QuantizeLinear' and len(node.input) > 2 and node.input[2] in values:
        signed = values[node.input[2]].dtype == np.int8
    elif tensor in values:
        signed = values[tensor].dtype == np.int8
    else:
        signed = True
    return (-128, 127, True) if signed else (0, 255, False)


def _weight_code_max(dq, producers, values):
    """max |code - zero point| of a DequantizeLinear of constant weights (stored codes, or a
    QuantizeLinear of float weights computed here as ONNX does), else the type's 127."""
    zp = values.get(dq.input[2]) if len(dq.input) > 2 else None
    codes, node = values.get(dq.input[0]), producers.get(dq.input[0])
    clip = None
    if node is not None and node.op_type == 'Clip':
        clip = _integer_range(dq.input[0], producers, values)[:2]
        node = producers.get(node.input[0])
    if codes is None and node is not None and node.op_type == 'QuantizeLinear' and \
            all(t in values for t in node.input[:3]):
        w, scale, q_zp = (values[t] for t in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == 'axis'), 1)
        shape = [-1 if d == axis % w.ndim else 1 for d in range(w.ndim)] if scale.ndim else []
        lo, hi = (-128, 127) if q_zp.dtype == np.int8 else (0, 255)
        codes = np.clip(np.rint(w / scale.reshape(shape)) + q_zp.reshape(shape), lo, hi)
    if codes is None:
        return 127
    if clip is not None:
        codes = np.clip(codes, *clip)
    zp = np.zeros(()) if zp is None else zp.astype(np.int64)
    axis = next((a.i for a in dq.attribute if a.name == 'axis'), 1)
    if zp.ndim:
        zp = zp.reshape([-1 if d == axis % codes.ndim else 1 for d in range(codes.ndim)])
    return int(np.abs(codes.astype(np.int64) - zp).max())


def int8_overflow_risks(proto):
    """[(Conv node name, worst pair sum)] of the convs an x86 CPU without VNNI would compute
    wrongly in int8: the runtimes multiply activation bytes (unsigned; signed codes shifted by
    128) by signed 8-bit weight codes with ``vpmaddubsw``, which adds adjacent products in
    int16 and saturates above 32767, so a conv is safe when 2 x max byte x max |weight code|
    <= 32767 (e.g. weights in [-64, 64] under 8-bit activations). Convs whose input or weight
    is not dequantized from 8-bit integers run in float and are not listed."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    values = _constants(proto)
    risks = []
    for conv in proto.graph.node:
        if conv.op_type != 'Conv':
            continue
        x_dq, w_dq = producers.get(conv.input[0]), producers.get(conv.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != w_dq.op_type or x_dq.op_type != 'DequantizeLinear':
            continue
        lo, hi, signed = _integer_range(x_dq.input[0], producers, values)
        max_byte = hi + 128 if signed else hi
        worst = 2 * max_byte * _weight_code_max(w_dq, producers, values)
        if worst > INT16_MAX:
            risks.append((conv.name, worst))
    return risks


def check_int8_overflow(proto, label):
    """None if no conv of ``proto`` can saturate on x86 without VNNI; otherwise print which do
    and return True (the graph then needs a VNNI CPU). ValueError if this CPU is one that
    saturates: the export would compute wrong detections here."""
    risks = int8_overflow_risks(proto)
    if not risks:
        print(f'{label}: int8 overflow check passed: correct on x86 CPUs with and without VNNI')
        return None
    worst = max(r[1] for r in risks)
    model, flags = cpu_flags()
    msg = (f'{label}: {len(risks)} int8 convs use weight codes beyond what x86 CPUs without VNNI can add up '
           f'(worst pair sum {worst} > {INT16_MAX}; e.g. {risks[0][0]}): the quantization-aware model was trained '
           f'with full-range 8-bit weights (--full-range, or before overflow-safe weights became the default)')
    if int8_kernels_saturate(flags):
        raise ValueError(f'{msg}; this CPU ({model}) has no VNNI, so the export would give wrong detections here. '
                         f'Fine-tune the checkpoint with the default overflow-safe weights (train.py --weights '
                         f'<it> --epochs 1) and export that')
    print(f'WARNING: {msg}. It is marked int8_needs_vnni: correct on CPUs with VNNI (like this one: {model}), '
          f'refused by test.py/detect.py on CPUs without it')
    return True


def quantize_int8(fp32_path, out_path, images, batch_size=None):
    """Static post-training INT8 of the FP32 ONNX at ``fp32_path`` into ``out_path`` (atomic).

    images float32 [N,3,H,W] in [0,1] (calibration; batches of ``batch_size`` or 1 for a
    dynamic graph). QDQ, S8S8, per-channel weights in [-64, 64] (``reduce_range``, ONNX
    Runtime's advice for CPUs without VNNI: full-range weights saturate there), MinMax ranges;
    Conv nodes only, head convs excluded. Returns the list of excluded node names."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            step = batch_size or 1
            self.batches = iter([{INPUT_NAME: images[i:i + step]} for i in range(0, len(images) - step + 1, step)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / 'prepared.onnx', Path(tmp) / 'int8.onnx'
        # shape inference + graph optimisation, as ORT advises; its symbolic shape inference is
        # for transformer graphs and gives up on a dynamic batch, ONNX's own is enough here
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        proto = onnx.load(str(prepared))
        heads = head_conv_nodes(proto)
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, reduce_range=True,
                        op_types_to_quantize=['Conv'],
                        nodes_to_exclude=heads, calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(quantized))
        meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        info = json.loads(meta.get(META_KEY, '{}'))
        set_metadata(proto, {**info, 'precision': 'int8', 'calibration_images': len(images)})
        atomic_write_bytes(out_path, proto.SerializeToString())
    return heads


# ----------------------------------------------------------------------------- OpenVINO, Darknet

def export_openvino(onnx_path, out_dir, meta):
    """OpenVINO IR (``<out_dir>/<name>.xml`` + ``.bin``, FP32 weights) converted from an ONNX
    file; the folder is replaced as a whole, so a failure leaves the previous one intact."""
    import openvino as ov
    out_dir = Path(out_dir)
    ov_model = ov.convert_model(str(onnx_path))
    ov_model.set_rt_info(json.dumps(meta), [META_KEY])
    tmp = new_temp_dir(out_dir)  # mkdtemp's 0700 would become the published folder's mode
    try:
        ov.save_model(ov_model, str(tmp / f'{out_dir.name.removesuffix("_openvino")}.xml'), compress_to_fp16=False)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.old.', dir=out_dir.parent))
            os.replace(out_dir, old / 'ir')
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / f'{out_dir.name.removesuffix("_openvino")}.xml'


def export_darknet(model, weights_path):
    """Darknet ``<weights_path>`` + the cfg next to it (same stem, ``.cfg``), both atomic;
    ``model`` must not be fused (Darknet files carry the BN parameters)."""
    import models
    weights_path = Path(weights_path)
    cfg_path = weights_path.with_suffix('.cfg')
    atomic_write_text(cfg_path, model.cfg_text())
    models.save_weights(model, weights_path)
    return cfg_path, weights_path


# ----------------------------------------------------------------------------- images

def dataset_images(list_file, img_size, n, spread=True):
    """n images of a dataset list, letterboxed square to ``img_size`` exactly as test.py's
    loader does for a fixed-size model (utils.datasets, no augmentation, no upscaling), as
    float32 [n,3,H,W] in [0,1]. spread: evenly spaced over the list, else the first n."""
    from utils.datasets import LoadImagesAndLabels
    dataset = LoadImagesAndLabels(list_file, img_size, batch_size=1, augment=False, rect=False)
    if not len(dataset):
        raise ValueError(f'{list_file}: no images')
    n = min(n, len(dataset))
    picks = np.linspace(0, len(dataset) - 1, n).round().astype(int) if spread else range(n)
    return np.stack([dataset[int(i)][0].numpy() for i in picks]).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- checks

def relative_diff(test, ref):
    """max |test - ref| / (1 + |ref|): relative on boxes (pixels), absolute on scores."""
    return float((np.abs(test - ref) / (1 + np.abs(ref))).max())


def detection_agreement(ref, test, conf=INT8_CONF, iou=0.5):
    """F1 of matching the detections of two predictions (same image batch): ref, test
    float [B, N, 5+nc] -> (f1, n_ref, n_test). One-to-one greedy matching by IoU, same class."""
    from torchvision.ops import box_iou

    from utils.nms import non_max_suppression
    dets_ref = non_max_suppression(torch.as_tensor(ref), conf, 0.6)
    dets_test = non_max_suppression(torch.as_tensor(test), conf, 0.6)
    matched = n_ref = n_test = 0
    for a, b in zip(dets_ref, dets_test):
        n_ref, n_test = n_ref + len(a), n_test + len(b)
        if not len(a) or not len(b):
            continue
        ious = box_iou(a[:, :4], b[:, :4]) * (a[:, None, 5] == b[None, :, 5])
        while True:
            best = ious.max()
            if best < iou:
                break
            i, j = divmod(int(ious.argmax()), ious.shape[1])
            matched += 1
            ious[i, :], ious[:, j] = 0, 0
    total = n_ref + n_test
    return (2 * matched / total if total else 1.0), n_ref, n_test


def check_outputs(label, test, ref, quantized):
    """Print the comparison of a runtime's pred with PyTorch's; ValueError if out of tolerance."""
    diff = float(np.abs(test - ref).max())
    if quantized:
        f1, n_ref, n_test = detection_agreement(ref, test)
        print(f'{label}: max |diff| {diff:.3g}; detections (conf >= {INT8_CONF}) PyTorch {n_ref}, '
              f'export {n_test}, agreement F1 {f1:.3f} (need >= {INT8_MIN_F1})')
        ok = f1 >= INT8_MIN_F1
    else:
        rel = relative_diff(test, ref)
        print(f'{label}: max |diff| {diff:.3g}, max |diff| / (1 + |torch|) {rel:.3g} (tolerance {FP32_TOL:g})')
        ok = rel <= FP32_TOL
    if not ok:
        raise ValueError(f'{label}: the exported model does not reproduce PyTorch within tolerance (see above); '
                         f'the file was kept for inspection')


def opencv_darknet_pred(cfg_path, weights_path, images, raw_shapes):
    """Run the Darknet files in OpenCV DNN 4.x -> [B, N, 5+nc] in our row order and box units,
    columns cx, cy, w, h (input pixels), objectness, objectness x class probability (compare
    with ``scores_like_opencv`` of our pred).

    OpenCV's [yolo] rows are (y*W + x)*A + a per head with cx, cy, w, h as fractions of the
    input and class scores multiplied by objectness; it zeroes scores <= the [yolo] thresh
    (0.2 by default), so the check reads the cfg with thresh=0 (from memory: the written file
    is left as exported). raw_shapes: the per-head [B, A, H, W, no] of the PyTorch raw output."""
    import re

    import cv2
    text = re.sub(r'^\[yolo\]$', '[yolo]\nthresh=0', Path(cfg_path).read_text(), flags=re.M)
    net = cv2.dnn.readNetFromDarknet(np.frombuffer(text.encode(), np.uint8),
                                     np.fromfile(str(weights_path), np.uint8))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    if hasattr(net, 'enableWinograd'):
        net.enableWinograd(False)  # Winograd trades ~1e-4 relative precision for speed
    h, w = images.shape[-2:]
    preds = []
    for image in images:  # OpenCV's [yolo] output has no batch dimension
        net.setInput(image[None])
        heads = net.forward(net.getUnconnectedOutLayersNames())
        rows = []
        for out, (_, a, ny, nx, no) in zip(heads, raw_shapes):
            p = np.asarray(out).reshape(ny, nx, a, no).transpose(2, 0, 1, 3).reshape(-1, no).copy()
            p[:, [0, 2]] *= w
            p[:, [1, 3]] *= h
            rows.append(p)
        preds.append(np.concatenate(rows))
    return np.stack(preds)


def scores_like_opencv(pred):
    """pred [B, N, 5+nc] with class probabilities -> a copy with objectness x probability."""
    pred = pred.copy()
    pred[..., 5:] *= pred[..., 4:5]
    return pred


# ----------------------------------------------------------------------------- paths

def default_output(weights, fmt, int8=False):
    """Where an export lands without --out: next to the weights, named after them."""
    weights = Path(weights)
    stem = weights.stem + ('_int8' if int8 else '')
    return {'onnx': weights.with_name(f'{stem}.onnx'), 'openvino': weights.with_name(f'{stem}_openvino'),
            'darknet': weights.with_name(f'{stem}.weights'), 'qparams': weights.with_name(f'{stem}_qparams.npz')}[fmt]


def output_paths(opt):
    """The paths an export writes (for darknet: the .weights and its .cfg). ValueError if one
    is an input or has the wrong suffix."""
    out = Path(opt.out) if opt.out else default_output(opt.weights, opt.format, opt.int8)
    if opt.format == 'onnx' and out.suffix != '.onnx':
        raise ValueError(f'--out {out}: an ONNX export needs a .onnx path')
    if opt.format == 'qparams' and out.suffix != '.npz':
        raise ValueError(f'--out {out}: integer parameters are written as a .npz file')
    if opt.format == 'darknet' and out.suffix != '.weights':
        raise ValueError(f'--out {out}: a Darknet export needs a .weights path (the .cfg goes next to it)')
    paths = [out, out.with_suffix('.cfg')] if opt.format == 'darknet' else [out]
    inputs = {os.path.abspath(p) for p in (opt.weights, opt.cfg, opt.data) if p}
    for p in paths:
        if os.path.abspath(p) in inputs:
            raise ValueError(f'refusing to overwrite the input {p}: choose another output with --out')
    return paths


# ----------------------------------------------------------------------------- main

INT8_DEFAULT_CALIB = 100  # --int8 without --calib N


def load_source_model(opt, device):
    """(eval model, checkpoint entries) through utils.inference.load_inference_model: float, or
    quantization-aware (from a QAT checkpoint, or float quantized by --quantized and calibrated
    by --calib). Exported files and --int8 on a quantized model are refused."""
    from utils.compress.quant import spec_from_opt, spec_of
    requested = spec_from_opt(opt)
    if opt.int8 and requested is not None:
        raise ValueError('--int8 (ONNX Runtime post-training INT8) and --quantized (the model\'s own fake '
                         'quantization) exclude each other: choose one')
    # under --int8, --calib counts the images of ONNX Runtime's calibration, not of the model's own
    model, entries = load_inference_model(opt.weights, opt.cfg, device, opt.img_size, quant=requested,
                                          calib=0 if opt.int8 else opt.calib, data=opt.data, exported=False)
    if opt.int8 and spec_of(model) is not None:
        raise ValueError(f'{opt.weights} is a quantization-aware model ({spec_of(model).describe()}): export it '
                         f'without --int8 to keep its own learned scales as QDQ')
    for p in model.parameters():
        p.requires_grad_(True)  # see onnx_bytes: MaxPool exports as MaxPool
    return model, entries


def class_names(entries, data, nc):
    """The checkpoint's names, else the .data file's when its class count matches, else None."""
    from utils.parse_config import read_names
    if entries.get('names'):
        return list(entries['names'])
    if data.get('names') and int(data.get('classes', -1)) == nc:
        return read_names(data['names'], nc)
    return None


def run(opt):
    """Export per ``opt`` (see export.py) and check the result. Returns the written path(s)."""
    from utils.datasets import resolve_data
    from utils.parse_config import parse_data_cfg
    from utils.torch_utils import select_device
    if opt.format not in FORMATS:
        raise ValueError(f'--format {opt.format}: choose one of {", ".join(FORMATS)}')
    if opt.int8 and opt.format == 'darknet':
        raise ValueError('--int8 applies to onnx and openvino; Darknet files are float')
    if opt.img_size % 32:
        raise ValueError(f'--img-size {opt.img_size} must be a multiple of 32')
    if not opt.weights:
        raise ValueError('--weights is required (a .pt checkpoint or Darknet .weights)')
    weights_kind(opt.weights, exported=False)  # before any output path is derived from it
    paths = output_paths(opt)
    opt.data = resolve_data(opt.data)
    data = parse_data_cfg(opt.data, required=('train',) if opt.int8 or opt.calib else ())
    device = select_device(opt.device)
    model, entries = load_source_model(opt, device)
    check_list = data.get('valid') or data['train']
    images = dataset_images(check_list, opt.img_size, max(opt.batch_size, CHECK_IMAGES), spread=False)
    if opt.format == 'qparams':
        return export_and_check_qparams(model, paths[0], images, getattr(opt, 'reorder', None))
    if opt.format == 'darknet':
        from utils.compress.quant import spec_of
        if spec_of(model) is not None:
            raise ValueError(f'{opt.weights} is quantization-aware and Darknet files are float: export it as onnx or '
                             f'openvino (QDQ with its own scales)')
        return export_and_check_darknet(model, paths[0], images)
    return export_and_check_graph(opt, model, entries, data, paths[0], images, device)


def export_and_check_qparams(model, path, images, reorder=None):
    """Integer weights, biases, scales and zero points (utils/compress/qparams.py), checked by running
    the NumPy integer forward (utils/compress/int_forward.py) against the fake-quant model."""
    from utils.compress.qparams import check_int_forward, save_qparams
    params = save_qparams(model, path, reorder)
    print(f'wrote {path} ({sum(k.endswith("_w") for k in params)} quantized convs)')
    results = check_int_forward(model, params, images)
    for i, (diff, tol) in enumerate(results):
        print(f'integer forward vs fake-quant PyTorch, head {i}: max |diff| {diff:.3g} '
              f'({"bit-exact required" if tol == 0 else f"tolerance {tol:.3g}: one step of every head input"})')
    bad = [i for i, (diff, tol) in enumerate(results) if diff > tol]
    if bad:
        raise ValueError(f'{path}: the integer forward differs from the model at heads {bad} beyond tolerance '
                         '(see above); please report it with the checkpoint')
    return [path]


def export_and_check_darknet(model, weights_path, images):
    """Darknet files, checked in OpenCV DNN against PyTorch with OpenCV's BN epsilon (1e-6; the
    model's Darknet 1e-5 makes low-variance channels differ by up to ~1e-3, printed too)."""
    import copy
    cfg_path, weights_path = export_darknet(model, weights_path)
    print(f'wrote {cfg_path} and {weights_path}')
    as_opencv = copy.deepcopy(model)
    for m in as_opencv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = OPENCV_BN_EPS
    x = torch.from_numpy(images).to(next(model.parameters()).device)
    with torch.no_grad():
        ref, raw = model(x)
        ref_cv = as_opencv(x)[0]
    test = opencv_darknet_pred(cfg_path, weights_path, images, [tuple(r.shape) for r in raw])
    diff = relative_diff(test, scores_like_opencv(ref.cpu().numpy()))
    print(f'OpenCV DNN vs PyTorch with Darknet\'s BN epsilon: max |diff| / (1 + |torch|) {diff:.3g}')
    check_outputs('OpenCV DNN vs PyTorch with its BN epsilon', test, scores_like_opencv(ref_cv.cpu().numpy()),
                  quantized=False)
    return [cfg_path, weights_path]


def export_and_check_graph(opt, model, entries, data, out, images, device):
    """ONNX (and from it OpenVINO), optionally INT8; checked in ONNX Runtime / OpenVINO.
    Intermediate graphs (the float graph of an INT8 export, the ONNX of an OpenVINO one)
    live in a temporary folder."""
    import onnx

    from utils.compress.quant import spec_of
    model.fuse()  # as test.py evaluates it; BN must be folded before per-channel weight quantization
    example = torch.from_numpy(images[:opt.batch_size]).to(device)
    with torch.no_grad():
        ref = model(torch.from_numpy(images).to(device))[0].cpu().numpy()
    proto = onnx.load_from_string(onnx_bytes(model, example, opt.dynamic, opt.opset))
    qat = spec_of(model) is not None or op_counts(proto).get('QuantizeLinear', 0) > 0
    meta = {'names': class_names(entries, data, model.nc), 'nc': model.nc, 'stride': model.stride.tolist(),
            'img_size': [opt.img_size, opt.img_size], 'precision': 'qat' if qat else 'fp32',
            'source': Path(opt.weights).name}
    if opt.simplify or qat:  # a QAT graph computes its scales from weights and observer buffers:
        proto = simplify(proto)  # folded to constants here, or runtimes do not see QDQ patterns
    set_metadata(proto, meta)
    with tempfile.TemporaryDirectory() as tmp:
        final_onnx = out if opt.format == 'onnx' else Path(tmp) / 'model.onnx'
        onnx_path = Path(tmp) / 'fp32.onnx' if opt.int8 else final_onnx
        atomic_write_bytes(onnx_path, proto.SerializeToString())
        if opt.int8:
            calib = dataset_images(data['train'], opt.img_size, opt.calib or INT8_DEFAULT_CALIB)
            heads = quantize_int8(onnx_path, final_onnx, calib, None if opt.dynamic else opt.batch_size)
            print(f'INT8: calibrated on {len(calib)} training images; head convs kept float: {", ".join(heads)}')
            meta['precision'] = 'int8'
        quantized = meta['precision'] != 'fp32'
        if quantized and check_int8_overflow(onnx.load(str(final_onnx)), Path(out).name):
            meta['int8_needs_vnni'] = True
            update_metadata_file(final_onnx, int8_needs_vnni=True)
        if opt.format == 'onnx':
            print(f'wrote {final_onnx}')
            check_runtime(OnnxRuntimeModel(final_onnx), images, ref, opt.dynamic, quantized)
            return [final_onnx]
        xml = export_openvino(final_onnx, out, meta)
    print(f'wrote {xml}')
    check_runtime(OpenVinoModel(str(xml)), images, ref, opt.dynamic, quantized)
    return [out]


def check_runtime(runtime, images, ref, dynamic, quantized):
    """The runtime's pred on ``images`` [n,3,H,W] (a fixed-batch graph runs them in chunks of
    its batch) against PyTorch's ``ref``; with a dynamic batch also batch 1 (the first image)."""
    with torch.no_grad():
        test = runtime(torch.from_numpy(images))[0].numpy()
    check_outputs(f'{runtime.runtime} vs PyTorch ({len(images)} images)', test, ref, quantized)
    if dynamic:
        check_outputs(f'{runtime.runtime} vs PyTorch, batch 1', runtime.run(images[:1]), ref[:1], quantized)
