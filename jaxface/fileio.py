"""Files in and out: size checks before reading a file users bring, and atomic writes (a
temp file in the destination folder, then rename, so nothing is half-written).

Temp files are named `.NAME.jaxface-PID-RANDOM.partial.SUFFIX` (PID: the writing process).
A process killed mid-write (SIGKILL, power loss) leaves one behind; `remove_stale_temps`
deletes those whose writer is gone, and no reader ever takes one for a result.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

TEMP_MARK = ".partial"
_TEMP_RE = re.compile(r"^\..+\.jaxface-(?P<pid>\d+)-[A-Za-z0-9_]+\.partial(\.[^.]*)?$")
STALE_AFTER_S = 24 * 3600  # no write takes a day: covers writers on other hosts and reused PIDs


def _size_text(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 1 << 30 else f"{n / 2**20:.0f} MB" if n >= 1 << 20 else f"{n} bytes"


def checked_file(path, what: str, max_bytes: int, *, typical: str = "", missing: str = "",
                 error: type[Exception] = ValueError) -> Path:
    """`path` as a Path once it is known to be a non-empty file of at most `max_bytes`,
    checked before anything is read (files users bring are untrusted).

    what: names the file in messages ("image", "result file", "epoch_20.pth").
    typical: what such a file usually is ("a result .mat is a few MB"), said when refusing.
    missing: what to do when the file is not there (FileNotFoundError).
    error: the exception type for an empty or oversized file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found" + (f"; {missing}" if missing else ""))
    size = path.stat().st_size
    why = "; " + typical if typical else ""
    if size == 0:
        raise error(f"{what} {path} is an empty file{why}")
    if size > max_bytes:
        raise error(f"{what} {path} is {_size_text(size)}{why}; refusing files over {_size_text(max_bytes)}")
    return path


def is_temp_file(name: str) -> bool:
    """Whether `name` is a temp file of `atomic_path` (finished or abandoned)."""
    return _TEMP_RE.match(name) is not None


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    `suffix` defaults to the destination's own (writers such as scipy.io.savemat and
    cv2.imwrite choose their format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.jaxface-{os.getpid()}-", suffix=TEMP_MARK + suffix,
                               dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the result the permissions a plain open() would (0666 & ~umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there; rely on age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: someone else's live process
        return True
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temp files in `folder` left by writers that died (their process is gone, or
    the file is a day old); returns what was removed. Temps of live writers are kept."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(m.group("pid"))
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if pid != os.getpid() and (old or not _pid_alive(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
