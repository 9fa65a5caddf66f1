"""Reading and writing the toolkit's files.

Writes are atomic: a temporary file beside the target, fsync, rename. A reader (or a crash,
or kill -9) sees either the previous file or the complete new one, never half of one. A full
disk becomes one clear error and leaves the previous file intact.

Reads of JSON files (labels, configs, job records) go through `read_json`: one sentence per
failure, with the file and the position.

Only the standard library is imported at the top: the Docker launcher, which must not need
numpy, uses this module through `nima.jobs`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator

from nima.errors import NimaError

_umask_lock = threading.Lock()
_umask_value: int | None = None


def _umask() -> int:
    """The process umask, read on first use rather than at import (no side effect on import).

    Linux shows it in /proc/self/status. Elsewhere the only way to read it is to set it and
    set it back, and a file another thread creates in between gets the temporary mask: so it
    is read once, under a lock (two first callers must not interleave their set/restore, or
    the restore could leave the temporary value in place), and kept.
    """
    global _umask_value
    with _umask_lock:
        if _umask_value is None:
            try:
                status = Path("/proc/self/status").read_text()
                _umask_value = int(re.search(r"^Umask:\s*([0-7]+)", status, re.M)[1], 8)
            except (OSError, TypeError):  # no /proc, or a kernel older than 4.7
                _umask_value = os.umask(0o022)
                os.umask(_umask_value)
        return _umask_value


class WriteError(NimaError):
    """A result file could not be written (disk full, permission denied, ...)."""


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`.

    `suffix` keeps an extension some writers insist on (Keras wants `.keras`).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=parent)
        try:
            # mkstemp makes 0600 files; results must get the usual mode (e.g. readable by the
            # host user when a root container wrote them), as open() would have given.
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)  # data on disk before the rename makes it visible (power loss)
        os.replace(tmp_path, path)
        _fsync(parent, directory=True)  # and the rename itself on disk
    except OSError as e:
        why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise WriteError(f"cannot write {path}: {why}; the previous file is unchanged") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        if directory:  # some file systems cannot open directories: durability best effort
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """open() for writing whose result appears at `path` only once complete and synced."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise WriteError(f"cannot write {path}: {why}; the previous file is unchanged") from None


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _keras_bytes(model: Any) -> int:
    """What a Keras save writes, roughly: every model and optimizer variable, plus slack."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += list(getattr(optimizer, "variables", []))
    import numpy as np  # here, not at the top: see the module docstring

    raw = sum(math.prod(v.shape) * np.dtype(str(v.dtype)).itemsize for v in variables)
    return int(raw * 1.1) + (1 << 20)


def save_keras(model: Any, path: str | Path, weights_only: bool = False) -> None:
    """Save a Keras model (`.keras`) or its weights (`.weights.h5`) atomically.

    HDF5 does not survive running out of space mid-write: its library state is left broken
    and the process crashes at exit. So the free space is checked first and a full disk is
    the usual one-line WriteError before HDF5 writes a byte.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    needed = _keras_bytes(model)
    st = os.statvfs(parent)
    if st.f_bavail * st.f_frsize < needed:
        raise WriteError(f"cannot write {path}: disk full (needs about {needed >> 20} MiB "
                         f"free); the previous file is unchanged")
    suffix = ".weights.h5" if weights_only else ".keras"
    with atomic_path(path, suffix=suffix) as tmp:
        (model.save_weights if weights_only else model.save)(tmp)


def read_json(path: Path, what: str, max_bytes: int, error: type[NimaError]) -> Any:
    """Read and decode one JSON file; every failure is `error` with one sentence and a position.

    Shared by label, config and job files. A UTF-8 byte-order mark is accepted (Windows
    editors write one); size is checked before reading, so a huge file costs nothing.
    """
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise error(f"{what} is not a regular file: {path}")
        if size > max_bytes:
            raise error(f"{what} {path} is {size} bytes, more than the limit of {max_bytes}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start} is {raw[e.start]:#04x})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more than 4300 digits
        raise error(f"{path}: invalid JSON: {e}") from None
