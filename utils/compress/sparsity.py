"""BN-sparsity training (Network Slimming): an L1 penalty on the BatchNorm scales gamma that a
pruning method may remove, so that training drives the unneeded channels towards zero.

    python3 train.py --weights base.pt -sr --s 0.001 --prune 0 [--sr-schedule constant|step|cosine]
    python3 train.py --weights base.pt -sr --s 0.01 --prune 1 --sr-target 0.76 --sr-keep 0.2   # a cut-ready model

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

Targeted sparsity (``--sr-target P [--sr-keep K --sr-ramp R]``): the L1 term shrinks every
penalised gamma alike, so after a few epochs most of what an 80% cut removes still carries
signal and the model collapses until it is fine-tuned. With a target, training makes the cut
itself, gradually, and learns to do without it: after every optimizer step (a
``Trainer.step_hooks`` hook, on the model and its EMA) the channels that ``slim_prune.py
--percent p --layer_keep K`` would remove from the current gammas (``utils.compress.prune.
slim_removed``: the pruner's own rule, coupling groups included) have gamma = 0, where p
grows from 0 to P over the first R of the training on Zhu & Gupta's (2017) cubic schedule,
p = P (1 - (1 - progress / R)^3). The channels already at 0 are the smallest, so the cut only
grows; each new channel is the least important one at that point, and the network recovers
in between; after R the cut is complete and the rest of the run trains around it. A zero
gamma makes a channel output the constant act(beta), which the compact model folds into its
consumers (utils/compress/prune.py), so the cut changes nothing but the zero padding at the
border of k x k consumers. It is then made with the --percent that falls on the zeros
(``CutTarget.prune_percent``, or ``slim_prune.py --percent auto``; train.py prints the
command and the checkpoint records it as ``sparsity.target.prune_percent``): P itself would
also take live channels, since residual stages keep channels that only some of their convs
put below the threshold. ``--s`` keeps its meaning on every penalised gamma (``--s 0`` for
the target alone). Results columns: ``sr_target_frac`` (the fraction of the penalised
channels at 0) and ``sr_cut`` (p at the epoch's end).

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
from utils.compress.prune import bn_gammas, bn_scales, layer_keep_masks, slim_removed

__all__ = ['SCHEDULES', 'PRUNE_MODES', 'SPARSE_THRESHOLD', 'BNSparsity', 'CutTarget', 'attach_sparsity',
           'penalised_layers', 'add_l1_subgradient_', 'scheduled_lambda', 'gamma_stats', 'zero_gammas_']

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


@torch.no_grad()
def zero_gammas_(model, chosen):
    """gamma = 0 for the channels ``chosen`` ({layer: bool mask [C]}) of ``model``."""
    model = unwrap(model)
    for i, mask in chosen.items():
        g = model.module_list[i].BatchNorm2d.weight
        g[mask.to(g.device)] = 0.0


class CutTarget:
    """The ``--sr-target`` state: the slim cut at the current point of the gradual schedule
    (module docstring), whose gammas are held at 0."""

    RECHOOSE = 0.005  # the cut is re-chosen whenever the scheduled percent has grown by this much

    def __init__(self, percent, layer_keep=0.01, ramp=0.5):
        if not 0 < percent < 1:
            raise ValueError(f'--sr-target must be in (0, 1) (the --percent of the slim cut it prepares), got {percent}')
        if not 0 <= layer_keep <= 1:
            raise ValueError(f'--sr-keep must be in [0, 1], got {layer_keep}')
        if not 0 < ramp <= 1:
            raise ValueError(f'--sr-ramp must be in (0, 1] (the fraction of training that reaches the cut), '
                             f'got {ramp}')
        self.percent, self.layer_keep, self.ramp = float(percent), float(layer_keep), float(ramp)
        self.chosen, self.chosen_at, self.graph, self.layers = {}, None, None, None
        self.cut_percent = None  # the slim --percent that removes the zeros (known once the cut is complete)

    def settings(self):
        return {'percent': self.percent, 'layer_keep': self.layer_keep, 'ramp': self.ramp,
                'prune_percent': self.cut_percent}

    def progress(self, trainer):
        """Fraction of the run's batches done after the current step."""
        return min(1.0, (trainer.ni + 1) / (trainer.nb * trainer.epochs))

    def percent_at(self, progress):
        """The scheduled slim --percent: percent x (1 - (1 - progress / ramp)^3), then percent
        (Zhu & Gupta's cubic schedule: fast while much is redundant, gentle towards the end)."""
        return self.percent * (1.0 - (1.0 - min(1.0, progress / self.ramp)) ** 3)

    def choose(self, model, percent=None):
        """{layer: mask of the channels to hold at 0}: what slim pruning at ``percent`` (default
        the target) / ``layer_keep`` removes from the current gammas (whole coupling groups)."""
        percent = self.percent if percent is None else percent
        removed = slim_removed(self.graph, bn_gammas(model, self.layers), percent, self.layer_keep)
        return {i: ~keep for i, keep in layer_keep_masks(self.graph, removed).items()}

    def prune_percent(self, model):
        """The slim --percent that removes exactly the channels at 0 in ``model``: slim's threshold
        is the gamma at index int(N x percent) of the N sorted |gamma|, so it falls on 0 when
        that index is below the Z zeros (at ``percent`` itself it falls on live channels: the
        union rule of residual stages keeps some channels below it, so Z < N x percent)."""
        gammas = torch.cat(list(bn_gammas(model, self.layers).values()))
        n, zeros = len(gammas), int((gammas == 0).sum())
        return math.floor((zeros - 0.5) / n * 1e4) / 1e4 if zeros else None

    def on_step(self, trainer, model, eval_model):
        """After an optimizer step: re-choose the cut at the scheduled percent when it has grown
        by RECHOOSE (the channels already at 0 are the smallest, so the cut only grows), and
        set its gammas to 0 in ``model`` and ``eval_model`` (the optimizer moved them). Returns
        the scheduled percent."""
        now = self.percent_at(self.progress(trainer))
        if self.chosen_at is None or now - self.chosen_at >= self.RECHOOSE or (now == self.percent > self.chosen_at):
            self.chosen, self.chosen_at = self.choose(model, now), now
        zero_gammas_(model, self.chosen)
        if eval_model is not unwrap(model):
            zero_gammas_(eval_model, self.chosen)
        return now

    def chosen_fraction(self, n_penalised):
        return sum(int(m.sum()) for m in self.chosen.values()) / n_penalised


class BNSparsity:
    """The sparsity feature's state and its Trainer hooks (``attach_sparsity`` registers them)."""

    def __init__(self, s, prune, schedule='constant', target=None):
        if s is None or not s >= 0:
            raise ValueError(f'--s must be >= 0, got {s}')
        if prune not in PRUNE_MODES:
            raise ValueError(f'--prune must be one of {sorted(PRUNE_MODES)}, got {prune}')
        if schedule not in SCHEDULES:
            raise ValueError(f'--sr-schedule must be one of {list(SCHEDULES)}, got {schedule!r}')
        if target is not None and prune == 2:
            raise ValueError('--sr-target prepares a channel cut (slim rule); it needs --prune 0 or 1, not 2')
        self.s, self.prune, self.schedule, self.target = float(s), int(prune), schedule, target
        self.layers = None  # known once the model is (model_transform)
        self.n_channels = 0
        self.last_percent = None
        self.hist = {'epochs': [], 'edges': [], 'counts': []}  # one |gamma| histogram per epoch

    def settings(self):
        out = {'prune': self.prune, 's': self.s, 'schedule': self.schedule, 'layers': list(self.layers or [])}
        if self.target is not None:
            out['target'] = self.target.settings()
        return out

    # ---------------------------------------------------------------- hooks
    def on_model(self, trainer, model):
        """model_transform: find the penalised layers of the model actually trained (its cfg
        may come from --weights or the resumed checkpoint); restore a resumed run's histograms."""
        self.layers = penalised_layers(model, self.prune)
        n = self.n_channels = sum(g.numel() for g in bn_scales(model, self.layers))
        if self.target is not None:
            self.target.graph, self.target.layers = LayerGraph(unwrap(model).sections), self.layers
            try:  # a cut that empties a layer is a flag error now, not at the first step
                self.target.choose(model)
            except ValueError as e:
                raise ValueError(f'--sr-target {self.target.percent:g} --sr-keep {self.target.layer_keep:g}: {e}; '
                                 'lower --sr-target or raise --sr-keep') from None
        trainer.ckpt_extras['sparsity'] = self.settings()
        saved = trainer.resumed_extras.get('sparsity_hist')
        if saved:
            self.hist = {'epochs': [int(e) for e in saved['epochs']], 'edges': list(saved['edges'].unbind(0)),
                         'counts': list(saved['counts'].unbind(0))}
        if trainer.main:
            print(f'Sparsity: lambda {self.s:g} per optimizer step ({self.schedule}) on the BN scales of '
                  f'{len(self.layers)} layers, {n} channels (--prune {self.prune}: {PRUNE_MODES[self.prune]})')
            t = self.target
            if t is not None:
                print(f'Sparsity target: the channels of a slim cut at --percent {t.percent:g} --layer_keep '
                      f'{t.layer_keep:g}, reached gradually over the first {t.ramp:.0%} of training, its gammas held at 0')
        return model

    def on_grads(self, trainer):
        """grad hook: the L1 sub-gradient on the accumulated, unscaled gradients."""
        lam = scheduled_lambda(self.s, self.schedule, trainer.epoch, trainer.epochs)
        if lam:
            add_l1_subgradient_(bn_scales(trainer.ddp, self.layers), lam)

    def on_step(self, trainer):
        """step hook (--sr-target): hold the scheduled cut at 0 in the model and its EMA."""
        self.last_percent = self.target.on_step(trainer, trainer.ddp, trainer.eval_model())

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
        columns = {**stats, 'sr_lambda': scheduled_lambda(self.s, self.schedule, epoch, trainer.epochs)}
        if self.target is not None and self.last_percent is not None:
            columns.update(sr_target_frac=self.target.chosen_fraction(self.n_channels), sr_cut=self.last_percent)
            if self.last_percent == self.target.percent:
                t = self.target
                t.cut_percent = t.prune_percent(trainer.eval_model())
                trainer.ckpt_extras['sparsity'] = self.settings()
                if epoch == trainer.epochs - 1 and t.cut_percent is not None:
                    print(f'Sparsity target reached: {t.chosen_fraction(self.n_channels):.1%} of the penalised '
                          f'channels are 0. Cut them: python3 slim_prune.py --weights '
                          f'{trainer.save_dir / "weights" / "best.pt"} --percent {t.cut_percent} --layer_keep '
                          f'{t.layer_keep:g}')
        return columns

    def plot(self, path):
        from utils.plots import plot_stacked_histograms
        plot_stacked_histograms(
            [(f'epoch {e}', edges.numpy(), counts.numpy())
             for e, edges, counts in zip(self.hist['epochs'], self.hist['edges'], self.hist['counts'])],
            path, xlabel='|gamma| of the penalised BN scales',
            title=f'-sr --s {self.s:g} --prune {self.prune} ({len(self.layers)} layers, {self.schedule})')


def attach_sparsity(trainer, s, prune, schedule='constant', target=None, target_keep=0.01, ramp=0.5):
    """Register BN-sparsity training on ``trainer`` (before it builds its model); ``target``: the
    --percent of the slim cut to prepare (--sr-target), ``target_keep`` its --layer_keep,
    ``ramp`` the fraction of training that takes it to 0. Returns the BNSparsity holding its state."""
    cut = None if target is None else CutTarget(target, target_keep, ramp)
    feature = BNSparsity(s, prune, schedule, cut)
    trainer.model_transforms.append(feature.on_model)
    trainer.grad_hooks.append(feature.on_grads)
    if cut is not None:
        trainer.step_hooks.append(feature.on_step)
    trainer.epoch_hooks.append(feature.on_epoch_end)
    trainer.ckpt_extras['sparsity'] = feature.settings()
    return feature
