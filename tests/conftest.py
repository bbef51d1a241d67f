import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))
os.chdir(ROOT)


# .ci/run sets it: there a missing ../shared is a broken checkout, not a reason to skip
REQUIRE_SHARED = os.environ.get('REQUIRE_SHARED') == '1'


def require_shared(sub):
    """../shared/<sub>, or skip the test (fail it under REQUIRE_SHARED=1) when it is absent."""
    folder = SHARED / sub
    if not folder.is_dir():
        (pytest.fail if REQUIRE_SHARED else pytest.skip)(f'../shared/{sub} not present')
    return folder


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures('one_thread')``):
    tiny models gain little from two, and two threads competing with another busy process make
    every forward several times slower (spin-waits). The exported-model runtimes follow it
    (utils.backends.default_threads)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def shared_cfg():
    return require_shared('darknet-cfg')
