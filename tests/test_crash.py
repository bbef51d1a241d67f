"""Crash safety: a training run and a pruning run killed with SIGKILL while a checkpoint is
being written lose nothing: the previous last.pt stays intact and --resume continues; the
pruning command simply runs again. (Every file goes through utils.general.atomic_save: a
temp file in the same folder, renamed into place.)"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import models
from test_prune_cli import FAST, save_ckpt
from test_train import tiny_data  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]

# runs a script's main() with os.replace stalled (after touching $CRASH_FLAG) on the Nth rename
# onto a path ending in $CRASH_SUFFIX: the moment an atomic save is about to publish its file
DRIVER = r'''
import importlib, os, sys, time
real_replace = os.replace
seen = [0]
def stalled_replace(src, dst, *a, **k):
    if str(dst).endswith(os.environ['CRASH_SUFFIX']):
        seen[0] += 1
        if seen[0] == int(os.environ['CRASH_AT']):
            open(os.environ['CRASH_FLAG'], 'w').close()
            time.sleep(120)
    return real_replace(src, dst, *a, **k)
os.replace = stalled_replace
importlib.import_module(sys.argv[1]).main(sys.argv[2:])
'''


def run_until_killed(tmp_path, module, argv, suffix, at):
    flag = tmp_path / f'{module}.crash'
    env = {**os.environ, 'CRASH_SUFFIX': suffix, 'CRASH_AT': str(at), 'CRASH_FLAG': str(flag),
           'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, '-c', DRIVER, module, *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not flag.exists():
        assert proc.poll() is None, f'{module} ended (rc {proc.returncode}) before the save to kill'
        assert time.time() < deadline, 'timed out waiting for the checkpoint save'
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_training_killed_while_saving_keeps_last_pt_and_resumes(tmp_path, tiny_data):
    argv = ['--data', tiny_data, '--cfg', 'cfg/yolov3-tiny-shapes.cfg', '--img-size', '128', '--workers', '0',
            '--epochs', '3', '--batch-size', '8', '--notest', '--project', tmp_path / 'runs', '--name', 'crash']
    run_until_killed(tmp_path, 'train', argv, 'last.pt', at=2)  # killed while publishing epoch 1's checkpoint
    last = tmp_path / 'runs' / 'crash' / 'weights' / 'last.pt'
    assert models.load_checkpoint(last)['epoch'] == 0  # the previous checkpoint, whole
    import train
    train.main(['--resume', str(last), '--workers', '0'])
    assert models.load_checkpoint(last)['epoch'] == 2


def test_pruning_killed_while_saving_reruns_cleanly(tmp_path, tiny_data):
    ckpt = save_ckpt(tmp_path / 'sparse.pt', 'cfg/yolov3-mini-shapes.cfg', str(tiny_data))
    before = Path(ckpt).read_bytes()
    out = tmp_path / 'out'
    argv = ['--weights', ckpt, '--data', tiny_data, '--percent', '0.5', '--adapt-bn', '0', *FAST, '--out', out]
    run_until_killed(tmp_path, 'slim_prune', argv, '.pt', at=1)
    assert not (out / 'sparse_slim_0.5.pt').exists() and Path(ckpt).read_bytes() == before
    import slim_prune
    slim_prune.main(list(map(str, argv)))  # the same command again: no "folder not empty", no half files
    model, _ = models.model_from_checkpoint(out / 'sparse_slim_0.5.pt')
    assert models.count_parameters(model)[0] > 0 and Path(ckpt).read_bytes() == before
