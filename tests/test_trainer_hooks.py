"""The Trainer's extension points (grad hooks once per optimizer step on unscaled gradients,
epoch hooks adding results.csv columns, model transforms, checkpoint extras) and the rules
that decide which model train.py / test.py build and which weights may be loaded into it."""
import csv
import math

import pytest
import torch

import models
import train
from test_train import hyp_file, tiny_data  # noqa: F401  (tiny_data is a fixture)
from utils.parse_config import parse_cfg, rewrite_head
from utils.results import RESULT_FIELDS
from utils.trainer import Trainer, resume_options

TINY = 'cfg/yolov3-tiny-shapes.cfg'


def argv(tmp_path, data, *args, cfg=TINY):
    return ['--data', str(data), *(['--cfg', cfg] if cfg else []), '--img-size', '128', '--workers', '0',
            '--project', str(tmp_path / 'runs'), *map(str, args)]


def make_trainer(tmp_path, data, *args, cfg=TINY):
    return Trainer(train.parse_args(argv(tmp_path, data, *args, cfg=cfg)))


def params(state):
    """Trained tensors of a state dict (not BN running statistics, which train mode updates)."""
    return {k: v for k, v in state.items() if v.dtype.is_floating_point and 'running_' not in k}


# ----------------------------------------------------------------------------- grad hooks

def test_grad_hooks_once_per_step_on_unscaled_grads_and_their_terms_enter_the_update(tmp_path, tiny_data):
    """--nbs 2 x batch over 4 micro-batches: 2 optimizer steps, and the hook runs at each step
    only. Run B uses a GradScaler that multiplies the loss by 1024 (the CPU stand-in for CUDA
    AMP; unscale_ twice in one step would raise): its hook sees the same gradients as run A's,
    so they are unscaled. B's hook also adds c to one gamma's gradient at the last step: with
    plain SGD (momentum 0) that gamma ends exactly lr0 x c below A's, and every other tensor
    equals A's."""
    hyp = hyp_file(tmp_path, warmup_epochs=0, momentum=0.0, lr0=0.02)
    c, layer = 0.5, 2
    seen, weights = {}, {}
    for name, scale in (('plain', None), ('scaled', 2.0 ** 10)):
        trainer = make_trainer(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '4', '--nbs', '8', '--hyp', hyp,
                               '--notest', '--name', name)
        trainer.val_loader = None  # validation plays no part here
        trainer.setup()
        if scale:
            trainer.scaler = torch.amp.GradScaler('cpu', init_scale=scale)
        gamma = trainer.model.module_list[layer].BatchNorm2d.weight
        calls = []

        def hook(t):
            calls.append((t.updates, gamma.grad.clone()))
            if scale and t.updates == 1:  # the last step: no later gradient depends on it
                gamma.grad += c
        trainer.grad_hooks.append(hook)
        trainer.train()
        assert len(trainer.train_loader) == 4 and trainer.updates == 2
        assert [u for u, _ in calls] == [0, 1]  # once per step, before the step counts
        if scale:
            assert trainer.scaler.get_scale() == scale  # it did scale (no inf, no back-off)
        seen[name] = [g for _, g in calls]
        weights[name] = params(models.load_checkpoint(tmp_path / 'runs' / name / 'weights' / 'last.pt')['model'])
    for a, b in zip(seen['plain'], seen['scaled']):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
    key = f'module_list.{layer}.BatchNorm2d.weight'
    torch.testing.assert_close(weights['scaled'][key] - weights['plain'][key],
                               torch.full_like(weights['plain'][key], -0.02 * c), rtol=0, atol=1e-6)
    for k in weights['plain']:
        if k != key:
            torch.testing.assert_close(weights['scaled'][k], weights['plain'][k], rtol=1e-6, atol=1e-9)


def test_step_hooks_run_after_each_step_and_the_ema_update_and_see_the_schedule(tmp_path, tiny_data):
    """--nbs 2 x batch over 4 micro-batches, with --ema: a step hook runs once per optimizer
    step, after it (trainer.updates already counts it) and after the EMA update (the EMA's
    update count too), with trainer.ni / trainer.nb of the batch it ran on; what it
    writes into a parameter (of the model and of the EMA) is what the run saves."""
    hyp = hyp_file(tmp_path, warmup_epochs=0, momentum=0.0, lr0=0.02)
    trainer = make_trainer(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '4', '--nbs', '8', '--hyp', hyp,
                           '--notest', '--ema', '--name', 'step')
    trainer.val_loader = None
    calls, layer = [], 2

    def hook(t):
        calls.append((t.updates, t.ema.updates, t.ni, t.nb))
        for m in (t.model, t.eval_model()):
            with torch.no_grad():
                m.module_list[layer].BatchNorm2d.weight[0] = 0.25
    trainer.step_hooks.append(hook)
    trainer.train()
    assert calls == [(1, 1, 0, 4), (2, 2, 2, 4)]  # steps fall on batches 0 and 2 (ni % accumulate == 0)
    ckpt = models.load_checkpoint(tmp_path / 'runs' / 'step' / 'weights' / 'last.pt')
    key = f'module_list.{layer}.BatchNorm2d.weight'
    assert ckpt['model'][key][0] == 0.25


# ----------------------------------------------------------------------------- epoch hooks, transforms, extras

class MarkedConv(torch.nn.Conv2d):
    """A Conv2d a model transform swaps in (as quantization will)."""


def test_epoch_hooks_transforms_and_ckpt_extras_survive_resume(tmp_path, tiny_data):
    torch.manual_seed(11)
    start = models.Darknet(TINY, img_size=128)
    models.save_checkpoint(tmp_path / 'start.pt', start)
    events = []

    def transform(trainer, model):
        """Sees the loaded weights, runs before optimizer/EMA exist, swaps in a new conv."""
        events.append(('transform', hasattr(trainer, 'optimizer'), hasattr(trainer, 'ema')))
        if not trainer.opt.resume:
            for k, v in params(start.state_dict()).items():
                assert torch.equal(model.state_dict()[k], v), k
        old = model.module_list[0].Conv2d
        new = MarkedConv(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        new.weight.data.copy_(old.weight.data)
        model.module_list[0].Conv2d = new
        trainer.swapped = new
        return model

    def columns(trainer, epoch):
        assert (trainer.epoch, trainer.epochs) == (epoch, 2)
        events.append(('columns', epoch, len(trainer.results)))  # this epoch's row is not stored yet
        return {'double_epoch': 2 * epoch, 'lr_copy': trainer.optimizer.param_groups[0]['lr']}

    def late(trainer, epoch):
        return {'late': 7.0} if epoch == 1 else None

    def attach(trainer):
        trainer.model_transforms.append(transform)
        trainer.epoch_hooks += [columns, late]
        trainer.ckpt_extras['feature'] = {'setting': 3, 'table': torch.arange(3)}
        validate = trainer._validate
        trainer._validate = lambda final: (events.append(('validate',)), validate(final))[1]
        return trainer

    trainer = attach(make_trainer(tmp_path, tiny_data, '--epochs', '2', '--stop-after', '1', '--batch-size', '8',
                                  '--weights', tmp_path / 'start.pt', '--ema', '--notest', '--name', 'hooks'))
    trainer.val_loader = None  # _validate is still called (and recorded); it just has nothing to evaluate
    trainer.train()
    assert events[0] == ('transform', False, False)
    assert any(p is trainer.swapped.weight for g in trainer.optimizer.param_groups for p in g['params'])
    assert type(trainer.ema.ema.module_list[0].Conv2d) is MarkedConv  # the EMA copies the transformed model
    assert events[1:] == [('validate',), ('columns', 0, 0)]
    last = tmp_path / 'runs' / 'hooks' / 'weights' / 'last.pt'
    ckpt = models.load_checkpoint(last)
    assert ckpt['result_fields'] == RESULT_FIELDS + ['double_epoch', 'lr_copy']
    assert ckpt['feature']['setting'] == 3 and torch.equal(ckpt['feature']['table'], torch.arange(3))

    events.clear()
    opt = resume_options(train.parse_args(['--resume', str(last), '--workers', '0']), train.parse_args([]))
    resumed = attach(Trainer(opt))
    resumed.val_loader = None
    resumed.train()
    assert resumed.resumed_extras['feature']['setting'] == 3
    assert events == [('transform', False, False), ('validate',), ('columns', 1, 1)]
    rows = list(csv.DictReader(open(tmp_path / 'runs' / 'hooks' / 'results.csv')))
    assert list(rows[0]) == RESULT_FIELDS + ['double_epoch', 'lr_copy', 'late']  # first-seen order
    assert [float(r['double_epoch']) for r in rows] == [0.0, 2.0]
    assert [float(r['lr_copy']) for r in rows] == [float(r['lr']) for r in rows]
    assert math.isnan(float(rows[0]['late'])) and float(rows[1]['late']) == 7.0
    assert (tmp_path / 'runs' / 'hooks' / 'results.png').stat().st_size > 0
    final = models.load_checkpoint(last)  # stripped at the end of the run: extras stay
    assert final['optimizer'] is None and final['feature']['setting'] == 3
    assert final['results'].shape == (2, len(RESULT_FIELDS) + 3)


def test_epoch_hook_and_extras_may_not_take_the_trainers_names(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, tiny_data, '--epochs', '1')
    trainer.ckpt_extras['optimizer'] = 'mine'
    with pytest.raises(ValueError, match=r"ckpt_extras \['optimizer'\]"):
        trainer.setup()  # before any training
    trainer.ckpt_extras.clear()
    trainer.setup()
    with pytest.raises(ValueError, match=r"columns \['mAP@0.5'\] are the trainer's own"):
        trainer._extra_columns(lambda t, e: {'mAP@0.5': 1.0, 'mine': 2.0}, 0)
    assert trainer._extra_columns(lambda t, e: {'mine': 2}, 0) == {'mine': 2.0}
    assert trainer.results.fields == RESULT_FIELDS + ['mine']


# ----------------------------------------------------------------------------- which model, which weights

def narrow_checkpoint(path):
    """yolov3-tiny-shapes with layer 0's filters halved (layer 2 then reads half the channels)."""
    sections = parse_cfg(TINY)
    assert sections[1]['type'] == 'convolutional' and sections[3]['type'] == 'convolutional'
    sections[1]['filters'] //= 2
    torch.manual_seed(5)
    model = models.Darknet(sections, img_size=128)
    models.save_checkpoint(path, model)
    return model


def test_weights_pt_defines_the_model_without_cfg(tmp_path, tiny_data):
    narrow = narrow_checkpoint(tmp_path / 'narrow.pt')
    hyp = hyp_file(tmp_path, lr0=0.0, warmup_epochs=0)  # no update: last.pt holds the initial weights
    train.main(argv(tmp_path, tiny_data, '--weights', tmp_path / 'narrow.pt', '--epochs', '1', '--batch-size', '16',
                    '--hyp', hyp, '--notest', '--name', 'narrow', cfg=''))
    ckpt = models.load_checkpoint(tmp_path / 'runs' / 'narrow' / 'weights' / 'last.pt')
    assert ckpt['cfg'] == narrow.cfg_text()
    got, want = params(ckpt['model']), params(narrow.state_dict())
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_weights_that_do_not_fit_the_cfg_are_an_error(tmp_path, tiny_data):
    narrow_checkpoint(tmp_path / 'narrow.pt')
    wide = parse_cfg(TINY)[1]['filters']
    shapes = rf'\({wide // 2}, 3, 3, 3\) in the weights but \({wide}, 3, 3, 3\) in the cfg'
    with pytest.raises(SystemExit, match=r'^error: .*narrow.pt: layer 0 \(module_list.0.Conv2d.weight\) has shape '
                       + shapes):
        train.main(argv(tmp_path, tiny_data, '--weights', tmp_path / 'narrow.pt', '--epochs', '1'))
    with pytest.raises(ValueError, match='layer 0 .* ' + shapes):
        models.load_model(TINY, tmp_path / 'narrow.pt')
    import test as test_py
    with pytest.raises(SystemExit, match=r'^error: .*layer 0 .* ' + shapes):
        test_py.main(['--cfg', TINY, '--weights', str(tmp_path / 'narrow.pt'), '--data', str(tiny_data),
                      '--img-size', '128', '--workers', '0', '--project', str(tmp_path / 'test')])
    # without --cfg, the checkpoint's own cfg: loads whole
    model, _ = models.load_model('', tmp_path / 'narrow.pt')
    assert model.module_list[0].Conv2d.weight.shape[0] == wide // 2
    # a checkpoint lacking tensors the cfg needs would be evaluated half random
    state = models.load_checkpoint(tmp_path / 'narrow.pt')['model']
    del state['module_list.4.BatchNorm2d.weight']
    torch.save({'model': state, 'cfg': models.load_checkpoint(tmp_path / 'narrow.pt')['cfg']}, tmp_path / 'holey.pt')
    with pytest.raises(ValueError, match=r"holey.pt: has no tensor for 1 entries .*module_list.4.BatchNorm2d.weight"):
        models.load_model('', tmp_path / 'holey.pt')


def test_other_class_count_loads_with_pretrain_only(tmp_path, tiny_data):
    """A 3-class checkpoint into the 5-class cfg: -pt skips exactly the head convs (the conv before
    each [yolo]) and loads everything else; without -pt the first head conv is named."""
    sections = parse_cfg(TINY)
    torch.manual_seed(9)
    three = models.Darknet(rewrite_head(sections, classes=3), img_size=128)
    models.save_checkpoint(tmp_path / 'three.pt', three)
    heads = [i - 2 for i, s in enumerate(sections) if s['type'] == 'yolo']  # section i is layer i - 1
    first = heads[0]
    with pytest.raises(SystemExit, match=rf'error: .*three.pt: layer {first} \(module_list.{first}.Conv2d.weight\) '
                       rf'has shape \(24, .*\) in the weights but \(30, .*\) in the cfg \(a detection head .* -pt'):
        train.main(argv(tmp_path, tiny_data, '--weights', tmp_path / 'three.pt', '--epochs', '1'))
    five = models.Darknet(TINY, img_size=128)
    loaded, skipped = models.load_weights(five, tmp_path / 'three.pt', pretrain=True)
    assert skipped == sorted(f'module_list.{i}.Conv2d.{p}' for i in heads for p in ('weight', 'bias'))
    hyp = hyp_file(tmp_path, lr0=0.0, warmup_epochs=0)
    train.main(argv(tmp_path, tiny_data, '--weights', tmp_path / 'three.pt', '-pt', '--epochs', '1', '--batch-size',
                    '16', '--hyp', hyp, '--notest', '--name', 'pt'))
    got = params(models.load_checkpoint(tmp_path / 'runs' / 'pt' / 'weights' / 'last.pt')['model'])
    want = params(three.state_dict())
    for k in got:
        layer = int(k.split('.')[1])
        if layer in heads:
            assert got[k].shape != want[k].shape, k
        else:
            assert torch.equal(got[k], want[k]), k


def test_no_cfg_no_weights_trains_the_default_model(tmp_path, tiny_data):
    assert train.parse_args([]).cfg == ''
    trainer = make_trainer(tmp_path, tiny_data, '--epochs', '1', cfg='').setup()
    assert trainer.model.cfg_text() == models.Darknet('cfg/yolov3-mini-shapes.cfg').cfg_text()


def test_repeated_non_finite_losses_stop_clearly_and_keep_the_last_good_checkpoint(tmp_path, tiny_data):
    """A loss term that turns nan in the second epoch: each bad batch is skipped with a warning,
    the fifth in a row stops the run with one clear line, and last.pt still holds epoch 0."""
    def poison(trainer, imgs, targets, heads):
        bad = trainer.epoch >= 1
        return heads[0].sum() * (float('nan') if bad else 0.0), {}

    opt = train.parse_args(['--data', str(tiny_data), '--cfg', 'cfg/yolov3-tiny-shapes.cfg', '--img-size', '128',
                            '--workers', '0', '--epochs', '2', '--batch-size', '2', '--notest',
                            '--project', str(tmp_path / 'runs'), '--name', 'nan'])
    trainer = Trainer(opt)
    trainer.loss_terms.append(poison)
    with pytest.raises(FloatingPointError, match='loss is nan for 5 batches in a row'):
        trainer.train()
    last = tmp_path / 'runs' / 'nan' / 'weights' / 'last.pt'
    ckpt = models.load_checkpoint(last)
    assert ckpt['epoch'] == 0 and all(torch.isfinite(v).all() for v in ckpt['model'].values() if v.is_floating_point())
