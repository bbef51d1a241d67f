"""The training engine behind train.py.

    trainer = Trainer(opt)            # options, hyperparameters, run folder, data loaders
    trainer.grad_hooks.append(...)    # features register their hooks here ...
    trainer.train()                   # ... because the model is built here (or by trainer.setup())

One loop, one place for extensions: a feature (sparsity, quantization, distillation) lives in
its own utils/ module and plugs in through these hooks, never through a branch in the loop.
Hooks must be registered before ``setup()`` / ``train()``.

``model_transforms``: ``fn(trainer, model) -> model``, run once by ``setup()`` after the model
    is built and its ``--weights`` are loaded, before ``--freeze``, the optimizer, the EMA and
    DDP are built, so parameters a transform adds are trained (quantized convs). Under
    ``--resume`` they run before the checkpoint's state is loaded, since that state was saved
    from the transformed model. A transform may also just inspect the model (and raise a
    ValueError for a model it cannot handle) and return it.
``loss_terms``: ``fn(trainer, imgs, targets, heads) -> (loss scalar, {name: value})``, added to
    the loss of every micro-batch (distillation); imgs are the batch exactly as the model saw
    it (augmented, multi-scale resized). The values (detached; they should add up to the
    scalar) are logged like box/obj/cls: a progress-bar column each and their sum in its
    total, their epoch means (over ranks under DDP) as results.csv columns after
    utils.results.RESULT_FIELDS (first-seen order, kept across ``--resume``) and panels of
    results.png.
    Every step must return the same names.
``grad_hooks``: ``fn(trainer)``, called once per optimizer step, after the last micro-batch's
    backward, on the accumulated gradients, unscaled (AMP) and, under DDP, already averaged
    over ranks, right before ``optimizer.step``; a hook may change ``p.grad`` (BN sparsity).
    It runs on every rank.
``step_hooks``: ``fn(trainer)``, called once per optimizer step, after ``optimizer.step`` and the
    EMA update, on every rank; a hook may change parameters in place (a projection, such as
    sparsity's ``--sr-target`` cap), on ``unwrap(trainer.ddp)`` and on ``trainer.eval_model()``.
``epoch_hooks``: ``fn(trainer, epoch) -> {column: float} | None``, called on the main process
    at the end of every epoch, after validation, before results.csv is written; the returned
    values become extra results.csv columns (after RESULT_FIELDS, in first-seen order; kept
    across ``--resume``; a row without a value holds nan).
``ckpt_extras``: ``{key: value}`` merged into every checkpoint the run saves (a feature's
    settings); the value must be torch.load(weights_only=True)-safe (tensors, numbers,
    strings, lists, dicts) and the key must not be one of the trainer's own.
``trainer.epoch`` / ``trainer.epochs``: the current epoch and the run's length, set at the
    start of every epoch, and ``trainer.ni`` (the batch index counted from epoch 0) and
    ``trainer.nb`` (batches per epoch) at every batch, for hooks with a schedule.
    ``trainer.resumed_extras``: under
    ``--resume``, the checkpoint's entries that are not the trainer's own (what features put in
    ckpt_extras), readable from ``model_transforms`` on. ``trainer.eval_model()`` is the model that
    is validated and saved (the EMA with ``--ema``).

Which model is trained: ``--resume``: the checkpoint's own cfg; else ``--cfg``; else the cfg
a ``.pt`` given by ``--weights`` carries; else DEFAULT_CFG. Weights that do not fit the model
are an error (models.load_state_dict_matching), except head convs of another class count
under ``-pt``.

Everything a run writes goes into its run folder (``runs/train/<name>``): opt.yaml,
hyp.yaml, results.csv/png, weights/last.pt, weights/best.pt, weights/best.weights, plots.
"""
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from tqdm import tqdm

import models
from utils.general import atomic_write_text, increment_path
from utils.loss import YOLOLoss
from utils.metrics import fitness
from utils.optim import build_optimizer, cosine_lr, set_lr
from utils.parse_config import hyp_path, load_hyp, parse_data_cfg, read_names
from utils.results import RESULT_FIELDS, ResultsLog
from utils.torch_utils import (ModelEMA, init_seeds, rng_states, select_device, set_rng_states, unwrap,
                               world_info)

# the model when neither --cfg nor a .pt --weights names one
DEFAULT_CFG = str(Path(__file__).resolve().parents[1] / 'cfg' / 'yolov3-mini-shapes.cfg')

TRAINER_CKPT_KEYS = frozenset({'epoch', 'best_fitness', 'model', 'cfg', 'optimizer', 'results', 'result_fields',
                               'updates', 'names', 'rng', 'scaler', 'ema', 'ema_updates'})  # not for ckpt_extras


class Trainer:
    def __init__(self, opt, start_ckpt=None):
        """``start_ckpt``: the entries of the ``--weights`` checkpoint when the caller has read them
        already (train.py does, for their quantization settings); read by ``setup()`` otherwise."""
        self.opt, self.start_ckpt = opt, start_ckpt
        self.rank, self.local_rank, self.world_size = world_info()
        self.main = self.rank in (-1, 0)
        # extension points (see the module docstring); register before setup()/train()
        self.model_transforms = []  # fn(trainer, model) -> model, before optimizer/EMA/DDP exist
        self.loss_terms = []  # fn(trainer, imgs, targets, heads) -> (loss scalar, {name: value})
        self.grad_hooks = []  # fn(trainer), once per optimizer step on accumulated, unscaled gradients
        self.step_hooks = []  # fn(trainer), once per optimizer step, after it and the EMA update
        self.epoch_hooks = []  # fn(trainer, epoch) -> {column: float} | None, main process, end of epoch
        self.ckpt_extras = {}  # merged into every saved checkpoint
        self.epoch, self.epochs = None, opt.epochs
        self.model, self.ready = None, False  # built by setup()
        self.device = select_device(opt.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group('nccl' if self.device.type == 'cuda' else 'gloo')
        init_seeds(opt.seed + max(self.rank, 0))
        opt.hyp = hyp_path(opt)
        self.hyp = load_hyp(opt.hyp)
        if opt.adam:
            self.hyp['optimizer'] = 'adam'
        self.adam = self.hyp.get('optimizer', 'sgd') == 'adam'
        self._setup_run_dir()
        self._setup_data()

    # ------------------------------------------------------------------ setup
    def _setup_run_dir(self):
        opt = self.opt
        if opt.resume:
            self.ckpt_path = Path(opt.resume)
            self.save_dir = self.ckpt_path.parent.parent
        elif self.main:
            self.save_dir = increment_path(Path(opt.project) / opt.name)
        if self.world_size > 1:  # every rank needs the folder name chosen by rank 0
            holder = [str(self.save_dir) if self.main else None]
            dist.broadcast_object_list(holder, src=0)
            self.save_dir = Path(holder[0])
        self.wdir = self.save_dir / 'weights'
        if self.main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.save_dir / 'hyp.yaml', yaml.safe_dump(self.hyp, sort_keys=False))
            atomic_write_text(self.save_dir / 'opt.yaml', yaml.safe_dump(vars(opt), sort_keys=False))

    def _setup_data(self):
        from utils.datasets import create_dataloader
        opt = self.opt
        data = parse_data_cfg(opt.data)
        data_nc = int(data['classes'])  # labels are checked against the dataset's classes, then merged
        self.nc = 1 if opt.single_cls else data_nc
        self.names = read_names(data.get('names'), self.nc)
        self.img_min, self.img_max, self.img_test = opt.img_size
        self.multi_scale = opt.multi_scale or self.img_min != self.img_max
        self.batch = opt.batch_size // self.world_size
        self.train_loader, self.train_set = create_dataloader(
            data['train'], self.img_max, self.batch, stride=32, hyp=self.hyp, augment=not opt.rect, rect=opt.rect,
            cache=opt.cache_images, workers=opt.workers, shuffle=not opt.rect, seed=opt.seed,
            rank=self.rank, world_size=self.world_size, single_cls=opt.single_cls, nc=data_nc)
        if self.main and not opt.evolve:
            from utils.plots import plot_labels
            plot_labels(np.concatenate(self.train_set.labels, 0), self.names, self.save_dir)
        self.val_loader = None
        if self.main:  # --notest still evaluates the final epoch
            self.val_loader, _ = create_dataloader(
                data['valid'], self.img_test, max(1, opt.batch_size), stride=32, hyp=self.hyp, augment=False,
                rect=True, cache=opt.cache_images, workers=opt.workers, shuffle=False, seed=opt.seed,
                single_cls=opt.single_cls, nc=data_nc, pad=0.5)

    def setup(self):
        """Build the model (running ``model_transforms``), optimizer, EMA, GradScaler and DDP
        wrapper, and restore a resumed run's state. ``train()`` calls it when needed."""
        if self.ready:
            return self
        opt = self.opt
        ckpt = models.load_checkpoint(self.ckpt_path) if opt.resume else None
        # what the resumed run's features saved through ckpt_extras, for features with state
        self.resumed_extras = {k: v for k, v in (ckpt or {}).items() if k not in TRAINER_CKPT_KEYS}
        self.model = model = self._build_model(ckpt)
        for transform in self.model_transforms:
            model = transform(self, model)
        self.model = model
        self._check_ckpt_extras()  # now, not at the first save an epoch later
        if ckpt is not None:  # saved from the transformed model: loaded after the transforms
            model.load_state_dict(ckpt['model'])
        for i in range(min(opt.freeze, len(model.module_list))):
            for p in model.module_list[i].parameters():
                p.requires_grad_(False)
        model.to(self.device, memory_format=torch.channels_last)  # oneDNN/cuDNN's fast layout: ~20% faster
        self.optimizer = build_optimizer(model, self.hyp)
        self.ema = (ModelEMA(model, self.hyp.get('ema_decay', 0.9999), self.hyp.get('ema_tau', 2000))
                    if opt.ema and self.main else None)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.device.type == 'cuda')
        self.start_epoch, self.best_fitness, self.updates = 0, 0.0, 0
        self.results = ResultsLog()
        if ckpt is not None:
            self._restore(ckpt)
        self.ddp = self._wrap_ddp(model)
        self.loss_fn = YOLOLoss(model, self.hyp)
        self.nominal_batch = opt.nbs or opt.batch_size  # gradients are accumulated to this batch before a step
        self.accumulate = max(round(self.nominal_batch / opt.batch_size), 1)
        self.ready = True
        return self

    def _restore(self, ckpt):
        """A resumed run's optimizer, EMA, GradScaler, counters, results and RNG states from its
        last.pt entries ``ckpt`` (the model's weights are loaded by ``setup()``)."""
        if ckpt.get('optimizer') is None:
            raise ValueError(f'{self.ckpt_path}: has no optimizer state (a finished, stripped run); '
                             'start a new run with --weights instead of --resume')
        self.optimizer.load_state_dict(ckpt['optimizer'])
        if self.ema and ckpt.get('ema'):
            self.ema.ema.load_state_dict(ckpt['ema'])
            self.ema.updates = int(ckpt['ema_updates'])
        if ckpt.get('scaler'):
            self.scaler.load_state_dict(ckpt['scaler'])
        self.start_epoch = int(ckpt['epoch']) + 1
        self.best_fitness = float(ckpt['best_fitness'] or 0.0)
        self.updates = int(ckpt.get('updates', 0))
        fields = ckpt.get('result_fields') or RESULT_FIELDS  # + the loss terms' and epoch hooks' columns
        self.results = ResultsLog(fields, ckpt['results'].tolist() if 'results' in ckpt else ())
        if 'rng' in ckpt:
            set_rng_states(ckpt['rng'])
        if self.main:
            print(f'Resuming {self.ckpt_path} from epoch {self.start_epoch}')

    def _wrap_ddp(self, model):
        """``model`` in DistributedDataParallel (with SyncBatchNorm under --sync-bn on CUDA) when
        several processes train, else itself."""
        if self.world_size <= 1:
            return model
        if self.opt.sync_bn and self.device.type == 'cuda':
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    def _build_model(self, ckpt):
        """The model to train, with its initial weights (module docstring: which cfg wins)."""
        opt = self.opt
        weights = '' if ckpt is not None else str(opt.weights or '')
        if weights and not os.path.isfile(weights):
            raise FileNotFoundError(f'--weights {weights} not found (use --weights "" to start from random weights)')
        init = None
        if weights:
            init = self.start_ckpt if self.start_ckpt is not None else models.weights_checkpoint(weights)
        if ckpt is not None:
            cfg, cfg_name = ckpt['cfg'], f'the cfg stored in {self.ckpt_path}'
        elif opt.cfg:
            cfg, cfg_name = opt.cfg, opt.cfg
        elif init is not None and init.get('cfg'):
            cfg, cfg_name = init['cfg'], f'the cfg stored in {weights}'
        else:
            cfg, cfg_name = DEFAULT_CFG, os.path.relpath(DEFAULT_CFG)
        model = models.Darknet(cfg, img_size=self.img_max)
        if self.main:
            print(f'Model: {cfg_name}')
        if model.nc != self.nc:
            hint = (f'give --cfg with {self.nc} classes (and -pt to skip the heads of {weights})' if init else
                    f'rewrite the cfg with `python3 models.py rewrite CFG OUT.cfg --classes {self.nc}`')
            raise ValueError(f'{cfg_name} has {model.nc} classes but {opt.data} has {self.nc}; {hint}')
        _init_head_biases(model)
        if init is not None:  # a quantization-aware checkpoint holds its quantizers' state: build them first
            model = models.rebuild_as_saved(model, init, weights)
            loaded, skipped = models.load_state_dict_matching(model, init['model'], weights, pretrain=opt.pretrain)
            if self.main:
                print(f'{weights}: loaded {len(loaded)} tensors' +
                      (f', skipped {len(skipped)} of the detection heads (-pt)' if skipped else ''))
        elif weights:
            models.load_darknet_weights(model, weights, pretrain=opt.pretrain)
        return model

    # ------------------------------------------------------------------ loop
    def train(self):
        """Run the epochs from ``start_epoch`` (up to --stop-after of them); returns the last
        results row ({column: float}) or None."""
        self.setup()
        opt = self.opt
        epochs = self.epochs = opt.epochs
        stop_epoch = epochs if opt.stop_after is None else min(epochs, self.start_epoch + opt.stop_after)
        self.patience_left = opt.patience
        t0 = time.time()
        for epoch in range(self.start_epoch, stop_epoch):
            self.epoch = epoch
            mean_items, lr = self._train_epoch(epoch)
            if self.main and self._end_epoch(epoch, mean_items, lr):
                break
            if self.world_size > 1:
                dist.barrier()
        if self.main:
            print(f'{epoch - self.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.')
            self._finish(completed=stop_epoch == epochs)
        return self.results.rows[-1] if self.results.rows else None

    def _train_epoch(self, epoch):
        """One pass over the training loader. Returns (the epoch means of the logged items [box,
        obj, cls, the loss terms' values, total], the lr of the first param group at its end)."""
        opt, epochs, nb = self.opt, self.epochs, len(self.train_loader)
        self.nb = nb
        warmup = self.hyp.get('warmup_epochs', 3)
        n_burn = max(round(warmup * nb), 100) if warmup > 0 else 0  # iterations; ni counts from epoch 0
        if self.world_size > 1 and hasattr(self.train_loader.sampler, 'set_epoch'):
            self.train_loader.sampler.set_epoch(epoch)
        if hasattr(self.train_set, 'set_epoch'):
            self.train_set.set_epoch(epoch)
        if opt.close_mosaic and epoch >= epochs - opt.close_mosaic and hasattr(self.train_set, 'close_mosaic'):
            self.train_set.close_mosaic()
        self.ddp.train()
        mean_items = None
        pbar = enumerate(self.train_loader)
        if self.main:
            pbar = tqdm(pbar, total=nb, bar_format='{l_bar}{bar:10}{r_bar}')
        self.optimizer.zero_grad(set_to_none=True)
        for i, (imgs, targets, paths, _) in pbar:
            ni = self.ni = i + nb * epoch  # integrated batch index
            imgs = imgs.to(self.device, non_blocking=True).float().div_(255.0)
            imgs = imgs.contiguous(memory_format=torch.channels_last)
            self._adjust_lr(epoch, epochs, ni, n_burn, self.hyp.get('lrf', 0.05))
            if self.multi_scale:
                imgs = self._random_resize(imgs, ni)
            _, items = self._step(imgs, targets, ni)
            mean_items = items if mean_items is None else (mean_items * i + items) / (i + 1)
            if self.main:
                self._show_progress(pbar, i, epoch, mean_items, targets, imgs)
            if i == 0 and epoch == self.start_epoch and self.main and not opt.evolve:
                self._plot_batch(imgs, targets, paths)
        return mean_items, self.optimizer.param_groups[0]['lr']

    def _show_progress(self, pbar, i, epoch, mean_items, targets, imgs):
        if i == 0:  # the loss terms' columns are known from the first step on
            columns = ('Epoch', 'mem', *self.loss_columns, 'total', 'targets', 'img_size')
            pbar.write(('\n' + '%10s' * len(columns)) % columns)
        mem = f'{torch.cuda.memory_reserved() / 1e9:.3g}G' if self.device.type == 'cuda' else f'{_rss_gb():.3g}G'
        pbar.set_description(('%10s' * 2 + '%10.4g' * (len(mean_items) + 2)) % (
            f'{epoch}/{self.epochs - 1}', mem, *mean_items.tolist(), len(targets), imgs.shape[-1]))

    def _end_epoch(self, epoch, mean_items, lr):
        """Main process: validate, log the results row (with the epoch hooks' columns), save the
        checkpoints. Returns True when --patience stops the run."""
        opt = self.opt
        final = epoch == self.epochs - 1
        metrics = self._validate(final)
        self.results.add_columns(self.loss_columns[3:], 'loss term')
        row = self._results_row(epoch, lr, mean_items, metrics)
        for hook in self.epoch_hooks:
            row.update(self._extra_columns(hook, epoch))
        self.results.append(row)
        self.results.write_csv(self.save_dir / 'results.csv')
        fit = fitness(metrics['map50'], metrics['map50_95'])
        improved = fit > self.best_fitness
        if improved:
            self.best_fitness, self.patience_left = fit, opt.patience
        else:
            self.patience_left -= 1
        if not opt.nosave or final:
            self._save(epoch, improved)
        if opt.patience and self.patience_left <= 0:
            print(f'Early stop: no fitness improvement for {opt.patience} epochs')
            return True
        return False

    def _results_row(self, epoch, lr, mean_items, metrics):
        """The epoch's results.csv row: lr, the mean loss items (box, obj, cls, then the loss
        terms'), validation P, R, mAPs and losses."""
        losses = dict(zip(self.loss_columns, mean_items.tolist()))
        return {'epoch': epoch, 'lr': lr, **losses, 'P': metrics['precision'], 'R': metrics['recall'],
                'mAP@0.5': metrics['map50'], 'mAP@0.5:0.95': metrics['map50_95'],
                **dict(zip(('val_box', 'val_obj', 'val_cls'), metrics.get('val_losses', [0, 0, 0])))}

    def _step(self, imgs, targets, ni):
        """Forward, loss (+ extra terms), backward; every ``current_accumulate`` batches: grad
        hooks and the optimizer step. Returns (loss, items): items = [box, obj, cls, the loss
        terms' values in ``self.loss_columns[3:]`` order, total], detached."""
        amp = self.device.type == 'cuda'
        with torch.autocast(self.device.type, enabled=amp):
            heads = self.ddp(imgs)
            loss, items = self.loss_fn(heads, targets.to(self.device), imgs.shape[-2:])
            named = {}
            for term in self.loss_terms:
                extra, values = term(self, imgs, targets, heads)
                loss = loss + extra
                named.update(values)
        items = self._with_term_columns(items, named)
        # gradients of the mean-per-batch loss, scaled to the nominal batch (DDP averages ranks)
        loss = loss * self.batch * self.world_size / self.nominal_batch
        if not torch.isfinite(loss):
            self.nan_count = getattr(self, 'nan_count', 0) + 1
            if self.nan_count >= 5:
                raise FloatingPointError(f'loss is {loss.item()} for 5 batches in a row: stopping (try a lower '
                                         '--hyp lr0, or check the labels)')
            print(f'WARNING: non-finite loss ({loss.item()}), batch skipped')
            self.optimizer.zero_grad(set_to_none=True)
            return loss.detach(), items
        self.nan_count = 0
        if self.world_size > 1:  # log the mean over ranks (= the global batch's loss)
            items = items.clone()
            dist.all_reduce(items)
            items /= self.world_size
        self.scaler.scale(loss).backward()
        if ni % self.current_accumulate == 0:
            if self.grad_hooks:
                # once per step, on the accumulated gradients in true units: GradScaler allows one
                # unscale_ per step, and a hook's term (sparsity) must not count once per micro-batch
                self.scaler.unscale_(self.optimizer)
                for hook in self.grad_hooks:
                    hook(self)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.updates += 1
            if self.ema:
                self.ema.update(self.model)
            for hook in self.step_hooks:
                hook(self)
        return loss.detach(), items

    def _with_term_columns(self, items, named):
        """Detection items [box, obj, cls, total] + the loss terms' {name: value} -> [box, obj,
        cls, *values, total + sum(values)]; the first call fixes ``self.loss_columns``."""
        if not hasattr(self, 'loss_columns'):
            clash = [k for k in named if k in RESULT_FIELDS or k == 'total']
            if clash:
                raise ValueError(f'loss term columns {clash} are the trainer\'s own')
            self.loss_columns = ['box', 'obj', 'cls', *named]
        if list(named) != self.loss_columns[3:]:
            raise ValueError(f'loss terms returned columns {list(named)}, expected {self.loss_columns[3:]} '
                             '(the same names at every step)')
        if not named:
            return items
        values = torch.stack([torch.as_tensor(v, dtype=items.dtype, device=items.device).detach().reshape(())
                              for v in named.values()])
        return torch.cat((items[:3], values, (items[3] + values.sum()).reshape(1)))

    def _adjust_lr(self, epoch, epochs, ni, n_burn, lrf):
        """The schedule at batch ``ni``: lr and momentum (utils.optim.set_lr); during burn-in
        the batches per step and the IoU-aware objectness ratio ramp up as well."""
        self.current_accumulate = self.accumulate
        self.loss_fn.gr = self.loss_fn.obj_iou
        if ni < n_burn:
            x = [0, n_burn]
            self.current_accumulate = max(1, round(np.interp(ni, x, [1, self.accumulate])))
            self.loss_fn.gr = float(np.interp(ni, x, [0.0, self.loss_fn.obj_iou]))
        set_lr(self.optimizer, self.hyp, cosine_lr(epoch, epochs, lrf), ni, n_burn, self.adam)

    def _random_resize(self, imgs, ni):
        if ni % self.accumulate == 0 or not hasattr(self, 'train_size'):
            from utils.datasets import random_train_size
            rng = np.random.default_rng([self.opt.seed, ni])  # a function of the step: resumable
            self.train_size = random_train_size(self.img_min, self.img_max, 32, rng)
        from utils.datasets import resize_batch
        return resize_batch(imgs, self.train_size, stride=32)

    # ------------------------------------------------------------------ evaluation, logging, saving
    def eval_model(self):
        """The model that is validated and saved: the EMA with --ema, else the trained model."""
        return self.ema.ema if self.ema else unwrap(self.ddp)

    def _validate(self, final):
        if self.val_loader is None or (self.opt.notest and not final):
            return {'precision': 0.0, 'recall': 0.0, 'map50': 0.0, 'map50_95': 0.0, 'val_losses': [0, 0, 0]}
        from utils.evaluation import evaluate
        return evaluate(self.eval_model(), self.val_loader, self.names, conf_thres=0.001, iou_thres=0.6,
                        loss_fn=self.loss_fn, save_dir=self.save_dir, plots=final, verbose=final)

    def _extra_columns(self, hook, epoch):
        """An epoch hook's {column: float}; new columns join the results' in first-seen order."""
        extra = hook(self, epoch) or {}
        if not isinstance(extra, dict):
            raise TypeError(f'epoch hook {hook!r} returned {type(extra).__name__}, expected a dict or None')
        self.results.add_columns(extra, f'epoch hook {hook!r}')
        return {k: float(v) for k, v in extra.items()}

    def _checkpoint(self, epoch, with_optimizer=True):
        """The entries every saved checkpoint holds: the eval model, the run's counters and
        results ([epochs, columns] float64) and ``ckpt_extras``; ``with_optimizer`` adds what
        resuming needs (optimizer, RNG, GradScaler state, the raw weights beside an EMA)."""
        results = torch.tensor(self.results.table(), dtype=torch.float64).reshape(-1, len(self.results.fields))
        ckpt = models.checkpoint_dict(self.eval_model(), self.optimizer if with_optimizer else None, epoch,
                                      self.best_fitness, results=results, result_fields=list(self.results.fields),
                                      updates=self.updates, names=list(self.names))
        if with_optimizer:
            ckpt.update(rng=rng_states(), scaler=self.scaler.state_dict())
            if self.ema:  # the raw weights too, so a resumed run continues the same trajectory
                ckpt.update(model=unwrap(self.ddp).state_dict(), ema=self.ema.ema.state_dict(),
                            ema_updates=self.ema.updates)
        self._check_ckpt_extras()
        ckpt.update(self.ckpt_extras)
        return ckpt

    def _check_ckpt_extras(self):
        clash = sorted(set(self.ckpt_extras) & TRAINER_CKPT_KEYS)
        if clash:
            raise ValueError(f'ckpt_extras {clash}: these checkpoint keys are the trainer\'s own')

    def _save(self, epoch, improved):
        ckpt = self._checkpoint(epoch)
        models.write_checkpoint(self.wdir / 'last.pt', ckpt)
        if improved:
            models.write_checkpoint(self.wdir / 'best.pt', ckpt)

    def _finish(self, completed):
        """A completed run's checkpoints made final (models.finalize_checkpoint), best.pt also
        as Darknet best.weights, and results.png."""
        if not completed:
            return
        for name in ('last.pt', 'best.pt'):
            if (self.wdir / name).is_file():
                models.finalize_checkpoint(self.wdir / name)
        best = self.wdir / 'best.pt'
        if best.is_file():
            model, _ = models.model_from_checkpoint(best)
            models.save_weights(model, self.wdir / 'best.weights')
        try:
            from utils.plots import plot_results
            plot_results(self.save_dir / 'results.csv', self.save_dir)
        except ImportError:
            pass
        print(f'Results saved to {self.save_dir}')

    def _plot_batch(self, imgs, targets, paths):
        try:
            from utils.plots import plot_images
            plot_images(imgs, targets, paths, self.save_dir / 'train_batch0.jpg', self.names)
        except ImportError:
            pass


def _init_head_biases(model):
    """Objectness bias -4.5 (few objects per image), class bias log(0.6/(nc-0.99)): stable early training."""
    with torch.no_grad():
        for i in model.yolo_layers:
            conv = model.module_list[i - 1].Conv2d
            layer = model.module_list[i]
            if conv.bias is None or layer.new_coords:
                continue
            b = conv.bias.view(layer.na, -1)
            b[:, 4] = -4.5
            b[:, 5:] = math.log(0.6 / (layer.nc - 0.99)) if layer.nc > 1 else 0.0


def _rss_gb():
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    except ImportError:
        return 0.0


def resolve_resume(resume, project='runs/train'):
    """--resume with no path -> the newest last.pt under ``project``."""
    if resume != 'last':
        if not os.path.isfile(resume):
            raise FileNotFoundError(f'--resume {resume}: no such checkpoint')
        return resume
    candidates = sorted(Path(project).glob('*/weights/last.pt'), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f'--resume: no last.pt under {project}/*/weights/')
    return str(candidates[-1])


RESUME_OVERRIDES = ('workers', 'device', 'stop_after')  # the only options a resumed run takes from its new command


def resume_options(opt, defaults):
    """The interrupted run's own options (its opt.yaml over ``defaults``, its hyp.yaml), so it
    continues the same schedule; only RESUME_OVERRIDES come from ``opt``, the new command line.
    The checkpoint itself is read (and a truncated one reported) by the Trainer."""
    import argparse
    ckpt = resolve_resume(opt.resume, opt.project)
    run_dir = Path(ckpt).resolve().parent.parent
    saved_opt = run_dir / 'opt.yaml'
    if not saved_opt.is_file():
        raise FileNotFoundError(f'--resume {ckpt}: {saved_opt} is missing (a resumable run folder holds '
                                'opt.yaml, hyp.yaml and weights/last.pt)')
    saved = argparse.Namespace(**{**vars(defaults), **yaml.safe_load(saved_opt.read_text())})
    for key in RESUME_OVERRIDES:
        setattr(saved, key, getattr(opt, key))
    saved.resume = ckpt
    if (run_dir / 'hyp.yaml').is_file():
        saved.hyp = str(run_dir / 'hyp.yaml')
    return saved
