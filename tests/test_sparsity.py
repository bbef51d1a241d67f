"""BN-sparsity training (-sr --s --prune): the L1 sub-gradient by hand, its schedule, its
effect on training against a dense run, DDP equivalence, and what a sparse run writes."""
import csv
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import models
import train
from test_train import NO_AUG, hyp_file, tiny_data  # noqa: F401  (tiny_data is a fixture)
from utils.compress.layer_graph import LayerGraph
from utils.compress.prune import bn_gammas, layer_keep_masks, masked_model, slim_removed
from utils.compress.sparsity import (SPARSE_THRESHOLD, CutTarget, add_l1_subgradient_, attach_sparsity,
                                     penalised_layers, scheduled_lambda)

ROOT = Path(__file__).resolve().parents[1]
TINY = 'cfg/yolov3-tiny-shapes.cfg'
MINI = 'cfg/yolov3-mini-shapes.cfg'


def sign(v):
    return 1.0 if v > 0 else -1.0 if v < 0 else 0.0


def gamma_key(i):
    return f'module_list.{i}.BatchNorm2d.weight'


def fake_trainer(model, epoch=0, epochs=1):
    """The attributes the sparsity hooks read, without data or a training loop."""
    return SimpleNamespace(model_transforms=[], grad_hooks=[], epoch_hooks=[], ckpt_extras={}, resumed_extras={},
                           main=False, ddp=model, model=model, epoch=epoch, epochs=epochs)


# ----------------------------------------------------------------------------- the penalty by hand

def test_l1_subgradient_by_hand():
    """grad += lambda * sign(gamma) on trained gammas only; sign(0) = 0; frozen ones untouched;
    a missing grad becomes the penalty alone. Values chosen so float sums are exact."""
    a = torch.nn.Parameter(torch.tensor([0.5, -0.25, 0.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    frozen = torch.nn.Parameter(torch.tensor([3.0]), requires_grad=False)
    a.grad = torch.tensor([1.0, 1.0, 1.0, -0.5])
    add_l1_subgradient_([a, b, frozen], 0.125)
    assert a.grad.tolist() == [1.125, 0.875, 1.0, -0.375]
    assert b.grad.tolist() == [0.125, -0.125]
    assert frozen.grad is None


def test_hook_penalises_the_prune_set_with_the_scheduled_lambda():
    """--prune 2 on yolov3-mini: exactly the BN convs that close a residual block (the conv right
    before each [shortcut]) get lambda(epoch) x sign(gamma); every other gradient is unchanged."""
    torch.manual_seed(0)
    model = models.Darknet(MINI, img_size=128)
    closers = [i - 1 for i, d in enumerate(model.module_defs)
               if d['type'] == 'shortcut' and model.module_defs[i - 1].get('batch_normalize')]
    assert closers
    trainer = fake_trainer(model, epoch=3, epochs=4)
    attach_sparsity(trainer, s=0.5, prune=2, schedule='cosine')
    (transform,), (hook,), (_,) = trainer.model_transforms, trainer.grad_hooks, trainer.epoch_hooks
    assert transform(trainer, model) is model
    assert trainer.ckpt_extras['sparsity'] == {'prune': 2, 's': 0.5, 'schedule': 'cosine', 'layers': closers}
    with torch.no_grad():
        model.module_list[closers[0]].BatchNorm2d.weight[:3] = torch.tensor([0.0, -0.7, 0.2])
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    hook(trainer)
    lam = 0.5 * (1 - math.sqrt(0.5)) / 2  # cosine schedule at epoch 3 of 4: (1 + cos(3 pi / 4)) / 2
    penalised = {gamma_key(i) for i in closers}
    for name, p in model.named_parameters():
        value, grad = before[name]
        if name in penalised:
            expected = grad + torch.tensor([lam * sign(v) for v in value.tolist()])
            torch.testing.assert_close(p.grad, expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(p.grad, grad), name
    assert model.module_list[closers[0]].BatchNorm2d.weight.grad[0] == before[gamma_key(closers[0])][1][0]


def test_schedules_by_hand():
    assert scheduled_lambda(0.01, 'constant', 9, 10) == 0.01
    assert [scheduled_lambda(1.0, 'step', e, 10) for e in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]
    assert [scheduled_lambda(1.0, 'step', e, 3) for e in (0, 1, 2)] == [1.0, 1.0, 0.1]  # from epoch E / 2 = 1.5
    assert scheduled_lambda(2.0, 'cosine', 0, 10) == 2.0
    assert math.isclose(scheduled_lambda(2.0, 'cosine', 5, 10), 1.0)
    assert math.isclose(scheduled_lambda(2.0, 'cosine', 9, 10), 2.0 * (1 + math.cos(0.9 * math.pi)) / 2)
    with pytest.raises(ValueError, match='--sr-schedule'):
        scheduled_lambda(1.0, 'linear', 0, 10)


def test_flags_and_clear_errors(tmp_path, tiny_data):
    opt = train.parse_args(['-sr'])
    assert (opt.sr, opt.s, opt.prune, opt.sr_schedule) == (True, 0.001, 0, 'constant')
    opt = train.parse_args(['--sr', '--s', '0.01', '--prune', '2', '--sr-schedule', 'step'])
    assert (opt.sr, opt.s, opt.prune, opt.sr_schedule) == (True, 0.01, 2, 'step')
    assert train.parse_args([]).sr is False
    for argv in (['--prune', '1'], ['--s', '0.01'], ['-sr', '--s', '-1'], ['-sr', '--prune', '3']):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
    with pytest.raises(ValueError, match=r'--prune 2 \(layer pruning\): this model has no layer'):
        penalised_layers(models.Darknet(TINY), 2)
    with pytest.raises(SystemExit, match=r'^error: -sr --prune 2 .* no \[shortcut\]'):
        train.main(['--data', str(tiny_data), '--cfg', TINY, '--img-size', '128', '--workers', '0', '--project',
                    str(tmp_path / 'runs'), '-sr', '--prune', '2'])


# ----------------------------------------------------------------------------- training

def test_sparse_training_shrinks_penalised_gammas_and_writes_its_artefacts(tmp_path, tiny_data):
    """4 SGD steps (momentum 0) from one start, with and without -sr --s 1 --prune 0 (the sparse
    run cut after its first epoch and resumed): penalised |gamma| fall by ~ lambda x the summed
    learning rates, the one unpenalised BN layer moves little; results.csv's sparse_frac and
    gamma_mean equal the checkpoint's gammas; bn_hist.png; ckpt['sparsity'] survives --resume."""
    torch.manual_seed(3)
    start = models.Darknet(TINY, img_size=128)
    layers = LayerGraph(start.sections).prune_set(0)
    others = [i for i, d in enumerate(start.module_defs) if d.get('batch_normalize') and i not in layers]
    assert layers and others
    with torch.no_grad():  # a few already-sparse channels, so sparse_frac is not trivially 0
        start.module_list[layers[0]].BatchNorm2d.weight[:3] = 0.002
    models.save_checkpoint(tmp_path / 'start.pt', start)
    hyp = hyp_file(tmp_path, lr0=0.01, momentum=0.0, warmup_epochs=0, **NO_AUG)
    common = ['--data', str(tiny_data), '--cfg', TINY, '--img-size', '128', '--workers', '0', '--epochs', '2',
              '--batch-size', '8', '--hyp', hyp, '--weights', str(tmp_path / 'start.pt'), '--notest',
              '--project', str(tmp_path / 'runs')]
    train.main([*common, '--name', 'dense'])
    train.main([*common, '--name', 'sparse', '-sr', '--s', '1', '--prune', '0', '--stop-after', '1'])
    sparse_dir = tmp_path / 'runs' / 'sparse'
    assert models.load_checkpoint(sparse_dir / 'weights' / 'last.pt')['sparsity']['s'] == 1.0
    train.main(['--resume', str(sparse_dir / 'weights' / 'last.pt'), '--workers', '0'])

    dense = models.load_checkpoint(tmp_path / 'runs' / 'dense' / 'weights' / 'last.pt')['model']
    ckpt = models.load_checkpoint(sparse_dir / 'weights' / 'last.pt')
    sparse = ckpt['model']
    rows = list(csv.DictReader(open(sparse_dir / 'results.csv')))
    assert len(rows) == 2 and ckpt['updates'] == 4
    lr_sum = 2 * sum(float(r['lr']) for r in rows)  # 2 steps per epoch at that epoch's lr
    shrink = torch.cat([dense[gamma_key(i)].abs() - sparse[gamma_key(i)].abs() for i in layers])
    big = torch.cat([start.state_dict()[gamma_key(i)].abs() > 0.1 for i in layers])  # no sign change possible
    # measured: mean shrink 0.03049 for lr_sum 0.0305, every channel > 0.95 lr_sum; others drift 3e-5 on average
    assert abs(shrink[big].mean().item() - lr_sum) < 0.05 * lr_sum, (shrink[big].mean().item(), lr_sum)
    assert shrink[big].min() > 0.8 * lr_sum, (shrink[big].min().item(), lr_sum)
    drift = torch.cat([(dense[gamma_key(i)].abs() - sparse[gamma_key(i)].abs()).abs() for i in others])
    assert drift.mean() < 0.02 * lr_sum, (drift.mean().item(), lr_sum)

    gammas = torch.cat([sparse[gamma_key(i)].abs().double() for i in layers])
    assert math.isclose(float(rows[-1]['sparse_frac']), (gammas < SPARSE_THRESHOLD).double().mean().item(),
                        rel_tol=1e-5)
    assert float(rows[-1]['sparse_frac']) > 0
    assert math.isclose(float(rows[-1]['gamma_mean']), gammas.mean().item(), rel_tol=1e-5)
    assert [float(r['sr_lambda']) for r in rows] == [1.0, 1.0]
    assert ckpt['sparsity'] == {'prune': 0, 's': 1.0, 'schedule': 'constant', 'layers': layers}
    assert ckpt['sparsity_hist']['epochs'] == [0, 1]  # the resumed run kept epoch 0's histogram
    assert ckpt['sparsity_hist']['counts'].sum(1).tolist() == [len(gammas)] * 2
    assert (sparse_dir / 'bn_hist.png').stat().st_size > 0 and (sparse_dir / 'results.png').stat().st_size > 0


# ----------------------------------------------------------------------------- --sr-target

def test_cut_target_schedule_by_hand():
    """p = P (1 - (1 - progress / ramp)^3), P from the ramp's end; progress counts the current
    batch; each step holds the slim cut at the scheduled p at exactly 0 (model and EMA), the
    cut only grows, it is the pruner's own plan at that p, and every other gamma is untouched."""
    t = CutTarget(0.5, 0.1, ramp=0.5)
    assert [t.percent_at(p) for p in (0.0, 0.25, 0.5, 0.9)] == [0.0, 0.5 * (1 - 0.5 ** 3), 0.5, 0.5]
    trainer = SimpleNamespace(ni=9, nb=10, epochs=4, epoch=0)  # batch 10 of 40 done
    assert t.progress(trainer) == 0.25
    torch.manual_seed(0)
    model = models.Darknet(MINI, img_size=128)
    with torch.no_grad():  # distinct gammas, so the plan has no ties
        for i in LayerGraph(model.sections).prune_set(1):
            g = model.module_list[i].BatchNorm2d.weight
            g.copy_(torch.rand_like(g) + 0.05)
    t.graph, t.layers = LayerGraph(model.sections), LayerGraph(model.sections).prune_set(1)
    ema = models.Darknet(MINI, img_size=128)
    ema.load_state_dict(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zeros = []
    for ni in range(20):  # 20 single-batch steps: progress 0.025 ... 0.5
        trainer.ni = ni
        p = t.on_step(trainer, model, ema)
        zeros.append(sum(int(m.sum()) for m in t.chosen.values()))
    # no optimizer moved anything: the cut is the plan of the starting gammas at the final p
    start = bn_gammas(before_model(before), t.layers)
    want = {i: ~keep for i, keep in layer_keep_masks(t.graph, slim_removed(t.graph, start, t.chosen_at, 0.1)).items()}
    assert p == 0.5 and zeros == sorted(zeros) and zeros[0] < zeros[-1]
    for i, mask in t.chosen.items():
        for m in (model, ema):
            g = m.module_list[i].BatchNorm2d.weight.detach()
            assert torch.all(g[mask] == 0) and torch.equal(g[~mask], before[gamma_key(i)][~mask])
    assert {i: m.tolist() for i, m in t.chosen.items() if m.any()} == {i: m.tolist() for i, m in want.items() if m.any()}
    for bad in ({'percent': 1.0}, {'percent': 0.5, 'layer_keep': 1.5}, {'percent': 0.5, 'ramp': 0.0}):
        with pytest.raises(ValueError, match='--sr-'):
            CutTarget(**bad)


def before_model(state):
    model = models.Darknet(MINI, img_size=128)
    model.load_state_dict(state)
    return model


def test_sr_target_zeroes_exactly_the_slim_cut(tmp_path, tiny_data):
    """-sr --s 0 --prune 1 --sr-target 0.5 --sr-keep 0.2 --sr-ramp 0.5 on yolov3-mini (residual
    stages: coupled channels), 4 epochs, interrupted after 1 and resumed: the checkpoint's
    gammas are exactly 0 on the channels slim_prune's own rule removes at the recorded
    prune_percent and that keep, and non-zero elsewhere in the cut's layers; so the masked model is the trained model
    (the cut changes nothing before the zero-padding border); cap0 survives --resume;
    results.csv logs the ramp (sr_cap 0 from its end)."""
    torch.manual_seed(0)
    models.save_checkpoint(tmp_path / 'start.pt', models.Darknet(MINI, img_size=128))
    hyp = hyp_file(tmp_path, warmup_epochs=0, **NO_AUG)
    common = ['--data', str(tiny_data), '--img-size', '128', '--workers', '0', '--epochs', '4', '--batch-size', '8',
              '--hyp', hyp, '--weights', str(tmp_path / 'start.pt'), '--notest', '--project', str(tmp_path / 'runs'),
              '--name', 'cut', '-sr', '--s', '0', '--prune', '1', '--sr-target', '0.5', '--sr-keep', '0.2',
              '--sr-ramp', '0.5']
    train.main([*common, '--stop-after', '1'])
    run = tmp_path / 'runs' / 'cut'
    assert models.load_checkpoint(run / 'weights' / 'last.pt')['sparsity']['target']['prune_percent'] is None
    train.main(['--resume', str(run / 'weights' / 'last.pt'), '--workers', '0'])
    ckpt = models.load_checkpoint(run / 'weights' / 'last.pt')
    target = ckpt['sparsity']['target']
    assert {k: target[k] for k in ('percent', 'layer_keep', 'ramp')} == {'percent': 0.5, 'layer_keep': 0.2,
                                                                          'ramp': 0.5}
    model = models.model_from_checkpoint(run / 'weights' / 'last.pt')[0].eval()
    graph = LayerGraph(model.sections)
    layers = graph.prune_set(1)
    removed = slim_removed(graph, bn_gammas(model, layers), target['prune_percent'], 0.2)
    cut = layer_keep_masks(graph, removed)
    n = sum(len(g) for g in bn_gammas(model, layers).values())
    zeros = sum(int((~m).sum()) for m in cut.values())
    assert cut and int(n * target['prune_percent']) < zeros < n * 0.5
    for i, keep in cut.items():
        g = model.module_list[i].BatchNorm2d.weight.detach()
        assert torch.all(g[~keep] == 0), i
        assert torch.all(g[keep] != 0), i
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(masked_model(model, removed, graph=graph).eval()(x)[0], model(x)[0])
    # slim_prune.py --percent auto cuts exactly the zeros: its masked model is the trained one
    import json
    import slim_prune
    slim_prune.main(['--weights', str(run / 'weights' / 'last.pt'), '--data', str(tiny_data), '--img-size', '128',
                     '--percent', 'auto', '--layer_keep', '0.2', '--latency-reps', '2', '--adapt-bn', '8',
                     '--workers', '0', '--out', str(tmp_path / 'cut')])
    report = json.loads((tmp_path / 'cut' / 'prune_report.json').read_text())
    assert report['amount'] == str(target['prune_percent'])
    by_label = {st['label']: st for st in report['stages']}
    assert by_label['masked (gamma = 0)']['map50'] == by_label['original']['map50']
    assert sum(r['after'] for r in report['layers']) == sum(r['before'] for r in report['layers']) - zeros
    decision = report['adaptive_bn']  # kept exactly when it lowered the held-out loss
    assert decision['heldout_images'] == 16 and decision['used'] == (decision['loss_with'] < decision['loss_without'])
    saved = [st['label'] for st in report['stages'] if st['saved']]
    assert saved == ['compact + adaptive BN' if decision['used'] else 'compact']

    rows = list(csv.DictReader(open(run / 'results.csv')))
    cuts = [float(r['sr_cut']) for r in rows]
    assert cuts == [0.5 * (1 - 0.5 ** 3), 0.5, 0.5, 0.5], cuts
    assert all(0.2 < float(r['sr_target_frac']) < 0.5 for r in rows)


def test_sr_target_flag_errors(tmp_path, tiny_data):
    for argv in (['--sr-target', '0.5'], ['-sr', '--sr-keep', '0.2'], ['-sr', '--sr-ramp', '0.3']):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
    base = ['--data', str(tiny_data), '--cfg', MINI, '--img-size', '128', '--workers', '0', '--project',
            str(tmp_path / 'runs'), '-sr']
    with pytest.raises(SystemExit, match=r'^error: --sr-target must be in \(0, 1\)'):
        train.main([*base, '--prune', '1', '--sr-target', '1.5'])
    with pytest.raises(SystemExit, match=r'^error: --sr-target prepares a channel cut .* not 2'):
        train.main([*base, '--prune', '2', '--sr-target', '0.5'])


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_applies_the_same_penalty_as_one_process(tmp_path):
    """One plain-SGD step from a common start over 4 identical images: the penalised gammas move
    by exactly -lr0 x s x sign(gamma) relative to a dense run (every other tensor bitwise equal),
    and 2 gloo processes under torchrun make the same step as one process."""
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    data = Path(shapes.ensure_shapes(tmp_path / 'same', n_train=1, n_val=1, seed=2, min_size=128, max_size=128))
    lst = data.parent / 'same' / 'train.txt'
    lst.write_text(lst.read_text() * 4)
    hyp = hyp_file(tmp_path, lr0=0.01, momentum=0.0, warmup_epochs=0, **NO_AUG)
    torch.manual_seed(0)
    start = models.Darknet(str(ROOT / TINY), img_size=128)
    models.save_checkpoint(tmp_path / 'start.pt', start)
    common = ['--data', str(data), '--cfg', TINY, '--img-size', '128', '--workers', '0', '--epochs', '1',
              '--batch-size', '4', '--nbs', '4', '--hyp', hyp, '--notest', '--rect', '--weights',
              str(tmp_path / 'start.pt'), '--project', str(tmp_path / 'runs')]
    sr = ['-sr', '--sr-lambda', '10', '--prune', '1']  # torchrun's own parser refuses --s (ambiguous)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    ddp = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                            str(free_port()), 'train.py', *common, *sr, '--name', 'ddp'], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:  # the single-process runs meanwhile, in this process
        train.main([*common, '--name', 'dense'])
        train.main([*common, *sr, '--name', 'single'])
        out, _ = ddp.communicate(timeout=300)
    finally:
        if ddp.poll() is None:  # torchrun and its two workers
            os.killpg(ddp.pid, signal.SIGKILL)
    assert ddp.returncode == 0, out[-3000:]
    last = {n: models.load_checkpoint(tmp_path / 'runs' / n / 'weights' / 'last.pt')
            for n in ('dense', 'single', 'ddp')}
    assert all(c['updates'] == 1 for c in last.values())
    layers = last['single']['sparsity']['layers']
    assert last['ddp']['sparsity']['layers'] == layers == LayerGraph(start.sections).prune_set(1)
    w0 = start.state_dict()
    dense, single, ddp_w = (last[n]['model'] for n in ('dense', 'single', 'ddp'))
    for k in single:
        if 'running_' in k or not single[k].dtype.is_floating_point:
            continue
        layer = int(k.split('.')[1])
        if k == gamma_key(layer) and layer in layers:  # exact: lr0 x s x sign(gamma), nothing else differs
            expected = -0.01 * 10 * torch.sign(w0[k])
            torch.testing.assert_close(single[k] - dense[k], expected, rtol=0, atol=2e-6)
        else:
            assert torch.equal(single[k], dense[k]), k
        # DDP: the same step up to float noise (BN backward amplifies it), the penalty once, not twice
        step_single, step_ddp = single[k] - w0[k], ddp_w[k] - w0[k]
        assert (step_single - step_ddp).abs().max() <= 1e-3 * step_single.abs().max() + 1e-7, k
