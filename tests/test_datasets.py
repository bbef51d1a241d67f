"""Loader: label checking, cache, box/pixel alignment through letterbox, mosaic, affine and
flips, rect batches, reproducible workers, detect sources."""
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import utils.datasets as D
from utils.augmentations import AUG_DEFAULTS, random_affine
from utils.datasets import (LoadImages, LoadImagesAndLabels, LoadStreams, RectBatchSampler, check_label_file,
                            create_dataloader, img2label_paths, letterbox, list_images,
                            random_train_size, resize_batch, scale_boxes)

ROOT = Path(__file__).resolve().parents[1]
PALETTE = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0)]  # BGR, one per class
BG = 90
NO_AUG = {k: 0.0 for k in AUG_DEFAULTS}  # every augmentation off; tests switch on what they check


def write_image(root, name, hw, boxes):
    """A grey image with filled boxes [(cls, x1, y1, x2, y2)] of the class colours + its label file."""
    img = np.full((*hw, 3), BG, np.uint8)
    h, w = hw
    rows = []
    for c, x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = PALETTE[c]
        rows.append(f'{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}')
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'labels').mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / 'images' / name), img)
    (root / 'labels' / Path(name).with_suffix('.txt')).write_text('\n'.join(rows) + '\n')
    return f'images/{name}'


def make_dataset(root, specs):
    """specs: list of (hw, boxes); returns the list file (relative entries)."""
    lines = [write_image(root, f'{i}.png', hw, boxes) for i, (hw, boxes) in enumerate(specs)]
    (root / 'list.txt').write_text('\n'.join(lines) + '\n')
    return root / 'list.txt'


SPECS = [((173, 311), [(0, 40, 30, 130, 100)]),
         ((240, 150), [(1, 20, 40, 110, 150), (2, 30, 170, 120, 225)]),
         ((200, 200), [(3, 60, 60, 150, 140)]),
         ((150, 260), [(4, 150, 20, 240, 120), (5, 15, 70, 80, 135)])]


def colour_components(img_chw):
    """{class: [pixel bbox (x1, y1, x2, y2), area]} of each connected region of each class colour."""
    bgr = img_chw.numpy().transpose(1, 2, 0)[..., ::-1].astype(int)
    out = {}
    for c, col in enumerate(PALETTE):
        mask = (np.abs(bgr - col).max(-1) < 50).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        out[c] = [(np.array([x, y, x + w, y + h], float), a) for x, y, w, h, a in stats[1:] if a >= 4]
    return out


def label_boxes(labels, h, w):
    """labels [n,6] (img, cls, cx, cy, w, h) -> [(cls, xyxy px)]."""
    out = []
    for _, c, cx, cy, bw, bh in labels.tolist():
        out.append((int(c), np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])))
    return out


def full_areas(specs, img_size):
    """{class: area in px of its whole box once the image is resized to img_size (long side)}."""
    out = {}
    for hw, boxes in specs:
        r = img_size / max(hw)
        for c, x1, y1, x2, y2 in boxes:
            out[c] = (x2 - x1) * (y2 - y1) * r * r
    return out


def assert_aligned(img, labels, tol=2.0, require_all=None):
    """Every label box matches a region of its class colour to `tol` px. require_all: {class:
    full area} (valid when nothing rescales) - then every region showing >= 30 % of its object
    and >= 8 px each way must have a label (the loader drops only < 20 % visible)."""
    h, w = img.shape[1:]
    comps = colour_components(img)
    used = set()
    for c, box in label_boxes(labels, h, w):
        errs = [np.abs(b - box).max() for b, _ in comps[c]]
        assert errs, f'class {c} labelled at {box.round(1)} but no pixels of its colour'
        k = int(np.argmin(errs))
        assert errs[k] <= tol, f'class {c}: label {box.round(1)} vs pixels {comps[c][k][0]}'
        used.add((c, k))
    if require_all:
        for c, regions in comps.items():
            for k, (b, area) in enumerate(regions):
                if (b[2] - b[0]) >= 8 and (b[3] - b[1]) >= 8 and area >= 0.3 * require_all[c]:
                    assert (c, k) in used, f'class {c} region {b} has no label'


# ----------------------------------------------------------------------------- paths, sources

def test_img2label_paths_uses_the_last_images_component():
    assert img2label_paths(['/d/images_set/images/train/a.jpg']) == ['/d/images_set/labels/train/a.txt']
    assert img2label_paths(['/d/images/x/images/b.png']) == ['/d/images/x/labels/b.txt']
    assert img2label_paths(['rel/c.JPEG']) == ['rel/c.txt']


def test_list_images_sources(tmp_path, monkeypatch):
    listfile = make_dataset(tmp_path / 'ds', SPECS[:2])
    (tmp_path / 'ds' / 'images' / 'notes.md').write_text('x')
    monkeypatch.chdir(tmp_path)  # list entries are relative to the list, not to the CWD
    from_list = list_images(str(listfile))
    assert [Path(f).name for f in from_list] == ['0.png', '1.png'] and all(os.path.isfile(f) for f in from_list)
    assert [Path(f).name for f in list_images('ds/images')] == ['0.png', '1.png']
    assert [Path(f).name for f in list_images('ds/images/*.png')] == ['0.png', '1.png']
    with pytest.raises(FileNotFoundError, match='nope does not exist'):
        list_images('nope')


# ----------------------------------------------------------------------------- alignment

def test_letterbox_eval_alignment_and_scale_boxes_round_trip(tmp_path):
    listfile = make_dataset(tmp_path, SPECS[:1])  # 173 x 311: odd aspect, odd sizes
    for rect in (False, True):
        ds = LoadImagesAndLabels(str(listfile), img_size=256, rect=rect)
        img, labels, _, shapes = ds[0]
        assert img.dtype == torch.uint8 and img.is_contiguous()
        assert img.shape == ((3, 256, 256) if not rect else (3, 160, 256))
        assert_aligned(img, labels, tol=1.0, require_all=full_areas(SPECS[:1], 256))
        (_, box), = label_boxes(labels, *img.shape[1:])
        back = scale_boxes(img.shape[1:], torch.from_numpy(box[None]), shapes[0], shapes[1])
        assert np.abs(back.numpy()[0] - [40, 30, 130, 100]).max() <= 1.0
        back = scale_boxes(img.shape[1:], np.array([box]), shapes[0])  # ratio/pad recomputed
        assert np.abs(back[0] - [40, 30, 130, 100]).max() <= 1.0


def test_letterbox_shapes_ratio_padding():
    img = np.zeros((100, 300, 3), np.uint8)
    out, ratio, pad = letterbox(img, 256)
    assert out.shape == (256, 256, 3) and pad == (0, 85) and ratio == (85 / 100, 256 / 300)
    assert (out[:85] == 114).all() and (out[85 + 85:] == 114).all() and (out[85:170] == 0).all()
    out, _, pad = letterbox(img, 256, auto=True)  # minimal padding to the stride: 85 -> 96
    assert out.shape == (96, 256, 3) and pad == (0, 5)
    out, ratio, pad = letterbox(img, (320, 640), scaleup=False)  # never enlarged
    assert out.shape == (320, 640, 3) and ratio == (1.0, 1.0) and pad == (170, 110)


def test_scale_boxes_clips_to_the_image():
    out = scale_boxes((256, 256), np.array([[-10., 50, 300, 120]]), (173, 311))
    assert out[0, 0] == 0 and out[0, 2] == 311


@pytest.mark.parametrize('over,require_all', [
    ({'mosaic': 1.0}, True),                                              # mosaic crop only
    ({'mosaic': 1.0, 'fliplr': 1.0, 'scale': 0.3, 'translate': 0.1}, False),
    ({'mosaic': 1.0, 'flipud': 1.0, 'shear': 3.0}, False),
    ({'fliplr': 1.0, 'flipud': 1.0, 'scale': 0.2}, False),               # letterbox + affine + both flips
])
def test_augmentation_keeps_boxes_on_their_pixels(tmp_path, over, require_all):
    listfile = make_dataset(tmp_path, SPECS)
    ds = LoadImagesAndLabels(str(listfile), img_size=256, augment=True, hyp={**NO_AUG, **over}, seed=5)
    n_labels = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, labels, _, shapes = ds[i]
            assert img.shape == (3, 256, 256) and (shapes is None) == (over.get('mosaic', 0) == 1)
            assert_aligned(img, labels, tol=2.0, require_all=full_areas(SPECS, 256) if require_all else None)
            n_labels += len(labels)
    assert n_labels >= 12


def test_affine_with_rotation_and_shear_moves_boxes_with_pixels():
    img = np.full((220, 260, 3), BG, np.uint8)
    img[70:130, 90:170] = PALETTE[0]
    for seed in range(3):
        out, boxes, keep = random_affine(img, np.array([[90., 70, 170, 130]]), np.random.default_rng(seed),
                                         degrees=20, translate=0.05, scale=0.2, shear=4)
        chw = torch.from_numpy(np.ascontiguousarray(out[..., ::-1].transpose(2, 0, 1)))
        (pix, _), = colour_components(chw)[0]
        assert keep.all() and np.abs(boxes[0] - pix).max() <= 2.0, (boxes[0], pix)


def test_box_filter_drops_cut_off_thin_and_needle_boxes():
    """A centred 100x100 crop (border -50) of a 200x200 image with no random part."""
    img = np.full((200, 200, 3), BG, np.uint8)
    boxes = np.array([[0., 0, 60, 60],      # 10x10 of 60x60 visible (3 %): dropped
                      [40, 40, 100, 100],   # 50x50 of 60x60 visible (69 %): kept, clipped
                      [60, 60, 62, 120],    # 2 px wide: dropped
                      [55, 70, 145, 74],    # 90x4, aspect 22: dropped
                      [60, 80, 140, 90]])   # 80x10: kept
    out, new, keep = random_affine(img, boxes, np.random.default_rng(0), border=(-50, -50))
    assert out.shape == (100, 100, 3) and keep.tolist() == [False, True, False, False, True]
    np.testing.assert_allclose(new[keep], [[0, 0, 50, 50], [10, 30, 90, 40]])
    # an object already cut before the transform (mosaic tile at the canvas border): the visible
    # share is measured against its whole box, 50x50 of 240x60 (17 %) -> dropped
    _, _, keep = random_affine(img, boxes[1:2], np.random.default_rng(0), border=(-50, -50),
                               full_boxes=np.array([[-140., 40, 100, 100]]))
    assert keep.tolist() == [False]
    # min_visible (hyp key) raises the visible share a label needs: 69 % passes 0.6, fails 0.75
    for min_visible, kept in ((0.6, True), (0.75, False)):
        _, _, keep = random_affine(img, boxes[1:2], np.random.default_rng(0), border=(-50, -50),
                                   min_visible=min_visible)
        assert keep.tolist() == [kept]


def test_boxes_cut_off_the_mosaic_canvas_give_no_label():
    """A tile object lying wholly outside the 2s canvas reaches random_affine clipped to a point
    (or a line) on the canvas border: it has no visible part and must not come back as a
    full-image box (a zero-area quad 'contains' every image corner by the same-side test)."""
    import utils.augmentations as A
    img = np.full((200, 200, 3), BG, np.uint8)
    collapsed = np.array([[0., 0, 0, 0],        # point at the canvas corner
                          [0, 30, 0, 90],       # line on the left edge
                          [40, 40, 100, 100]])  # a real box: kept
    quads = A.warp_corners(collapsed, np.eye(3))
    clipped = A.clip_quads(quads, 100, 100)
    assert np.prod(clipped[:2, 2:] - clipped[:2, :2], 1).tolist() == [0, 0]  # zero area, not [0, 0, 100, 100]
    for degrees in (0.0, 10.0):  # the whole-pixel crop fast path and the warpAffine path
        out, new, keep = random_affine(img, collapsed, np.random.default_rng(0), degrees=degrees,
                                       border=(-50, -50))
        assert keep.tolist() == [False, False, True], (degrees, new)


def test_whole_pixel_crop_fast_path_matches_warp_affine(monkeypatch):
    """With no rotation/scale/shear/perspective the mosaic's affine is a crop: random_affine
    slices instead of warping, with identical pixels, boxes and keep mask."""
    import utils.augmentations as A
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (240, 300, 3), dtype=np.uint8)
    xy = rng.uniform(-40, 280, (40, 2))
    boxes = np.concatenate((xy, xy + rng.uniform(2, 90, (40, 2))), 1).clip(0, [300, 240, 300, 240])
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(A, '_crop_offset', lambda *a: None)
        runs.append(random_affine(img, boxes, np.random.default_rng(5), border=(-60, -75), translate=0.0))
    (img_f, new_f, keep_f), (img_s, new_s, keep_s) = runs
    assert img_f.shape == (120, 150, 3) and np.array_equal(img_f, img_s)
    assert np.array_equal(keep_f, keep_s) and 0 < keep_f.sum() < len(boxes)
    np.testing.assert_allclose(new_f[keep_f], new_s[keep_s], atol=1e-9)


def test_mixup_keeps_both_label_sets(tmp_path):
    listfile = make_dataset(tmp_path, SPECS)
    hyp = {**NO_AUG, 'mosaic': 1.0}
    plain = LoadImagesAndLabels(str(listfile), img_size=128, augment=True, hyp=hyp, seed=1)
    mixed = LoadImagesAndLabels(str(listfile), img_size=128, augment=True, hyp={**hyp, 'mixup': 1.0}, seed=1)
    img0, lab0, _, _ = plain[0]
    img1, lab1, _, _ = mixed[0]
    assert len(lab1) > len(lab0) and torch.equal(lab1[:len(lab0)], lab0)  # the first mosaic is the same draw
    assert not torch.equal(img0, img1)


def test_ram_image_cache_gives_the_same_items(tmp_path, capsys):
    listfile = make_dataset(tmp_path, SPECS)
    hyp = {**AUG_DEFAULTS, 'scale': 0.2}
    plain = LoadImagesAndLabels(str(listfile), img_size=128, augment=True, hyp=hyp)
    cached = LoadImagesAndLabels(str(listfile), img_size=128, augment=True, hyp=hyp, cache_images=True)
    assert 'cached 4 images in RAM (0.00 GB)' in capsys.readouterr().out and all(i is not None for i in cached.imgs)
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_auto_image_cache_only_for_small_datasets(tmp_path, monkeypatch):
    import utils.datasets as datasets
    listfile = make_dataset(tmp_path, SPECS)
    small = LoadImagesAndLabels(str(listfile), img_size=128, cache_images='auto')
    assert all(i is not None for i in small.imgs)
    monkeypatch.setattr(datasets, 'AUTO_CACHE_BYTES', 1000)  # 4 images of up to 128x128x3 do not fit
    assert all(i is None for i in LoadImagesAndLabels(str(listfile), img_size=128, cache_images='auto').imgs)
    assert all(i is None for i in LoadImagesAndLabels(str(listfile), img_size=128, cache_images='off').imgs)


def test_close_mosaic_and_hyp_validation(tmp_path):
    listfile = make_dataset(tmp_path, SPECS[:1])
    ds = LoadImagesAndLabels(str(listfile), img_size=128, augment=True, hyp={**NO_AUG, 'mosaic': 1.0})
    assert ds[0][3] is None
    ds.close_mosaic()
    assert ds[0][3] is not None
    with pytest.raises(ValueError, match='fliplr'):
        LoadImagesAndLabels(str(listfile), img_size=128, augment=True, hyp={'fliplr': 2})


# ----------------------------------------------------------------------------- checking and cache

def test_label_checking_flags_each_bad_row_kind(tmp_path):
    f = tmp_path / 'x.txt'
    f.write_text('0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.5 0.5\n2 nan 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n'
                 '1 1.2 0.5 0.1 0.1\n-1 0.5 0.5 0.1 0.1\n1.5 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n\n'
                 '3 1.0004 0.5 0.1 0.0\n2 1.0004 0.5 0.1 0.1\n')
    rows, problems, dup = check_label_file(f, nc=5)
    assert dup == 1
    np.testing.assert_allclose(rows, [[0, .5, .5, .2, .2], [1, .5, .5, .1, .1], [2, 1, .5, .1, .1]], atol=1e-6)
    where = [p.split(': ')[0] for p in problems]
    assert where == [f'{f}:{n}' for n in (3, 4, 5, 6, 7, 8, 11)]
    for p, text in zip(problems, ['expected 5 columns', 'non-finite', 'class 7 outside 0..4', 'cx=1.2 outside [0, 1]',
                                  'class -1 outside 0..4', 'not an integer',
                                  'zero-size box']):
        assert text in p, (p, text)


def test_bad_labels_excluded_by_default_strict_raises_corrupt_jpeg_skipped(tmp_path, capsys):
    listfile = make_dataset(tmp_path, SPECS[:3])
    (tmp_path / 'labels' / '1.txt').write_text('0 0.5 0.5 0.1 0.1\n9 0.5 0.5 0.1 0.1\n')
    cv2.imwrite(str(tmp_path / 'images' / 'trunc.jpg'), np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                                          dtype=np.uint8))
    data = (tmp_path / 'images' / 'trunc.jpg').read_bytes()
    (tmp_path / 'images' / 'trunc.jpg').write_bytes(data[:len(data) // 2])  # truncated JPEG
    (tmp_path / 'images' / 'tail.jpg').write_bytes(data + b'\0' * 16)  # trailing bytes after EOI: fine
    (tmp_path / 'list.txt').write_text(listfile.read_text() + 'images/trunc.jpg\nimages/tail.jpg\n')
    before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
    with pytest.warns(UserWarning) as record:
        ds = LoadImagesAndLabels(str(listfile), img_size=128, nc=5)
    messages = '\n'.join(str(w.message) for w in record)
    assert [Path(f).name for f in ds.img_files] == ['0.png', '2.png', 'tail.jpg']
    assert 'trunc.jpg: unreadable image' in messages and f'{tmp_path / "labels" / "1.txt"}:2: class 9' in messages
    assert 'found 2, missing 1, empty 0, duplicate 0, corrupt 2' in capsys.readouterr().out
    with pytest.raises(ValueError, match=r'1\.txt:2: class 9 outside 0\.\.4'), pytest.warns(UserWarning, match='trunc'):
        LoadImagesAndLabels(str(listfile), img_size=128, nc=5, strict=True)  # also from the cache
    after = {p: p.read_bytes() for p in before}
    assert after == before  # inputs never modified


def test_cache_reused_then_rebuilt_on_any_change(tmp_path, capsys):
    listfile = make_dataset(tmp_path, SPECS[:2])
    ds = LoadImagesAndLabels(str(listfile), img_size=128)
    cache = tmp_path / 'list.cache'
    with np.load(cache, allow_pickle=False) as z:  # plain arrays only: loads without unpickling
        assert int(z['version']) == D.CACHE_VERSION and z['labels'].shape == (3, 5)
    assert '(cache' not in capsys.readouterr().out
    again = LoadImagesAndLabels(str(listfile), img_size=128)
    assert '(cache' in capsys.readouterr().out
    for a, b in zip(ds.labels, again.labels):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ds.shapes, again.shapes)
    lab = tmp_path / 'labels' / '0.txt'
    st = lab.stat()
    lab.write_text(lab.read_text().replace('0 0.', '1 0.'))  # same size, new content
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    changed = LoadImagesAndLabels(str(listfile), img_size=128)
    assert '(cache' not in capsys.readouterr().out and changed.labels[0][0, 0] == 1
    lab.write_text(lab.read_text() + '2 0.5 0.5 0.1 0.1\n')  # size change
    assert len(LoadImagesAndLabels(str(listfile), img_size=128).labels[0]) == 2
    assert '(cache' not in capsys.readouterr().out


def test_unwritable_cache_falls_back_with_a_warning(tmp_path, monkeypatch):
    listfile = make_dataset(tmp_path, SPECS[:1])

    def refuse(path, data):
        raise PermissionError(13, 'Read-only file system', str(path))
    monkeypatch.setattr(D, 'atomic_write_bytes', refuse)
    with pytest.warns(UserWarning, match='cannot write label cache'):
        ds = LoadImagesAndLabels(str(listfile), img_size=128)
    assert len(ds) == 1 and not (tmp_path / 'list.cache').exists()


def test_folder_source_single_cls_and_non_ascii_names_through_the_cache(tmp_path, capsys):
    make_dataset(tmp_path, SPECS[1:2])
    write_image(tmp_path, 'bild_ä 2.png', *SPECS[0])
    ds = LoadImagesAndLabels(str(tmp_path / 'images'), img_size=128, single_cls=True)
    assert (tmp_path / 'images.cache').is_file() and ds.labels[0][:, 0].tolist() == [0, 0]
    again = LoadImagesAndLabels(str(tmp_path / 'images'), img_size=128)
    assert '(cache' in capsys.readouterr().out
    assert again.img_files == ds.img_files and Path(again.img_files[1]).name == 'bild_ä 2.png'
    assert again.labels[0][:, 0].tolist() == [1, 2]  # single_cls never rewrites the cache


# ----------------------------------------------------------------------------- batching

def test_rect_batches_are_stride_multiples_and_collate_fills_the_index(tmp_path):
    listfile = make_dataset(tmp_path, [((100, 300), [(0, 10, 10, 50, 50)]), ((300, 120), [(1, 10, 10, 50, 50)]),
                                       ((110, 300), [(2, 10, 10, 50, 50)]), ((290, 130), [(3, 10, 10, 50, 50)])])
    loader, ds = create_dataloader(str(listfile), 256, 2, rect=True, workers=0)
    shapes = [tuple(b[0].shape[2:]) for b in loader]
    assert shapes == [(96, 256), (256, 128)]  # landscape pair (h/w <= 0.367), portrait pair (w/h >= 0.433)
    imgs, targets, paths, shapes = next(iter(loader))
    assert all(type(v) is int for v in (*shapes[0][0], *shapes[0][1][1]))  # plain ints (JSON/printing)
    assert imgs.dtype == torch.uint8 and targets[:, 0].tolist() == [0, 1]
    assert [Path(p).name for p in paths] == ['0.png', '2.png']
    # DDP: whole batches per rank, equal step counts
    assert RectBatchSampler(5, 2, 0, 2).batches == [[0, 1], [4]]
    assert RectBatchSampler(5, 2, 1, 2).batches == [[2, 3], [2, 3]]


def test_workers_reproducible_and_epochs_differ(tmp_path):
    listfile = make_dataset(tmp_path, SPECS)
    hyp = {**AUG_DEFAULTS, 'scale': 0.3, 'translate': 0.1}

    def batches(workers, epoch):
        loader, ds = create_dataloader(str(listfile), 128, 2, hyp=hyp, augment=True, workers=workers, shuffle=True,
                                       seed=7)
        ds.set_epoch(epoch)
        return [(b[0], b[1], b[2]) for b in loader]

    a, b, c = batches(0, 0), batches(2, 0), batches(2, 1)
    for (ia, ta, pa), (ib, tb, pb) in zip(a, b):
        assert pa == pb and torch.equal(ia, ib) and torch.equal(ta, tb)
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c))  # another epoch, other draws


def test_multiscale_helpers():
    rng = np.random.default_rng(0)
    sizes = {random_train_size(320, 640, 32, rng) for _ in range(300)}
    assert sizes == set(range(320, 641, 32))
    assert random_train_size(300, 330, 32, rng) == 320
    with pytest.raises(ValueError):
        random_train_size(330, 350)
    assert D.multi_scale_range(608) == (384, 896)
    x = torch.zeros(2, 3, 256, 160, dtype=torch.uint8)
    y = resize_batch(x, 416)
    assert y.shape == (2, 3, 416, 288) and y.dtype == torch.float32  # 160 * 416/256 = 260 -> 288


# ----------------------------------------------------------------------------- detect sources

def write_video(path, n=5, hw=(48, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10, hw[::-1])
    for k in range(n):
        writer.write(np.full((*hw, 3), 20 + k * 18, np.uint8))
    writer.release()


def test_load_images_folder_with_corrupt_image_and_video(tmp_path):
    cv2.imwrite(str(tmp_path / 'a.jpg'), np.full((60, 80, 3), 200, np.uint8))
    (tmp_path / 'b.jpg').write_bytes(b'not an image')
    write_video(tmp_path / 'c.mp4', n=5)
    (tmp_path / 'notes.txt').write_text('ignored')
    src = LoadImages(str(tmp_path), img_size=64)
    with pytest.warns(UserWarning, match='b.jpg'):
        items = []
        for item in src:
            items.append((item, src.frame, src.frames))
    assert len(items) == 1 + 5
    (path, img, im0, cap, status), _, _ = items[0]
    assert cap is None and img.shape == (3, 64, 64) and im0.shape == (60, 80, 3) and status.startswith('image 1/3')
    assert [f for _, f, _ in items[1:]] == [1, 2, 3, 4, 5] and items[1][2] == 5 and items[1][0][3] is not None
    (tmp_path / 'list.txt').write_text('a.jpg\nc.mp4\n')  # entries relative to the list
    assert len(list(LoadImages(str(tmp_path / 'list.txt'), img_size=64))) == 6
    with pytest.raises(FileNotFoundError, match='missing does not exist'):
        LoadImages(str(tmp_path / 'missing'))


def test_load_streams_reads_a_video_file_to_its_end(tmp_path):
    write_video(tmp_path / 'v.mp4', n=12)
    streams = LoadStreams(str(tmp_path / 'v.mp4'), img_size=64)
    items = list(streams)
    assert 1 <= len(items) <= 12
    idx, imgs, im0s, cap, status = items[-1]
    assert idx == [0] and imgs[0].shape == (3, 64, 64) and cap is None
    assert abs(int(im0s[0].mean()) - (20 + 11 * 18)) <= 3  # the last frame is delivered
    assert streams.counts == [12] and streams.alive == [False]
    streams.close()
    with pytest.raises(FileNotFoundError, match='cannot open stream'):
        LoadStreams(str(tmp_path / 'none.mp4'))


# ----------------------------------------------------------------------------- hyp file

def test_hyp_yaml_documents_every_key_and_matches_loader_defaults():
    text = (ROOT / 'data' / 'hyp.yaml').read_text()
    hyp = yaml.safe_load(text)
    for k in ('lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr', 'giou',
              'cls', 'cls_pw', 'obj', 'obj_pw', 'iou_t', 'anchor_t', 'fl_gamma', *AUG_DEFAULTS):
        assert k in hyp, k
    assert (hyp['giou'], hyp['cls'], hyp['obj'], hyp['iou_t'], hyp['lr0']) == (3.54, 37.4, 64.3, 0.2, 0.01)
    assert {k: hyp[k] for k in AUG_DEFAULTS} == AUG_DEFAULTS
    for line in text.splitlines():
        if line and not line.startswith('#'):
            assert '#' in line, f'undocumented: {line}'


def test_no_warnings_on_a_clean_dataset(tmp_path):
    listfile = make_dataset(tmp_path, SPECS)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        LoadImagesAndLabels(str(listfile), img_size=128)
