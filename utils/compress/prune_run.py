"""What every pruning script does around the engine: arguments, loading, evaluation, adaptive
BN, latency, the report and the output files. A script supplies only its *plan*: which
channels or blocks go (see normal_prune.py).

    run = PruneRun(opt, 'normal')                       # loads --weights (and --cfg), the data
    removed = run.threshold_plan(mode=0, percent=0.5)   # coupling groups to remove
    run.finish([run.stage('compact', removed=removed)], amount='0.5')
"""
import copy
import json
import math
import statistics
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import models
from utils.general import atomic_write_text, increment_path, user_errors
from utils.compress.layer_graph import LayerGraph
from utils.parse_config import CfgError, parse_data_cfg, read_names, write_cfg
from utils.compress.prune import bn_gammas, compact_model, masked_model, max_usable_percent, threshold_removed

SPARSITY_MODE = {'normal': 0, 'regular': 0, 'shortcut': 1, 'slim': 1, 'layer': 2, 'layer_channel': 1}


class Stage:
    """One row of the report: a model and how it came about."""

    def __init__(self, label, model, full_size=False):
        self.label, self.model, self.full_size = label, model, full_size
        self.metrics = None


class PruneRun:
    def __init__(self, opt, method):
        from utils.torch_utils import select_device
        self.opt, self.method = opt, method
        self.device = select_device(opt.device)
        from utils.datasets import resolve_data
        opt.data = resolve_data(opt.data)
        self.data = parse_data_cfg(opt.data, required=('valid', 'classes', 'train'))  # mAP; adaptive BN
        import utils.compress.quant  # noqa: F401  (registers how a quantization-aware checkpoint is rebuilt)
        self.model, self.ckpt_info = models.load_model(opt.cfg, opt.weights, opt.img_size, self.device)
        if self.model.nc != int(self.data['classes']):
            raise ValueError(f'the model has {self.model.nc} classes, {opt.data} has {self.data["classes"]}')
        self.names = self.ckpt_info.get('names') or read_names(self.data.get('names'), self.model.nc)
        self.graph = LayerGraph(self.model.module_defs, self.model.in_channels)
        self._loaders = {}
        self.adapt_decision = None  # finish(): whether adaptive BN was kept, and why
        self._check_sparsity()
        if getattr(opt, 'percent', None) == 'auto':
            opt.percent = self.prepared_percent()

    def prepared_percent(self):
        """--percent auto: the percent recorded by a --sr-target sparsity run, at which the global
        threshold falls on the channels it took to 0."""
        target = ((self.ckpt_info or {}).get('sparsity') or {}).get('target') or {}
        percent = target.get('prune_percent')
        if percent is None:
            raise ValueError(f'--percent auto: {self.opt.weights} records no prepared cut (it comes from '
                             '`train.py -sr --sr-target P`, once the cut has reached 0); give --percent a number')
        print(f'--percent auto: {percent} (the channels `--sr-target {target["percent"]:g} --sr-keep '
              f'{target["layer_keep"]:g}` took to 0)')
        return percent

    def _check_sparsity(self):
        sparsity = self.ckpt_info.get('sparsity') if self.ckpt_info else None
        want = SPARSITY_MODE[self.method]
        if not self.ckpt_info:
            print(f'NOTE: Darknet .weights do not record sparsity training; {self.method} pruning expects a model '
                  f'trained with `train.py -sr --prune {want}`')
        elif not sparsity:
            print(f'WARNING: {self.opt.weights} was not sparsity-trained (no -sr); expect a large mAP drop. '
                  f'Train with `train.py -sr --s 0.001 --prune {want}` first, or rely on --adapt-bn and fine-tuning.')
        elif not set(self.graph.prune_set(want)) <= set(self.graph.prune_set(int(sparsity.get('prune', want)))):
            # --prune 1 penalises everything --prune 0 and 2 do, so it serves every method
            print(f'WARNING: {self.opt.weights} was sparsity-trained with --prune {sparsity["prune"]}, which leaves '
                  f'some of the layers {self.method} pruning cuts unpenalised; it expects --prune {want}')

    # ------------------------------------------------------------------ planning helpers
    def scales(self, mode):
        layers = self.graph.prune_set(mode)
        if not layers:
            raise ValueError(f'{self.method} pruning: this model has no candidate layers for --prune {mode}')
        return bn_gammas(self.model, layers)

    def threshold_plan(self, mode, percent, rule='any', strict=False, adjust=None, removed_fn=None):
        """Removed coupling groups at the global ``percent`` threshold; ``adjust(masks)`` applies a
        method's per-layer rule (rounding, floor), or ``removed_fn(graph, scales, percent)`` is the
        whole plan. A percent that empties a layer is an error stating the largest usable value."""
        scales = self.scales(mode)

        def plan(p):
            if removed_fn is not None:
                return removed_fn(self.graph, scales, p)
            return threshold_removed(self.graph, scales, p, rule, strict, adjust)
        try:
            return plan(percent)
        except ValueError as e:
            if not 0 <= percent < 1:
                raise
            limit = math.floor(max_usable_percent(scales, plan) * 1e4) / 1e4  # rounded down: every value below works
            raise ValueError(f'--percent {percent}: {e}; with this model --percent must stay below {limit:.4f}'
                             ) from None

    def stage(self, label, model=None, removed=(), drop_blocks=(), masked=False):
        """A report row: the compact (or, with ``masked``, the full-size masked) version of
        ``model`` (default: the loaded model)."""
        model = self.model if model is None else model
        graph = self.graph if model is self.model else LayerGraph(model.module_defs, model.in_channels)
        build = masked_model if masked else compact_model
        return Stage(label, build(model, removed, drop_blocks, graph=graph).to(self.device).eval(), masked)

    # ------------------------------------------------------------------ evaluation
    def loader(self, split):
        if split not in self._loaders:
            from utils.datasets import create_dataloader
            opt = self.opt
            self._loaders[split] = create_dataloader(
                self.data[split], opt.img_size, opt.batch_size, stride=32, hyp=None, augment=False,
                rect=split == 'valid', workers=opt.workers, shuffle=split == 'train', pad=0.5 if split == 'valid'
                else 0.0, nc=int(self.data['classes']), seed=0)[0]
        return self._loaders[split]

    def evaluate(self, model):
        from utils.evaluation import evaluate
        m = evaluate(model, self.loader('valid'), self.names, conf_thres=0.001, iou_thres=0.6)
        return {'map50': float(m['map50']), 'map50_95': float(m['map50_95'])}

    # ------------------------------------------------------------------ the end of every script
    def finish(self, stages, amount):
        opt = self.opt
        out_dir, paths = self._out_paths(amount)  # before the minutes of evaluation: a bad --out fails now
        stages = [Stage('original', self.model, True)] + list(stages)
        adapted, chosen = None, stages[-1]
        if opt.adapt_bn > 0:
            adapted = copy.deepcopy(stages[-1].model)
            stages.append(Stage(f'{stages[-1].label} + adaptive BN', adapted))
        for s in stages:
            if s.model is adapted:  # here, so the log reads in table order
                heldout, stream = split_heldout(self.loader('train'), HELDOUT_IMAGES)
                adapt_bn(adapted, stream, opt.adapt_bn)
                chosen, self.adapt_decision = self.decide_adaptation(stages[-2], stages[-1], heldout)
            print(f'\nEvaluating {s.label}')
            s.metrics = self.evaluate(s.model)
            s.metrics['params'] = models.count_parameters(s.model)[0]
            s.metrics['gflops'] = models.layer_flops(s.model, opt.img_size)[1] / 1e9
        for s in stages:
            s.metrics['saved'] = s is chosen
        unique = {}
        for s in stages:  # full-size masked models run as fast as the original
            unique.setdefault(s.model.cfg_text(), s.model)
        print(f'\nTiming {len(unique)} architectures at {opt.img_size} px, batch 1, fused, interleaved ...')
        times = measure_latency(list(unique.values()), opt.img_size, opt.latency_reps, self.device)
        by_cfg = dict(zip(unique, times))
        for s in stages:
            s.metrics['latency_ms'] = by_cfg[s.model.cfg_text()]
        result = chosen
        out = self._save(result.model, amount, stages, out_dir, paths)
        print(channel_table(self.graph, result.model))
        print(stage_table(stages))
        print(f'\nSaved {out["cfg"]}, {out["weights"]}, {out["pt"]}\nFine-tune: python3 train.py --weights {out["pt"]}'
              f' --data {opt.data}')
        return stages, out

    def decide_adaptation(self, plain, adapted, heldout):
        """Adaptive BN helps deep cuts and can hurt light ones: keep it only where it lowers the
        detection loss on held-out training images (never used to re-estimate the statistics,
        never the validation set). Returns (the stage to save, the decision for the report)."""
        from utils.loss import YOLOLoss
        from utils.parse_config import load_hyp
        loss_fn = YOLOLoss(plain.model, load_hyp(self.data.get('hyp', 'data/hyp.yaml')))
        losses = [heldout_loss(stage.model, heldout, loss_fn) for stage in (plain, adapted)]
        use = losses[1] < losses[0]
        print(f'Adaptive BN: held-out loss {losses[0]:.4g} without, {losses[1]:.4g} with '
              f'({sum(len(b[0]) for b in heldout)} training images): {"kept" if use else "not kept"}')
        return (adapted if use else plain), {'used': bool(use), 'loss_without': losses[0], 'loss_with': losses[1],
                                              'heldout_images': sum(len(b[0]) for b in heldout)}

    def _out_paths(self, amount):
        """The output folder and the cfg/weights/pt paths; ValueError if they would overwrite an
        input or join another pruned model's files. Creates nothing."""
        opt = self.opt
        out_dir = Path(opt.out) if opt.out else increment_path(Path('runs/prune') / self.method, mkdir=False)
        stem = f'{Path(opt.cfg or opt.weights).stem}_{self.method}_{amount}'
        paths = {'cfg': out_dir / f'{stem}.cfg', 'weights': out_dir / f'{stem}.weights', 'pt': out_dir / f'{stem}.pt'}
        inputs = {Path(p).resolve() for p in (opt.cfg, opt.weights) if p}
        if any(p.resolve() in inputs for p in paths.values()):
            raise ValueError(f'{out_dir}: writing there would overwrite an input; choose another --out')
        others = [p for p in (*out_dir.glob('*.cfg'), *out_dir.glob('*.weights')) if p not in paths.values()]
        if others:
            raise ValueError(f'--out {out_dir} already holds {others[0].name}; choose an empty or new folder '
                             '(it receives exactly one pruned cfg and weights)')
        return out_dir, paths

    def _save(self, model, amount, stages, out_dir, paths):
        opt = self.opt
        out_dir.mkdir(parents=True, exist_ok=True)
        model = model.cpu()
        write_cfg(model.sections, paths['cfg'])
        models.save_weights(model, paths['weights'])
        models.save_checkpoint(paths['pt'], model, names=list(self.names),
                               pruning={'method': self.method, 'amount': str(amount), 'source': str(opt.weights)})
        report = {'method': self.method, 'amount': str(amount), 'weights': str(opt.weights), 'cfg': str(opt.cfg),
                  'data': str(opt.data), 'img_size': opt.img_size, 'adapt_bn_images': opt.adapt_bn,
                  'adaptive_bn': self.adapt_decision,
                  'stages': [{'label': s.label, **s.metrics} for s in stages],
                  'layers': layer_rows(self.graph, model),
                  'files': {k: str(v) for k, v in paths.items()}}
        atomic_write_text(out_dir / 'prune_report.json', json.dumps(report, indent=2))
        plot_channels(report['layers'], out_dir / 'channels.png', f'{self.method} {amount}')
        return paths


# ----------------------------------------------------------------------------- reports

def layer_rows(graph, pruned):
    """Per conv of the original model: index, channels before and after (0: layer removed)."""
    origin = getattr(pruned, 'origin', list(range(len(pruned.module_defs))))
    after = {old: d['filters'] for old, d in zip(origin, pruned.module_defs) if 'filters' in d}
    return [{'layer': i, 'before': graph.out_channels[i], 'after': after.get(i, 0)}
            for i in range(len(graph.defs)) if graph.is_conv(i)]


def channel_table(graph, pruned):
    all_rows = layer_rows(graph, pruned)
    rows = [r for r in all_rows if r['after'] != r['before']]
    lines = [f'\n{"layer":>6} {"channels":>9} {"kept":>6} {"ratio":>6}']
    for r in rows:
        lines.append(f'{r["layer"]:>6} {r["before"]:>9} {r["after"]:>6} {r["after"] / r["before"]:>6.2f}')
    total_b = sum(r['before'] for r in all_rows)
    total_a = sum(r['after'] for r in all_rows)
    lines.append(f'{"all":>6} {total_b:>9} {total_a:>6} {total_a / max(total_b, 1):>6.2f}  '
                 f'({len(rows)} layers changed)')
    return '\n'.join(lines)


def stage_table(stages):
    head = f'\n{"model":<40} {"mAP@0.5":>8} {"mAP@.5:.95":>10} {"params":>11} {"GFLOPs":>8} {"CPU ms":>9}'
    lines = [head]
    for k, s in enumerate(stages):
        m = s.metrics
        same = '*' if s.full_size and k else ' '  # a full-size masked model runs as the original does
        saved = '  <- saved' if m.get('saved') and k else ''
        lines.append(f'{s.label:<40} {m["map50"]:>8.4f} {m["map50_95"]:>10.4f} {m["params"]:>11,} '
                     f'{m["gflops"]:>8.3f} {m["latency_ms"]:>8.2f}{same}{saved}')
    base = stages[0].metrics
    last = next((s.metrics for s in stages if s.metrics.get('saved')), stages[-1].metrics)
    lines.append(f'{"saved / original":<40} {last["map50"] - base["map50"]:>+8.4f} '
                 f'{last["map50_95"] - base["map50_95"]:>+10.4f} {last["params"] / base["params"]:>11.3f} '
                 f'{last["gflops"] / base["gflops"]:>8.3f} {last["latency_ms"] / base["latency_ms"]:>8.3f}')
    if any(s.full_size for s in stages[1:]):
        lines.append('* full size (pruned scales set to 0): it runs as fast as the original')
    return '\n'.join(lines)


def plot_channels(rows, path, title):
    from utils.plots import _new_figure, save_figure
    fig = _new_figure((max(8, len(rows) * 0.12), 4))
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x, [r['before'] for r in rows], color='lightgray', label='before')
    ax.bar(x, [r['after'] for r in rows], color='tab:blue', label='kept')
    ax.set(xlabel='conv layer', ylabel='channels', title=f'Channels per conv layer ({title})')
    ax.set_xticks(x[::max(1, len(rows) // 30)], [rows[k]['layer'] for k in x[::max(1, len(rows) // 30)]])
    ax.legend()
    save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------- adaptive BN, latency

HELDOUT_IMAGES = 64  # training images that decide whether adaptive BN is kept


def split_heldout(loader, n_images):
    """([(imgs, targets)] of the first ``n_images`` images of one pass over ``loader``, an endless
    stream of (imgs, ...) batches that continues after them, pass after pass)."""
    it = iter(loader)
    heldout, seen = [], 0
    for imgs, targets, *_ in it:
        heldout.append((imgs, targets))
        seen += len(imgs)
        if seen >= n_images:
            break

    def stream():
        yield from it
        while True:
            yield from loader
    return heldout, stream()


@torch.no_grad()
def heldout_loss(model, batches, loss_fn):
    """Mean detection loss (per batch) of ``model`` in eval mode on [(imgs uint8, targets)]."""
    device = next(model.parameters()).device
    model.eval()
    total = 0.0
    for imgs, targets in batches:
        imgs = imgs.to(device).float() / 255.0
        _, raw = model(imgs)
        total += float(loss_fn(raw, targets.to(device), imgs.shape[-2:])[0])
    return total / len(batches)


def adapt_bn(model, loader, n_images):
    """Re-estimate every BN layer's running statistics on ``n_images`` training images: train-mode
    forwards without gradients, cumulative averages (EagleEye, ECCV 2020). ``loader``: any
    iterable of (imgs uint8, ...) batches, re-iterated until ``n_images`` were seen."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches seen
    device = next(model.parameters()).device
    model.train()
    seen = 0
    with torch.no_grad():
        bar = tqdm(total=n_images, desc='adaptive BN', bar_format='{l_bar}{bar:10}{r_bar}')
        while seen < n_images:
            for imgs, *_ in loader:
                imgs = imgs[:n_images - seen].to(device).float() / 255.0
                model(imgs)
                seen += len(imgs)
                bar.update(len(imgs))
                if seen >= n_images:
                    break
        bar.close()
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    return model.eval()


def measure_latency(model_list, img_size, reps, device):
    """Median ms of a batch-1 forward of each model (fused, channels_last, inference mode, the
    current torch thread count), each model in its own process, rounds interleaved
    (utils.deploy.latency.time_per_process)."""
    import tempfile

    from utils.deploy.latency import torch_job, time_per_process
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {}
        for k, m in enumerate(model_list):  # a worker loads its model from a file
            pt = Path(tmp) / f'model{k}.pt'
            models.save_checkpoint(pt, m)
            jobs[f'model {k}'] = torch_job(pt, threads, 1, img_size, device=device, channels=m.in_channels)
        times = time_per_process(jobs, reps, warmup=3)
    missing = [name for name in jobs if name not in times]
    if missing:
        raise RuntimeError(f'latency: {", ".join(missing)} could not be timed (see the lines above)')
    return [1e3 * statistics.median(times[name]) for name in jobs]


def run_plan(opt, method, plan):
    """What every *_prune.py runs on its parsed flags (utils.compress.prune_flags.prune_parser): load,
    plan, finish; user errors in one line."""
    with user_errors(CfgError):
        run = PruneRun(opt, method)
        stages, amount = plan(run, opt)
        return run.finish(stages, amount)
