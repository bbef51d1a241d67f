"""Training-step time of train.py variants on the same in-memory batches: each variant's
Trainer is built from its command line (features attached as train.py does), then
``Trainer._step`` (forward, losses, backward, hooks, optimizer) runs over the same batches,
every variant in turn, ``rounds`` times interleaved; the median seconds per step.

    from steptime import time_steps
    time_steps({'plain': ['--weights', 's.pt'], 'kd': ['--weights', 's.pt', '--t_weights', 't.pt', '--KDstr', '6']},
               steps=16, rounds=3, project='runs/x/timing')
"""
import statistics
import time


def time_steps(variants, steps=16, rounds=3, project='runs/timing'):
    """{name: median seconds per training step} for ``variants`` {name: train.py argv}, and the
    torch thread count. The first variant's loader supplies the batches."""
    import torch
    import train
    from utils.trainer import Trainer
    trainers, batches = {}, None
    for name, argv in variants.items():
        opt = train.parse_args([*map(str, argv), '--workers', '0', '--notest', '--project', str(project)])
        trainer = train.add_features(Trainer(opt)).setup()
        trainer.current_accumulate = 1
        trainers[name] = trainer
        if batches is None:
            batches = []
            for imgs, targets, _, _ in trainer.train_loader:
                batches.append((imgs.float().div_(255).contiguous(memory_format=torch.channels_last), targets))
                if len(batches) == steps:
                    break
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            for i, (imgs, targets) in enumerate(batches):
                trainer._step(imgs, targets, i)
            times[name].append((time.perf_counter() - t0) / len(batches))
    return {name: statistics.median(v) for name, v in times.items()}, torch.get_num_threads()
