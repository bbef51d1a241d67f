"""The project's modules import each other without a circle, the model builder knows nothing
of quantization, and a quantization-aware checkpoint is still rebuilt by models.load_model
through the checkpoint-transform registry."""
import ast
from pathlib import Path

import pytest
import torch

import models
from utils.compress.quant import QuantSpec, calibrate, quantize_model, spec_of

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'cfg' / 'yolov3-tiny-shapes.cfg'


def project_modules():
    """module name -> path: the entry scripts, models.py and every module under utils/."""
    files = sorted(ROOT.glob('*.py')) + sorted((ROOT / 'utils').rglob('*.py'))
    return {'.'.join(p.relative_to(ROOT).with_suffix('').parts): p for p in files if p.stem != '__init__'}


def imported_names(path):
    """Every module name an import statement of ``path`` can bind, at any depth (functions too),
    plus the string arguments of importlib.import_module / __import__ calls."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f'{node.module}.{a.name}' for a in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
            if name in ('import_module', '__import__') and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def import_graph():
    modules = project_modules()
    return {m: (imported_names(p) & set(modules)) - {m} for m, p in modules.items()}


def find_cycle(graph):
    """One import circle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = 'open'
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 'open':
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = 'done'
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_what_it_looks_for():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None
    src = ROOT / 'tests' / 'test_imports.py'
    assert {'models', 'utils.compress.quant', 'utils.compress.quant.QuantSpec'} <= imported_names(src)


def test_the_project_has_no_import_circle():
    graph = import_graph()
    assert {'models', 'train', 'test', 'utils.compress.quant', 'utils.trainer'} <= set(graph)
    assert 'models' in graph['utils.compress.quant'] and 'utils.compress.prune_run' in graph['normal_prune']
    cycle = find_cycle(graph)
    assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_the_model_builder_imports_no_quantization():
    names = imported_names(ROOT / 'models.py')
    assert not {n for n in names if n == 'utils.compress.quant' or n.startswith('utils.compress.quant.')}, names


@pytest.fixture(scope='module')
def qat_ckpt(tmp_path_factory):
    """A quantized (Google 8-bit, BN folded) tiny model with calibrated ranges, saved as training saves one."""
    torch.manual_seed(0)
    spec = QuantSpec('google', 8, 8, bn_fold=True)
    model = quantize_model(models.Darknet(str(TINY), img_size=128), spec)
    calibrate(model, [torch.rand(2, 3, 128, 128)], 2)
    path = tmp_path_factory.mktemp('qat') / 'qat.pt'
    models.save_checkpoint(path, model, quant=spec.to_dict())
    return path, model.eval(), spec


def test_a_quantized_checkpoint_rebuilds_through_load_model(qat_ckpt):
    path, saved, spec = qat_ckpt
    x = torch.rand(1, 3, 128, 128)
    for model, entries in (models.load_model('', path, 128), models.model_from_checkpoint(path, 128)):
        assert spec_of(model) == spec and entries['quant'] == spec.to_dict()
        assert torch.equal(model.eval()(x)[0], saved(x)[0])


def test_a_transform_entry_nobody_registered_is_a_clear_error(qat_ckpt, monkeypatch):
    monkeypatch.setattr(models, 'CHECKPOINT_TRANSFORMS', {})
    with pytest.raises(RuntimeError, match=r"qat\.pt: the checkpoint has a 'quant' entry but no transform is "
                                           r"registered"):
        models.load_model('', qat_ckpt[0], 128)


def test_only_known_entries_can_be_registered():
    with pytest.raises(ValueError, match="'prune' is not in models.TRANSFORM_ENTRIES"):
        models.register_checkpoint_transform('prune', lambda model, entries, source: model)
    assert 'quant' in models.CHECKPOINT_TRANSFORMS
