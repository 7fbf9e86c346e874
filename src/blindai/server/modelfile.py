"""An uploaded model in TEE memory, as one in-memory file that onnxruntime reads without a copy.

Why not ``bytes``: ``InferenceSession(bytes)`` copies its argument into a C++ string, parses
that, and the Python session object keeps the argument for its whole life, so a model held
as bytes costs its size twice for as long as it is served, and three to four times while it
loads (measured with a 360 MiB wav2vec2-base: peak 1,130 MB from bytes, 552 MB from a path).
An upload instead streams into an in-memory file (never on a disk: guest-private memory in a
confidential VM, like the rest of the process); vetting and sealing read it through a read-only
mapping, and onnxruntime reads it by path. Three kinds (`MEMORY_KINDS`), best first:

``tmpfs``
    An unnamed file (``O_TMPFILE``) on the ``/dev/shm`` tmpfs. onnxruntime *maps* the weights
    that `onnxsplit` moved out of the graph instead of copying them, so the upload's own pages
    become the session's weights, shared by the model's two sessions: for wav2vec2-base, load
    time 1.03 -> 0.51 s, peak 2.5x -> 1.9x and steady memory 1.5x -> 1.04x the model
    (performance.md). onnxruntime opens external data only by a path that canonicalises inside
    a folder, which a memfd's ``/proc/self/fd`` link never does, hence a tmpfs file: it gets a
    name, in a private (0700) folder, from its first session build until its last owner closes
    it (`weights_folder`; the load and sealing of an upload), so a server killed mid-upload
    leaves nothing behind (one killed in that window leaves the folder, which the next start
    removes: `sweep_stale`). Once the last owner closes it, every range no session maps is
    punched out, so only the weights onnxruntime kept mapped stay in memory.
    Received, it is read-only (mode 0400, no writable descriptor in the process); unlike a
    memfd it cannot be sealed, so code that deliberately reopens it for writing as root could
    change it, as that code could change the process's memory.
``memfd``
    A ``memfd``, sealed against writes, growth and shrinking once received, so the bytes
    hashed are the bytes loaded and stored whatever runs in the process; onnxruntime copies the
    moved weights out of it. Used where ``/dev/shm`` is no tmpfs, or is full (an upload that
    fills it moves to a memfd and goes on: Docker's default ``/dev/shm`` is 64 MiB).
``bytes``
    Where in-memory files cannot be trusted to stay inside the TEE or are missing (SGX through
    Gramine, whose emulation of both differs between versions and may reach the host).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import mmap
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

from ..tees import TEES
from .onnxsplit import LOCATION

__all__ = ["MEMORY_KINDS", "ModelFile", "empty_folder", "model_memory", "sweep_stale"]

log = logging.getLogger("blindai.models")

MEMORY_KINDS = ("tmpfs", "memfd", "bytes")
TMPFS_ROOT = "/dev/shm"
_LOAD_PREFIX = "blindai-load-"  # folders naming a model while a session is built: blindai-load-<pid>-*
_EMPTY_PREFIX = "blindai-no-files-"  # empty_folder(): blindai-no-files-<pid>-*, in the temporary folder

_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _linkat(fd: int, dest: str) -> None:
    """Give an unnamed (``O_TMPFILE``) file a name. Python's ``os.link`` cannot: it does not
    follow the ``/proc/self/fd`` link, and linking the link itself crosses file systems."""
    libc = _libc()
    if libc is None:
        raise OSError(errno.ENOSYS, "no C library to call linkat")
    if libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(dest), _AT_SYMLINK_FOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _punch(fd: int, start: int, end: int) -> None:
    """Free the file's pages in [start, end) (they read as zeros afterwards)."""
    libc = _libc()
    if libc is None or end <= start:
        return
    mode = _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE
    if libc.fallocate(fd, mode, ctypes.c_int64(start), ctypes.c_int64(end - start)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _on_tmpfs(path: str) -> bool:
    """Whether ``path`` is on a tmpfs (RAM), by the longest mount point above it."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, fstype = point, parts[2]
    except OSError:
        return False
    return fstype == "tmpfs"


@functools.cache
def _tmpfs_works() -> bool:
    """Can this process make an unnamed file on the tmpfs, name it, read it by name and punch it?"""
    if not _on_tmpfs(TMPFS_ROOT) or not hasattr(os, "O_TMPFILE"):
        return False
    try:
        fd = os.open(TMPFS_ROOT, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.write(fd, b"b" * 8192)
        folder = tempfile.mkdtemp(prefix=f"{_LOAD_PREFIX}{os.getpid()}-", dir=TMPFS_ROOT)
        try:
            name = os.path.join(folder, LOCATION)
            _linkat(fd, name)
            with open(name, "rb") as f:
                ok = f.read() == b"b" * 8192
            os.unlink(name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        _punch(fd, 0, 4096)
        return ok and os.pread(fd, 2, 4095) == b"\0b"
    except OSError:
        return False
    finally:
        os.close(fd)


@functools.cache
def _memfd_works() -> bool:
    """Can this process make a memfd, seal it and read it back through ``/proc/self/fd``?"""
    try:
        fd = os.memfd_create("blindai-probe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        return False
    try:
        os.write(fd, b"blindai")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            return f.read() == b"blindai"
    except (AttributeError, OSError):
        return False
    finally:
        os.close(fd)


def model_memory(tee: str, choice: str = "auto") -> str:
    """Where a server in this TEE holds uploads: one of `MEMORY_KINDS`.

    ``auto`` takes the best kind that works here among those the TEE's row in tees.py allows
    (``model_memory = "file"``: any; ``"bytes"``: bytes only). Asking for a kind that is not
    allowed or does not work here is a `ValueError` naming why, never a silent downgrade.
    """
    spec = TEES.get(tee)
    files = spec is not None and spec.model_memory == "file"
    works = {"tmpfs": files and _tmpfs_works(), "memfd": files and _memfd_works(), "bytes": True}
    if choice == "auto":
        return next(kind for kind in MEMORY_KINDS if works[kind])
    if choice not in works:
        raise ValueError(f"model memory must be auto or one of {', '.join(MEMORY_KINDS)}, not {choice!r}")
    if not files and choice != "bytes":
        raise ValueError(f"a {tee} server holds models as bytes only (tees.py), not in a {choice} file")
    if not works[choice]:
        where = f"an unnamed file on a tmpfs at {TMPFS_ROOT}" if choice == "tmpfs" else "a sealed memfd"
        raise ValueError(f"model memory {choice}: this system cannot make {where}")
    return choice


@functools.cache
def empty_folder() -> str:
    """A private (0700) folder that stays empty, where onnxruntime resolves the external data of
    models not loaded from a tmpfs upload (so a reference vetting missed names nothing, never a
    file of the working directory). Removed at exit by the process that made it, or by the next
    server's `sweep_stale` after a kill."""
    folder = tempfile.mkdtemp(prefix=f"{_EMPTY_PREFIX}{os.getpid()}-")
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not a forked front worker exiting
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    return folder


def sweep_stale(*, starting: bool = False) -> int:
    """Remove the folders servers that died left behind: a tmpfs upload named while a session was
    built (a plaintext model in RAM), an empty folder; returns how many. Only this user's, only
    of dead processes, and, with ``starting`` (a server that has made none yet), its own pid's:
    a container's server is pid 1 at every start."""
    removed = 0
    for root, prefix in ((TMPFS_ROOT, _LOAD_PREFIX), (tempfile.gettempdir(), _EMPTY_PREFIX)):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix):
                continue
            pid_text = name[len(prefix) :].split("-", 1)[0]
            path = os.path.join(root, name)
            try:
                if not pid_text.isdigit() or os.lstat(path).st_uid != os.getuid():
                    continue
                if not (starting and int(pid_text) == os.getpid()):
                    os.kill(int(pid_text), 0)
                    continue  # alive (or a reused pid): not ours to remove
            except ProcessLookupError:
                pass
            except OSError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


class _Shared:
    """What the owners of one file share: how many still hold it, and the folder naming it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owners = 1
        self.folder: str | None = None


class ModelFile:
    """One model's bytes: an in-memory file (`MEMORY_KINDS`), or bytes.

    Thread-safe: the body reader writes from its worker thread while the request may be
    abandoned on the event loop; a write after `close` is refused, never sent to whatever
    file reuses the descriptor number. `dup` gives a second owner (the background session
    build) its own descriptor, so each closes its own; the last one to close frees the pages
    no session maps (tmpfs).
    """

    def __init__(self, *, memory: str) -> None:
        if memory not in MEMORY_KINDS:
            raise ValueError(f"model memory must be one of {', '.join(MEMORY_KINDS)}, not {memory!r}")
        self._lock = threading.Lock()
        self._fd = -1
        self._chunks: list[bytes] | None = None
        self._data: bytes | None = None
        self.size = 0
        self._sealed = False
        self.memory = memory
        self._shared = _Shared()
        if memory == "tmpfs":
            self._fd = os.open(TMPFS_ROOT, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        elif memory == "memfd":
            self._fd = _new_memfd()
        else:
            self._chunks = []

    @classmethod
    def from_bytes(cls, data: bytes, *, memory: str) -> ModelFile:
        """A model that arrived whole (0.6 uploads, the sealed store): one copy into a file."""
        f = cls(memory=memory)
        try:
            f.write(data)
            f.finish()
        except BaseException:
            f.close()
            raise
        return f

    def write(self, chunk: bytes | memoryview) -> None:
        """Append (the body reader's thread); refused once finished or closed."""
        with self._lock:
            if self._sealed or (self._fd < 0 and self._chunks is None):
                raise ValueError("the model file is finished or closed")
            if self._chunks is not None:
                self._chunks.append(bytes(chunk))
            else:
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(self._fd, view) :]
                    except OSError as exc:
                        if self.memory != "tmpfs" or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        self._spill()
            self.size += len(chunk)

    def _spill(self) -> None:
        """The tmpfs is full: go on in a memfd, which only the machine's memory bounds (lock held)."""
        fd = _new_memfd()
        try:
            written = os.lseek(self._fd, 0, os.SEEK_CUR)  # this chunk's part that went in counts too
            done = 0
            while done < written:
                piece = os.pread(self._fd, min(written - done, 1 << 20), done)
                if not piece:
                    raise OSError(errno.EIO, "copying a model out of the full tmpfs stopped short")
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
                done += len(piece)
        except BaseException:
            os.close(fd)
            raise
        log.warning("%s is full: an upload goes on in a memfd (onnxruntime will copy its weights)", TMPFS_ROOT)
        os.close(self._fd)
        self._fd, self.memory = fd, "memfd"

    def finish(self) -> None:
        """No more bytes: nothing in the process can write the file from now on."""
        with self._lock:
            if self._sealed:
                return
            self._sealed = True
            if self._chunks is not None:
                self._data = b"".join(self._chunks)
                self._chunks = None
            elif self._fd >= 0 and self.memory == "memfd":
                fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
            elif self._fd >= 0:
                # tmpfs files cannot be sealed: keep a read-only descriptor only, mode 0400.
                ro = os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)
                os.fchmod(ro, 0o400)
                os.close(self._fd)
                self._fd = ro

    @property
    def path(self) -> str | None:
        """What onnxruntime opens (``None`` when the model is held as bytes)."""
        return f"/proc/self/fd/{self._fd}" if self._fd >= 0 and self._sealed else None

    @property
    def data(self) -> bytes | None:
        """The bytes, where the model is held as bytes."""
        return self._data

    def weights_folder(self) -> str | None:
        """A private folder where this (tmpfs) file is named `onnxsplit.LOCATION`, for onnxruntime to
        map moved weights from while a session is built; ``None`` for the other kinds. Named at the
        first session build (an unnamed file can be named once only), unnamed when the last owner
        closes it."""
        shared = self._shared
        with self._lock, shared.lock:  # the descriptor stays ours while it is linked
            if not self._sealed or self._fd < 0 or self.memory != "tmpfs":
                return None
            if shared.folder is None:
                folder = tempfile.mkdtemp(prefix=f"{_LOAD_PREFIX}{os.getpid()}-", dir=TMPFS_ROOT)
                try:
                    _linkat(self._fd, os.path.join(folder, LOCATION))
                except BaseException:
                    os.rmdir(folder)
                    raise
                shared.folder = folder
            return shared.folder

    @contextlib.contextmanager
    def view(self) -> Iterator[memoryview]:
        """The whole model, read-only, without a copy (vetting, sealing). Released on exit."""
        if not self._sealed:
            raise ValueError("the model file is not finished")
        if self._data is not None:
            with memoryview(self._data) as v:
                yield v
            return
        if self.size == 0:
            yield memoryview(b"")
            return
        m = mmap.mmap(self._fd, self.size, prot=mmap.PROT_READ)
        v = memoryview(m)
        try:
            yield v
        finally:
            # A view still alive (a slice held by an exception's traceback) makes these raise
            # BufferError, which would replace the exception that mattered: the mapping then goes
            # when the last view does.
            with contextlib.suppress(BufferError):
                v.release()
                m.close()

    def dup(self) -> ModelFile:
        """Another owner of the same finished model (its own descriptor; bytes are shared)."""
        if not self._sealed:
            raise ValueError("the model file is not finished")
        other = ModelFile.__new__(ModelFile)
        other._lock = threading.Lock()
        other._chunks = None
        other._data = self._data
        other.size = self.size
        other._sealed = True
        other.memory = self.memory
        other._shared = self._shared
        with self._lock, self._shared.lock:  # not racing close(): a closed file has no second owner
            if self._fd < 0 and self._data is None:
                raise ValueError("the model file is closed")
            other._fd = os.dup(self._fd) if self._fd >= 0 else -1
            self._shared.owners += 1
        return other

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            self._chunks = None
            self._data = None
        if fd < 0:
            return
        try:
            with self._shared.lock:
                self._shared.owners -= 1
                last = self._shared.owners == 0
                folder, self._shared.folder = (self._shared.folder, None) if last else (None, self._shared.folder)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            if last and self.memory == "tmpfs" and self._sealed:
                _free_unmapped(fd, self.size)
        finally:
            os.close(fd)

    def __del__(self) -> None:  # an owner that never ran (a cancelled hand-off) still frees its descriptor
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _new_memfd() -> int:
    return os.memfd_create("blindai-model", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def _mapped_ranges(fd: int) -> list[tuple[int, int]]:
    """File ranges [start, end) of ``fd``'s file that this process maps (/proc/self/maps)."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 5 or parts[3] != dev or parts[4] != str(st.st_ino):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            offset = int(parts[2], 16)
            ranges.append((offset, offset + hi - lo))
    return sorted(ranges)


def _free_unmapped(fd: int, size: int) -> None:
    """The last owner is closing: punch out every range no session maps. Safe because nothing can
    map the file any more (only an owner builds sessions from it, and it has no name now); a
    session's mapping keeps its pages. Best effort: a failure only leaves memory in use."""
    try:
        ranges = _mapped_ranges(fd)
        if not ranges:
            return  # nothing maps it: closing the last descriptor frees the whole file
        os.fchmod(fd, 0o600)  # punching needs a writable descriptor; the file is read-only (finish)
        writable = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            pos = 0
            for start, end in ranges:
                _punch(writable, pos, start)
                pos = max(pos, end)
            _punch(writable, pos, size)
        finally:
            os.close(writable)
    except OSError as exc:
        log.warning("could not free the unmapped part of a model file: %s", exc.strerror or exc)
