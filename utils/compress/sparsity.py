"""BN-sparsity training (Network Slimming): an L1 penalty on the BatchNorm scales gamma that a
pruning method may remove, so that training drives the unneeded channels towards zero.

    python3 train.py --weights base.pt -sr --s 0.001 --prune 0 [--sr-schedule constant|step|cosine]

    from utils.compress.sparsity import attach_sparsity
    attach_sparsity(trainer, s=0.001, prune=0, schedule='constant')   # before trainer.train()

Once per optimizer step, on the accumulated, unscaled gradients (a ``Trainer.grad_hooks``
hook), every penalised gamma gets ``gamma.grad += lambda * sign(gamma)`` (sign(0) = 0), the
sub-gradient of ``lambda * sum|gamma|``. Because it is added after the backward pass, under
DDP the gradients are already averaged over ranks and every rank adds the same term (gamma
is identical on all ranks), so a DDP run equals a single-process one. Upstream added the
term after every micro-batch, so with ``accumulate`` K its effective penalty per step was
K x lambda (and under AMP it was divided by the loss scale): here ``--s`` means lambda per
optimizer step whatever the accumulation; pass K x upstream's value to reproduce an
accumulating upstream run.

The penalised layers are ``LayerGraph(cfg).prune_set(prune)`` (utils/compress/layer_graph.py): the BN
convs that the pruners of that mode may cut (0 = normal/regular, 1 = shortcut/slim/
layer-channel, 2 = layer pruning). BN gammas are in the no-weight-decay group, so only the
penalty shrinks them.

Schedules of lambda over the epochs (``scheduled_lambda``): ``constant``; ``step``: lambda for
the first half of the epochs, 0.1 x lambda from epoch E/2 on (the sparsity is mostly reached
by then; the weaker term lets accuracy recover; tanluren's upstream notes a 0.01 x variant);
``cosine``: lambda x (1 + cos(pi e / E)) / 2, from lambda at epoch 0 smoothly towards 0.

Every epoch (an epoch hook, on the model that is validated and saved, i.e. the EMA with
``--ema``): results.csv columns ``sparse_frac`` (fraction of penalised gammas with |gamma| <
SPARSE_THRESHOLD), ``gamma_mean`` (mean |gamma|) and ``sr_lambda`` (lambda of that epoch), and
``bn_hist.png`` in the run folder: the |gamma| histogram of every epoch so far, stacked and
offset like TensorBoard's histogram view. Checkpoints carry ``sparsity`` (the settings and
the penalised layers) and ``sparsity_hist`` (the histograms, so a resumed run keeps the
whole plot).
"""
import math

import numpy as np
import torch

from models import unwrap
from utils.compress.layer_graph import LayerGraph

__all__ = ['SCHEDULES', 'PRUNE_MODES', 'SPARSE_THRESHOLD', 'BNSparsity', 'attach_sparsity', 'penalised_layers',
           'bn_scales', 'add_l1_subgradient_', 'scheduled_lambda', 'gamma_stats']

SCHEDULES = ('constant', 'step', 'cosine')
PRUNE_MODES = {0: 'normal/regular', 1: 'shortcut/slim/layer-channel', 2: 'layer'}
SPARSE_THRESHOLD = 0.01  # |gamma| below this counts as sparse (sparse_frac)
HIST_BINS = 60


def penalised_layers(model, prune):
    """Sorted indices of the BN conv layers whose gammas sparsity mode ``prune`` penalises;
    a ValueError when the model has none (e.g. --prune 2 on a cfg without [shortcut])."""
    if prune not in PRUNE_MODES:
        raise ValueError(f'--prune must be one of {sorted(PRUNE_MODES)}, got {prune}')
    model = unwrap(model)
    layers = [int(i) for i in LayerGraph(model.sections).prune_set(prune)]
    if not layers:
        why = ' (layer pruning removes residual blocks; this cfg has no [shortcut])' if prune == 2 else ''
        raise ValueError(f'-sr --prune {prune} ({PRUNE_MODES[prune]} pruning): this model has no layer that this '
                         f'mode may prune{why}; choose another --prune or cfg')
    return layers


def bn_scales(model, layers):
    """The BatchNorm weight (gamma) parameters of ``layers``."""
    model = unwrap(model)
    return [model.module_list[i].BatchNorm2d.weight for i in layers]


@torch.no_grad()
def add_l1_subgradient_(params, lam):
    """``p.grad += lam * sign(p)`` for every trained parameter in ``params`` (frozen ones are skipped)."""
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:  # a gamma that no loss reached still gets its penalty
            p.grad = torch.sign(p) * lam
        else:
            p.grad.add_(torch.sign(p), alpha=lam)


def scheduled_lambda(s, schedule, epoch, epochs):
    """lambda for ``epoch`` (0-based) of ``epochs`` (see the module docstring)."""
    if schedule == 'constant':
        return s
    if schedule == 'step':
        return s if epoch < epochs / 2 else 0.1 * s
    if schedule == 'cosine':
        return s * (1 + math.cos(math.pi * epoch / epochs)) / 2
    raise ValueError(f'--sr-schedule must be one of {list(SCHEDULES)}, got {schedule!r}')


@torch.no_grad()
def gamma_stats(model, layers, threshold=SPARSE_THRESHOLD):
    """(|gamma| of all penalised channels as a float64 numpy array, {'sparse_frac', 'gamma_mean'})."""
    gammas = torch.cat([g.detach().abs().flatten().double().cpu() for g in bn_scales(model, layers)]).numpy()
    return gammas, {'sparse_frac': float((gammas < threshold).mean()), 'gamma_mean': float(gammas.mean())}


class BNSparsity:
    """The sparsity feature's state and its Trainer hooks (``attach_sparsity`` registers them)."""

    def __init__(self, s, prune, schedule='constant'):
        if s is None or not s >= 0:
            raise ValueError(f'--s must be >= 0, got {s}')
        if prune not in PRUNE_MODES:
            raise ValueError(f'--prune must be one of {sorted(PRUNE_MODES)}, got {prune}')
        if schedule not in SCHEDULES:
            raise ValueError(f'--sr-schedule must be one of {list(SCHEDULES)}, got {schedule!r}')
        self.s, self.prune, self.schedule = float(s), int(prune), schedule
        self.layers = None  # known once the model is (model_transform)
        self.hist = {'epochs': [], 'edges': [], 'counts': []}  # one |gamma| histogram per epoch

    def settings(self):
        return {'prune': self.prune, 's': self.s, 'schedule': self.schedule, 'layers': list(self.layers or [])}

    # ---------------------------------------------------------------- hooks
    def on_model(self, trainer, model):
        """model_transform: find the penalised layers of the model actually trained (its cfg
        may come from --weights or the resumed checkpoint); restore a resumed run's histograms."""
        self.layers = penalised_layers(model, self.prune)
        n = sum(g.numel() for g in bn_scales(model, self.layers))
        trainer.ckpt_extras['sparsity'] = self.settings()
        saved = trainer.resumed_extras.get('sparsity_hist')
        if saved:
            self.hist = {'epochs': [int(e) for e in saved['epochs']], 'edges': list(saved['edges'].unbind(0)),
                         'counts': list(saved['counts'].unbind(0))}
        if trainer.main:
            print(f'Sparsity: lambda {self.s:g} per optimizer step ({self.schedule}) on the BN scales of '
                  f'{len(self.layers)} layers, {n} channels (--prune {self.prune}: {PRUNE_MODES[self.prune]})')
        return model

    def on_grads(self, trainer):
        """grad hook: the L1 sub-gradient on the accumulated, unscaled gradients."""
        lam = scheduled_lambda(self.s, self.schedule, trainer.epoch, trainer.epochs)
        if lam:
            add_l1_subgradient_(bn_scales(trainer.ddp, self.layers), lam)

    def on_epoch_end(self, trainer, epoch):
        """epoch hook: results.csv columns and bn_hist.png."""
        gammas, stats = gamma_stats(trainer.eval_model(), self.layers)
        top = float(gammas.max()) if gammas.size and gammas.max() > 0 else 1.0
        counts, edges = np.histogram(gammas, bins=HIST_BINS, range=(0.0, top))
        keep = [k for k, e in enumerate(self.hist['epochs']) if e < epoch]  # a resumed run redoes later ones
        self.hist = {key: [v[k] for k in keep] for key, v in self.hist.items()}
        self.hist['epochs'].append(int(epoch))
        self.hist['edges'].append(torch.from_numpy(edges))
        self.hist['counts'].append(torch.from_numpy(counts).double())
        trainer.ckpt_extras['sparsity_hist'] = {'epochs': list(self.hist['epochs']),
                                                'edges': torch.stack(self.hist['edges']),
                                                'counts': torch.stack(self.hist['counts'])}
        self.plot(trainer.save_dir / 'bn_hist.png')
        return {**stats, 'sr_lambda': scheduled_lambda(self.s, self.schedule, epoch, trainer.epochs)}

    def plot(self, path):
        from utils.plots import plot_stacked_histograms
        plot_stacked_histograms(
            [(f'epoch {e}', edges.numpy(), counts.numpy())
             for e, edges, counts in zip(self.hist['epochs'], self.hist['edges'], self.hist['counts'])],
            path, xlabel='|gamma| of the penalised BN scales',
            title=f'-sr --s {self.s:g} --prune {self.prune} ({len(self.layers)} layers, {self.schedule})')


def attach_sparsity(trainer, s, prune, schedule='constant'):
    """Register BN-sparsity training on ``trainer`` (before it builds its model); returns the
    BNSparsity holding its state."""
    feature = BNSparsity(s, prune, schedule)
    trainer.model_transforms.append(feature.on_model)
    trainer.grad_hooks.append(feature.on_grads)
    trainer.epoch_hooks.append(feature.on_epoch_end)
    trainer.ckpt_extras['sparsity'] = feature.settings()
    return feature
