"""The six *_prune.py scripts end to end from the command line, on a tiny generated shapes
dataset and a randomised yolov3-mini checkpoint in train.py's format: the files in --out,
the report, the saved model against its own cfg + weights, exactness with beta = 0, adaptive
BN off, clear one-line errors that write nothing, and fine-tuning the pruned .pt with train.py."""
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import layer_channel_prune
import layer_prune
import models
import normal_prune
import regular_prune
import shortcut_prune
import slim_prune
import train
from darknet_ref import randomize
from utils.compress import prune_run
from utils.compress.layer_graph import LayerGraph
from utils.compress.prune import (bn_gammas, compact_model, global_threshold, layer_keep_masks, removed_groups,
                         threshold_masks)

ROOT = Path(__file__).resolve().parents[1]
IMG = 128
SPARSITY = {'prune': 1, 's': 0.001, 'schedule': 'constant', 'layers': []}  # what train.py -sr --prune 1 records
FAST = ['--img-size', str(IMG), '--latency-reps', '1', '--workers', '0']
METRICS = ('map50', 'map50_95', 'params', 'gflops', 'latency_ms')

# name: (module, method, the amount in the output names, labels of the stages before adaptive BN)
SCRIPTS = {
    'normal_prune': (normal_prune, 'normal', '0.5', ['original', 'masked (gamma = 0)', 'compact']),
    'regular_prune': (regular_prune, 'regular', '0.5', ['original', 'masked (gamma = 0)', 'compact']),
    'shortcut_prune': (shortcut_prune, 'shortcut', '0.6', ['original', 'masked (gamma = 0)', 'compact']),
    'slim_prune': (slim_prune, 'slim', '0.8', ['original', 'masked (gamma = 0)', 'compact']),
    'layer_prune': (layer_prune, 'layer', '2', ['original', 'masked (closing gamma = 0)', 'compact']),
    'layer_channel_prune': (layer_channel_prune, 'layer_channel', '0.6_2',
                            ['original', 'masked (gamma = 0)', 'compact', 'compact, blocks removed']),
}


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    root = tmp_path_factory.mktemp('tiny') / 'shapes'
    return str(shapes.ensure_shapes(root, n_train=16, n_val=8, seed=1, min_size=96, max_size=160))


def names_of(data):
    from utils.parse_config import parse_data_cfg
    return Path(parse_data_cfg(data)['names']).read_text().split()


def save_ckpt(path, cfg, data, sparsity=SPARSITY, model=None):
    model = model or randomize(models.Darknet(cfg, img_size=IMG), size=IMG)
    extra = {'sparsity': sparsity} if sparsity else {}
    models.save_checkpoint(path, model, names=names_of(data), **extra)
    return str(path)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory, tiny_data):
    """A 'sparsity-trained' yolov3-mini checkpoint (random weights, calibrated BN) and its hash."""
    path = save_ckpt(tmp_path_factory.mktemp('ckpt') / 'mini.pt', 'cfg/yolov3-mini-shapes.cfg', tiny_data)
    return path, sha256(path)


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory, tiny_data):
    """yolov3-tiny at half width: no residual blocks."""
    return save_ckpt(tmp_path_factory.mktemp('ckpt') / 'tiny.pt', 'cfg/yolov3-tiny-shapes.cfg', tiny_data)


@pytest.fixture(scope='module')
def pruned(tmp_path_factory, tiny_data, ckpt):
    """pruned(script) -> (out folder, what main returned): each script runs once per module."""
    cache = {}

    def get(script):
        if script not in cache:
            out = tmp_path_factory.mktemp(script) / 'out'
            result = SCRIPTS[script][0].main(['--weights', ckpt[0], '--data', tiny_data, '--adapt-bn', '8',
                                              *FAST, '--out', str(out)])
            cache[script] = out, result
        return cache[script]
    return get


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


# ----------------------------------------------------------------------------- every script end to end

@pytest.mark.parametrize('script', list(SCRIPTS))
def test_script_writes_a_consistent_pruned_model(script, pruned, ckpt):
    _, method, amount, labels = SCRIPTS[script]
    out, (stages, paths) = pruned(script)
    stem = f'mini_{method}_{amount}'
    assert sorted(p.name for p in out.iterdir()) == sorted([f'{stem}.cfg', f'{stem}.weights', f'{stem}.pt',
                                                            'prune_report.json', 'channels.png'])
    assert {k: Path(v) for k, v in paths.items()} == {k: out / f'{stem}.{k}' for k in ('cfg', 'weights', 'pt')}
    assert (out / 'channels.png').stat().st_size > 0

    report = json.loads((out / 'prune_report.json').read_text())
    assert report['method'] == method and report['amount'] == amount and report['img_size'] == IMG
    rows = report['stages']
    assert [r['label'] for r in rows] == labels + [f'{labels[-1]} + adaptive BN']
    for r in rows:
        assert all(isinstance(r[k], (int, float)) and math.isfinite(r[k]) for k in METRICS), r
        assert 0 <= r['map50'] <= 1 and 0 <= r['map50_95'] <= 1 and r['latency_ms'] > 0 and r['gflops'] > 0, r
    original, masked, final = rows[0], rows[1], next(r for r in rows if r['saved'])
    source, _ = models.model_from_checkpoint(ckpt[0])
    assert original['params'] == models.count_parameters(source)[0]
    assert masked['params'] == original['params'] and masked['latency_ms'] == original['latency_ms']  # full size
    assert final['params'] < original['params'] and final['gflops'] < original['gflops']

    # the .pt, and the Darknet cfg + weights, hold one and the same model: the report's final one
    model, meta = models.model_from_checkpoint(out / f'{stem}.pt', img_size=IMG)
    assert meta['pruning'] == {'method': method, 'amount': amount, 'source': ckpt[0]}
    assert meta['cfg'] == (out / f'{stem}.cfg').read_text()
    dark = models.Darknet(str(out / f'{stem}.cfg'), img_size=IMG)
    models.load_darknet_weights(dark, out / f'{stem}.weights')
    x = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    assert torch.equal(outputs(model, x), outputs(dark, x))
    assert final['params'] == models.count_parameters(dark)[0]
    # adaptive BN is kept exactly when it lowered the held-out training loss, and the saved stage is marked
    decision = report['adaptive_bn']
    assert decision['used'] == (decision['loss_with'] < decision['loss_without'])
    assert [r['saved'] for r in rows] == [False] * (len(rows) - 2) + [not decision['used'], decision['used']]
    saved = stages[-1] if decision['used'] else stages[-2]
    for k, v in saved.model.state_dict().items():  # what was saved is the stage the report marks
        assert torch.equal(v.cpu(), model.state_dict()[k]), k
    compact, adapted = stages[-2].model.state_dict(), stages[-1].model.state_dict()
    assert compact.keys() == adapted.keys()  # adaptive BN re-estimated the running statistics, nothing else
    for k, v in adapted.items():
        if not k.endswith('num_batches_tracked'):
            assert torch.equal(v.cpu(), compact[k].cpu()) != k.endswith(('running_mean', 'running_var')), k

    # per-layer rows: every conv of the original, narrower or gone, and some change
    graph = LayerGraph(source.module_defs, source.in_channels)
    layers = report['layers']
    assert [r['layer'] for r in layers] == [i for i in range(len(graph.defs)) if graph.is_conv(i)]
    assert all(r['before'] == graph.out_channels[r['layer']] and 0 <= r['after'] <= r['before'] for r in layers)
    assert any(r['after'] < r['before'] for r in layers)
    if method in ('layer', 'layer_channel'):
        assert sum(r['after'] == 0 for r in layers) == 4  # two blocks of two convs each
    assert sum(r['after'] for r in layers) == sum(d['filters'] for d in model.module_defs if 'filters' in d)

    assert sha256(ckpt[0]) == ckpt[1]  # the input checkpoint is never written


def test_compact_equals_masked_when_pruned_beta_is_zero_and_adapt_bn_off(tmp_path, tiny_data, ckpt, capsys):
    """Pruned channels with beta = 0 output exactly 0 when masked, so the compact model computes
    what the masked one does: equal mAP. With --adapt-bn 0 there is no adaptive-BN row and the
    saved model is the engine's compact model, BN running statistics included. This checkpoint
    has no 'sparsity' entry: the script says so."""
    model, _ = models.model_from_checkpoint(ckpt[0], img_size=IMG)
    graph = LayerGraph(model.module_defs, model.in_channels)
    scales = bn_gammas(model, graph.prune_set(0))
    removed = removed_groups(graph, threshold_masks(scales, global_threshold(scales, 0.5)))  # normal's plan
    with torch.no_grad():
        for i, keep in layer_keep_masks(graph, removed).items():
            model.module_list[i].BatchNorm2d.bias[~keep] = 0
    path = save_ckpt(tmp_path / 'zero.pt', None, tiny_data, sparsity=None, model=model)
    out = tmp_path / 'out'
    normal_prune.main(['--weights', path, '--data', tiny_data, '--percent', '0.5', '--adapt-bn', '0', *FAST,
                       '--out', str(out)])
    assert 'was not sparsity-trained (no -sr)' in capsys.readouterr().out
    rows = json.loads((out / 'prune_report.json').read_text())['stages']
    assert [r['label'] for r in rows] == ['original', 'masked (gamma = 0)', 'compact']
    masked, compact = rows[1], rows[2]
    assert compact['map50'] == pytest.approx(masked['map50'], abs=1e-9)
    assert compact['map50_95'] == pytest.approx(masked['map50_95'], abs=1e-9)
    assert compact['params'] < masked['params']
    saved, _ = models.model_from_checkpoint(out / 'zero_normal_0.5.pt', img_size=IMG)
    engine = compact_model(model, removed, graph=graph)
    assert saved.cfg_text() == engine.cfg_text()
    own = engine.state_dict()
    assert saved.state_dict().keys() == own.keys()
    for k, v in saved.state_dict().items():
        assert torch.equal(v, own[k]), k


def test_sparsity_warnings(tmp_path, tiny_data, ckpt, capsys, monkeypatch):
    """No 'sparsity' entry, or one whose penalised set misses layers the method cuts: a warning;
    --prune 1 covers normal (--prune 0) and shortcut: none."""
    monkeypatch.setattr(prune_run.PruneRun, 'finish', lambda self, stages, amount: (stages, amount))  # plan only
    plain = save_ckpt(tmp_path / 'plain.pt', 'cfg/yolov3-mini-shapes.cfg', tiny_data, sparsity=None)
    common = ['--data', tiny_data, *FAST, '--out', str(tmp_path / 'out')]
    normal_prune.main(['--weights', plain, *common])
    assert f'WARNING: {plain} was not sparsity-trained (no -sr)' in capsys.readouterr().out
    normal_prune.main(['--weights', ckpt[0], *common])
    assert 'WARNING' not in capsys.readouterr().out
    shortcut_prune.main(['--weights', ckpt[0], *common])
    assert 'WARNING' not in capsys.readouterr().out
    mode0 = save_ckpt(tmp_path / 'mode0.pt', 'cfg/yolov3-mini-shapes.cfg', tiny_data,
                      sparsity={**SPARSITY, 'prune': 0})
    shortcut_prune.main(['--weights', mode0, *common])
    assert 'was sparsity-trained with --prune 0, which leaves some of the layers shortcut pruning cuts ' \
           'unpenalised; it expects --prune 1' in capsys.readouterr().out
    dark = tmp_path / 'mini.weights'  # Darknet weights with their cfg: they record nothing about sparsity
    models.save_weights(models.model_from_checkpoint(plain)[0], dark)
    stages, _ = layer_prune.main(['--weights', str(dark), '--cfg', 'cfg/yolov3-mini-shapes.cfg', *common])
    assert 'NOTE: Darknet .weights do not record sparsity training' in capsys.readouterr().out
    assert stages[-1].model.module_defs != models.Darknet('cfg/yolov3-mini-shapes.cfg').module_defs
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- errors

ERRORS = [  # id, script, arguments, expected text in the one-line error
    ('percent-too-high', 'normal_prune', ['--percent', '0.999'], 'must stay below'),
    ('percent-above-1', 'normal_prune', ['--percent', '1.5'], '--percent must be in [0, 1), got 1.5'),
    ('percent-negative', 'slim_prune', ['--percent', '-0.1'], '--percent must be in [0, 1), got -0.1'),
    ('no-residual-blocks', 'layer_prune', ['--weights', 'TINY'], 'no removable residual blocks'),
    ('too-many-shortcuts', 'layer_prune', ['--shortcuts', '99'], 'choose 1..6'),
    ('zero-shortcuts', 'layer_channel_prune', ['--shortcuts', '0'], 'choose 1..6'),
    ('channel-base-0', 'regular_prune', ['--channel-base', '0'], '--channel-base must be >= 1, got 0'),
    ('layer-keep-2', 'slim_prune', ['--layer_keep', '2'], '--layer_keep must be in [0, 1], got 2.0'),
    ('missing-weights', 'normal_prune', ['--weights', 'MISSING'], 'nope.pt not found'),
    ('no-valid', 'shortcut_prune', ['--data', 'NOVALID'], 'no valid= line'),
    ('classes', 'normal_prune', ['--weights', 'COCO'], 'the model has 80 classes'),
    ('out-not-empty', 'slim_prune', ['--out', 'BUSY'], 'already holds other.cfg'),
]


def novalid_data(data):
    """A copy of the .data file without its valid= line (next to it: the relative paths still resolve)."""
    path = data.parent / 'novalid.data'
    path.write_text(''.join(line + '\n' for line in data.read_text().splitlines() if not line.startswith('valid')))
    return str(path)


@pytest.mark.parametrize('script,args,expected', [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_and_write_nothing(script, args, expected, tmp_path, tiny_data, ckpt, tiny_ckpt,
                                               monkeypatch):
    """Each user error ends the script with one 'error: ...' line before any evaluation (a bad
    --out too: it is checked before the minutes of evaluation, not after them) and writes nothing."""
    def no_evaluation(self, model):
        raise AssertionError('evaluated a model before reporting the error')
    monkeypatch.setattr(prune_run.PruneRun, 'evaluate', no_evaluation)
    out = tmp_path / 'out'
    busy = tmp_path / 'busy'
    busy.mkdir()
    for name in ('other.cfg', 'other.weights'):
        (busy / name).write_text('x')
    data = Path(tiny_data)
    subst = {'TINY': lambda: tiny_ckpt,
             'COCO': lambda: save_ckpt(tmp_path / 'coco.pt', None, tiny_data,
                                       model=models.Darknet('cfg/yolov3-tiny.cfg', img_size=IMG)),
             'MISSING': lambda: str(tmp_path / 'nope.pt'), 'NOVALID': lambda: novalid_data(data),
             'BUSY': lambda: str(busy)}
    argv = {'--weights': ckpt[0], '--data': tiny_data, '--out': str(out)}
    extra = []
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv:
            argv[flag] = subst[value]() if value in subst else value
        else:
            extra += [flag, value]
    before = sorted(p.name for p in busy.iterdir())
    with pytest.raises(SystemExit) as e:
        SCRIPTS[script][0].main([*(x for kv in argv.items() for x in kv), '--adapt-bn', '8', *FAST, *extra])
    msg = str(e.value)
    assert msg.startswith('error: ') and expected in msg and '\n' not in msg, msg
    assert not out.exists()
    assert sorted(p.name for p in busy.iterdir()) == before
    assert sha256(ckpt[0]) == ckpt[1]


@pytest.mark.parametrize('script,model', [('normal_prune', 'mini'), ('shortcut_prune', 'mini'),
                                          ('normal_prune', 'tiny')])
def test_percent_limit_is_the_largest_usable_value(script, model, tmp_path, tiny_data, ckpt, tiny_ckpt, monkeypatch):
    """'--percent must stay below L' (4 decimals, rounded down): every value below L plans fine,
    L + 0.0001 does not. (On tiny the exact bound is 0.929974: rounded to 0.9300 it would be wrong.)"""
    main = SCRIPTS[script][0].main
    weights = ckpt[0] if model == 'mini' else tiny_ckpt
    common = ['--weights', weights, '--data', tiny_data, *FAST, '--out', str(tmp_path / 'out')]
    with pytest.raises(SystemExit) as e:
        main([*common, '--percent', '0.999'])
    limit = float(re.search(r'must stay below (\d\.\d{4})$', str(e.value)).group(1))
    monkeypatch.setattr(prune_run.PruneRun, 'finish', lambda self, stages, amount: (stages, amount))  # plan only
    stages, _ = main([*common, '--percent', str(limit - 1e-6)])
    assert models.count_parameters(stages[-1].model)[0] > 0
    with pytest.raises(SystemExit, match='must stay below'):
        main([*common, '--percent', str(limit + 1e-4)])


# ----------------------------------------------------------------------------- fine-tuning

def test_train_fine_tunes_the_pruned_pt_without_cfg(tmp_path, tiny_data, pruned):
    """train.py --weights <pruned>.pt (no --cfg) trains the pruned architecture from the pruned weights."""
    _, (_, paths) = pruned('layer_channel_prune')
    pt = paths['pt']
    train.main(['--weights', str(pt), '--data', tiny_data, '--epochs', '1', '--img-size', str(IMG),
                '--workers', '0', '--batch-size', '8', '--notest', '--project', str(tmp_path / 'runs'),
                '--name', 'ft'])
    last = models.load_checkpoint(tmp_path / 'runs' / 'ft' / 'weights' / 'last.pt')
    assert last['cfg'] == Path(paths['cfg']).read_text() == models.load_checkpoint(pt)['cfg']
    start = models.load_checkpoint(pt)['model']
    assert {k: v.shape for k, v in last['model'].items()} == {k: v.shape for k, v in start.items()}
    assert any(not torch.equal(last['model'][k], start[k]) for k in start if start[k].is_floating_point())
