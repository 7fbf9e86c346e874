"""Writing a file so that a reader, a crash or a second writer never sees half of it.

One helper for every file BlindAI writes whole: the sealed store's files and manifest, the
client's owner tokens, the demo's model caches. The temporary name is random (two writers,
processes or threads, never share one) and starts with a dot, ``.NAME.RANDOM.tmp``, the pattern
the sealed store recognises as an unfinished write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Temporary file, fsync, rename, fsync the folder: after a crash the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or an unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
