"""Loader: label checking, cache, letterbox/mosaic/affine/flip alignment, detect sources."""
import os
import time

import cv2
import numpy as np
import pytest
import torch

from utils.datasets import (LoadImages, LoadImagesAndLabels, check_label_file, create_dataloader, img2label_paths,
                            letterbox, load_labels, random_affine, scale_boxes)

RED = (0, 0, 255)  # BGR


def make_dataset(root, boxes_per_image, size=(180, 300)):
    """Images with one solid red box each on a grey background; returns the list file."""
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir(parents=True)
    lines = []
    for i, (x1, y1, x2, y2) in enumerate(boxes_per_image):
        h, w = size
        img = np.full((h, w, 3), 90, np.uint8)
        img[y1:y2, x1:x2] = RED
        cv2.imwrite(str(root / 'images' / f'{i}.png'), img)
        (root / 'labels' / f'{i}.txt').write_text(
            f'0 {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n')
        lines.append(f'images/{i}.png')
    (root / 'list.txt').write_text('\n'.join(lines) + '\n')
    return root / 'list.txt'


def red_bbox(img_chw):
    """Pixel bbox (x1, y1, x2, y2) of the red region of an RGB CHW uint8 image."""
    img = img_chw.numpy().transpose(1, 2, 0).astype(int)
    mask = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def label_bbox(labels, h, w):
    cx, cy, bw, bh = labels[0, 2:].tolist()
    return np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])


def test_img2label_paths_uses_the_last_images_component():
    assert img2label_paths(['/d/images_set/images/train/a.jpg']) == ['/d/images_set/labels/train/a.txt']
    assert img2label_paths(['/d/images/x/images/b.png']) == ['/d/images/x/labels/b.txt']


def test_letterbox_keeps_boxes_aligned(tmp_path):
    listfile = make_dataset(tmp_path, [(40, 30, 130, 100)])
    ds = LoadImagesAndLabels(str(listfile), img_size=256, augment=False)
    img, labels, _, shapes = ds[0]
    assert img.shape == (3, 256, 256)
    assert np.abs(red_bbox(img) - label_bbox(labels, 256, 256)).max() <= 1.5
    # back to the original image through the loader's shapes
    box = torch.from_numpy(label_bbox(labels, 256, 256)[None]).float()
    (h0, w0), ratio_pad = shapes
    back = scale_boxes((256, 256), box, (h0, w0), ratio_pad)
    assert np.abs(back.numpy()[0] - [40, 30, 130, 100]).max() <= 1.0


@pytest.mark.parametrize('hyp', [
    {'mosaic': 1.0, 'fliplr': 0.0},
    {'mosaic': 1.0, 'fliplr': 1.0, 'scale': 0.3, 'translate': 0.1},
    {'mosaic': 0.0, 'fliplr': 1.0, 'degrees': 0.0, 'scale': 0.4, 'translate': 0.2},
])
def test_augmentations_keep_boxes_aligned(tmp_path, hyp):
    """The union of the label boxes covers exactly the red pixels (boxes do not overlap)."""
    boxes = [(40, 30, 130, 100), (150, 60, 260, 150), (20, 20, 90, 160), (100, 50, 200, 120)]
    listfile = make_dataset(tmp_path, boxes)
    ds = LoadImagesAndLabels(str(listfile), img_size=256, augment=True, hyp=hyp, seed=3)
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, labels, _, _ = ds[i]
            h, w = img.shape[1:]
            rgb = img.numpy().transpose(1, 2, 0).astype(int)
            red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
            boxed = np.zeros_like(red)
            for x1, y1, x2, y2 in (label_bbox(labels[k:k + 1], h, w) for k in range(len(labels))):
                boxed[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))] = True
            assert len(labels) >= 1
            union = (red | boxed).sum()
            assert (red & boxed).sum() / union > 0.93, (epoch, i, (red & boxed).sum(), union)


def test_affine_moves_boxes_with_pixels():
    img = np.full((200, 200, 3), 90, np.uint8)
    img[50:90, 60:140] = RED
    rng = np.random.default_rng(0)
    out, boxes, keep = random_affine(img, np.array([[60., 50., 140., 90.]]), rng, translate=0.2, scale=0.3)
    ys, xs = np.nonzero((out[..., 2] > 200) & (out[..., 1] < 60))
    assert keep.all() and np.abs(boxes[0] - [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).max() <= 1.5


def test_label_checking_flags_each_bad_row_kind(tmp_path):
    f = tmp_path / 'x.txt'
    f.write_text('0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.5 0.5\n2 nan 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n'
                 '1 1.2 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n')
    rows, problems, dup = check_label_file(f, nc=5)
    assert dup == 1 and len(rows) == 2
    assert [p.split(': ')[0] for p in problems] == [f'{f}:3', f'{f}:4', f'{f}:5', f'{f}:6']
    assert 'expected 5 columns' in problems[0] and 'non-finite' in problems[1]
    assert 'class 7 outside 0..4' in problems[2] and 'outside [0, 1]' in problems[3]


def test_bad_labels_excluded_or_strict_and_corrupt_image_skipped(tmp_path):
    listfile = make_dataset(tmp_path, [(40, 30, 130, 100)] * 3)
    (tmp_path / 'labels' / '1.txt').write_text('9 0.5 0.5 0.1 0.1\n')
    good = (tmp_path / 'images' / '2.png').read_bytes()
    cv2.imwrite(str(tmp_path / 'images' / '3.jpg'), np.zeros((50, 50, 3), np.uint8))
    (tmp_path / 'images' / '3.jpg').write_bytes((tmp_path / 'images' / '3.jpg').read_bytes()[:-200])  # truncated
    listfile.write_text(listfile.read_text() + 'images/3.jpg\n')
    with pytest.warns(UserWarning) as record:
        files, labels, _ = load_labels(LoadImagesAndLabels.__init__.__globals__['list_images'](str(listfile)), nc=5)
    messages = ' '.join(str(w.message) for w in record)
    assert len(files) == 2 and '3.jpg: skipped' in messages and '1.txt:1: class 9' in messages
    with pytest.raises(ValueError, match='1.txt:1'):
        load_labels([str(tmp_path / 'images' / '1.png')], nc=5, strict=True)
    assert (tmp_path / 'images' / '2.png').read_bytes() == good  # inputs untouched


def test_cache_reused_then_rebuilt_after_label_change(tmp_path, capsys):
    listfile = make_dataset(tmp_path, [(40, 30, 130, 100)] * 2)
    LoadImagesAndLabels(str(listfile), img_size=128)
    assert (tmp_path / 'list.cache').is_file()
    capsys.readouterr()
    LoadImagesAndLabels(str(listfile), img_size=128)
    assert '(cached)' in capsys.readouterr().out
    time.sleep(0.01)
    (tmp_path / 'labels' / '0.txt').write_text('0 0.5 0.5 0.3 0.3\n0 0.2 0.2 0.1 0.1\n')
    ds = LoadImagesAndLabels(str(listfile), img_size=128)
    assert '(cached)' not in capsys.readouterr().out and len(ds.labels[0]) == 2


def test_rect_batches_and_collate(tmp_path):
    listfile = make_dataset(tmp_path, [(40, 30, 130, 100)] * 3, size=(100, 300))
    loader, ds = create_dataloader(str(listfile), 256, 2, rect=True, workers=0, pad=0.0)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.shape == (2, 3, 96, 256) and targets[:, 0].tolist() == [0, 1]


def test_letterbox_shape_and_ratio():
    img = np.zeros((100, 300, 3), np.uint8)
    out, ratio, pad = letterbox(img, 256)
    assert out.shape == (256, 256, 3) and pad == (0, 85) and abs(ratio[1] - 256 / 300) < 1e-3
    out, _, pad = letterbox(img, 256, auto=True)
    assert out.shape == (96, 256, 3)


def test_load_images_folder_with_corrupt_image_and_video(tmp_path):
    cv2.imwrite(str(tmp_path / 'a.jpg'), np.full((60, 80, 3), 200, np.uint8))
    (tmp_path / 'b.jpg').write_bytes(b'not an image')
    writer = cv2.VideoWriter(str(tmp_path / 'c.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 10, (64, 48))
    for k in range(5):
        writer.write(np.full((48, 64, 3), k * 40, np.uint8))
    writer.release()
    with pytest.warns(UserWarning, match='b.jpg'):
        items = list(LoadImages(str(tmp_path), img_size=64))
    assert len(items) == 1 + 5
    assert items[0][3] is None and items[1][3] is not None
    with pytest.raises(FileNotFoundError, match='missing'):
        LoadImages(str(tmp_path / 'missing'))
