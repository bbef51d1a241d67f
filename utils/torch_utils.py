"""Device selection, seeding, EMA, distributed helpers."""
import math
import os
import random
import time
from copy import deepcopy

import numpy as np
import torch
import torch.distributed as dist


def select_device(device='', batch_size=None):
    """'' -> first CUDA device if any else CPU; 'cpu'; '0' or '0,1' (CUDA indices).
    Under torchrun, LOCAL_RANK picks the process's GPU."""
    device = str(device).strip().lower().replace('cuda:', '')
    if device == 'cpu' or (device == '' and not torch.cuda.is_available()):
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise ValueError(f'--device {device} requested but CUDA is not available; use --device cpu')
    local_rank = int(os.environ.get('LOCAL_RANK', -1))
    if local_rank >= 0:
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank)
    index = int(device.split(',')[0]) if device else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f'--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible')
    return torch.device('cuda', index)


def init_seeds(seed=0, deterministic=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_states():
    """Every RNG state a resumed run needs to continue bit-exactly (tensors only: weights_only-safe)."""
    states = {'python': torch.tensor(list(random.getstate()[1]), dtype=torch.int64),  # 624 words + position
              'numpy': torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
              'numpy_pos': torch.tensor(np.random.get_state()[2]),
              'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states):
    mt = tuple(int(v) for v in states['python'].tolist())
    random.setstate((3, mt, None))
    np.random.set_state(('MT19937', states['numpy'].numpy().astype(np.uint32), int(states['numpy_pos'])))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states['cuda']))


def time_sync(device=None):
    """perf_counter() after the queued CUDA work of ``device`` (all devices when None) is done."""
    if (device is None and torch.cuda.is_available()) or getattr(device, 'type', None) == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def unwrap(model):
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, 'module') and isinstance(model.module, torch.nn.Module):
        model = model.module
    return getattr(model, '_orig_mod', model)


def world_info():
    """(rank, local_rank, world_size) from torchrun's environment; (-1, -1, 1) otherwise."""
    return int(os.environ.get('RANK', -1)), int(os.environ.get('LOCAL_RANK', -1)), int(os.environ.get('WORLD_SIZE', 1))


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ModelEMA:
    """Exponential moving average of every floating-point state-dict entry (weights and BN
    buffers): ema = d*ema + (1-d)*model, d = decay*(1 - exp(-updates/tau)) so early updates
    follow the model closely. Evaluate and save ``ema.ema``."""

    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = deepcopy(unwrap(model)).eval()
        self.updates, self.decay, self.tau = updates, decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = unwrap(model).state_dict()
        with torch.no_grad():
            for k, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
