"""The model test.py, detect.py and export.py run, loaded one way from what ``--weights`` names.

    model, entries = load_inference_model('best.pt')                          # its own cfg
    model, entries = load_inference_model('yolov3.weights', 'cfg/yolov3.cfg')
    model, entries = load_inference_model('best.pt', quant=spec, calib=64, data='data/shapes.data')   # PTQ
    model, entries = load_inference_model('best.onnx')                        # or best_openvino/

The model is in eval mode on ``device``; an export is a utils.deploy.backends.ExportedModel with the
same interface. Every script reports a --weights it cannot run in the same words
(``weights_kind``). This module never imports the training engine.
"""
import os
from pathlib import Path

import models
from utils.deploy.backends import is_exported, load_exported
from utils.compress.quant import prepare_for_inference, quantize_as_requested


def weights_kind(weights, exported=True):
    """What ``weights`` names: 'export' (.onnx, OpenVINO .xml or IR folder), 'checkpoint'
    (.pt/.pth), 'darknet' (any other file) or '' (none: random weights); a path that holds no
    model any script runs is an error here, before anything slow. ``exported=False``: an
    export is one (export.py reads what exports are made from)."""
    weights = str(weights or '')
    if not weights:
        return ''
    if is_exported(weights):
        if not exported:
            raise ValueError(f'--weights {weights} is already an exported model; export.py reads .pt checkpoints '
                             f'and Darknet .weights')
        return 'export'
    if weights.endswith('.cfg'):
        raise ValueError(f'--weights {weights} is a model cfg: pass it as --cfg, and the weights (.pt checkpoint or '
                         f'Darknet .weights) as --weights')
    xml = Path(weights).with_suffix('.xml')
    if weights.endswith('.bin') and xml.is_file():
        raise ValueError(f'--weights {weights} holds the weights of the OpenVINO model {xml}: pass the .xml or '
                         f'its folder')
    if not os.path.isfile(weights):
        raise FileNotFoundError(f'--weights {weights} not found')
    return 'checkpoint' if weights.endswith(('.pt', '.pth')) else 'darknet'


def load_inference_model(weights, cfg='', device='cpu', img_size=416, quant=None, calib=0, data=None,
                         exported=True):
    """(eval-mode model on ``device``, entries) for ``weights`` (weights_kind):

    * an export runs as it was exported (fused, optimised, maybe quantized): ``quant`` or
      ``calib`` are an error; entries: {'names': ...} from its metadata, when it has them.
    * a ``.pt`` checkpoint (built from its own cfg unless ``cfg``), Darknet ``.weights`` with
      ``cfg``, or none (``cfg`` with random weights): models.load_model (a quantization-aware
      checkpoint rebuilds its quantized model), quantized as ``quant`` (a utils.compress.quant.QuantSpec
      from the flags) asks, its activation ranges calibrated on ``calib`` training images of
      the .data file ``data`` at ``img_size`` (utils.compress.quant.prepare_for_inference); entries:
      the checkpoint's without its state dict ({} for Darknet weights).
    """
    weights = str(weights or '')
    kind = weights_kind(weights, exported)
    if kind == 'export':
        if quant is not None or calib:
            raise ValueError(f'{weights}: quantization flags (--quantized, --calib) apply to .pt/.weights models; an '
                             f'export runs as exported: quantize at export (export.py --int8, or --quantized ... '
                             f'--calib N)')
        model = load_exported(weights, device)
        return model, ({'names': model.names} if model.names else {})
    model, entries = models.load_model(cfg, weights, img_size, device)
    model = quantize_as_requested(model, quant, weights).to(device).eval()
    prepare_for_inference(model, device, calib=calib, data=data, img_size=img_size, source=weights or 'the model')
    return model, entries
