#!/usr/bin/env python3
"""Convert raw detection datasets into the toolkit's YOLO layout.

Usage::

    python3 data/convert.py FORMAT --src RAW_DIR --out DATASET_DIR [--splits SPEC ...]
           [--link copy|hardlink|symlink] [--name NAME] [--overwrite] [--relative]
           [--train-split S] [--valid-split S]
           [--names FILE] [--keep-difficult] [--names-order official|upstream]

FORMAT is one of ``coco``, ``bdd100k``, ``visdrone``, ``dior``, ``oxfordhand``, ``voc``.

Output (everything under ``--out``; the source folder is only read)::

    images/<split>/<file>      copy, hard link or symlink of each source image
    labels/<split>/<stem>.txt  one ``cls cx cy w h`` row per object (normalised, 6 decimals);
                               empty file for an image without objects
    <split>.txt                one image path per line (absolute, or out-relative with --relative)
    NAME.names                 one class name per line
    NAME.data                  classes=, train=, valid=, names=

The label path of an image is its path with the last ``images`` component replaced by
``labels`` and the extension by ``.txt``, which is what the loaders expect.

Split specs (``--splits``): ``SRC`` or ``SRC+SRC...=OUT``; e.g. for Oxford Hand the default
is ``training+validation=train test=valid``. ``SRC`` names are the dataset's own split names
(listed in the error message when one is unknown).

Source layouts (``--src`` is the folder shown at the top; default splits in brackets):

* coco: ``annotations/instances_<split>.json`` (or ``instances_<split>.json``) and the images
  in ``<split>/`` or ``images/<split>/`` [every instances_*.json, e.g. train2017 val2017].
  Category ids map to the darknet coco.names order; ``iscrowd`` objects are skipped.
* bdd100k: ``labels/bdd100k_labels_images_<split>.json`` (2018 format) and
  ``images/100k/<split>/`` [train val]. The 10 detection classes; lane / drivable area skipped.
* visdrone: ``VisDrone2019-DET-<split>/{images,annotations}/`` [train val test-dev ...].
  Categories 1..10 -> 0..9; 0 (ignored region, or score 0) and 11 (others) skipped.
* dior: ``Annotations/[Horizontal Bounding Boxes/]*.xml``, ``JPEGImages-trainval/``,
  ``JPEGImages-test/``, ``ImageSets/Main/<split>.txt`` [train val test]; the 2020 toolkit
  trained on train+val and tested on test: ``--splits train+val=train test``.
* oxfordhand: ``hand_dataset/<s>_dataset/<s>_data/{images,annotations}`` for s in training,
  validation, test [training+validation=train test=valid]; ``boxes`` corners a-d are (y, x)
  and may be rotated: the axis-aligned hull is kept.
* voc: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt`` [every split
  file; trainval left out when train and val exist]. Or a ``VOCdevkit`` folder (or its
  parent) holding ``VOC2007/``, ``VOC2012/`` ...: splits are ``<year>/<split>`` [the standard
  protocol: ``2007/trainval+2012/trainval=train 2007/test=valid``]. Classes from ``--names
  FILE``, else VOC's official 20 (voc.names order) when every name in the XMLs is one of
  them, else the sorted names found.
  Without ImageSets (voc, dior) all XMLs form one split ``train``.

Boxes are clipped to the image (``[0, W] x [0, H]``, coordinates read as continuous pixel
positions, as the upstream converters did) and dropped when narrower or shorter than 1 px
after clipping. At the end a table lists per split and class the kept objects and every
skipped object / image with its reason.

Error policy (the same for every format):

* A problem *inside* an annotation file (invalid JSON/XML, a row with the wrong number of
  columns, a missing field, a non-numeric coordinate) stops the run with an error naming the
  file and the line / element: the file is damaged or not in the expected format, and a
  silently partial dataset would be worse.
* A *missing or unreadable image*, or an image whose annotation file is missing, skips that
  image with a warning (a user with an incomplete download wants the rest converted); the
  count appears in the final table as ``skipped image: ...``.
* Objects are skipped and counted (never an error): crowd (COCO ``iscrowd``), ignored
  (VisDrone category 0 / score 0), others (VisDrone 11), poly2d (BDD labels without
  ``box2d``), difficult (VOC/DIOR, unless ``--keep-difficult``), unknown class, degenerate.

DIOR class order: ``--names-order official`` (default) is the order of the DIOR paper /
official release (overpass 13th, alphabetical); ``upstream`` is the order of the 2020 toolkit's
``dior.names`` (overpass moved last), needed to use weights trained with that toolkit.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python3 data/convert.py`: make utils importable
    sys.path.insert(0, str(ROOT))

from utils.general import IMG_FORMATS, atomic_write_text  # noqa: E402

FORMATS = ('coco', 'bdd100k', 'visdrone', 'dior', 'oxfordhand', 'voc')

# Pascal VOC's 20 classes in Darknet voc.names order (class id i = line i).
VOC_NAMES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
             'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']

# Darknet coco.names order (class id i = line i).
COCO_NAMES = [
    'person', 'bicycle', 'car', 'motorbike', 'aeroplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'sofa',
    'pottedplant', 'bed', 'diningtable', 'toilet', 'tvmonitor', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush']
# COCO category id (1..90, 80 used) of darknet class i.
COCO_80_TO_91 = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
COCO_91_TO_NAME = {cid: name for cid, name in zip(COCO_80_TO_91, COCO_NAMES)}

BDD_NAMES = ['car', 'bus', 'person', 'bike', 'truck', 'motor', 'train', 'rider', 'traffic sign', 'traffic light']
VISDRONE_NAMES = ['pedestrian', 'people', 'bicycle', 'car', 'van', 'truck', 'tricycle', 'awning-tricycle', 'bus',
                  'motor']
# Spelling as in the DIOR XML files; order of the DIOR paper / official release.
DIOR_NAMES_OFFICIAL = [
    'airplane', 'airport', 'baseballfield', 'basketballcourt', 'bridge', 'chimney', 'dam',
    'Expressway-Service-area', 'Expressway-toll-station', 'golffield', 'groundtrackfield', 'harbor', 'overpass',
    'ship', 'stadium', 'storagetank', 'tenniscourt', 'trainstation', 'vehicle', 'windmill']
# The 2020 toolkit's dior.names: same names, overpass moved to the end.
DIOR_NAMES_UPSTREAM = [n for n in DIOR_NAMES_OFFICIAL if n != 'overpass'] + ['overpass']
HAND_NAMES = ['hand']


class ConvertError(Exception):
    """Bad input or arguments; the message names the file and line/element and what to do."""


@dataclass
class Sample:
    """One source image and its objects.

    boxes: list of ``(class_name, x1, y1, x2, y2)`` in pixels of the source image.
    size: ``(width, height)`` from the annotation, or None to read it from the image header.
    skipped: object skip reason -> count, filled by the reader (crowd, ignored, ...).
    """
    image: Path
    boxes: list = field(default_factory=list)
    size: tuple = None
    skipped: Counter = field(default_factory=Counter)
    missing: str = ''  # non-empty: skip the whole image for this reason (e.g. 'missing annotation')
    seen: set = field(default_factory=set)  # every class name in the file, incl. skipped difficult ones


class Warner:
    """Prints the first few warnings of each kind, then only counts them (a 100k-image
    dataset with a missing folder would otherwise flood the terminal)."""

    def __init__(self, limit=5):
        self.limit, self.counts = limit, Counter()

    def __call__(self, kind, message):
        self.counts[kind] += 1
        if self.counts[kind] <= self.limit:
            tqdm.write(f'WARNING: {message}', file=sys.stderr)
        elif self.counts[kind] == self.limit + 1:
            tqdm.write(f'WARNING: further "{kind}" warnings suppressed (total in the summary)', file=sys.stderr)


# ----------------------------------------------------------------------------- readers
# Each format: discover(src) -> available source split names; read(src, split, opts) -> [Sample];
# names(opts, samples) -> class names. Readers report class *names*; the writer maps them to ids.

def _load_json(path):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f'{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}') from None
    except UnicodeDecodeError as e:
        raise ConvertError(f'{path}: not UTF-8 text ({e})') from None


def _number(value, where):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConvertError(f'{where}: expected a number, got {value!r}') from None
    return x


def _first_dir(*candidates):
    return next((Path(c) for c in candidates if Path(c).is_dir()), None)


# --- COCO
def _coco_json(src, split):
    for p in (src / 'annotations' / f'instances_{split}.json', src / f'instances_{split}.json'):
        if p.is_file():
            return p
    raise ConvertError(f'COCO: instances_{split}.json not found in {src}/annotations or {src}')


def coco_discover(src):
    found = sorted({p.stem[len('instances_'):] for d in (src / 'annotations', src) if d.is_dir()
                    for p in d.glob('instances_*.json')})
    return found


def coco_read(src, split, opts):
    path = _coco_json(src, split)
    image_dir = _first_dir(src / split, src / 'images' / split)
    if image_dir is None:
        raise ConvertError(f'COCO: image folder for {split} not found (looked for {src / split} and '
                           f'{src / "images" / split}); unzip {split}.zip there')
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) \
            or not isinstance(data.get('annotations'), list):
        raise ConvertError(f'{path}: not a COCO instances file (needs top-level "images" and "annotations" lists)')
    samples = {}
    for i, im in enumerate(data['images']):
        where = f'{path}: images[{i}]'
        try:
            image_id, file_name = im['id'], im['file_name']
        except (KeyError, TypeError):
            raise ConvertError(f'{where}: needs "id" and "file_name"') from None
        size = None
        if im.get('width') and im.get('height'):
            size = (_number(im['width'], f'{where}.width'), _number(im['height'], f'{where}.height'))
        samples[image_id] = Sample(image_dir / file_name, size=size)
    for i, ann in enumerate(data['annotations']):
        where = f'{path}: annotations[{i}] (id {ann.get("id") if isinstance(ann, dict) else "?"})'
        try:
            image_id, cat, bbox = ann['image_id'], ann['category_id'], ann['bbox']
        except (KeyError, TypeError):
            raise ConvertError(f'{where}: needs "image_id", "category_id" and "bbox"') from None
        if image_id not in samples:
            raise ConvertError(f'{where}: image_id {image_id} is not in "images"')
        s = samples[image_id]
        if ann.get('iscrowd', 0):
            s.skipped['crowd'] += 1
            continue
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ConvertError(f'{where}: bbox must be [x, y, w, h], got {bbox!r}')
        x, y, w, h = (_number(v, f'{where}.bbox') for v in bbox)
        name = COCO_91_TO_NAME.get(cat, f'<coco category_id {cat}>')
        s.boxes.append((name, x, y, x + w, y + h))  # [x,y,w,h] is top-left based
    return sorted(samples.values(), key=lambda s: s.image.name)


# --- BDD100K (2018 label format)
def _bdd_label_dirs(src):
    return [src / 'labels', src, src / 'bdd100k' / 'labels', src / 'labels' / '100k']


def bdd_discover(src):
    pat = re.compile(r'bdd100k_labels_images_(.+)\.json$')
    return sorted({m.group(1) for d in _bdd_label_dirs(src) if d.is_dir() for p in d.iterdir()
                   if (m := pat.match(p.name))})


def bdd_read(src, split, opts):
    path = next((d / f'bdd100k_labels_images_{split}.json' for d in _bdd_label_dirs(src)
                 if (d / f'bdd100k_labels_images_{split}.json').is_file()), None)
    if path is None:
        raise ConvertError(f'BDD100K: bdd100k_labels_images_{split}.json not found in {src}/labels or {src}')
    image_dir = _first_dir(src / 'images' / '100k' / split, src / 'bdd100k' / 'images' / '100k' / split,
                           src / 'images' / split, src / split)
    if image_dir is None:
        raise ConvertError(f'BDD100K: image folder for {split} not found (expected {src}/images/100k/{split})')
    frames = _load_json(path)
    if not isinstance(frames, list):
        raise ConvertError(f'{path}: expected a list of frames (2018 bdd100k_labels_images format)')
    samples = []
    for i, frame in enumerate(frames):
        where = f'{path}: frame[{i}]'
        if not isinstance(frame, dict) or 'name' not in frame:
            raise ConvertError(f'{where}: needs "name"')
        s = Sample(image_dir / frame['name'])  # size from the image header
        for j, lab in enumerate(frame.get('labels') or []):
            lw = f'{where} ({frame["name"]}) labels[{j}]'
            if not isinstance(lab, dict) or 'category' not in lab:
                raise ConvertError(f'{lw}: needs "category"')
            box = lab.get('box2d')
            if box is None:  # lane / drivable area are poly2d only
                s.skipped['poly2d (no box2d)'] += 1
                continue
            try:
                x1, y1, x2, y2 = (_number(box[k], f'{lw}.box2d.{k}') for k in ('x1', 'y1', 'x2', 'y2'))
            except (KeyError, TypeError):
                raise ConvertError(f'{lw}: box2d needs x1, y1, x2, y2') from None
            s.boxes.append((lab['category'], x1, y1, x2, y2))
        samples.append(s)
    return samples


# --- VisDrone2019-DET
def _visdrone_split_name(folder):
    return re.sub(r'^VisDrone\d*-DET-', '', folder.name)


def _visdrone_dirs(src):
    dirs = {}
    candidates = [src] + sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    for d in candidates:
        if (d / 'images').is_dir() and (d / 'annotations').is_dir():
            dirs[_visdrone_split_name(d)] = d
    return dirs


def visdrone_discover(src):
    return sorted(_visdrone_dirs(src))


def _visdrone_parse(path, s):
    """Rows ``left,top,width,height,score,category,truncation,occlusion`` (a trailing comma and
    blank lines are tolerated, as in the released files)."""
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            cols = line.rstrip(',').split(',')
            if len(cols) != 8:
                raise ConvertError(f'{path}:{lineno}: expected 8 comma-separated columns '
                                   f'(left,top,width,height,score,category,truncation,occlusion), '
                                   f'got {len(cols)}: {line!r}')
            try:
                left, top, w, h, score, cat = (float(c) for c in cols[:6])
            except ValueError:
                raise ConvertError(f'{path}:{lineno}: non-numeric value in {line!r}') from None
            cat = int(cat)
            if cat == 0 or score == 0:  # ignored regions (score 0 = not evaluated)
                s.skipped['ignored'] += 1
            elif cat == 11:
                s.skipped['others'] += 1
            elif 1 <= cat <= 10:
                s.boxes.append((VISDRONE_NAMES[cat - 1], left, top, left + w, top + h))
            else:
                s.boxes.append((f'<visdrone category {cat}>', left, top, left + w, top + h))


def visdrone_read(src, split, opts):
    d = _visdrone_dirs(src)[split]
    samples = []
    for img in _list_images(d / 'images'):
        ann = d / 'annotations' / f'{img.stem}.txt'
        s = Sample(img)
        if ann.is_file():
            _visdrone_parse(ann, s)
        else:
            s.missing = 'missing annotation'
        samples.append(s)
    return samples


# --- Pascal VOC style XML (DIOR, VOC)
def _parse_voc_xml(path):
    """-> (filename or None, (w, h) or None, [(name, x1, y1, x2, y2, difficult)])."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ConvertError(f'{path}: XML parse error at line {e.position[0]}: {e}') from None
    filename = (root.findtext('filename') or '').strip() or None
    size = None
    sz = root.find('size')
    if sz is not None and sz.findtext('width') and sz.findtext('height'):
        w = _number(sz.findtext('width'), f'{path}: <size><width>')
        h = _number(sz.findtext('height'), f'{path}: <size><height>')
        size = (w, h) if w > 0 and h > 0 else None  # some VOC exports write 0: read the image instead
    objects = []
    for i, obj in enumerate(root.iter('object')):
        name = (obj.findtext('name') or '').strip()
        where = f'{path}: <object> #{i + 1}' + (f' ({name})' if name else '')
        if not name:
            raise ConvertError(f'{where}: missing <name>')
        bb = obj.find('bndbox')
        if bb is None:
            raise ConvertError(f'{where}: missing <bndbox> (only horizontal boxes are supported)')
        coords = []
        for k in ('xmin', 'ymin', 'xmax', 'ymax'):
            text = bb.findtext(k)
            if text is None:
                raise ConvertError(f'{where}: <bndbox> lacks <{k}>')
            coords.append(_number(text.strip(), f'{where} <{k}>'))
        difficult = (obj.findtext('difficult') or '0').strip() in ('1', 'true', 'True')
        objects.append((name, *coords, difficult))
    return filename, size, objects


def _split_ids(path):
    with open(path, encoding='utf-8') as f:
        # VOC class-split files carry a second column (-1/0/1); plain split files one id a line.
        return [line.split()[0] for line in f if line.strip()]


def _is_class_file(path):
    """VOC per-class files ('aeroplane_train.txt': 'id -1|0|1' rows) are not split lists."""
    with open(path, encoding='utf-8') as f:
        first = next((line for line in f if line.strip()), '')
    return len(first.split()) == 2


def _imagesets(src):
    main = src / 'ImageSets' / 'Main'
    files = sorted(main.glob('*.txt')) if main.is_dir() else []
    return {p.stem: p for p in files if not _is_class_file(p)}


class _ImageIndex:
    """Stem -> image path over the given folders (recursive), built on first use."""

    def __init__(self, folders):
        self.folders, self._index = folders, None

    def find(self, stem, filename=None):
        if self._index is None:
            self._index = {}
            for folder in self.folders:
                for p in sorted(folder.rglob('*')) if folder.is_dir() else []:
                    if p.suffix.lower() in IMG_FORMATS:
                        self._index.setdefault(p.stem, p)
        # The id (XML file stem) names the image in VOC/DIOR; <filename> is the fallback.
        if stem in self._index:
            return self._index[stem]
        return self._index.get(Path(filename).stem) if filename else None


def _xml_read(src, split, opts, ann_dir, image_index, default_ids):
    ids = _split_ids(_imagesets(src)[split]) if split in _imagesets(src) else default_ids
    samples = []
    for stem in ids:
        xml = ann_dir / f'{stem}.xml'
        if not xml.is_file():
            img = image_index.find(stem)
            samples.append(Sample(img or xml, missing='missing annotation'))
            continue
        filename, size, objects = _parse_voc_xml(xml)
        img = image_index.find(stem, filename)
        s = Sample(img or (src / 'JPEGImages' / (filename or f'{stem}.jpg')), size=size)
        for name, x1, y1, x2, y2, difficult in objects:
            name = opts.canonical(name) if opts.canonical else name
            s.seen.add(name)
            if difficult and not opts.keep_difficult:
                s.skipped['difficult'] += 1
                continue
            s.boxes.append((name, x1, y1, x2, y2))
        samples.append(s)
    return samples


def _dior_ann_dir(src):
    d = _first_dir(src / 'Annotations' / 'Horizontal Bounding Boxes', src / 'Annotations')
    if d is None:
        raise ConvertError(f'DIOR: {src}/Annotations not found')
    return d


def _default_xml_ids(ann_dir):
    return [p.stem for p in sorted(ann_dir.glob('*.xml'))]


def dior_discover(src):
    return sorted(_imagesets(src)) or ['train']


def dior_read(src, split, opts):
    ann = _dior_ann_dir(src)
    index = opts.cache.setdefault('dior_index', _ImageIndex(
        [p for p in sorted(src.iterdir()) if p.is_dir() and p.name.startswith('JPEGImages')]))
    return _xml_read(src, split, opts, ann, index, _default_xml_ids(ann))


def _voc_years(src):
    """{year: folder} of a VOCdevkit: VOC2007/, VOC2012/ ... in ``src`` or in ``src``/VOCdevkit."""
    for root in (src, src / 'VOCdevkit'):
        years = {p.name[3:]: p for p in sorted(root.glob('VOC*')) if (p / 'Annotations').is_dir()}
        if years:
            return years
    return {}


def voc_discover(src):
    """One year's folder: its split names; a devkit root: ``<year>/<split>`` for every year."""
    if (src / 'Annotations').is_dir() or not _voc_years(src):
        return sorted(_imagesets(src)) or ['train']
    return [f'{year}/{split}' for year, folder in _voc_years(src).items()
            for split in (sorted(_imagesets(folder)) or ['train'])]


def voc_default_specs(available):
    """A devkit's standard protocol: every year's trainval for training, 2007 test for validation
    (None for one year's folder: all its splits)."""
    if '2007/test' not in available:
        return None
    trainval = [s for s in available if s.endswith('/trainval')]
    return ['+'.join(trainval) + '=train', '2007/test=valid'] if trainval else None


def voc_read(src, split, opts):
    if '/' in split:  # a devkit split: <year>/<split>
        year, split = split.split('/', 1)
        src = _voc_years(src)[year]
    ann = src / 'Annotations'
    if not ann.is_dir():
        raise ConvertError(f'VOC: {ann} not found (expected Annotations/, JPEGImages/, ImageSets/Main/, or a '
                           'VOCdevkit folder holding VOC2007/, VOC2012/ ...)')
    index = opts.cache.setdefault(f'voc_index:{src}', _ImageIndex([src / 'JPEGImages']))
    return _xml_read(src, split, opts, ann, index, _default_xml_ids(ann))


# --- Oxford Hand (VGG)
def _hand_root(src):
    for root in (src, src / 'hand_dataset'):
        if any((root / f'{s}_dataset').is_dir() for s in ('training', 'validation', 'test')):
            return root
    raise ConvertError(f'Oxford Hand: {src} has no training_dataset/validation_dataset/test_dataset '
                       f'(pass the extracted hand_dataset folder)')


def hand_discover(src):
    root = _hand_root(src)
    return [s for s in ('training', 'validation', 'test') if (root / f'{s}_dataset').is_dir()]


def _hand_corners(box, where):
    """Struct with corner fields a, b, c, d, each (y, x) -> (xs, ys)."""
    xs, ys = [], []
    for k in ('a', 'b', 'c', 'd'):
        try:
            y, x = (float(v) for v in box[k].ravel()[:2])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            raise ConvertError(f'{where}: corner "{k}" missing or not a (y, x) pair') from None
        xs.append(x)
        ys.append(y)
    return xs, ys


def _hand_parse(path, s):
    from scipy.io import loadmat  # only this format needs scipy
    try:
        mat = loadmat(path, simplify_cells=True)
    except Exception as e:  # scipy raises several types for damaged files
        raise ConvertError(f'{path}: cannot read MATLAB file ({e})') from None
    if 'boxes' not in mat:
        raise ConvertError(f'{path}: no "boxes" variable (expected the VGG hand annotation format)')
    boxes = mat['boxes']
    if isinstance(boxes, dict):  # a 1x1 cell is squeezed to the struct itself
        boxes = [boxes]
    elif isinstance(boxes, np.ndarray):
        boxes = list(boxes.ravel())
    for i, box in enumerate(boxes):
        where = f'{path}: boxes{{{i + 1}}}'
        if not isinstance(box, dict):
            raise ConvertError(f'{where}: expected a struct with fields a, b, c, d')
        xs, ys = _hand_corners(box, where)
        # Boxes may be rotated: keep the axis-aligned hull of the four corners.
        s.boxes.append(('hand', min(xs), min(ys), max(xs), max(ys)))


def hand_read(src, split, opts):
    d = _hand_root(src) / f'{split}_dataset' / f'{split}_data'
    if not (d / 'images').is_dir():
        raise ConvertError(f'Oxford Hand: {d}/images not found')
    samples = []
    for img in _list_images(d / 'images'):
        ann = d / 'annotations' / f'{img.stem}.mat'
        s = Sample(img)
        if ann.is_file():
            _hand_parse(ann, s)
        else:
            s.missing = 'missing annotation'
        samples.append(s)
    return samples


def _list_images(folder):
    return [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMG_FORMATS and p.is_file()]


@dataclass
class Options:
    keep_difficult: bool = False
    names_file: str = None
    names_order: str = 'official'
    cache: dict = field(default_factory=dict)
    canonical: object = None  # class-name normaliser (DIOR spelling variants); None = as written


FORMAT_SPECS = {
    # format: (discover, read, default split specs, a function of the available splits giving them, or
    # None = all discovered)
    'coco': (coco_discover, coco_read, None),
    'bdd100k': (bdd_discover, bdd_read, None),
    'visdrone': (visdrone_discover, visdrone_read, None),
    'dior': (dior_discover, dior_read, None),
    'oxfordhand': (hand_discover, hand_read, ['training+validation=train', 'test=valid']),
    'voc': (voc_discover, voc_read, voc_default_specs),
}


def class_names(fmt, opts, samples):
    """The class list of a conversion; for `voc` without --names: VOC's official 20 classes when
    every name seen is one of them (a subset must not shift the indices), else the sorted names."""
    if fmt == 'coco':
        return list(COCO_NAMES)
    if fmt == 'bdd100k':
        return list(BDD_NAMES)
    if fmt == 'visdrone':
        return list(VISDRONE_NAMES)
    if fmt == 'dior':
        return list(DIOR_NAMES_UPSTREAM if opts.names_order == 'upstream' else DIOR_NAMES_OFFICIAL)
    if fmt == 'oxfordhand':
        return list(HAND_NAMES)
    if opts.names_file:
        names = read_names(opts.names_file)
        if len(set(names)) != len(names):
            raise ConvertError(f'{opts.names_file}: duplicate class names')
        return names
    # From every object, difficult ones included, so the list does not depend on --keep-difficult.
    seen = {n for s in samples for n in s.seen}
    return list(VOC_NAMES) if seen and seen <= set(VOC_NAMES) else sorted(seen)


def read_names(path):
    try:
        lines = Path(path).read_text(encoding='utf-8').splitlines()
    except OSError as e:
        raise ConvertError(f'--names {path}: {e.strerror}') from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ConvertError(f'--names {path}: no class names in the file')
    return names


# ----------------------------------------------------------------------------- splits

def parse_split_specs(specs, available):
    """['training+validation=train', 'test=valid'] -> {'train': ['training', 'validation'], 'valid': ['test']}."""
    plan = {}
    for spec in specs:
        srcs, _, out = spec.partition('=')
        parts = [p.strip() for p in srcs.split('+') if p.strip()]
        if not parts:
            raise ConvertError(f'--splits {spec!r}: expected SRC or SRC+SRC=OUT')
        if len(parts) > 1 and not out:
            raise ConvertError(f'--splits {spec!r}: merging splits needs an output name, e.g. {srcs}=train')
        out = (out or parts[0].replace('/', '_')).strip()  # 2007/test -> 2007_test
        if not re.fullmatch(r'[A-Za-z0-9][\w.\-]*', out) or out in ('images', 'labels'):
            raise ConvertError(f'--splits {spec!r}: bad output split name {out!r} (letters, digits, _ . -; '
                               f'not "images"/"labels")')
        for p in parts:
            if p not in available:
                raise ConvertError(f'--splits {spec!r}: unknown source split {p!r}; available: '
                                   f'{", ".join(available) or "none found"}')
        if out in plan:
            raise ConvertError(f'--splits: output split {out!r} given twice')
        plan[out] = parts
    return plan


def _split_rank(name):
    """train* < val* < test* < anything else, then by name (order of lists and the summary)."""
    low = name.lower()
    return next((i for i, p in enumerate(('train', 'val', 'test')) if low.startswith(p)), 3), name


def pick_split(splits, wanted, prefixes, exclude=None):
    if wanted:
        if wanted not in splits:
            raise ConvertError(f'split {wanted!r} is not among the converted splits {splits}')
        return wanted
    for prefix in prefixes:
        for s in splits:
            if s != exclude and s.lower().startswith(prefix):
                return s
    return None


# ----------------------------------------------------------------------------- writer

def image_size(path):
    """(width, height) from the image header (no full decode); None when unreadable."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # PIL raises many types for broken files
        return None


def place_image(src, dst, link, warn):
    """Copy / hard-link / symlink ``src`` to ``dst`` via a temp name + rename (atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{dst.name}.', suffix='.tmp', dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)  # link/symlink need a free name; mkstemp only reserved a unique one
    try:
        if link == 'hardlink':
            try:
                os.link(src, tmp)
            except OSError as e:  # cross-device, or a filesystem without hard links
                warn('hardlink', f'hard link {src} -> {dst} failed ({e.strerror}); copying instead')
                shutil.copyfile(src, tmp)
        elif link == 'symlink':
            os.symlink(os.path.abspath(src), tmp)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def yolo_rows(boxes, index, size, skipped, unknown):
    """Pixel boxes -> label rows ``cls cx cy w h`` (normalised, 6 decimals).

    boxes: [(name, x1, y1, x2, y2)], size (W, H). Clips to [0, W] x [0, H]; a box under 1 px
    wide or high after clipping counts as 'degenerate', a name not in ``index`` as 'unknown class'.
    """
    W, H = size
    rows, kept = [], []
    for name, x1, y1, x2, y2 in boxes:
        cls = index.get(name)
        if cls is None:
            skipped['unknown class'] += 1
            unknown[name] += 1
            continue
        x1, x2 = min(max(x1, 0.0), W), min(max(x2, 0.0), W)
        y1, y2 = min(max(y1, 0.0), H), min(max(y2, 0.0), H)
        w, h = x2 - x1, y2 - y1
        if not (w >= 1 and h >= 1):  # also catches NaN
            skipped['degenerate'] += 1
            continue
        rows.append(f'{cls} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {w / W:.6f} {h / H:.6f}')
        kept.append(cls)
    return rows, kept


class SplitStats:
    def __init__(self):
        self.images, self.empty = 0, 0
        self.objects = Counter()  # class id -> kept objects
        self.skipped = Counter()  # object skip reason -> count
        self.skipped_images = Counter()  # image skip reason -> count


def _unique_name(used, path):
    """Output file name for ``path`` whose stem is unique in the split (label files are per stem)."""
    stem, ext = path.stem, path.suffix
    name, k = stem, 2
    while name.lower() in used:
        name, k = f'{stem}_{k}', k + 1
    used.add(name.lower())
    return name + ext


def write_split(out, split, samples, index, link, relative, warn, unknown):
    """Write images/<split>/, labels/<split>/ and return (image list lines, SplitStats)."""
    img_dir, lab_dir = out / 'images' / split, out / 'labels' / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    stats, lines, used = SplitStats(), [], set()
    for s in tqdm(samples, desc=f'{split:>10}', unit='img', file=sys.stderr):
        reason = s.missing or ('missing image' if not s.image.is_file() else '')
        size = s.size
        if not reason and size is None:
            size = image_size(s.image)
            reason = '' if size else 'unreadable image'
        if reason:
            stats.skipped_images[reason] += 1
            warn(reason, f'{split}: {s.image}: {reason}, image skipped')
            continue
        rows, kept = yolo_rows(s.boxes, index, size, stats.skipped, unknown)
        stats.skipped.update(s.skipped)
        name = _unique_name(used, s.image)
        if Path(name).stem != s.image.stem:
            warn('renamed', f'{split}: {s.image} renamed to {name} (another image of this split has the same stem)')
        dst = img_dir / name
        place_image(s.image, dst, link, warn)
        atomic_write_text(lab_dir / f'{Path(name).stem}.txt', ''.join(r + '\n' for r in rows))
        lines.append(f'images/{split}/{name}' if relative else os.path.abspath(dst))
        stats.images += 1
        stats.empty += not rows
        stats.objects.update(kept)
    return lines, stats


def summary_table(names, stats):
    """Per-class kept objects and skip counts per split, as text."""
    splits = list(stats)
    rows = [('class', *splits)]
    for i, n in enumerate(names):
        rows.append((f'{i} {n}', *(str(stats[s].objects[i]) for s in splits)))
    rows.append(('objects (kept)', *(str(sum(stats[s].objects.values())) for s in splits)))
    rows.append(('images', *(str(stats[s].images) for s in splits)))
    rows.append(('images without objects', *(str(stats[s].empty) for s in splits)))
    for attr, label in (('skipped', 'skipped object'), ('skipped_images', 'skipped image')):
        reasons = sorted({r for s in splits for r in getattr(stats[s], attr)})
        for r in reasons:
            rows.append((f'{label}: {r}', *(str(getattr(stats[s], attr)[r]) for s in splits)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]

    def fmt(row):  # class column left-aligned, counts right-aligned
        return '  '.join(v.ljust(widths[0]) if c == 0 else v.rjust(widths[c]) for c, v in enumerate(row))
    sep = '-' * len(fmt(rows[0]))
    return '\n'.join([fmt(rows[0]), sep, *(fmt(r) for r in rows[1:len(names) + 1]), sep,
                      *(fmt(r) for r in rows[len(names) + 1:])])


# ----------------------------------------------------------------------------- driver

def _check_paths(src, out):
    if not src.is_dir():
        raise ConvertError(f'--src {src}: not a folder')
    s, o = src.resolve(), out.resolve()
    if s == o or s in o.parents or o in s.parents:
        raise ConvertError(f'--out {out} and --src {src} overlap; write the dataset to a separate folder '
                           f'(the source is never modified)')
    # Loaders replace the last 'images' component; the 2020 toolkit replaced *every* 'images' substring.
    if 'images' in str(o):
        warn_text = (f'--out {out} contains "images"; loaders that replace every "images" in a path '
                     f'(the 2020 toolkit did) will look for labels in the wrong place')
        tqdm.write(f'WARNING: {warn_text}', file=sys.stderr)


def _prepare_out(out, splits, overwrite):
    for split in splits:
        for d in (out / 'images' / split, out / 'labels' / split):
            if d.is_dir() and any(d.iterdir()):
                if not overwrite:
                    raise ConvertError(f'{d} is not empty; pass --overwrite to replace the {split!r} split '
                                       f'or choose another --out')
                shutil.rmtree(d)  # only our own output folders (src/out overlap was refused)


def convert(fmt, src, out, splits=None, link='copy', name=None, overwrite=False, relative=False,
            train_split=None, valid_split=None, names_file=None, keep_difficult=False,
            names_order='official'):
    """Convert dataset ``src`` of format ``fmt`` into the YOLO layout in ``out``.

    Returns {'names': [...], 'splits': {split: SplitStats}, 'data': Path of NAME.data}.
    Raises ConvertError on bad input (message names the file and line/element).
    """
    if fmt not in FORMATS:
        raise ConvertError(f'unknown format {fmt!r}; choose one of {", ".join(FORMATS)}')
    src, out = Path(src), Path(out)
    _check_paths(src, out)
    discover, read, default_specs = FORMAT_SPECS[fmt]
    available = sorted(discover(src), key=_split_rank)
    if not available:
        raise ConvertError(f'{fmt}: no splits found in {src}; see `python3 data/convert.py -h` for the layout')
    if callable(default_specs):
        default_specs = default_specs(available)
    if not splits and not default_specs and {'train', 'val', 'trainval'} <= set(available):
        available_default = [s for s in available if s != 'trainval']  # trainval = train + val: no duplicates
    else:
        available_default = available
    plan = parse_split_specs(splits or default_specs or available_default, available)
    opts = Options(keep_difficult=keep_difficult, names_file=names_file, names_order=names_order)
    if fmt == 'dior':  # DIOR copies differ in case ('Dam', 'expressway-service-area')
        lower = {n.lower(): n for n in DIOR_NAMES_OFFICIAL}
        opts.canonical = lambda n: lower.get(n.lower(), n)

    samples = {split: [s for part in parts for s in read(src, part, opts)] for split, parts in plan.items()}
    names = class_names(fmt, opts, [s for v in samples.values() for s in v])
    if not names:
        raise ConvertError(f'{fmt}: no objects found in {src}, so no class list; pass --names FILE')
    index = {n: i for i, n in enumerate(names)}

    _prepare_out(out, plan, overwrite)
    warn, unknown, stats, lists = Warner(), Counter(), {}, {}
    for split, items in samples.items():
        lists[split], stats[split] = write_split(out, split, items, index, link, relative, warn, unknown)
    if unknown:
        listed = ', '.join(f'{n!r} x{c}' for n, c in unknown.most_common(20))
        tqdm.write(f'WARNING: objects of classes not in the class list were skipped: {listed}', file=sys.stderr)

    name = name or fmt
    for split, lines in lists.items():
        atomic_write_text(out / f'{split}.txt', ''.join(line + '\n' for line in lines))
    atomic_write_text(out / f'{name}.names', ''.join(n + '\n' for n in names))
    data_path = write_data_file(out, name, names, list(plan), train_split, valid_split, relative)
    print(summary_table(names, stats))
    print(f'\nwrote {data_path}')
    return {'names': names, 'splits': stats, 'data': data_path}


def write_data_file(out, name, names, splits, train_split, valid_split, relative):
    train = pick_split(splits, train_split, ('train',)) or splits[0]
    valid = pick_split(splits, valid_split, ('val', 'test'), exclude=train)
    if valid is None:
        valid = train
        tqdm.write(f'WARNING: no validation split among {splits}; valid= points at {train}.txt', file=sys.stderr)
    path = lambda f: f if relative else os.path.abspath(out / f)  # noqa: E731
    text = (f'classes={len(names)}\ntrain={path(f"{train}.txt")}\nvalid={path(f"{valid}.txt")}\n'
            f'names={path(f"{name}.names")}\n')
    return atomic_write_text(out / f'{name}.data', text)


def build_parser():
    p = argparse.ArgumentParser(prog='convert.py', description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('format', choices=FORMATS)
    p.add_argument('--src', required=True, help='raw dataset folder (read only)')
    p.add_argument('--out', required=True, help='output dataset folder')
    p.add_argument('--splits', nargs='+', metavar='SPEC',
                   help='SRC or SRC+SRC=OUT (default: every split found; oxfordhand: training+validation=train '
                        'test=valid)')
    p.add_argument('--link', choices=('copy', 'hardlink', 'symlink'), default='copy',
                   help='how images get into OUT/images (default copy)')
    p.add_argument('--name', help='stem of the .names/.data files (default: the format)')
    p.add_argument('--overwrite', action='store_true', help='replace existing OUT/images|labels/<split> folders')
    p.add_argument('--relative', action='store_true',
                   help='write out-relative paths in the split lists and .data (default absolute)')
    p.add_argument('--train-split', help='split for train= in the .data (default: first starting with "train")')
    p.add_argument('--valid-split', help='split for valid= (default: first starting with "val", else "test")')
    p.add_argument('--names', dest='names_file', help='voc: class list file (default: the 20 VOC classes when the XMLs use only those, else the sorted names found)')
    p.add_argument('--keep-difficult', action='store_true', help='voc/dior: keep difficult=1 objects')
    p.add_argument('--names-order', choices=('official', 'upstream'), default='official',
                   help='dior: official DIOR order (default) or the 2020 toolkit order (overpass last)')
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.names_file and args.format != 'voc':
        parser.error('--names is only for the voc format (the other formats have fixed class lists)')
    if args.keep_difficult and args.format not in ('voc', 'dior'):
        parser.error('--keep-difficult is only for voc and dior')
    if args.names_order != 'official' and args.format != 'dior':
        parser.error('--names-order is only for dior')
    try:
        convert(args.format, args.src, args.out, splits=args.splits, link=args.link, name=args.name,
                overwrite=args.overwrite, relative=args.relative, train_split=args.train_split,
                valid_split=args.valid_split, names_file=args.names_file, keep_difficult=args.keep_difficult,
                names_order=args.names_order)
    except ConvertError as e:
        print(f'convert.py: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
