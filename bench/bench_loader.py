"""Data-loader throughput vs model training speed, and label-cache cost at scale.

    python3 bench/bench_loader.py [--data data/shapes.data] [--img-size 416] [--batch 8]
                                  [--workers 2] [--batches 30] [--model-steps 5]
                                  [--cfg cfg/yolov3-tiny.cfg]
                                  [--n-labels 100000] [--device cpu]

1. loader: images/s of the training loader (mosaic, default hyp, ``--workers`` workers) at
   ``--img-size``; on ``--data``'s train list, or on ~200 generated images with boxes.
   Throughput is measured after the first batch (worker start-up excluded).
2. model: training images/s of the cfg (forward + backward of a dummy loss on one
   pre-loaded batch, no data loading) - how fast the loader must be not to starve training.
3. cache: time to read the list, to check + cache ``--n-labels`` generated image/label pairs
   (8x8 PNGs, 1-4 boxes each), to start again from that cache (hashing every file's size and
   mtime included), its file size, and the RAM the loaded labels take (array bytes, and the
   tracemalloc peak of a separate loading pass).
Set --n-labels 0 to skip part 3 (generating 100k files takes a while and ~1 GB of inodes).
"""
import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.datasets import create_dataloader, load_labels, list_images  # noqa: E402

DEFAULT_CFG = str(ROOT / 'cfg' / 'yolov3-tiny.cfg')  # the original Darknet cfg, as shipped


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default='', help='.data file (its train list is used); default: generated images')
    p.add_argument('--img-size', type=int, default=416)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--batches', type=int, default=30, help='loader batches to time')
    p.add_argument('--model-steps', type=int, default=5, help='timed training steps of the model')
    p.add_argument('--cfg', default=DEFAULT_CFG)
    p.add_argument('--n-labels', type=int, default=100000, help='label files for the cache benchmark (0 = skip)')
    p.add_argument('--device', default='cpu', help='device for the model step (cpu, cuda, cuda:0)')
    p.add_argument('--tmp', default='', help='folder for generated data (default: a temp dir, removed after)')
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- synthetic data

def generate_images(root, n=200, seed=0, nc=5):
    """n photos-like JPEGs (noise background, random sizes 300-640) with 2-8 filled boxes each."""
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'labels').mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(n), desc='generating images', bar_format='{l_bar}{bar:10}{r_bar}'):
        h, w = (int(v) for v in rng.integers(300, 641, 2))
        img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (7, 7), 0)
        rows = []
        for _ in range(int(rng.integers(2, 9))):
            bw, bh = (int(v) for v in rng.integers(20, min(h, w) // 2, 2))
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            c = int(rng.integers(nc))
            img[y1:y1 + bh, x1:x1 + bw] = rng.integers(0, 255, 3)
            rows.append(f'{c} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}')
        cv2.imwrite(str(root / 'images' / f'{i:05d}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (root / 'labels' / f'{i:05d}.txt').write_text('\n'.join(rows) + '\n')
        lines.append(f'images/{i:05d}.jpg')
    (root / 'train.txt').write_text('\n'.join(lines) + '\n')
    return root / 'train.txt'


def generate_tiny_pairs(root, n, seed=0):
    """n 8x8 PNGs (one encoded file copied: the cost measured is checking, not encoding) and
    n label files with 1-4 rows."""
    rng = np.random.default_rng(seed)
    img_dir, lab_dir = root / 'images', root / 'labels'
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    png = cv2.imencode('.png', rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))[1].tobytes()
    lines = []
    for i in tqdm(range(n), desc=f'generating {n} image/label pairs', bar_format='{l_bar}{bar:10}{r_bar}'):
        name = f'{i:06d}'
        (img_dir / f'{name}.png').write_bytes(png)
        k = int(rng.integers(1, 5))
        xy = rng.uniform(0.2, 0.8, (k, 2))
        wh = rng.uniform(0.05, 0.3, (k, 2))
        cls = rng.integers(0, 80, k)
        (lab_dir / f'{name}.txt').write_text(''.join(f'{c} {x:.6f} {y:.6f} {a:.6f} {b:.6f}\n'
                                                     for c, (x, y), (a, b) in zip(cls, xy, wh)))
        lines.append(f'images/{name}.png')
    (root / 'list.txt').write_text('\n'.join(lines) + '\n')
    return root / 'list.txt'


# ----------------------------------------------------------------------------- measurements

def bench_loader(train_list, img_size, batch, workers, n_batches, hyp):
    loader, dataset = create_dataloader(str(train_list), img_size, batch, stride=32, hyp=hyp, augment=True,
                                        workers=workers, shuffle=True, seed=0, prefix='bench: ')
    it = iter(loader)
    next(it)  # worker start-up and the first prefetch are not steady state
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        try:
            imgs, *_ = next(it)
        except StopIteration:
            it = iter(loader)
            imgs, *_ = next(it)
        n += imgs.shape[0]
    return n / (time.perf_counter() - t0), len(dataset)


def bench_model(cfg, img_size, batch, steps, device):
    import models
    model = models.Darknet(cfg, img_size=img_size).to(device).train()
    imgs = torch.rand(batch, 3, img_size, img_size, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step():
        outs = model(imgs)
        heads = outs[0] if isinstance(outs, tuple) else outs
        loss = sum(p.float().square().mean() for p in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, cudnn autotune)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def bench_cache(root, n):
    """Seconds to read the list, to check + cache, to start again from the cache; cache size
    and the RAM its labels take."""
    list_file = generate_tiny_pairs(root, n)
    cache = root / 'list.cache'
    t0 = time.perf_counter()
    files = list_images(str(list_file))
    t_list = time.perf_counter() - t0

    def load():
        with contextlib.redirect_stdout(io.StringIO()):
            return load_labels(files, nc=80, cache_path=str(cache))
    t0 = time.perf_counter()
    load()
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, labels, shapes = load()
    t_load = time.perf_counter() - t0
    del labels, shapes
    tracemalloc.start()  # a separate pass: tracing slows allocation-heavy code several-fold
    _, labels, shapes = load()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    nbytes = sum(lab.nbytes for lab in labels) + shapes.nbytes
    return dict(list=t_list, build=build, load=t_load, file_mb=cache.stat().st_size / 1e6, peak_mb=peak / 1e6,
                arrays_mb=nbytes / 1e6, rows=sum(len(lab) for lab in labels))


def main(argv=None):
    opt = parse_args(argv)
    warnings.simplefilter('ignore', UserWarning)
    hyp = yaml.safe_load((ROOT / 'data' / 'hyp.yaml').read_text())
    tmp = Path(opt.tmp) if opt.tmp else Path(tempfile.mkdtemp(prefix='bench_loader_'))
    rows = []
    try:
        if opt.data:
            from utils.parse_config import parse_data_cfg
            train_list, source = parse_data_cfg(opt.data)['train'], opt.data
        else:
            train_list, source = generate_images(tmp / 'synthetic'), 'generated'
        ips, n = bench_loader(train_list, opt.img_size, opt.batch, opt.workers, opt.batches, hyp)
        rows.append((f'loader: mosaic train batches, {opt.workers} workers, {opt.img_size} px ({source}, {n} images)',
                     f'{ips:.1f} img/s'))
        try:
            mps = bench_model(opt.cfg, opt.img_size, opt.batch, opt.model_steps, opt.device)
            rows.append((f'model: {Path(opt.cfg).stem} train step (fwd+bwd+SGD), batch {opt.batch}, {opt.img_size} px, '
                         f'{opt.device}', f'{mps:.1f} img/s'))
        except ImportError as e:
            rows.append(('model: models.Darknet not importable', str(e)))
        if opt.n_labels:
            c = bench_cache(tmp / 'cache', opt.n_labels)
            rows += [(f'cache: read the image list ({opt.n_labels} entries)', f'{c["list"]:.2f} s'),
                     (f'cache: check + write {opt.n_labels} image/label pairs (8x8 PNG)', f'{c["build"]:.1f} s'),
                     (f'cache: start again from the cache ({c["rows"]} label rows, stat of every file)',
                      f'{c["load"]:.2f} s'),
                     ('cache: file size', f'{c["file_mb"]:.1f} MB'),
                     ('cache: RAM of loaded labels + shapes (arrays)', f'{c["arrays_mb"]:.1f} MB'),
                     ('cache: peak Python allocation while loading (tracemalloc)', f'{c["peak_mb"]:.1f} MB')]
    finally:
        if not opt.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f'\n{"measurement":<{width}}  result')
    for name, value in rows:
        print(f'{name:<{width}}  {value}')
    print(f'(cpu threads: torch {torch.get_num_threads()}, os {os.cpu_count()})')
    return rows


if __name__ == '__main__':
    main()
