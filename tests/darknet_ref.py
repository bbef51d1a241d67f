"""Shared helpers for tests that compare against OpenCV's independent Darknet importer."""
import re

import numpy as np
import torch

import models


def randomize(model, seed=0, size=256):
    """Random weights with BN statistics calibrated on a random batch, so every layer's
    output is normalised whatever the depth; head convs scaled so that raw outputs have
    std ~1.5 and scores spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.2 + 0.3 * torch.rand(m.num_features, generator=g))  # contractive: rounding noise does not grow with depth
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.momentum = 1.0  # running stats := this batch's statistics
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight.shape[1] ** -0.5)
        x = torch.rand(2, model.in_channels, size, size, generator=g)
        heads = [model.module_list[i - 1].Conv2d for i in model.yolo_layers]
        pre = {}
        hooks = [c.register_forward_hook(lambda mod, inp, out: pre.__setitem__(mod, out)) for c in heads]
        model.train()
        model(x)
        for h in hooks:
            h.remove()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
                # near-constant channels would amplify float rounding without bound
                m.running_var.clamp_(min=0.05 * m.running_var.mean().item())
        for conv in heads:  # head pre-activations ~ N(0, 1.5^2): scores spread over (0, 1)
            out = pre[conv]
            bias = conv.bias if conv.bias is not None else 0
            scale = 1.5 / out.std().clamp_min(1e-6)
            conv.weight.mul_(scale)
            if conv.bias is not None:
                conv.bias.copy_((bias - out.mean((0, 2, 3))) * scale)
    return model.eval()


def opencv_copy(model, cfg_path, weights_path):
    """Write the cfg and weights OpenCV should read to give Darknet's numbers:
    [yolo] thresh=0 (OpenCV zeroes class scores <= thresh) and running variances raised
    by 9e-6 (OpenCV's BN epsilon is 1e-6, Darknet's 1e-5)."""
    text = re.sub(r'^\[yolo\]$', '[yolo]\nthresh=0', model.cfg_text(), flags=re.M)
    with open(cfg_path, 'w') as f:
        f.write(text)
    shifted = models.Darknet(model.sections)
    shifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in shifted.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var += 9e-6
    models.save_weights(shifted, weights_path)


def opencv_outputs(cfg_path, weights_path, x):
    """Run OpenCV DNN; returns one array per [yolo] head, reordered to our row order
    (anchor, y, x) with columns cx, cy, w, h (fractions), obj, class score (obj x prob)."""
    import cv2
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)  # Winograd 3x3 kernels trade ~1e-4 relative precision for speed
    net.setInput(x.numpy())
    return [np.asarray(o) for o in net.forward(net.getUnconnectedOutLayersNames())]


def our_outputs_like_opencv(model, x):
    """Our eval outputs per head, in OpenCV's layout: rows (y*W + x)*A + a."""
    model.eval()
    with torch.no_grad():
        _, raw = model(x)
    h, w = x.shape[-2:]
    heads = []
    for i, p in zip(model.yolo_layers, raw):
        layer = model.module_list[i]
        dec = layer.decode(p, (h, w)).view(p.shape)  # [1, A, H, W, no]
        dec = dec.permute(0, 2, 3, 1, 4).reshape(-1, p.shape[-1]).clone()  # y, x, anchor
        dec[:, [0, 2]] /= w
        dec[:, [1, 3]] /= h
        dec[:, 5:] *= dec[:, 4:5]
        heads.append(dec.numpy())
    return heads
