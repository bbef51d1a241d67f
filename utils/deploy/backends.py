"""Exported models (ONNX Runtime, OpenVINO) behind the interface test.py, detect.py and
``utils.evaluation.evaluate`` use from a Darknet model in eval mode.

    if is_exported(weights):                  # .onnx, OpenVINO .xml or IR folder
        model = load_exported(weights, device)
    pred, raw = model(imgs)    # imgs float [B,3,H,W] in [0,1] -> pred [B, N, 5+nc], raw None

An exported graph has a fixed input height and width (``model.input_hw``) and either a fixed
batch (``model.batch_size``) or a dynamic one (None); batches of another size are split into
chunks of the fixed size, the last one zero-padded. ``raw`` is None because an export holds
only the decoded output: validation losses and anything else that needs the raw head
tensors are not available for exported models.

This module never imports the training engine.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.general import cpu_flags, int8_kernels_saturate
from utils.deploy.runtime_settings import openvino_config, ort_session_options

META_KEY = 'yolo_export'  # ONNX metadata_props key / OpenVINO rt_info key of the export's metadata


def is_exported(weights):
    """True for an ONNX file, an OpenVINO .xml or a folder holding one."""
    weights = str(weights or '')
    return weights.endswith(('.onnx', '.xml')) or os.path.isdir(weights)


def load_exported(path, device='cpu', threads=None):
    """ExportedModel for ``path`` (.onnx -> ONNX Runtime, .xml or IR folder -> OpenVINO)."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'--weights {path} not found')
    if path.endswith('.onnx'):
        return OnnxRuntimeModel(path, device, threads)
    return OpenVinoModel(openvino_xml(path), threads)


def openvino_xml(path):
    """The .xml of an OpenVINO IR given the .xml itself or the folder holding exactly one."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob('*.xml'))
        if len(xmls) != 1:
            raise ValueError(f'{path}: expected one OpenVINO .xml in the folder, found {len(xmls)}')
        path = xmls[0]
    if not path.with_suffix('.bin').is_file():
        raise FileNotFoundError(f'{path}: the OpenVINO weights {path.with_suffix(".bin").name} are missing next to it')
    return str(path)


def default_threads():
    """Intra-op threads for the runtimes: the same as PyTorch uses (it honours OMP_NUM_THREADS)."""
    return torch.get_num_threads()


class ExportedModel(nn.Module):
    """Common part of the runtime wrappers: fixed input size, batch chunking, metadata.

    Attributes as a Darknet model has them: ``nc``, ``stride`` (head strides [n_heads]),
    ``img_size`` (h, w), ``names`` (list or None), ``fused`` (True: BN is folded in the graph).
    ``input_hw`` (h, w) and ``batch_size`` (int, or None when dynamic) describe the graph's
    input; ``precision`` is 'fp32', 'int8' (post-training QDQ) or 'qat' (the model's own
    quantizers as QDQ). An export marked ``int8_needs_vnni`` (utils.deploy.export.check_int8_overflow)
    is refused on x86 CPUs without VNNI, where its int8 convolutions would saturate."""

    def __init__(self):
        super().__init__()
        # evaluate() and detect.py take the device from the first parameter: an empty one on
        # the CPU, where inputs are handed to the runtime
        self.register_parameter('device_anchor', nn.Parameter(torch.empty(0), requires_grad=False))

    def _set_io(self, path, input_shape, output_shape, meta):
        """Input/output description from the graph: shapes with None (or a name) on dynamic axes."""
        self.path = str(path)
        batch, _, h, w = input_shape
        if not isinstance(h, int) or not isinstance(w, int):
            raise ValueError(f'{path}: the input height and width must be fixed, got {input_shape}')
        self.batch_size = batch if isinstance(batch, int) and batch > 0 else None
        self.input_hw = self.img_size = (h, w)
        self.nc = int(meta.get('nc', output_shape[-1] - 5))
        self.names = meta.get('names')
        self.stride = torch.tensor(meta.get('stride', [32.0]))
        self.precision = meta.get('precision', 'fp32')
        self.fused = True
        if meta.get('int8_needs_vnni') and int8_kernels_saturate():
            raise ValueError(f'{path}: its int8 weights use the full 8-bit range, which this CPU ({cpu_flags()[0]}, '
                             f'no VNNI) adds up in saturating 16-bit sums: the detections would be wrong. Re-export '
                             f'from a checkpoint fine-tuned with the default overflow-safe weights, or run it on a '
                             f'CPU with AVX-512 VNNI / AVX-VNNI')

    def fuse(self):
        """The graph is already fused (BN folded at export): nothing to do."""
        return self

    def describe(self):
        batch = 'dynamic batch' if self.batch_size is None else f'batch {self.batch_size}'
        return f'{Path(self.path).name}: {self.runtime}, {self.precision}, {batch}, input {self.input_hw[0]}x' \
               f'{self.input_hw[1]}'

    def forward(self, x):
        """x float [B,3,H,W] in [0,1] (any device/layout) -> (pred float [B, N, 5+nc] on the CPU, None)."""
        if tuple(x.shape[-2:]) != self.input_hw:
            raise ValueError(f'{self.path} takes {self.input_hw[0]}x{self.input_hw[1]} inputs, got '
                             f'{x.shape[-2]}x{x.shape[-1]}: use --img-size {self.input_hw[0]} with square '
                             f'(non-rect) batches, or re-export at this size')
        images = np.ascontiguousarray(x.detach().float().cpu().numpy())
        chunk = self.batch_size or len(images)
        preds = []
        for start in range(0, len(images), chunk):
            part = images[start:start + chunk]
            n = len(part)
            if n < chunk:  # a fixed-batch graph: pad with blank images, drop their rows afterwards
                part = np.concatenate([part, np.zeros((chunk - n, *part.shape[1:]), part.dtype)])
            preds.append(self.run(part)[:n])
        return torch.from_numpy(np.concatenate(preds)), None


class OnnxRuntimeModel(ExportedModel):
    """An ONNX file in ONNX Runtime (CUDA provider when ``device`` is a GPU and the installed
    onnxruntime has it, else the CPU provider)."""
    runtime = 'ONNX Runtime'

    def __init__(self, path, device='cpu', threads=None):
        import onnx
        import onnxruntime as ort
        super().__init__()
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # google.protobuf DecodeError and friends: not an ONNX file
            raise ValueError(f'{path}: not a readable ONNX model ({type(e).__name__}); '
                             f'export one with export.py') from None
        meta = {p.key: p.value for p in proto.metadata_props}
        meta = json.loads(meta[META_KEY]) if META_KEY in meta else {}
        options = ort_session_options(threads or default_threads())
        providers = ['CPUExecutionProvider']
        if str(device).startswith('cuda') or str(device).isdigit():
            if 'CUDAExecutionProvider' in ort.get_available_providers():
                providers.insert(0, 'CUDAExecutionProvider')
            else:
                print(f'WARNING: this onnxruntime has no CUDA provider (install onnxruntime-gpu); running {path} '
                      f'on the CPU')
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime's own exception types (InvalidGraph, Fail, ...)
            raise ValueError(f'{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}') from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self._set_io(path, inp.shape, out.shape, meta)

    def run(self, images):
        """images float32 [b,3,H,W] with b the graph's batch -> pred float32 [b, N, 5+nc]."""
        return self.session.run([self.output_name], {self.input_name: images})[0]


class OpenVinoModel(ExportedModel):
    """An OpenVINO IR on the CPU plugin, FP32 precision for everything that is not INT8 in the
    graph (some CPUs would otherwise pick bf16 and lose ~3 significant digits). ``cache_dir``:
    OpenVINO's compiled-model cache there (off by default: it writes files; it shortens later
    loads, not inference)."""
    runtime = 'OpenVINO'

    def __init__(self, xml, threads=None, cache_dir=None):
        import openvino as ov
        super().__init__()
        core = ov.Core()
        try:
            model = core.read_model(xml)
        except Exception as e:
            raise ValueError(f'{xml}: OpenVINO cannot read it: {str(e).splitlines()[0]}') from None
        meta = json.loads(model.get_rt_info([META_KEY]).astype(str)) if model.has_rt_info([META_KEY]) else {}
        config = openvino_config(threads or default_threads(), cache_dir=cache_dir)
        self.compiled = core.compile_model(model, 'CPU', config)
        self.request = self.compiled.create_infer_request()
        shape = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]
        out = [d.get_length() if d.is_static else None for d in model.outputs[0].get_partial_shape()]
        self._set_io(xml, shape, out, meta)

    def run(self, images):
        """images float32 [b,3,H,W] -> pred float32 [b, N, 5+nc]."""
        return self.request.infer({0: images})[0].copy()  # the request reuses its output buffer
