"""Request bodies: memory follows the bytes received, within deadlines and a server-wide budget.

Knows nothing of routes. A declared ``Content-Length`` is only used to refuse at once what
could never fit; nothing is allocated for it. Bytes are kept as the chunks that arrived and
joined once at the end (no repeated copies). Every byte held for a request, and every byte a
decoder is about to allocate for it, is taken from one :class:`MemoryBudget` shared by the
whole server and given back when the request ends, so concurrent requests cannot together
hold more than ``--max-inflight-bytes``. A body that stalls, or trickles in below
``--body-min-rate``, or takes longer than ``--body-timeout`` in all, is answered 408 and
its memory returned: an unauthenticated client cannot hold memory or a slot by being slow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import CapacityExceeded, CoreError, InvalidRequest, LimitExceeded, Unavailable
from .errors import RequestTimeout

__all__ = ["Body", "BodyLimits", "Hold", "MemoryBudget", "Sink", "UploadSlots", "read_body", "too_slow"]

# Joining chunks is one memcpy; above this size it runs in a worker thread (bytes.join
# releases the GIL for large results), so the event loops keep turning meanwhile.
_JOIN_IN_THREAD = 1 << 20


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How bodies are received; every field is a ``blindai serve`` flag (docs/cli.md)."""

    idle_timeout_s: float = 20.0  # longest silence between two chunks, and the grace before the rate counts
    min_rate: int = 16 << 10  # bytes per second, averaged over the whole body after the grace
    total_timeout_s: float = 900.0  # a whole body, however fast it flows
    max_concurrent_uploads: int = 4  # model uploads receiving at once; more wait, then 503
    max_inflight_bytes: int = 4 << 30  # bodies held plus decoder estimates, server-wide
    max_json_bytes: int = 1 << 20  # JSON (or JSON header) of one inference request
    max_json_response_bytes: int = 32 << 20  # outputs sent as JSON (binary outputs are not bound by it)


class MemoryBudget:
    """Bytes held for requests, server-wide; thread-safe (decoders take from worker threads).

    With ``shared=True`` the count lives in shared memory under a process-shared lock, so the
    front workers forked after it (``front.py``), which hold the bodies of the requests they
    decode, take from the same budget as the main process: one limit for the whole server.
    """

    def __init__(self, limit: int, *, shared: bool = False) -> None:
        self.limit = limit
        self._used: Any
        if shared:
            import multiprocessing

            self._used = multiprocessing.RawValue("q", 0)
            self._lock: Any = multiprocessing.Lock()
        else:
            self._used = _Count()
            self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return int(self._used.value)

    def try_take(self, n: int, what: str) -> bool:
        if n > self.limit:
            raise LimitExceeded(
                f"{what} needs about {n} bytes of memory, more than the server's whole budget for requests "
                f"({self.limit} bytes, --max-inflight-bytes); send less at once (binary tensors cost least)"
            )
        with self._lock:
            if self._used.value + n > self.limit:
                return False
            self._used.value += n
            return True

    def full(self) -> CoreError:
        return Unavailable(
            f"the server is holding its limit of {self.limit} bytes for requests in flight; retry shortly"
        )

    def take(self, n: int, what: str, wait_s: float = 0.0) -> None:
        """From a worker thread: wait up to ``wait_s`` for room (others finish or time out), then 503."""
        deadline = time.monotonic() + wait_s
        while not self.try_take(n, what):
            if time.monotonic() >= deadline:
                raise self.full()
            time.sleep(0.01)

    async def take_async(self, n: int, what: str, wait_s: float) -> None:
        """From the event loop: the same wait, without blocking it (the body simply is not read meanwhile)."""
        deadline = time.monotonic() + wait_s
        while not self.try_take(n, what):
            if time.monotonic() >= deadline:
                raise self.full()
            await asyncio.sleep(0.01)

    def give(self, n: int) -> None:
        with self._lock:
            self._used.value -= n


class _Count:
    """The unshared count: what ``multiprocessing.RawValue`` offers, in this process only."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Hold:
    """What one request holds in the budget: taken piece by piece, all given back at the end."""

    def __init__(self, budget: MemoryBudget, wait_s: float = 0.0) -> None:
        self.budget = budget
        self.wait_s = wait_s  # how long a body waits for room before answering 503
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int, what: str) -> None:
        """From a worker thread (decoders): no waiting, so a full budget never ties up the pool's threads."""
        self.budget.take(n, what)
        with self._lock:
            self.held += n

    async def take_async(self, n: int, what: str) -> None:
        await self.budget.take_async(n, what, self.wait_s)
        with self._lock:
            self.held += n

    def give(self, n: int) -> None:
        with self._lock:
            n = min(n, self.held)
            self.held -= n
        self.budget.give(n)

    def release(self) -> None:
        self.give(self.held)


class UploadSlots:
    """At most N model uploads are received, vetted and loaded at once; the next waits for a
    slot, not forever.

    Vetting and loading hold memory that no budget counts (a parse of the model, onnxruntime's
    copies), so they stay inside the slot: finished uploads cannot pile up loading. A slot is
    held by a body that must keep flowing (deadlines above), then by bounded work, so a wait of
    twice the idle timeout outlasts a silent client's slot.
    """

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self._sem: asyncio.Semaphore | None = None  # made in the loop that uses it

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.limit)
        try:
            await asyncio.wait_for(self._sem.acquire(), self.wait_s)
        except TimeoutError:
            raise Unavailable(
                f"{self.limit} uploads are already in progress (--max-concurrent-uploads); retry shortly"
            ) from None
        try:
            yield
        finally:
            self._sem.release()


@dataclass(slots=True)
class Body:
    data: bytes  # empty when the body went to a sink
    sha256: str | None
    size: int = 0


Sink = Callable[[bytes], None]


def content_length(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest("Content-Length is not an integer") from None
    if value < 0:
        raise InvalidRequest("Content-Length is negative")
    return value


async def read_body(
    stream: AsyncIterator[bytes],
    declared: int | None,
    *,
    max_bytes: int,
    limits: BodyLimits,
    hold: Hold,
    what: str,
    sha256: bool = False,
    into: Sink | None = None,
) -> Body:
    """The whole body, counted as it arrives; 413 past ``max_bytes``, 408 when too slow, 503 over budget.

    With ``into``, every chunk goes there, in order, instead of being kept (``Body.data`` is
    then empty): a model streams into its in-memory file with no joined copy.
    """
    if declared is not None and declared > max_bytes:
        raise LimitExceeded(f"{what} of {declared} bytes exceeds the limit of {max_bytes} bytes")
    # Hashing and the sink run on a thread of their own, chunk by chunk in order, while the loop
    # keeps decrypting and receiving (hashlib and os.write release the GIL): a model's SHA-256 is
    # ready, and its file written, when its last byte is.
    worker = _ChunkWorker(hashlib.sha256() if sha256 else None, into) if sha256 or into else None
    try:
        data, size = await _receive(stream, worker, max_bytes, limits, hold, what)
        if worker is not None:
            await worker.drain(what)
    finally:
        if worker is not None:
            worker.stop()
    return Body(data, worker.hexdigest() if worker is not None else None, size)


class _ChunkWorker:
    """One thread that hashes and sinks the chunks of one body, in arrival order."""

    def __init__(self, digest: Any, into: Sink | None) -> None:
        self.digest = digest
        self.into = into
        self.failed: BaseException | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="blindai-body")

    def _take(self, chunk: bytes) -> None:
        if self.failed is not None:
            return
        try:
            if self.digest is not None:
                self.digest.update(chunk)
            if self.into is not None:
                self.into(chunk)
        except BaseException as exc:  # reported on the loop by check()/drain()
            self.failed = exc

    def submit(self, chunk: bytes, what: str) -> None:
        self.check(what)
        self._pool.submit(self._take, chunk)

    def check(self, what: str) -> None:
        exc = self.failed
        if exc is None:
            return
        if isinstance(exc, OSError):
            raise CapacityExceeded(
                f"{what} could not be held in memory ({exc.strerror or type(exc).__name__}); retry later"
            ) from exc
        raise exc

    async def drain(self, what: str) -> None:
        await asyncio.wrap_future(self._pool.submit(lambda: None))  # runs after every chunk queued before it
        self.check(what)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def hexdigest(self) -> str | None:
        return self.digest.hexdigest() if self.digest is not None else None


async def _receive(
    stream: AsyncIterator[bytes],
    worker: _ChunkWorker | None,
    max_bytes: int,
    limits: BodyLimits,
    hold: Hold,
    what: str,
) -> tuple[bytes, int]:
    chunks: list[bytes] = []
    keep = worker is None or worker.into is None
    size = 0
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    deadline = start + limits.total_timeout_s
    it = stream.__aiter__()
    reason = "idle"
    # One timeout for the whole body, moved before each chunk (no task per chunk, as wait_for makes).
    try:
        async with asyncio.timeout(None) as timeout:
            while True:
                # The latest moment the next chunk may arrive: no silence longer than the idle timeout,
                # no total beyond the deadline, and (after the grace) never below the minimum rate.
                bounds = {
                    "deadline": deadline,
                    "idle": last + limits.idle_timeout_s,
                    "rate": start + max(limits.idle_timeout_s, (size + 1) / max(limits.min_rate, 1)),
                }
                reason = min(bounds, key=bounds.__getitem__)
                timeout.reschedule(bounds[reason])
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
                if not chunk:
                    continue
                last = loop.time()
                size += len(chunk)
                if size > max_bytes:
                    raise LimitExceeded(f"{what} exceeds the limit of {max_bytes} bytes")
                timeout.reschedule(None)  # waiting for budget has its own bound
                await hold.take_async(len(chunk), what)  # while the budget is full, this body is not read
                if worker is not None:
                    worker.submit(chunk, what)
                if keep:
                    chunks.append(chunk)
    except TimeoutError:
        raise too_slow(what, reason, size, loop.time() - start, limits) from None
    if not keep or not chunks:
        return b"", size
    if len(chunks) == 1:
        data = chunks[0]
    elif size > _JOIN_IN_THREAD:
        await hold.take_async(size, what)  # the chunks and the joined copy, for a moment
        try:
            data = await asyncio.to_thread(b"".join, chunks)
        finally:
            hold.give(size)
    else:
        data = b"".join(chunks)
    chunks.clear()
    return data, size


def too_slow(what: str, reason: str, size: int, elapsed: float, limits: BodyLimits) -> CoreError:
    """The 408 of a body that broke ``reason``'s bound ("deadline", "rate" or "idle")."""
    if reason == "deadline":
        text = f"it was not received within the {limits.total_timeout_s:g} s deadline (--body-timeout)"
    elif reason == "rate":
        text = f"it arrived too slowly ({size} bytes in {elapsed:.1f} s; --body-min-rate is {limits.min_rate} B/s)"
    else:
        text = f"nothing arrived for {limits.idle_timeout_s:g} s (--body-idle-timeout)"
    return RequestTimeout(f"{what} timed out: {text}")


class HeldResponse(Response):
    """A response whose memory stays counted in the budget until the client has taken it.

    Starlette sends a response after its handler has returned, so a plain response's bytes
    would leave the in-flight budget (``held`` gives it back at return) while a client that
    does not read still holds them in the transport's buffer; joining the chunks would copy
    them all once more. So the body goes out in slices: uvicorn waits before each send until
    the transport has drained below its high-water mark, the closing empty send waits for the
    last slice, and only then is the budget given back. A client that takes no slice within
    ``send_timeout_s`` (the body idle timeout: the same rate asked of request bodies) is cut
    off, and the connection closed.
    """

    SLICE = 256 << 10
    ONE_SEND = 64 << 10

    def __init__(
        self, chunks: list[Any], hold: Hold, media_type: str, headers: dict[str, str], send_timeout_s: float = 20.0
    ) -> None:
        super().__init__(None, media_type=media_type, headers=headers)
        # Flat byte views: a server writes them as they are, and len() is their byte count.
        self.chunks = [c if isinstance(c, bytes) else memoryview(c).cast("B") for c in chunks]
        self.hold = hold
        self.send_timeout_s = send_timeout_s
        self.headers["content-length"] = str(sum(len(c) for c in self.chunks))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        try:
            # One timeout, moved before each send (no task per send, as wait_for makes).
            async with asyncio.timeout(None) as timeout:

                async def deliver(message: dict[str, Any]) -> None:
                    timeout.reschedule(loop.time() + self.send_timeout_s)
                    await send(message)

                await deliver({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                chunks, self.chunks = self.chunks, []
                slices = [memoryview(c)[i : i + self.SLICE] for c in chunks for i in range(0, len(c), self.SLICE)]
                # A small body (below the transport's high-water mark, so never more than a connection
                # buffers anyway) goes out in one send that ends it; a larger one ends with an empty
                # send, which waits until its last slice has drained.
                last = len(slices) if sum(len(p) for p in slices) <= self.ONE_SEND else -1
                for n, piece in enumerate(slices, 1):
                    await deliver({"type": "http.response.body", "body": piece, "more_body": n != last})
                if last == -1 or not slices:
                    await deliver({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            # An incomplete response: the connection goes at once, its unsent rest with it (a graceful
            # close would first wait, with the bytes in memory, for a client that does not read).
            abort = scope.get("blindai.abort")
            if callable(abort):
                abort()
        finally:
            self.hold.release()
