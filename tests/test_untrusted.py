"""Untrusted files: nothing in the tree can execute what a user file contains. Checked on the
syntax tree of every tracked Python file (so ``model.eval()`` is not ``eval``), and a
checkpoint that carries pickled code is refused with one clear message."""
import ast
import os
import subprocess
from pathlib import Path

import pytest
import torch

import models

ROOT = Path(__file__).resolve().parents[1]


def tracked_python():
    files = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return [ROOT / f for f in files if (ROOT / f).is_file()] or sorted(ROOT.rglob('*.py'))


def keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_calls(tree):
    """(line, what) for every call that can run code from data."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ''
        if isinstance(f, ast.Name) and name in ('eval', 'exec', 'compile'):
            found.append((node.lineno, name))
        elif owner in ('pickle', 'cPickle', 'dill', 'marshal', 'shelve') and name in ('load', 'loads', 'open'):
            found.append((node.lineno, f'{owner}.{name}'))
        elif owner == 'torch' and name == 'load':
            flag = keyword(node, 'weights_only')
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append((node.lineno, 'torch.load without weights_only=True'))
        elif owner == 'yaml' and name in ('load', 'unsafe_load', 'full_load'):
            found.append((node.lineno, f'yaml.{name} (use yaml.safe_load)'))
        elif owner == 'np' and name == 'load':
            flag = keyword(node, 'allow_pickle')
            if isinstance(flag, ast.Constant) and flag.value:
                found.append((node.lineno, 'np.load(allow_pickle=True)'))
        elif keyword(node, 'shell') is not None and getattr(keyword(node, 'shell'), 'value', False) is True:
            found.append((node.lineno, 'subprocess with shell=True'))
    return found


def test_no_code_execution_from_data_anywhere_in_the_tree():
    offenders = []
    for path in tracked_python():
        tree = ast.parse(path.read_text(), str(path))
        offenders += [f'{path.relative_to(ROOT)}:{line}: {what}' for line, what in unsafe_calls(tree)]
    assert not offenders, '\n'.join(offenders)


def test_the_checker_finds_what_it_looks_for():
    bad = ast.parse('import torch, yaml, pickle\neval(s)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n'
                    'yaml.load(f)\npickle.loads(b)\nsubprocess.run(c, shell=True)\nmodel.eval()\n'
                    'torch.load(p, weights_only=True)\nyaml.safe_load(f)\n')
    assert [line for line, _ in unsafe_calls(bad)] == [2, 3, 4, 5, 6, 7]


class Payload:
    def __reduce__(self):
        return os.system, ('echo pwned > /dev/null',)


def test_a_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / 'evil.pt'
    torch.save({'model': {}, 'cfg': 'x', 'hook': Payload()}, path)
    with pytest.raises(ValueError, match='refused to load: the checkpoint contains pickled Python objects'):
        models.load_checkpoint(path)


def test_atomic_writes_get_plain_file_permissions_without_touching_the_umask(tmp_path):
    from utils.general import atomic_write_text
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / 'a.txt', 'x')
        assert os.umask(0o027) == 0o027  # writing did not change the process umask
    finally:
        os.umask(old)
    assert (tmp_path / 'a.txt').stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ['a.txt']  # no temp file left behind
