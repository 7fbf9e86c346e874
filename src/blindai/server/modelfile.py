"""An uploaded model in TEE memory, as one anonymous in-memory file that onnxruntime loads by path.

Why not ``bytes``: ``InferenceSession(bytes)`` copies its argument into a C++ string, parses
that, and the Python session object keeps the argument for its whole life, so a model held
as bytes costs its size twice for as long as it is served, and three to four times while it
loads (measured with a 360 MiB wav2vec2-base: peak 1,130 MB from bytes, 552 MB from a path).
An upload instead streams into a ``memfd`` (anonymous memory, never on a disk: guest-private
memory in a confidential VM, like the rest of the process), is sealed against writes once
received, so the bytes hashed are the bytes loaded and stored, and onnxruntime opens it as
``/proc/self/fd/N``. Vetting and sealing read it through a read-only mapping, without a copy.

Where memfds cannot be trusted to stay inside the TEE or are missing (SGX through Gramine,
whose emulation differs between versions; systems without ``memfd_create``), the same
interface holds plain bytes and onnxruntime loads from them (`memfd_usable`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import mmap
import os
import threading
from collections.abc import Iterator

from ..tees import TEES

__all__ = ["ModelFile", "memfd_usable"]

log = logging.getLogger("blindai.models")


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


def memfd_usable(tee: str) -> bool:
    """Whether uploads of a server in this TEE are held in memfds (its row in tees.py says
    ``model_memory = "memfd"`` and this system has working memfds), else as bytes."""
    spec = TEES.get(tee)
    return spec is not None and spec.model_memory == "memfd" and _memfd_works()


class ModelFile:
    """One model's bytes: a sealed memfd, or bytes where memfds are not used.

    Thread-safe: the body reader writes from its worker thread while the request may be
    abandoned on the event loop; a write after `close` is refused, never sent to whatever
    file reuses the descriptor number. `dup` gives a second owner (the background session
    build) its own descriptor, so each closes its own.
    """

    def __init__(self, *, memfd: bool) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._chunks: list[bytes] | None = None
        self._data: bytes | None = None
        self.size = 0
        self._sealed = False
        self._memfd = memfd
        if memfd:
            self._fd = os.memfd_create("blindai-model", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        else:
            self._chunks = []

    @classmethod
    def from_bytes(cls, data: bytes, *, memfd: bool) -> ModelFile:
        """A model that arrived whole (0.6 uploads, the sealed store): one copy into a memfd."""
        f = cls(memfd=memfd)
        try:
            f.write(data)
            f.finish()
        except BaseException:
            f.close()
            raise
        return f

    @property
    def in_memfd(self) -> bool:
        return self._memfd

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
                    view = view[os.write(self._fd, view) :]
            self.size += len(chunk)

    def finish(self) -> None:
        """No more bytes: seal the memfd against any write, growth or shrinking."""
        with self._lock:
            if self._sealed:
                return
            self._sealed = True
            if self._chunks is not None:
                self._data = b"".join(self._chunks)
                self._chunks = None
            elif self._fd >= 0:
                fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)

    @property
    def path(self) -> str | None:
        """What onnxruntime opens (``None`` when the model is held as bytes)."""
        return f"/proc/self/fd/{self._fd}" if self._fd >= 0 and self._sealed else None

    @property
    def data(self) -> bytes | None:
        """The bytes, where the model is held as bytes."""
        return self._data

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
        other._memfd = self._memfd
        other._fd = os.dup(self._fd) if self._fd >= 0 else -1
        return other

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            self._chunks = None
            self._data = None
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:  # an owner that never ran (a cancelled hand-off) still frees its descriptor
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
