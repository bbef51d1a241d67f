"""The optimizer and learning-rate schedule of training: upstream's three parameter groups,
SGD (Nesterov) or Adam, a cosine LR factor over the run and the burn-in ramps."""
import math

import numpy as np
import torch

from utils.torch_utils import unwrap

BIAS_GROUP = 2  # index of the biases among build_optimizer's param groups


def param_groups(model):
    """(no-decay BN and other weights, decayed conv/linear weights, biases) as upstream."""
    decay, no_decay, biases = [], [], []
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith('.bias'):
            biases.append(p)
        elif name.endswith('Conv2d.weight') or (p.ndim > 1 and 'BatchNorm' not in name):
            decay.append(p)
        else:
            no_decay.append(p)
    return no_decay, decay, biases


def build_optimizer(model, hyp):
    """SGD (Nesterov) or Adam (hyp ``optimizer``) with three groups: BN weights (no decay), conv
    weights (decay), biases (no decay)."""
    no_decay, decay, biases = param_groups(model)
    if hyp.get('optimizer', 'sgd') == 'adam':
        opt = torch.optim.Adam(no_decay, lr=hyp['lr0'], betas=(hyp['momentum'], 0.999))
    else:  # torch refuses Nesterov without momentum: momentum 0 is plain SGD
        opt = torch.optim.SGD(no_decay, lr=hyp['lr0'], momentum=hyp['momentum'], nesterov=hyp['momentum'] > 0)
    opt.add_param_group({'params': decay, 'weight_decay': hyp['weight_decay']})
    opt.add_param_group({'params': biases})
    return opt


def cosine_lr(epoch, epochs, lrf):
    """LR factor: cosine from 1 to lrf over the run."""
    return lrf + (1 - lrf) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def set_lr(optimizer, hyp, factor, ni, n_burn, adam):
    """Every param group's lr for batch ``ni``: hyp lr0 x ``factor`` (the cosine factor), reached
    by a linear ramp over the first ``n_burn`` batches, during which momentum ramps up too."""
    target = hyp['lr0'] * factor
    if ni >= n_burn:
        for g in optimizer.param_groups:
            g['lr'] = target
        return
    x = [0, n_burn]
    for j, g in enumerate(optimizer.param_groups):
        # SGD biases start high and ramp down; Adam's step is ~lr whatever the gradient, so
        # a 0.1 bias lr would throw every BN beta around: its biases ramp up like the rest
        start = hyp.get('warmup_bias_lr', 0.1) if j == BIAS_GROUP and not adam else 0.0
        g['lr'] = float(np.interp(ni, x, [start, target]))
        if 'momentum' in g:
            g['momentum'] = float(np.interp(ni, x, [hyp.get('warmup_momentum', 0.8), hyp['momentum']]))
