"""Training throughput: the real loop (loader + step) vs the same step on a pre-loaded batch.

    python3 bench/bench_train.py [--cfg cfg/yolov3-tiny.cfg] [--sizes 320 416] [--batch-size 8]
                                 [--workers 2] [--steps 12] [--data data/shapes.data] [--device cpu]

For each image size, one process builds the real ``Trainer`` (train.py's engine with its
defaults: mosaic loader with ``--workers`` workers, ``--cache-images auto`` (small datasets
such as shapes are decoded once into RAM), YOLOLoss, optimizer, accumulation) and times

1. full: ``--steps`` iterations of the training loop as train.py runs it: next batch from the
   loader, uint8 -> float, channels_last, ``Trainer._step`` (forward, loss, backward, step);
2. pure: the same number of ``Trainer._step`` calls on one batch already in memory.

Both exclude a warm-up (worker start-up, first oneDNN kernels). The ratio full/pure is the
share of model speed the loop keeps (the issue's target: >= 80 %). Also printed: peak RSS of
this process and of its loader workers (ru_maxrss). The cfg is rewritten to the dataset's class
count on the fly.
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from utils.parse_config import parse_cfg, parse_data_cfg, rewrite_head, write_cfg  # noqa: E402
from utils.datasets import resolve_data  # noqa: E402
from utils.trainer import Trainer  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default='cfg/yolov3-tiny.cfg')
    p.add_argument('--data', default='data/shapes.data')
    p.add_argument('--sizes', type=int, nargs='+', default=[320, 416])
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--steps', type=int, default=12, help='timed iterations per mode')
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations per mode')
    p.add_argument('--device', default='cpu')
    return p.parse_args(argv)


def to_input(imgs, device):
    """The loop's own uint8 -> float conversion, so both modes include it."""
    return imgs.to(device, non_blocking=True).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def bench_size(opt, cfg_path, size, tmp):
    argv = ['--cfg', str(cfg_path), '--data', opt.data, '--img-size', str(size), '--batch-size', str(opt.batch_size),
            '--nbs', str(opt.batch_size), '--workers', str(opt.workers), '--device', opt.device, '--weights', '',
            '--project', str(tmp), '--name', f's{size}', '--notest']
    trainer = Trainer(train.parse_args(argv)).setup()
    trainer.ddp.train()
    trainer._adjust_lr(5, 10, 10 ** 6, 0, 0.05)  # past burn-in: plain steps
    sync = torch.cuda.synchronize if trainer.device.type == 'cuda' else (lambda: None)

    n = opt.warmup + opt.steps
    batches = iter(trainer.train_loader)
    timed_images, t0 = 0, None
    for i in range(n):  # the real loop, loader included
        if i == opt.warmup:
            sync()
            t0 = time.perf_counter()
        try:
            imgs, targets, _, _ = next(batches)
        except StopIteration:
            batches = iter(trainer.train_loader)
            imgs, targets, _, _ = next(batches)
        trainer._step(to_input(imgs, trainer.device), targets, i)
        timed_images += len(imgs) if i >= opt.warmup else 0
    sync()
    full = timed_images / (time.perf_counter() - t0)

    imgs, targets = to_input(imgs, trainer.device), targets  # the last batch, kept in memory
    for i in range(n):
        if i == opt.warmup:
            sync()
            t0 = time.perf_counter()
        trainer._step(imgs, targets, i)
    sync()
    pure = opt.steps * len(imgs) / (time.perf_counter() - t0)
    return full, pure


def main(argv=None):
    opt = parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    opt.data = resolve_data(opt.data)
    nc = int(parse_data_cfg(opt.data)['classes'])
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / 'bench.cfg'
        write_cfg(rewrite_head(parse_cfg(opt.cfg), classes=nc), cfg_path)
        print(f'{opt.cfg} ({nc} classes), batch {opt.batch_size}, {opt.workers} workers, {torch.get_num_threads()} '
              f'threads, device {opt.device}')
        print(f'{"size":>6} {"full img/s":>11} {"pure img/s":>11} {"full/pure":>10}')
        for size in opt.sizes:
            full, pure = bench_size(opt, cfg_path, size, Path(tmp))
            print(f'{size:>6} {full:>11.2f} {pure:>11.2f} {full / pure:>10.1%}')
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    print(f'peak RSS: trainer process {own:.2f} GB, largest loader worker {workers:.2f} GB')


if __name__ == '__main__':
    main()
