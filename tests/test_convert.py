"""data/convert.py: each format on a tiny hand-made sample in its real on-disk format.

Expected label rows are worked out by hand in the comments (pixel box -> clipped box ->
centre / size over the image size), never by calling the converter's own helpers.
"""
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io as sio

from utils.parse_config import parse_data_cfg

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / 'tests' / 'data'  # reference files carried in the repo (tests/data/README.md)
_spec = importlib.util.spec_from_file_location('data_convert', ROOT / 'data' / 'convert.py')
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)


# ----------------------------------------------------------------------------- helpers

def make_image(path, w, h):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), 127, np.uint8)
    img[: h // 2, : w // 2] = (10, 200, 30)  # not uniform, so copies are checked for content
    assert cv2.imwrite(str(path), img)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def snapshot(folder):
    """relative path -> (kind, sha256, mtime_ns) of everything under ``folder``."""
    snap = {}
    for p in sorted(Path(folder).rglob('*')):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ''
        snap[str(p.relative_to(folder))] = (p.is_dir(), p.is_symlink(), digest, st.st_mtime_ns, st.st_mode)
    return snap


def run(*args):
    rc = conv.main([str(a) for a in args])
    assert rc == 0
    return rc


def label_path(image_path):
    """The toolkit's rule: last `images` component -> `labels`, extension -> .txt."""
    parts = list(Path(image_path).parts)
    i = len(parts) - 1 - parts[::-1].index('images')
    parts[i] = 'labels'
    return Path(*parts).with_suffix('.txt')


def read_rows(path):
    rows = []
    for line in Path(path).read_text().splitlines():
        cols = line.split()
        assert len(cols) == 5 and all(re.fullmatch(r'\d+\.\d{6}', c) for c in cols[1:]), line
        rows.append((int(cols[0]), *map(float, cols[1:])))
    return rows


def assert_rows(path, expected):
    rows = read_rows(path)
    assert len(rows) == len(expected), (path, rows)
    for got, want in zip(rows, expected):
        assert got[0] == want[0], (path, got, want)
        assert got[1:] == pytest.approx(want[1:], abs=1e-6), (path, got, want)


def check_lists(out, split, names):
    """Split list holds the expected images (absolute paths), each with its label file."""
    lines = (out / f'{split}.txt').read_text().splitlines()
    assert [Path(line).name for line in lines] == names
    for line in lines:
        assert Path(line).is_absolute() and Path(line).is_file()
        assert Path(line).parent == out.resolve() / 'images' / split
        assert label_path(line).is_file()
    return [label_path(line) for line in lines]


def check_data(out, name, classes, train, valid, names):
    data = parse_data_cfg(out / f'{name}.data')
    assert data['classes'] == classes
    assert Path(data['train']) == (out / f'{train}.txt').resolve()
    assert Path(data['valid']) == (out / f'{valid}.txt').resolve()
    assert Path(data['names']) == (out / f'{name}.names').resolve()
    assert (out / f'{name}.names').read_text().splitlines() == names


# ----------------------------------------------------------------------------- COCO

def test_coco(tmp_path, capsys):
    src, out = tmp_path / 'coco', tmp_path / 'out'
    make_image(src / 'val2017' / '000000000001.jpg', 100, 50)
    make_image(src / 'val2017' / '000000000002.jpg', 80, 40)  # no annotations
    make_image(src / 'images' / 'train2017' / '000000000010.png', 90, 30)  # images/<split> variant
    val = {
        'images': [{'id': 1, 'file_name': '000000000001.jpg', 'width': 100, 'height': 50},
                   {'id': 2, 'file_name': '000000000002.jpg', 'width': 80, 'height': 40},
                   {'id': 3, 'file_name': '000000000003.jpg', 'width': 80, 'height': 40}],  # file absent
        'annotations': [
            {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 5, 20, 10], 'iscrowd': 0},
            {'id': 2, 'image_id': 1, 'category_id': 90, 'bbox': [0, 0, 100, 50], 'iscrowd': 0},
            {'id': 3, 'image_id': 1, 'category_id': 44, 'bbox': [90, 40, 30, 30], 'iscrowd': 0},
            {'id': 4, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 50, 25], 'iscrowd': 1},
            {'id': 5, 'image_id': 1, 'category_id': 12, 'bbox': [0, 0, 50, 25], 'iscrowd': 0},
            {'id': 6, 'image_id': 1, 'category_id': 3, 'bbox': [50, 20, 0.5, 10], 'iscrowd': 0},
            {'id': 7, 'image_id': 1, 'category_id': 18, 'bbox': [10, 10, 30, 20], 'iscrowd': 0},
        ],
        'categories': [{'id': 1, 'name': 'person'}]}
    train = {'images': [{'id': 10, 'file_name': '000000000010.png', 'width': 90, 'height': 30}],
             'annotations': [{'id': 8, 'image_id': 10, 'category_id': 3, 'bbox': [0, 0, 10, 10], 'iscrowd': 0}]}
    write(src / 'annotations' / 'instances_val2017.json', json.dumps(val))
    write(src / 'annotations' / 'instances_train2017.json', json.dumps(train))
    before = snapshot(src)

    run('coco', '--src', src, '--out', out)

    a, b = check_lists(out, 'val2017', ['000000000001.jpg', '000000000002.jpg'])
    assert_rows(a, [
        (0, 0.2, 0.2, 0.2, 0.2),  # person [10,5,20,10] on 100x50: centre (20,10)
        (79, 0.5, 0.5, 1.0, 1.0),  # toothbrush (id 90 -> 79) covers the image
        (39, 0.95, 0.9, 0.1, 0.2),  # bottle (id 44 -> 39) [90,40]-[120,70] clipped to [90,40]-[100,50]
        (16, 0.25, 0.4, 0.3, 0.4),  # dog (id 18 -> 16) [10,10]-[40,30]
    ])  # crowd, unknown id 12 and the 0.5 px wide box are gone
    assert a.read_text().splitlines()[0] == '0 0.200000 0.200000 0.200000 0.200000'
    assert b.read_text() == ''
    (c,) = check_lists(out, 'train2017', ['000000000010.png'])
    assert_rows(c, [(2, 5 / 90, 5 / 30, 10 / 90, 10 / 30)])  # car (id 3 -> 2) on 90x30
    names = (DATA / 'darknet-cfg' / 'coco.names').read_text().splitlines()
    check_data(out, 'coco', 80, 'train2017', 'val2017', names)
    # copies are byte-identical
    assert (out / 'images' / 'val2017' / '000000000001.jpg').read_bytes() == \
        (src / 'val2017' / '000000000001.jpg').read_bytes()
    text = capsys.readouterr().out
    assert re.search(r'skipped object: crowd\s+0\s+1', text)
    assert re.search(r'skipped object: unknown class\s+0\s+1', text)
    assert re.search(r'skipped object: degenerate\s+0\s+1', text)
    assert re.search(r'skipped image: missing image\s+0\s+1', text)
    assert re.search(r'0 person\s+0\s+1', text)
    assert snapshot(src) == before


def test_coco_table_matches_spec():
    """The 80 -> 91 table equals COCO's category ids as the spec lists them (§3.4; carried in
    tests/data/coco_80_to_91.txt), and is a strictly increasing map."""
    table = (DATA / 'coco_80_to_91.txt').read_text().split()
    assert [int(v) for v in table] == conv.COCO_80_TO_91
    assert all(a < b for a, b in zip(conv.COCO_80_TO_91, conv.COCO_80_TO_91[1:]))
    assert len(conv.COCO_NAMES) == 80


# ----------------------------------------------------------------------------- BDD100K

def test_bdd100k_symlink(tmp_path):
    src, out = tmp_path / 'bdd100k', tmp_path / 'out'
    make_image(src / 'images' / '100k' / 'train' / 'f1.jpg', 128, 72)
    make_image(src / 'images' / '100k' / 'train' / 'f2.jpg', 128, 72)
    make_image(src / 'images' / '100k' / 'val' / 'v1.jpg', 128, 72)
    poly = {'vertices': [[0, 0], [10, 10]], 'types': 'LL', 'closed': False}
    train = [
        {'name': 'f1.jpg', 'attributes': {'weather': 'clear'}, 'timestamp': 10000, 'labels': [
            {'category': 'car', 'attributes': {'occluded': False}, 'manualShape': True, 'id': 0,
             'box2d': {'x1': 10.0, 'y1': 10.0, 'x2': 30.0, 'y2': 20.0}},
            {'category': 'traffic light', 'id': 1, 'box2d': {'x1': 120, 'y1': 60, 'x2': 140, 'y2': 80}},
            {'category': 'lane', 'id': 2, 'poly2d': [poly]},
            {'category': 'drivable area', 'id': 3, 'poly2d': [poly]},
            {'category': 'person', 'id': 4, 'box2d': {'x1': 50, 'y1': 10, 'x2': 50.5, 'y2': 30}},
        ]},
        {'name': 'f2.jpg', 'attributes': {}, 'timestamp': 10000},  # no labels at all
    ]
    val = [{'name': 'v1.jpg', 'labels': [{'category': 'rider', 'box2d': {'x1': 0, 'y1': 0, 'x2': 64, 'y2': 36}}]},
           {'name': 'gone.jpg', 'labels': []}]
    write(src / 'labels' / 'bdd100k_labels_images_train.json', json.dumps(train))
    write(src / 'labels' / 'bdd100k_labels_images_val.json', json.dumps(val))
    before = snapshot(src)

    run('bdd100k', '--src', src, '--out', out, '--link', 'symlink')

    f1, f2 = check_lists(out, 'train', ['f1.jpg', 'f2.jpg'])
    assert_rows(f1, [
        (0, 20 / 128, 15 / 72, 20 / 128, 10 / 72),  # car
        (9, 124 / 128, 66 / 72, 8 / 128, 12 / 72),  # traffic light clipped to [120,60]-[128,72]
    ])
    assert f2.read_text() == ''
    (v1,) = check_lists(out, 'val', ['v1.jpg'])
    assert_rows(v1, [(7, 0.25, 0.25, 0.5, 0.5)])
    link = out / 'images' / 'train' / 'f1.jpg'
    assert link.is_symlink() and os.readlink(link) == str((src / 'images/100k/train/f1.jpg').absolute())
    check_data(out, 'bdd100k', 10, 'train', 'val', ['car', 'bus', 'person', 'bike', 'truck', 'motor', 'train',
                                                     'rider', 'traffic sign', 'traffic light'])
    assert snapshot(src) == before


# ----------------------------------------------------------------------------- VisDrone

def test_visdrone_hardlink(tmp_path, capsys):
    src, out = tmp_path / 'visdrone', tmp_path / 'out'
    tr = src / 'VisDrone2019-DET-train'
    make_image(tr / 'images' / '0000001_00000_d_0000001.jpg', 200, 100)
    write(tr / 'annotations' / '0000001_00000_d_0000001.txt',
          '10,20,30,40,1,4,0,0\n'       # car (4 -> 3)
          '0,0,50,50,0,0,0,0\n'         # ignored region
          '5,5,10,10,1,11,0,0\n'        # others
          '190,90,20,20,1,1,0,1,\n'     # pedestrian, trailing comma, crosses the corner
          '100,50,10,10,0,5,0,0\n'      # score 0: not evaluated -> ignored
          '60,30,20,10,1,10,1,2\n'      # motor (10 -> 9)
          '70,70,0,5,1,4,0,0\n'         # zero width -> degenerate
          '\n')
    va = src / 'VisDrone2019-DET-val'
    make_image(va / 'images' / 'empty.jpg', 50, 50)
    write(va / 'annotations' / 'empty.txt', '')
    make_image(va / 'images' / 'noann.jpg', 50, 50)  # annotation file missing
    before = snapshot(src)

    run('visdrone', '--src', src, '--out', out, '--link', 'hardlink')

    (lab,) = check_lists(out, 'train', ['0000001_00000_d_0000001.jpg'])
    assert_rows(lab, [
        (3, 25 / 200, 40 / 100, 30 / 200, 40 / 100),
        (0, 195 / 200, 95 / 100, 10 / 200, 10 / 100),  # [190,90]-[210,110] -> [190,90]-[200,100]
        (9, 70 / 200, 35 / 100, 20 / 200, 10 / 100),
    ])
    (empty,) = check_lists(out, 'val', ['empty.jpg'])
    assert empty.read_text() == ''
    dst = out / 'images' / 'train' / '0000001_00000_d_0000001.jpg'
    assert dst.stat().st_ino == (tr / 'images' / '0000001_00000_d_0000001.jpg').stat().st_ino
    check_data(out, 'visdrone', 10, 'train', 'val', ['pedestrian', 'people', 'bicycle', 'car', 'van', 'truck',
                                                     'tricycle', 'awning-tricycle', 'bus', 'motor'])
    text = capsys.readouterr().out
    assert re.search(r'skipped object: ignored\s+2\s+0', text)
    assert re.search(r'skipped object: others\s+1\s+0', text)
    assert re.search(r'skipped object: degenerate\s+1\s+0', text)
    assert re.search(r'skipped image: missing annotation\s+0\s+1', text)
    assert snapshot(src) == before


def test_visdrone_bad_row_names_file_and_line(tmp_path, capsys):
    d = tmp_path / 'src' / 'VisDrone2019-DET-val'
    make_image(d / 'images' / 'x.jpg', 20, 20)
    write(d / 'annotations' / 'x.txt', '1,2,3,4,1,4,0,0\n1,2,3,4,1,4,0\n')
    assert conv.main(['visdrone', '--src', str(tmp_path / 'src'), '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert f'{d / "annotations" / "x.txt"}:2: expected 8 comma-separated columns' in err


# ----------------------------------------------------------------------------- DIOR

DIOR_OFFICIAL = ['airplane', 'airport', 'baseballfield', 'basketballcourt', 'bridge', 'chimney', 'dam',
                 'Expressway-Service-area', 'Expressway-toll-station', 'golffield', 'groundtrackfield', 'harbor',
                 'overpass', 'ship', 'stadium', 'storagetank', 'tenniscourt', 'trainstation', 'vehicle', 'windmill']


def voc_xml(filename, objects, size=None):
    """objects: (name, xmin, ymin, xmax, ymax, difficult)."""
    size_xml = f'<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>' if size else ''
    objs = ''.join(
        f'<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>'
        f'<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>'
        for n, x1, y1, x2, y2, d in objects)
    return f'<annotation><folder>VOC</folder><filename>{filename}</filename>{size_xml}{objs}</annotation>\n'


def make_dior(src):
    ann = src / 'Annotations' / 'Horizontal Bounding Boxes'
    make_image(src / 'JPEGImages-trainval' / '00001.jpg', 80, 80)
    make_image(src / 'JPEGImages-trainval' / '00002.jpg', 80, 80)
    make_image(src / 'JPEGImages-test' / '00003.jpg', 80, 80)
    write(ann / '00001.xml', voc_xml('00001.jpg', [('overpass', 10, 10, 30, 50, 0),
                                                   ('Expressway-Service-area', 0, 0, 80, 80, 0),
                                                   ('windmill', 60, 60, 70, 70, 1)], (80, 80)))
    write(ann / '00002.xml', voc_xml('00002.jpg', [('Dam', 40, 40, 100, 60, 0)], (80, 80)))
    write(ann / '00003.xml', voc_xml('00003.jpg', []))  # no <size>: read from the image
    for split, ids in (('train', ['00001']), ('val', ['00002']), ('test', ['00003'])):
        write(src / 'ImageSets' / 'Main' / f'{split}.txt', '\n'.join(ids) + '\n')


def test_dior_official_and_upstream_order(tmp_path):
    src = tmp_path / 'DIOR'
    make_dior(src)
    before = snapshot(src)

    out = tmp_path / 'out'
    run('dior', '--src', src, '--out', out)
    (a,) = check_lists(out, 'train', ['00001.jpg'])
    assert_rows(a, [(12, 0.25, 0.375, 0.25, 0.5),  # overpass is #13 officially
                    (7, 0.5, 0.5, 1.0, 1.0)])  # difficult windmill dropped
    (b,) = check_lists(out, 'val', ['00002.jpg'])
    assert_rows(b, [(6, 0.75, 0.625, 0.5, 0.25)])  # 'Dam' -> dam; [40,40]-[100,60] -> [40,40]-[80,60]
    (c,) = check_lists(out, 'test', ['00003.jpg'])
    assert c.read_text() == ''
    check_data(out, 'dior', 20, 'train', 'val', DIOR_OFFICIAL)

    out2 = tmp_path / 'out2'
    run('dior', '--src', src, '--out', out2, '--names-order', 'upstream', '--keep-difficult',
        '--splits', 'train+val=train', 'test')
    upstream = [n for n in DIOR_OFFICIAL if n != 'overpass'] + ['overpass']
    a, b = check_lists(out2, 'train', ['00001.jpg', '00002.jpg'])
    assert_rows(a, [(19, 0.25, 0.375, 0.25, 0.5), (7, 0.5, 0.5, 1.0, 1.0),
                    (18, 0.8125, 0.8125, 0.125, 0.125)])  # windmill kept, #19 once overpass moves last
    check_lists(out2, 'test', ['00003.jpg'])
    check_data(out2, 'dior', 20, 'train', 'test', upstream)
    assert not (out2 / 'val.txt').exists()
    assert snapshot(src) == before


# ----------------------------------------------------------------------------- Oxford Hand

def hand_mat(path, boxes):
    """VGG hand format: `boxes` is a 1xN cell array of structs with fields a, b, c, d = [y, x]."""
    cells = np.empty((1, len(boxes)), dtype=object)
    for i, corners in enumerate(boxes):
        cells[0, i] = {k: np.array([v], float) for k, v in zip('abcd', corners)}
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {'boxes': cells})


def test_oxfordhand(tmp_path):
    src, out = tmp_path / 'raw', tmp_path / 'out'
    root = src / 'hand_dataset'
    tr = root / 'training_dataset' / 'training_data'
    make_image(tr / 'images' / 'VOC2007_1.jpg', 100, 80)
    hand_mat(tr / 'annotations' / 'VOC2007_1.mat', [
        [(10, 20), (30, 40), (50, 20), (30, 0)],  # rotated 45 deg; corners (y, x): hull x 0..40, y 10..50
        [(70, 90), (70, 110), (90, 110), (90, 90)],  # x 90..110 -> 90..100, y 70..90 -> 70..80
    ])
    va = root / 'validation_dataset' / 'validation_data'
    make_image(va / 'images' / 'VOC2007_1.jpg', 100, 80)  # same file name as in training
    hand_mat(va / 'annotations' / 'VOC2007_1.mat', [[(0, 0), (0, 10), (20, 10), (20, 0)]])  # one box: 1x1 cell
    te = root / 'test_dataset' / 'test_data'
    make_image(te / 'images' / 'Poselet_1.jpg', 100, 80)
    hand_mat(te / 'annotations' / 'Poselet_1.mat', [])
    make_image(te / 'images' / 'Poselet_2.jpg', 100, 80)
    hand_mat(te / 'annotations' / 'Poselet_2.mat', [[(10, 30), (40, 30), (40, 30), (10, 30)]])  # zero width
    before = snapshot(src)

    run('oxfordhand', '--src', src, '--out', out)

    a, b = check_lists(out, 'train', ['VOC2007_1.jpg', 'VOC2007_1_2.jpg'])
    assert_rows(a, [(0, 0.2, 0.375, 0.4, 0.5), (0, 0.95, 0.9375, 0.1, 0.125)])
    assert_rows(b, [(0, 0.05, 0.125, 0.1, 0.25)])
    c, d = check_lists(out, 'valid', ['Poselet_1.jpg', 'Poselet_2.jpg'])
    assert c.read_text() == '' and d.read_text() == ''
    check_data(out, 'oxfordhand', 1, 'train', 'valid', ['hand'])
    assert snapshot(src) == before


# ----------------------------------------------------------------------------- generic VOC

def make_voc(src):
    make_image(src / 'JPEGImages' / '000001.jpg', 64, 32)
    make_image(src / 'JPEGImages' / '000002.jpg', 64, 32)
    write(src / 'Annotations' / '000001.xml', voc_xml('000001.jpg', [
        ('dog', 1, 1, 33, 17, 0), ('cat', 5, 5, 20, 20, 1), ('person', 50, 20, 80, 40, 0)], (64, 32)))
    write(src / 'Annotations' / '000002.xml', voc_xml('000002.jpg', [('bird', 0, 0, 0, 10, 0)]))
    main = src / 'ImageSets' / 'Main'
    write(main / 'train.txt', '000001\n')
    write(main / 'val.txt', '000002\n')
    write(main / 'trainval.txt', '000001\n000002\n')
    write(main / 'dog_train.txt', '000001  1\n')  # per-class file: not a split


def test_voc_collected_names_and_names_file(tmp_path, capsys):
    src = tmp_path / 'VOC2007'
    make_voc(src)
    before = snapshot(src)

    out = tmp_path / 'out'
    run('voc', '--src', src, '--out', out)
    (a,) = check_lists(out, 'train', ['000001.jpg'])
    # only VOC names: VOC's 20 classes in voc.names order (dog 11, person 14), not the sorted subset
    # (which would make dog 2); the difficult cat is dropped
    assert_rows(a, [(11, 17 / 64, 9 / 32, 32 / 64, 16 / 32),
                    (14, 57 / 64, 26 / 32, 14 / 64, 12 / 32)])  # person [50,20]-[80,40] -> [50,20]-[64,32]
    (b,) = check_lists(out, 'val', ['000002.jpg'])
    assert b.read_text() == ''  # zero-width bird: degenerate
    check_data(out, 'voc', 20, 'train', 'val', conv.VOC_NAMES)
    assert not (out / 'trainval.txt').exists() and not (out / 'dog_train.txt').exists()
    assert re.search(r'skipped object: difficult\s+1\s+0', capsys.readouterr().out)

    out2 = tmp_path / 'out2'
    write(tmp_path / 'my.names', 'person\ndog\n')
    run('voc', '--src', src, '--out', out2, '--names', tmp_path / 'my.names', '--splits', 'trainval',
        '--keep-difficult', '--name', 'pets')
    a, b = check_lists(out2, 'trainval', ['000001.jpg', '000002.jpg'])
    assert_rows(a, [(1, 17 / 64, 9 / 32, 32 / 64, 16 / 32), (0, 57 / 64, 26 / 32, 14 / 64, 12 / 32)])
    check_data(out2, 'pets', 2, 'trainval', 'trainval', ['person', 'dog'])
    text = capsys.readouterr()
    assert re.search(r'skipped object: unknown class\s+2', text.out)  # cat (kept difficult) + bird
    assert "'cat' x1" in text.err
    assert snapshot(src) == before


def test_voc_devkit_years_and_the_standard_protocol(tmp_path):
    devkit = tmp_path / 'raw' / 'VOCdevkit'
    for year, ids in (('2007', {'trainval': ['000005'], 'test': ['000001']}), ('2012', {'trainval': ['2008_000002']})):
        root = devkit / f'VOC{year}'
        for split, stems in ids.items():
            write(root / 'ImageSets' / 'Main' / f'{split}.txt', ''.join(f'{i}\n' for i in stems))
            for stem in stems:
                make_image(root / 'JPEGImages' / f'{stem}.jpg', 40, 20)
                write(root / 'Annotations' / f'{stem}.xml', voc_xml(f'{stem}.jpg', [('horse', 0, 0, 20, 10, 0)],
                                                                     (40, 20)))
    before = snapshot(devkit)
    out = tmp_path / 'out'
    run('voc', '--src', tmp_path / 'raw', '--out', out)  # the devkit's parent works too
    check_lists(out, 'train', ['000005.jpg', '2008_000002.jpg'])  # 2007 + 2012 trainval
    (label,) = check_lists(out, 'valid', ['000001.jpg'])  # 2007 test
    assert_rows(label, [(12, 0.25, 0.25, 0.5, 0.5)])  # horse is VOC class 12
    check_data(out, 'voc', 20, 'train', 'valid', conv.VOC_NAMES)
    out2 = tmp_path / 'out2'
    run('voc', '--src', devkit, '--out', out2, '--splits', '2012/trainval=train', '2007/test')
    check_lists(out2, 'train', ['2008_000002.jpg'])
    check_lists(out2, '2007_test', ['000001.jpg'])
    assert conv.main(['voc', '--src', str(devkit), '--out', str(tmp_path / 'o3'), '--splits', '2010/test']) == 2
    assert snapshot(devkit) == before


def test_voc_names_outside_voc_are_sorted(tmp_path):
    src = tmp_path / 'mine'
    make_image(src / 'JPEGImages' / 'a.jpg', 16, 16)
    write(src / 'Annotations' / 'a.xml', voc_xml('a.jpg', [('zebra', 0, 0, 8, 8, 0), ('dog', 8, 8, 16, 16, 0)],
                                                (16, 16)))
    run('voc', '--src', src, '--out', tmp_path / 'out')
    check_data(tmp_path / 'out', 'voc', 2, 'train', 'train', ['dog', 'zebra'])


# ----------------------------------------------------------------------------- errors and safety

@pytest.mark.parametrize('fmt,setup,message', [
    ('coco', lambda s: (make_image(s / 'val2017' / 'a.jpg', 8, 8),
                        write(s / 'annotations' / 'instances_val2017.json', '{"images": [\n  {"id": 1,]\n}')),
     r'instances_val2017\.json: invalid JSON at line 2'),
    ('voc', lambda s: (make_image(s / 'JPEGImages' / '1.jpg', 8, 8),
                       write(s / 'Annotations' / '1.xml', '<annotation>\n<object><name>a</name>\n</annotation>')),
     r'1\.xml: XML parse error at line 3'),
    ('voc', lambda s: (make_image(s / 'JPEGImages' / '1.jpg', 8, 8),
                       write(s / 'Annotations' / '1.xml', '<annotation><object><name>a</name></object></annotation>')),
     r'1\.xml: <object> #1 \(a\): missing <bndbox>'),
    ('oxfordhand', lambda s: (make_image(s / 'test_dataset/test_data/images/1.jpg', 8, 8),
                              (s / 'test_dataset/test_data/annotations').mkdir(),
                              sio.savemat(str(s / 'test_dataset/test_data/annotations/1.mat'), {'box': 1})),
     r'1\.mat: no "boxes" variable'),
])
def test_malformed_input_errors(tmp_path, capsys, fmt, setup, message):
    src = tmp_path / 'src'
    src.mkdir()
    setup(src)
    args = [fmt, '--src', str(src), '--out', str(tmp_path / 'out')]
    if fmt == 'oxfordhand':
        args += ['--splits', 'test']
    assert conv.main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_overwrite_and_overlap_guards(tmp_path, capsys):
    src, out = tmp_path / 'VOC', tmp_path / 'out'
    make_voc(src)
    run('voc', '--src', src, '--out', out, '--splits', 'train')
    stale = out / 'labels' / 'train' / 'stale.txt'
    stale.write_text('0 0.5 0.5 0.1 0.1\n')
    assert conv.main(['voc', '--src', str(src), '--out', str(out), '--splits', 'train']) == 2
    assert '--overwrite' in capsys.readouterr().err
    run('voc', '--src', src, '--out', out, '--splits', 'train', '--overwrite')
    assert not stale.exists() and (out / 'labels' / 'train' / '000001.txt').is_file()
    before = snapshot(src)
    assert conv.main(['voc', '--src', str(src), '--out', str(src / 'yolo')]) == 2
    assert 'overlap' in capsys.readouterr().err
    assert conv.main(['voc', '--src', str(src), '--out', str(out), '--splits', 'nope']) == 2
    assert "unknown source split 'nope'; available: train, trainval, val" in capsys.readouterr().err
    assert snapshot(src) == before


def test_relative_paths(tmp_path):
    src, out = tmp_path / 'VOC', tmp_path / 'out'
    make_voc(src)
    run('voc', '--src', src, '--out', out, '--relative')
    assert (out / 'train.txt').read_text() == 'images/train/000001.jpg\n'
    assert (out / 'voc.data').read_text() == 'classes=20\ntrain=train.txt\nvalid=val.txt\nnames=voc.names\n'
    data = parse_data_cfg(out / 'voc.data')  # resolved against the .data folder
    assert Path(data['train']) == out / 'train.txt'
