import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))
os.chdir(ROOT)


@pytest.fixture(scope='session')
def shared_cfg():
    folder = SHARED / 'darknet-cfg'
    if not folder.is_dir():
        pytest.skip('../shared/darknet-cfg not present')
    return folder
