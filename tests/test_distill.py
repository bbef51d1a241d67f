"""Knowledge distillation (train.py --t_weights --KDstr 1..6, utils/compress/distill.py): each strategy's
loss is 0 for a student equal to its teacher and positive otherwise, its gradient reaches the
student (and its adapters) but never the teacher; the fine-grained mask by hand; 2-epoch runs
writing the KD columns (and resuming with them); a layer-pruned student; DDP against one
process; clear errors for a teacher of another head layout and for inconsistent flags."""
import copy
import csv
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
import train
from test_train import NO_AUG, hyp_file, tiny_data  # noqa: F401  (tiny_data is a fixture)
from utils.compress.distill import (bernoulli_kl, objectness_guided_terms, ADAPTERS, WEIGHTS, Distiller, check_head_layout, feature_mask, fine_grained_masks,
                           pair_features, stage_outputs)
from utils.compress.layer_graph import LayerGraph
from utils.loss import YOLOLoss
from utils.parse_config import load_hyp, parse_cfg, rewrite_head
from utils.compress.prune import compact_model
from utils.general import native_bf16
from utils.results import RESULT_FIELDS
from utils.trainer import Trainer, resume_options

ROOT = Path(__file__).resolve().parents[1]
TINY = 'cfg/yolov3-tiny-shapes.cfg'
MINI = 'cfg/yolov3-mini-shapes.cfg'
IMG = 64


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread


def narrow(cfg):
    """``cfg`` with every conv except the head convs at half width (a channel-pruned student)."""
    sections = parse_cfg(cfg)
    for k, d in enumerate(sections[:-1]):
        if d['type'] == 'convolutional' and sections[k + 1]['type'] != 'yolo':
            d['filters'] //= 2
    return sections


def targets_for(batch):
    """Two boxes per image (image, class, cx, cy, w, h normalised)."""
    rows = [[b, c, 0.3 + 0.4 * c, 0.35 + 0.1 * b, 0.3, 0.25] for b in range(batch) for c in (0, 1)]
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- the loss itself

@pytest.mark.parametrize('strategy', [1, 2, 3, 4, 5, 6])
def test_loss_is_zero_for_the_teacher_itself_positive_otherwise_and_only_the_student_learns(strategy):
    torch.manual_seed(strategy)
    hyp = load_hyp('data/hyp.shapes.yaml')
    teacher = models.Darknet(MINI, img_size=IMG).eval().requires_grad_(False)
    imgs, targets = torch.rand(2, 3, IMG, IMG), targets_for(2)

    same = copy.deepcopy(teacher).eval()
    kd = Distiller(strategy, 'teacher.pt', teacher=teacher)
    kd.prepare(same, IMG)
    loss, columns = kd.loss(same(imgs)[1], imgs, targets, YOLOLoss(same, hyp), same)
    assert list(columns) == list(WEIGHTS[strategy]) and loss.item() == 0.0
    assert all(v.item() == 0.0 for v in columns.values())

    # a channel-pruned student in training mode: every term positive, adapters where widths differ
    student = models.Darknet(narrow(MINI), img_size=IMG).train()
    kd = Distiller(strategy, 'teacher.pt', teacher=teacher)
    kd.prepare(student, IMG)
    teacher_before = copy.deepcopy(teacher.state_dict())
    assert (ADAPTERS in dict(student.named_children())) == (strategy in (4, 5))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    loss, columns = kd.loss(student(imgs), imgs, targets, YOLOLoss(student, hyp), student)
    assert all(v.item() > 0 for v in columns.values()), columns
    torch.testing.assert_close(loss.detach(), sum(columns.values()))
    loss.backward()
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads['module_list.0.Conv2d.weight'].abs().sum() > 0  # reaches the first layer
    if strategy in (4, 5):
        assert all(grads[f'{ADAPTERS}.{i}.weight'].abs().sum() > 0 for i in kd.adapters)
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # weights and BN statistics: bit-identical
        assert torch.equal(v, teacher_before[k]), k
    # the adapters are trained with the student but are no part of the saved model
    assert not any(ADAPTERS in k for k in student.state_dict())
    models.Darknet(student.cfg_text()).load_state_dict(student.state_dict())  # strict, loads whole
    student.load_state_dict(student.state_dict())


def kd_columns(strategy, **settings):
    """{label: KD columns} of one batch, one random teacher and one narrower student, for each
    ``label: Distiller keywords`` in ``settings`` (the adapters initialised alike)."""
    torch.manual_seed(0)
    hyp = load_hyp('data/hyp.shapes.yaml')
    teacher = models.Darknet(MINI, img_size=IMG).eval().requires_grad_(False)
    student = models.Darknet(narrow(MINI), img_size=IMG).train()
    imgs, targets = torch.rand(2, 3, IMG, IMG), targets_for(2)
    out = {}
    for label, kw in settings.items():
        kd = Distiller(strategy, 'teacher.pt', teacher=teacher, **kw)
        model = copy.deepcopy(student)
        torch.manual_seed(1)  # the adapters' initialisation
        kd.prepare(model, IMG)
        loss, out[label] = kd.loss(model(imgs), imgs, targets, YOLOLoss(model, hyp), model)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.detach(), sum(out[label].values()))
        assert all(kd.settings()[k] == v for k, v in kw.items())
    return out


@pytest.mark.parametrize('strategy', [1, 3, 5, 6])
def test_kd_weight_scales_every_term(strategy):
    """--kd-weight W: every column (and so the loss) is W times the column at weight 1, on the
    same batch, student and teacher; the weight is in the checkpoint's distill settings."""
    columns = kd_columns(strategy, one={'weight': 1.0}, four={'weight': 4.0})
    for name, value in columns['one'].items():
        assert value.item() > 0
        torch.testing.assert_close(columns['four'][name], 4.0 * value)
    with pytest.raises(ValueError, match='--kd-weight must be > 0'):
        Distiller(strategy, 'teacher.pt', weight=-1)


@pytest.mark.parametrize('strategy', [1, 5, 6])
def test_bf16_teacher_gives_the_same_loss_to_a_few_percent(strategy):
    """--t-precision bf16: the teacher's forward under CPU autocast (emulated where the CPU has
    no bfloat16 units) moves every KD column by a few percent at most; the student's output
    and the loss stay float32."""
    columns = kd_columns(strategy, fp32={'t_precision': 'fp32'}, bf16={'t_precision': 'bf16'})
    for name, value in columns['fp32'].items():
        torch.testing.assert_close(columns['bf16'][name], value, rtol=0.05, atol=0)
    with pytest.raises(ValueError, match='--t-precision must be one of'):
        Distiller(strategy, 'teacher.pt', t_precision='fp16')


def test_kdstr6_by_hand():
    """Bernoulli KL from logits: 0 where student and teacher agree, 0.75 ln 1.5 + 0.25 ln 0.5 for
    p = 0.75 against 0.5. KDstr 6 teaches background cells objectness only: a student that
    differs from the teacher in class and box at a cell the teacher calls background has
    kd_cls = kd_box = 0; the same difference at the teacher's object cell counts, with the
    detection loss's gains."""
    s, t = torch.zeros(2), torch.tensor([0.0, math.log(3.0)])
    torch.testing.assert_close(bernoulli_kl(s, t), torch.tensor([0.0, 0.75 * math.log(1.5) + 0.25 * math.log(0.5)]))
    hyp = load_hyp('data/hyp.shapes.yaml')
    model = models.Darknet(TINY, img_size=IMG)
    loss_fn = YOLOLoss(model, hyp)
    teacher = [torch.zeros(1, 3, IMG // st, IMG // st, 5 + model.nc) for st in (32, 16)]
    for p in teacher:
        p[..., 4] = -30.0  # background everywhere ...
    teacher[0][0, 1, 0, 0, 4] = 30.0  # ... but one object cell
    for cell, counts in (((0, 0, 1, 1), False), ((0, 1, 0, 0), True)):
        student = [p.clone() for p in teacher]
        student[0][(*cell, slice(0, 4))] += 0.5  # box
        student[0][(*cell, slice(5, None))] += 1.0  # classes
        terms = objectness_guided_terms(student, teacher, loss_fn, (IMG, IMG))
        assert terms['kd_obj'].item() == 0.0  # objectness agrees everywhere
        assert (terms['kd_cls'].item() > 1e-3) == counts and (terms['kd_box'].item() > 1e-3) == counts
        if not counts:
            assert terms['kd_cls'].item() < 1e-9 and terms['kd_box'].item() < 1e-9
    cls = model.nc * bernoulli_kl(torch.tensor(1.0), torch.tensor(0.0)) * loss_fn.cls_gain
    torch.testing.assert_close(terms['kd_cls'], cls, rtol=1e-5, atol=0)


def test_fine_grained_mask_by_hand():
    """A 64 px input, one 24 x 24 box centred at (32, 32) on image 1 of 2; head A: stride 16
    (4 x 4 grid), anchors 24 and 64 px; head B: stride 8 (8 x 8), anchors 16 and 8 px.
    Best IoU: B's 16 px anchor at the 4 cells centred at 28/36 px: 256 / 576 = 0.444. psi 0.5
    -> threshold 0.222. A's 24 px anchor at the cells centred at 24/40 px: 256 / 896 = 0.286
    (selected); its 64 px anchor: at most 576 / 4096 = 0.14; B's 16 px anchor one cell
    further out: 128 / 704 = 0.18; B's 8 px anchor: at most 64 / 576 = 0.11."""
    targets = torch.tensor([[1, 0, 0.5, 0.5, 24 / 64, 24 / 64]])
    anchors = [torch.tensor([[24., 24.], [64., 64.]]), torch.tensor([[16., 16.], [8., 8.]])]
    grids = [(4, 4), (8, 8)]
    head_a, head_b = fine_grained_masks(targets, 2, (64, 64), anchors, grids)
    expect_a, expect_b = torch.zeros(2, 2, 4, 4, dtype=torch.bool), torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    expect_a[1, 0, 1:3, 1:3] = True
    expect_b[1, 0, 3:5, 3:5] = True
    assert torch.equal(head_a, expect_a) and torch.equal(head_b, expect_b)
    # the heads' order plays no part: the strides are their grids'
    swapped = fine_grained_masks(targets, 2, (64, 64), anchors[::-1], grids[::-1])
    assert torch.equal(swapped[0], expect_b) and torch.equal(swapped[1], expect_a)
    # on a stride-4 map every cell under a selected cell's square (16..48 px), not a diagonal
    fine = feature_mask([head_a, head_b], (64, 64), (16, 16))
    expect = torch.zeros(2, 16, 16, dtype=torch.bool)
    expect[1, 4:12, 4:12] = True
    assert torch.equal(fine, expect)
    # on a stride-32 map the enclosing cells: 16..48 px touches both of each axis
    coarse = feature_mask([head_b], (64, 64), (2, 2))
    assert coarse[1].all() and not coarse[0].any()


def test_feature_pairs_survive_layer_pruning():
    """Removing the last residual block of the stride-8 and stride-16 stages moves those stage
    ends to the previous shortcut; the pairs still hold one map per stage, in order."""
    torch.manual_seed(0)
    teacher = models.Darknet(MINI, img_size=IMG)
    student = compact_model(teacher, drop_blocks=[(11, 8), (18, 15)])
    teacher_layers = [i for i, _ in stage_outputs(teacher.sections, IMG)]
    assert teacher_layers == [0, 4, 11, 18, 24, 28, 31, 35, 38]
    pairs = pair_features(student, teacher, IMG)
    # student layer = teacher layer - 3 per block removed before it; the stage ends 11 and 18 are
    # gone, the student's are its copies of teacher layers 8 and 15
    assert [(i, j) for i, j, _, _ in pairs] == list(zip([0, 4, 8, 12, 18, 22, 25, 29, 32], teacher_layers))
    assert all(cs == ct for _, _, cs, ct in pairs)  # layer pruning keeps the widths: no adapters


# ----------------------------------------------------------------------------- training runs

def argv(tmp_path, data, *args):
    return ['--data', str(data), '--img-size', str(IMG), '--workers', '0', '--batch-size', '8',
            '--project', str(tmp_path / 'runs'), *map(str, args)]


def run(tmp_path, data, *args):
    """train.py's Trainer with its features, validation left out (the final epoch's plots cost
    seconds and test nothing here); returns it after training."""
    trainer = train.add_features(Trainer(train.parse_args(argv(tmp_path, data, *args))))
    trainer.val_loader = None
    trainer.train()
    return trainer


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    """(teacher .pt, channel-pruned student .pt) of yolov3-tiny-shapes, random weights."""
    folder = tmp_path_factory.mktemp('pair')
    torch.manual_seed(1)
    models.save_checkpoint(folder / 'teacher.pt', models.Darknet(TINY, img_size=IMG))
    models.save_checkpoint(folder / 'student.pt', models.Darknet(narrow(TINY), img_size=IMG))
    return folder / 'teacher.pt', folder / 'student.pt'


def rows_of(run_dir):
    return list(csv.DictReader(open(run_dir / 'results.csv')))


@pytest.mark.parametrize('strategy', [1, 2, 3, 4])
def test_two_epochs_write_the_kd_columns(tmp_path, tiny_data, pair, strategy, capsys):
    teacher, student = pair
    trainer = run(tmp_path, tiny_data, '--weights', student, '--t_weights', teacher, '--KDstr', strategy,
                  '--epochs', '2', '--name', 'kd')
    columns = list(WEIGHTS[strategy])
    rows = rows_of(trainer.save_dir)
    assert list(rows[0]) == RESULT_FIELDS + columns and len(rows) == 2
    assert all(float(r[c]) > 0 for r in rows for c in columns)
    assert ' '.join(f'{c:>10}' for c in ['cls', *columns, 'total']).replace(' ', '') in \
        capsys.readouterr().out.replace(' ', '')  # progress-bar header
    assert (trainer.save_dir / 'results.png').stat().st_size > 0
    last = models.load_checkpoint(trainer.wdir / 'last.pt')
    assert last['cfg'] == models.load_checkpoint(student)['cfg']  # the student, without adapters
    assert not any(ADAPTERS in k for k in last['model'])
    assert last['distill']['KDstr'] == strategy
    assert bool(last['distill']['adapters']) == (strategy in (4, 5))
    # --t-precision auto (the default) resolved for this CPU
    assert last['distill']['t_precision'] == ('bf16' if native_bf16() else 'fp32')


def test_kdstr5_resumes_with_its_columns_and_adapters(tmp_path, tiny_data, pair):
    teacher, student = pair
    first = run(tmp_path, tiny_data, '--weights', student, '--t_weights', teacher, '--KDstr', '5', '--epochs', '2',
                '--stop-after', '1', '--name', 'kd5')
    last = first.wdir / 'last.pt'
    saved = models.load_checkpoint(last)['distill']['adapters']
    trained = dict(first.model.named_children())[ADAPTERS].state_dict()
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)
    opt = resume_options(train.parse_args(['--resume', str(last), '--workers', '0']), train.parse_args([]))
    resumed = train.add_features(Trainer(opt))
    resumed.setup()
    adapters = dict(resumed.model.named_children())[ADAPTERS]
    assert all(torch.equal(adapters.state_dict()[k], v) for k, v in saved.items())
    resumed.val_loader = None
    resumed.train()
    rows = rows_of(first.save_dir)
    assert list(rows[0]) == RESULT_FIELDS + list(WEIGHTS[5]) and [r['epoch'] for r in rows] == ['0', '1']
    assert all(float(r['kd_feat']) > 0 for r in rows)


def test_layer_pruned_student_distils_from_its_unpruned_teacher(tmp_path, tiny_data):
    torch.manual_seed(2)
    teacher = models.Darknet(MINI, img_size=IMG)
    blocks = [(s, j) for s, j in LayerGraph(teacher.sections).residual_blocks() if s in (11, 18, 22)]
    student = compact_model(teacher, drop_blocks=blocks)
    assert len(student.module_list) == len(teacher.module_list) - 9
    models.save_checkpoint(tmp_path / 'teacher.pt', teacher)
    models.save_checkpoint(tmp_path / 'student.pt', student)
    trainer = run(tmp_path, tiny_data, '--weights', tmp_path / 'student.pt', '--t_weights', tmp_path / 'teacher.pt',
                  '--KDstr', '5', '--epochs', '1', '--name', 'layer')
    row = rows_of(trainer.save_dir)[0]
    assert all(float(row[c]) > 0 for c in WEIGHTS[5])


# ----------------------------------------------------------------------------- DDP

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_first_step_matches_one_process(tmp_path, pair):
    """KDstr 5 (adapters, mask, box and class terms) with one SGD step over 4 identical images:
    2 gloo processes under torchrun log the same losses, KD columns included, as one process."""
    sys.path.insert(0, str(ROOT / 'data'))
    import shapes
    data = Path(shapes.ensure_shapes(tmp_path / 'same', n_train=1, n_val=1, seed=2, min_size=96, max_size=96))
    lst = data.parent / 'same' / 'train.txt'
    lst.write_text(lst.read_text() * 4)
    hyp = hyp_file(tmp_path, warmup_epochs=0, **NO_AUG)
    teacher, student = pair
    common = ['--data', str(data), '--img-size', str(IMG), '--workers', '0', '--epochs', '1', '--batch-size', '4',
              '--nbs', '4', '--hyp', hyp, '--notest', '--rect', '--weights', str(student), '--t_weights',
              str(teacher), '--KDstr', '5', '--project', str(tmp_path / 'runs')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    ddp = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                            str(free_port()), 'train.py', *common, '--name', 'ddp'], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:  # the single process meanwhile, in this process
        train.main([*common, '--name', 'single'])
        out, _ = ddp.communicate(timeout=300)
    finally:
        if ddp.poll() is None:  # torchrun and its two workers
            os.killpg(ddp.pid, signal.SIGKILL)
    assert ddp.returncode == 0, out[-3000:]
    single, multi = (rows_of(tmp_path / 'runs' / n)[0] for n in ('single', 'ddp'))
    for key in ('box', 'obj', 'cls', *WEIGHTS[5]):
        a, b = float(single[key]), float(multi[key])
        assert abs(a - b) <= 1e-4 + 1e-4 * abs(a), (key, a, b)


# ----------------------------------------------------------------------------- errors

def test_teacher_of_another_head_layout_is_one_clear_error(tmp_path, tiny_data, pair):
    student = models.Darknet(TINY, img_size=IMG)
    three = models.Darknet(rewrite_head(parse_cfg(TINY), classes=3), img_size=IMG)
    with pytest.raises(ValueError, match=r'^T does not fit the student: classes: student 5, teacher 3 \('):
        check_head_layout(student, three, IMG, 'T')
    anchors = [[a + 1 for a in wh] for wh in parse_cfg(TINY)[-1]['anchors']]
    other = models.Darknet(rewrite_head(parse_cfg(TINY), anchors=anchors), img_size=IMG)
    w, h = student.module_list[student.yolo_layers[0]].anchors[0].int().tolist()
    with pytest.raises(ValueError, match=rf'anchors of head 0: student \[\[{w}, {h}\], .* '
                                         rf'teacher \[\[{w + 1}, {h + 1}\]'):
        check_head_layout(student, other, IMG)
    coarse = parse_cfg(TINY)
    coarse[1]['stride'] = 2  # every map, so every head, at twice the stride
    with pytest.raises(ValueError, match=r'head strides at 64 px: student \[32, 16\], teacher \[64, 32\]'):
        check_head_layout(student, models.Darknet(coarse, img_size=IMG), IMG)
    models.save_checkpoint(tmp_path / 'three.pt', three)
    with pytest.raises(SystemExit, match=r'^error: teacher .*three.pt does not fit the student: classes: student 5, '
                                         r'teacher 3 \(distillation needs the same head layout'):
        train.main(argv(tmp_path, tiny_data, '--weights', pair[1], '--t_weights', tmp_path / 'three.pt',
                        '--KDstr', '3', '--epochs', '1'))


@pytest.mark.parametrize('args, message', [
    (['--KDstr', '2'], r'--KDstr 2 needs the teacher: add --t_weights'),
    (['--t_weights', 'a.pt'], r'--t_weights: only used by distillation, which is off; add --KDstr'),
    (['--KDstr', '1', '--t_weights', 'a.weights'], r'--t_weights a.weights: Darknet weights carry no cfg; add --t_cfg'),
    (['--KDstr', '7', '--t_weights', 'a.pt'], r'--KDstr/--kdstr: invalid choice: 7 (choose from 1, 2, 3, 4, 5, 6)'),
    (['--kd-weight', '5'], r'--kd-weight: only used by distillation, which is off; add --KDstr'),
    (['--t-precision', 'bf16'], r'--t-precision: only used by distillation, which is off; add --KDstr'),
    (['--KDstr', '1', '--t_weights', 'a.pt', '--kd-weight', '0'], r'--kd-weight 0.0: must be > 0'),
])
def test_inconsistent_flags_are_parser_errors(args, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(args)
    assert message.replace('\\', '') in capsys.readouterr().err
