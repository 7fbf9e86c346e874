"""The main process's side of the front workers' fast path: decoded inference requests in frames.

A front worker (``front.py``, ``fast_worker.py``) parses and decodes small inference requests
itself and sends them here as frames (``frames.py``), so HTTP and the tensor codec run in the
workers, on other cores, and this event loop only looks the model up, runs it and sends the
outputs back. The model lookup, the owner check, the pin and the run are the same calls the
HTTP route makes (``oip.run_decoded``); a refusal goes back as the status and message that
route would answer. The outputs stay counted in the server's in-flight budget until the
worker reports that its client has taken them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, cast

import numpy.typing as npt

from ...protocol.error_body import encode_error
from .. import frames
from ..errors import CapacityExceeded
from ..inference import string_bytes
from .bodies import HeldResponse, Hold
from .errors import answer_of
from .oip import run_decoded
from .state import ServerState

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["ROUTE", "serve_channel"]

log = logging.getLogger("blindai.server")

ROUTE = "/v2/models/{ref}/infer"


async def serve_channel(sock: socket.socket, state: ServerState, metrics: Metrics | None = None) -> None:
    """Answer one worker's frames until it closes its end (or sends a frame that breaks the format)."""
    loop = asyncio.get_running_loop()
    _transport, channel = await loop.connect_accepted_socket(lambda: _Channel(state, metrics), sock=sock)
    await channel.closed


class _Channel(asyncio.Protocol):
    """One worker's frames, parsed as they arrive and answered as their runs end.

    A protocol rather than a stream reader and writer: every frame that arrived in one read is
    dispatched in that read's callback, and every small answer ready in one turn of the loop leaves
    in one write, so under load the loop's cost per request is the request's own work, not a wake-up
    and a system call each way (performance.md, the main process's share of a request).
    """

    SLICE = HeldResponse.SLICE

    def __init__(self, state: ServerState, metrics: Metrics | None) -> None:
        self.state = state
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.delivering: dict[int, Hold] = {}  # outputs sent, waiting for the worker to report them taken
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.pending: list[bytes | memoryview] = []  # small frames to write at the end of this turn
        self.flushing = False
        self.large = asyncio.Lock()  # a frame written in slices: no other frame between its slices
        self.writable: asyncio.Future[None] | None = None  # set while the transport is over its high-water mark

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= frames.HEADER.size:
                length, kind, rid = frames.check_header(buf, pos, frames.MAX_REQUEST)
                end = pos + frames.HEADER.size + length
                if end > len(buf):
                    break
                with memoryview(buf) as view:  # one copy of the payload (a slice of buf would be two)
                    payload = bytes(view[pos + frames.HEADER.size : end])
                pos = end
                self._dispatch(kind, rid, payload)
        except frames.FrameError as exc:
            log.error("front worker channel closed: %s", exc)
            buf.clear()
            assert self.transport is not None
            self.transport.close()
            return
        finally:
            if pos:
                del buf[:pos]

    def _dispatch(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == frames.DELIVERED:
            hold = self.delivering.pop(rid, None)
            if hold is not None:
                hold.release()
        elif kind == frames.REQUEST:
            task = self.loop.create_task(_answer(self, rid, payload))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            raise frames.FrameError(f"a worker sent frame kind {kind}")

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()
        for hold in self.delivering.values():
            hold.release()
        self.delivering.clear()
        self.pending.clear()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)  # a sender waiting for room finds the transport closing
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    async def send(self, pieces: list[bytes | memoryview]) -> None:
        """One frame, whole. A small one joins this turn's single write (memory: held in the budget
        by its request until delivered); a large one goes in slices as the socket takes them.

        Written at once, a result of a few MB would be copied into the transport's buffer and held
        twice (array and copy) until the worker read it; in slices, this process holds each output
        once, counted in the budget, plus one slice.
        """
        if self.transport is None or self.transport.is_closing():
            return  # the worker is gone; its requests' holds were released with the channel
        if sum(len(p) for p in pieces) <= self.SLICE and not self.large.locked():
            self.pending += pieces
            if not self.flushing:
                self.flushing = True
                self.loop.call_soon(self._flush)
            return
        async with self.large:
            self._flush()
            for piece in pieces:
                view = memoryview(piece).cast("B")
                for i in range(0, len(view), self.SLICE):
                    if self.transport.is_closing():
                        return
                    self.transport.write(view[i : i + self.SLICE])
                    if self.writable is not None and not self.writable.done():
                        await self.writable
            self._flush()

    def _flush(self) -> None:
        self.flushing = False
        if self.pending and self.transport is not None and not self.transport.is_closing():
            pending, self.pending = self.pending, []
            self.transport.writelines(pending)


async def _answer(channel: _Channel, rid: int, payload: bytes) -> None:
    state, metrics = channel.state, channel.metrics
    start = time.perf_counter()
    if metrics is not None:
        metrics.in_progress.labels("attested", ROUTE).inc()
    hold = Hold(state.budget)
    status = 200
    try:
        try:
            meta, inputs = frames.unpack(payload)
            del payload
            ref, sha256, tokens, requested = _fields(meta)
            entry = await state.model(ref, sha256=sha256, tokens=tokens)
            model_id, outputs = await run_decoded(state, entry, inputs, requested, meta.get("pin"))
            del inputs
            packed, strings = await _pack(model_id, outputs)
            del outputs
            out = frames.frame(frames.RESULT, rid, packed)
            size = sum(len(p) for p in out)
            if size > frames.max_result(state.engine.max_output_bytes):  # the worker would close the channel
                raise CapacityExceeded(f"outputs of {size} bytes as sent exceed what --max-output-bytes allows")
            # What is sent, held from now until the worker says its client took it, as the HTTP route
            # holds a response: string outputs as their encoded bytes (not the array's pointers) and
            # their objects again, which the worker makes when it decodes them.
            hold.take(size + strings, "this response")
        except frames.FrameError as exc:
            status, message = 400, f"malformed request from the front worker: {exc}"
            log.error("%s", message)
            out = _error(rid, status, message)
        except Exception as exc:  # every refusal becomes the status the HTTP route would answer
            status, message = answer_of(exc)
            out = _error(rid, status, message)
        if status == 200 and not channel.closed.done():
            channel.delivering[rid] = hold  # released when delivered, or when the channel closes
        else:
            hold.release()
        await channel.send(out)
    except BaseException:
        channel.delivering.pop(rid, None)
        hold.release()
        raise
    finally:
        if metrics is not None:
            metrics.in_progress.labels("attested", ROUTE).dec()
            metrics.record("attested", ROUTE, status, time.perf_counter() - start)


async def _pack(model_id: str, outputs: dict[str, npt.NDArray[Any]]) -> tuple[list[bytes | memoryview], int]:
    """The result payload, and what its string outputs hold as objects (0 without strings). String
    outputs are encoded element by element: in a thread, never on the loop every worker shares."""

    def pack() -> tuple[list[bytes | memoryview], int]:
        return frames.pack({"model": model_id}, outputs), string_bytes(outputs)

    if any(a.dtype == object for a in outputs.values()):
        return await asyncio.to_thread(pack)
    return frames.pack({"model": model_id}, outputs), 0


def _fields(meta: dict[str, Any]) -> tuple[str, str | None, list[str], list[str] | None]:
    ref, sha256, tokens, requested = meta.get("ref"), meta.get("sha256"), meta.get("tokens"), meta.get("outputs")
    if not isinstance(ref, str) or not (sha256 is None or isinstance(sha256, str)):
        raise frames.FrameError("the model reference or pin is not a string")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise frames.FrameError("the tokens are not a list of strings")
    if not (requested is None or (isinstance(requested, list) and all(isinstance(o, str) for o in requested))):
        raise frames.FrameError("the requested outputs are not a list of strings")
    return ref, sha256, tokens, requested


def _error(rid: int, status: int, message: str) -> list[bytes | memoryview]:
    return frames.frame(frames.ERROR, rid, [json.dumps({"status": status, **encode_error(message)}).encode()])
