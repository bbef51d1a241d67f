"""Small helpers shared by every script: atomic writes, run folders, file checks."""
import contextlib
import os
import sys
import uuid
from pathlib import Path

IMG_FORMATS = frozenset({'.bmp', '.jpg', '.jpeg', '.png', '.tif', '.tiff', '.dng', '.webp'})  # image files we read


def new_temp_dir(path):
    """A new empty folder next to ``path`` (to be renamed onto it when complete) with the
    permissions a plain mkdir gives (0777 minus the umask, applied by the kernel)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex[:12]}.tmp'
    os.mkdir(tmp, 0o777)
    return tmp


def _new_temp(path):
    """A new empty file next to ``path`` with the permissions a plain open() would give it
    (0666 minus the umask, applied by the kernel: no process-wide umask read-and-restore)."""
    tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex[:12]}.tmp'
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return str(tmp)


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
    tmp = _new_temp(path)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
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


def parse_cpuinfo(text):
    """(model name, set of instruction-set flags, processor count) of /proc/cpuinfo text; the
    first processor speaks for all (x86 'model name'/'flags', ARM 'Model'/'Features')."""
    fields, processors = {}, 0
    for line in text.splitlines():
        key, _, value = line.partition(':')
        key = key.strip()
        processors += key == 'processor'
        fields.setdefault(key, value.strip())
    flags = frozenset((fields.get('flags') or fields.get('Features') or '').split())
    return fields.get('model name') or fields.get('Model') or '', flags, processors


def cpu_flags(cpuinfo='/proc/cpuinfo'):
    """(model name, set of instruction-set flags) of this CPU from Linux's /proc/cpuinfo, or
    (platform.processor(), empty set) where there is none."""
    import platform
    try:
        model, flags, _ = parse_cpuinfo(Path(cpuinfo).read_text())
    except OSError:
        model, flags = '', frozenset()
    return model or platform.processor() or platform.machine(), flags


INT16_MAX = 32767  # x86 int8 kernels without VNNI add u8 x s8 product pairs in int16 and saturate here


def int8_kernels_saturate(flags=None):
    """True on an x86 CPU without VNNI (AVX2, AVX-512 without VNNI): there ONNX Runtime's and
    OpenVINO's u8 x s8 convolutions add product pairs in int16 (vpmaddubsw), which saturate
    for full-range 8-bit weights. False where VNNI (AVX-512 or AVX) is present, on other
    architectures, and where the flags are unknown."""
    flags = cpu_flags()[1] if flags is None else flags
    return 'avx2' in flags and not flags & {'avx512_vnni', 'avx_vnni', 'amx_int8'}


def native_bf16(flags=None):
    """True on a CPU with bfloat16 arithmetic (AVX512-BF16 or AMX-BF16), where PyTorch's CPU
    autocast to bfloat16 runs convolutions faster than float32."""
    flags = cpu_flags()[1] if flags is None else flags
    return bool(flags & {'avx512_bf16', 'amx_bf16'})


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
