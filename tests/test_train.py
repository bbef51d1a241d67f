"""train.py end to end on a tiny generated dataset: artefacts, overfitting, exact resume,
DDP equivalence, clear errors."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import models
import train

ROOT = Path(__file__).resolve().parents[1]
NO_AUG = {'hsv_h': 0.0, 'hsv_s': 0.0, 'hsv_v': 0.0, 'degrees': 0.0, 'translate': 0.0, 'scale': 0.0, 'shear': 0.0,
          'perspective': 0.0, 'flipud': 0.0, 'fliplr': 0.0, 'mosaic': 0.0}


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    root = tmp_path_factory.mktemp('tiny') / 'shapes'
    return shapes.ensure_shapes(root, n_train=16, n_val=8, seed=1, min_size=96, max_size=160)


def hyp_file(tmp_path, **over):
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.yaml').read_text())
    hyp.update(over)
    path = tmp_path / 'hyp.yaml'
    path.write_text(yaml.safe_dump(hyp))
    return str(path)


def run_train(tmp_path, data, *args, cfg='cfg/yolov3-tiny-shapes.cfg'):
    argv = ['--data', str(data), '--cfg', cfg, '--img-size', '128', '--workers', '0',
            '--project', str(tmp_path / 'runs'), *map(str, args)]
    train.main(argv)


def test_tiny_training_writes_every_artefact(tmp_path, tiny_data):
    run_train(tmp_path, tiny_data, '--epochs', '2', '--batch-size', '8', '--name', 'exp', '--ema')
    run = tmp_path / 'runs' / 'exp'
    for name in ('opt.yaml', 'hyp.yaml', 'results.csv', 'results.png', 'labels.png', 'train_batch0.jpg',
                 'weights/last.pt', 'weights/best.pt', 'weights/best.weights', 'pr_curve.png', 'f1_curve.png',
                 'confusion_matrix.png', 'val_batch0_pred.jpg', 'metrics.json'):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(run / 'results.csv')))
    assert [int(float(r['epoch'])) for r in rows] == [0, 1]
    # no --hyp: the dataset's own recipe (hyp= in its .data file) is used and recorded
    assert yaml.safe_load((run / 'opt.yaml').read_text())['hyp'].endswith('hyp.shapes.yaml')
    assert yaml.safe_load((run / 'hyp.yaml').read_text())['optimizer'] == 'adam'
    ckpt = models.load_checkpoint(run / 'weights' / 'last.pt')
    assert ckpt['optimizer'] is None and ckpt['epoch'] == 1  # stripped at the end
    model, _ = models.model_from_checkpoint(run / 'weights' / 'best.pt')
    dark = models.Darknet(ckpt['cfg'])
    models.load_darknet_weights(dark, run / 'weights' / 'best.weights')  # the Darknet export loads back
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.equal(v, dark.state_dict()[k]), k
    run_train(tmp_path, tiny_data, '--epochs', '1', '--batch-size', '8', '--name', 'exp', '--notest')
    assert (tmp_path / 'runs' / 'exp2' / 'weights' / 'last.pt').is_file()  # never overwrites a run


def test_overfit_four_images(tmp_path):
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    data = shapes.ensure_shapes(tmp_path / 'four', n_train=4, n_val=0, seed=5, min_size=128, max_size=128)
    text = Path(data).read_text().replace('four/val.txt', 'four/train.txt')
    Path(data).write_text(text)
    run_train(tmp_path, data, '--epochs', '120', '--batch-size', '4', '--nbs', '4', '--adam', '--notest',
              '--hyp', hyp_file(tmp_path, lr0=0.01, warmup_epochs=5, **NO_AUG), '--name', 'fit',
              cfg='cfg/yolov3-mini-shapes.cfg')  # the default model
    metrics = yaml.safe_load((tmp_path / 'runs' / 'fit' / 'metrics.json').read_text())
    assert metrics['map50'] >= 0.9, metrics['map50']


def test_resume_is_exact(tmp_path, tiny_data):
    common = ['--epochs', '3', '--batch-size', '8', '--seed', '3', '--notest']
    run_train(tmp_path, tiny_data, *common, '--name', 'full')
    run_train(tmp_path, tiny_data, *common, '--name', 'cut', '--stop-after', '1')
    cut = tmp_path / 'runs' / 'cut' / 'weights' / 'last.pt'
    assert models.load_checkpoint(cut)['epoch'] == 0
    train.main(['--resume', str(cut), '--workers', '0'])
    a = models.load_checkpoint(tmp_path / 'runs' / 'full' / 'weights' / 'last.pt')['model']
    b = models.load_checkpoint(cut)['model']
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_inputs_are_clear(tmp_path, tiny_data, capsys):
    with pytest.raises(SystemExit, match='--weights nope.pt not found'):
        run_train(tmp_path, tiny_data, '--weights', 'nope.pt', '--epochs', '1')
    run_train(tmp_path, tiny_data, '--epochs', '2', '--stop-after', '1', '--batch-size', '8', '--notest',
              '--name', 'killed')
    last = tmp_path / 'runs' / 'killed' / 'weights' / 'last.pt'
    last.write_bytes(last.read_bytes()[:len(last.read_bytes()) // 2])  # as if killed mid-write without atomic saves
    with pytest.raises(SystemExit, match='last.pt: not a readable checkpoint'):
        train.main(['--resume', str(last)])
    with pytest.raises(SystemExit, match='--resume nowhere.pt: no such checkpoint'):
        train.main(['--resume', 'nowhere.pt'])


def test_model_ema_by_hand():
    """ema = d x ema + (1 - d) x w after each update, d = decay x (1 - exp(-updates / tau)), for
    weights and BN running statistics alike; the live model is never touched."""
    from utils.torch_utils import ModelEMA
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
    ema = ModelEMA(m, decay=0.9, tau=2)
    expected = 1.0
    for updates, w in ((1, 2.0), (2, 3.0), (3, -1.0)):
        with torch.no_grad():
            m[0].weight.fill_(w)
            m[1].running_mean.fill_(w)
        ema.update(m)
        d = 0.9 * (1 - math.exp(-updates / 2))
        expected = d * expected + (1 - d) * w
        assert math.isclose(ema.ema[0].weight.item(), expected, rel_tol=1e-6)
    assert m[0].weight.item() == -1.0 and ema.ema[1].running_mean.item() != 0.0


def test_hyp_keys_documented_and_misspellings_warned(tmp_path):
    """Every key the code reads is documented in data/hyp.yaml (and nothing else is); the shipped
    recipes load silently; a misspelt key is named in a warning instead of leaving its default in force."""
    import re
    import warnings
    from utils.parse_config import load_hyp
    sources = [ROOT / 'train.py', ROOT / 'models.py', *(ROOT / 'utils').rglob('*.py')]
    read = {m for f in sources for m in re.findall(r"hyp(?:\.get\(|\[)'(\w+)'", f.read_text())}
    documented = set(yaml.safe_load((ROOT / 'data' / 'hyp.yaml').read_text()))
    assert read == documented, (read - documented, documented - read)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for f in (ROOT / 'data').glob('hyp*.yaml'):
            load_hyp(f)
    bad = tmp_path / 'hyp.yaml'
    bad.write_text((ROOT / 'data' / 'hyp.shapes.yaml').read_text().replace('obj_iou:', 'obj_iuo:'))
    with pytest.warns(UserWarning, match=r"hyp.yaml: unknown hyperparameters \['obj_iuo'\]"):
        load_hyp(bad)


def test_ddp_matches_single_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) over a batch of 4 identical images: the logged
    loss of the first step and the weights after it equal a single-process run's."""
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    data = Path(shapes.ensure_shapes(tmp_path / 'same', n_train=1, n_val=1, seed=2, min_size=128, max_size=128))
    lst = data.parent / 'same' / 'train.txt'
    lst.write_text(lst.read_text() * 4)
    hyp = hyp_file(tmp_path, warmup_epochs=0, **NO_AUG)
    torch.manual_seed(0)
    start = models.Darknet(str(ROOT / 'cfg' / 'yolov3-tiny-shapes.cfg'), img_size=128)
    models.save_checkpoint(tmp_path / 'start.pt', start)  # both runs start here: updates are comparable
    common = ['--data', str(data), '--cfg', 'cfg/yolov3-tiny-shapes.cfg', '--img-size', '128', '--workers', '0',
              '--epochs', '1', '--batch-size', '4', '--nbs', '4', '--hyp', hyp, '--notest', '--rect',
              '--weights', str(tmp_path / 'start.pt'), '--project', str(tmp_path / 'runs')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    single = subprocess.run([sys.executable, 'train.py', *common, '--name', 'single'], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                          '29517', 'train.py', *common, '--name', 'ddp'], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    rows = {n: next(csv.DictReader(open(tmp_path / 'runs' / n / 'results.csv'))) for n in ('single', 'ddp')}
    for key in ('box', 'obj', 'cls'):
        # results.csv keeps 6 significant digits: 1e-4 absolute, or 1e-5 relative for losses above 10
        assert math.isclose(float(rows['single'][key]), float(rows['ddp'][key]), rel_tol=1e-5, abs_tol=1e-4), \
            (key, rows['single'][key], rows['ddp'][key])
    a = models.load_checkpoint(tmp_path / 'runs' / 'single' / 'weights' / 'last.pt')['model']
    b = models.load_checkpoint(tmp_path / 'runs' / 'ddp' / 'weights' / 'last.pt')['model']
    w0 = start.state_dict()
    for k in a:  # BN running stats come from rank 0's half batch: var's n/(n-1) differs (0.2% at 4x4 maps)
        if 'running_' in k:
            assert torch.allclose(a[k], b[k], rtol=5e-3, atol=1e-6), k
        elif a[k].dtype.is_floating_point:  # the same update, up to float noise (BN backward amplifies it)
            step_a, step_b = a[k] - w0[k], b[k] - w0[k]
            assert (step_a - step_b).abs().max() <= 1e-2 * step_a.abs().max() + 1e-7, \
                (k, (step_a - step_b).abs().max().item(), step_a.abs().max().item())
    assert all(models.load_checkpoint(tmp_path / 'runs' / n / 'weights' / 'last.pt')['updates'] == 1
               for n in ('single', 'ddp'))


def test_evolve_writes_its_search_into_the_project(tmp_path, tiny_data):
    """Two generations of --evolve: evolve.csv holds both, sorted by fitness, and
    hyp_evolved.yaml the best row's values; everything under --project/<name>."""
    run_train(tmp_path, tiny_data, '--evolve', '2', '--epochs', '1', '--batch-size', '8', '--name', 'search')
    out = tmp_path / 'runs' / 'search'
    rows = list(csv.DictReader(open(out / 'evolve.csv')))
    assert len(rows) == 2 and float(rows[0]['fitness']) >= float(rows[1]['fitness'])
    best = yaml.safe_load((out / 'hyp_evolved.yaml').read_text())
    assert math.isclose(best['lr0'], float(rows[0]['lr0']), rel_tol=1e-5)
    assert not Path('runs/evolve/search').exists()
