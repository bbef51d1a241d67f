"""Small helpers shared by every script: atomic writes, run folders, file checks."""
import contextlib
import os
import sys
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)


def _publish(tmp, path):
    """Give the temp file normal permissions (mkstemp makes it 0600), then rename it into place."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temp file in the same folder + rename, so a
    crash never leaves a half-written file behind."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return atomic_save(write, path)


def atomic_write_text(path, text):
    return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_save(save_fn, path):
    """Call ``save_fn(tmp_path)`` then rename onto ``path`` (for torch.save and friends)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        save_fn(tmp)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def increment_path(path, mkdir=True):
    """runs/train/exp -> runs/train/exp, exp2, exp3, ... (never reuses an existing folder)."""
    path = Path(path)
    if path.exists():
        n = 2
        while Path(f'{path}{n}').exists():
            n += 1
        path = Path(f'{path}{n}')
    if mkdir:
        path.mkdir(parents=True, exist_ok=False)
    return path


def check_file(path, what='file'):
    """Return ``path`` if it is a file, else raise FileNotFoundError with a clear message."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path!r}')
    return str(path)


@contextlib.contextmanager
def user_errors(*extra):
    """CLI entry points: a user error (missing file, bad value, ...) ends the program with one
    ``error: ...`` line and exit status 1, not a traceback."""
    try:
        yield
    except (FileNotFoundError, ValueError, *extra) as e:
        sys.exit(f'error: {e}')
