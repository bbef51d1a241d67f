import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DARKNET_CFG = ROOT / 'tests' / 'data' / 'darknet-cfg'  # reference cfgs carried in the repo (tests/data/README.md)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))
os.chdir(ROOT)



@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures('one_thread')``):
    tiny models gain little from two, and two threads competing with another busy process make
    every forward several times slower (spin-waits). The exported-model runtimes follow it
    (utils.deploy.backends.default_threads)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def darknet_cfg():
    """The folder of unmodified AlexeyAB Darknet cfgs and their reference figures (SOURCES.md)."""
    return DARKNET_CFG


# CI runs (CI=true) replay the same Hypothesis examples every time, so a submission's result does
# not depend on the draw; developers' runs keep drawing new ones, which is how fuzzing finds bugs
try:
    from hypothesis import settings as _hypothesis_settings
    _hypothesis_settings.register_profile('ci', derandomize=True)
    if os.environ.get('CI'):
        _hypothesis_settings.load_profile('ci')
except ImportError:  # hypothesis is a dev requirement; the fuzz tests need it, nothing else does
    pass
