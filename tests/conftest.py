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


@pytest.fixture(scope='session')
def shared_cfg():
    return require_shared('darknet-cfg')
