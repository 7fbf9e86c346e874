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
import contextlib
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from ...protocol.error_body import encode_error
from .. import frames
from ..errors import CapacityExceeded
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
    """Answer one worker's frames until it closes its end (or sends a malformed frame)."""
    reader, stream = await asyncio.open_unix_connection(sock=sock)
    writer = _FrameWriter(stream)
    delivering: dict[int, Hold] = {}  # outputs sent, waiting for the worker to report them taken
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                kind, rid, payload = await frames.read_frame(reader, frames.MAX_REQUEST)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if kind == frames.DELIVERED:
                hold = delivering.pop(rid, None)
                if hold is not None:
                    hold.release()
            elif kind == frames.REQUEST:
                task = asyncio.create_task(_answer(state, writer, rid, payload, delivering, metrics))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                raise frames.FrameError(f"a worker sent frame kind {kind}")
    except frames.FrameError as exc:
        log.error("front worker channel closed: %s", exc)
    finally:
        for task in tasks:
            task.cancel()
        for hold in delivering.values():
            hold.release()
        stream.close()
        with contextlib.suppress(ConnectionError):
            await stream.wait_closed()


async def _answer(
    state: ServerState,
    writer: _FrameWriter,
    rid: int,
    payload: bytes,
    delivering: dict[int, Hold],
    metrics: Metrics | None,
) -> None:
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
            out = frames.frame(frames.RESULT, rid, frames.pack({"model": model_id}, outputs))
            size = sum(len(p) for p in out)
            if size > frames.max_result(state.engine.max_output_bytes):  # the worker would close the channel
                raise CapacityExceeded(f"outputs of {size} bytes as sent exceed what --max-output-bytes allows")
            # What is sent, held from now until the worker says its client took it, as the HTTP route
            # holds a response (string outputs as their encoded bytes, not the array's pointers).
            hold.take(size, "this response")
        except frames.FrameError as exc:
            status, message = 400, f"malformed request from the front worker: {exc}"
            log.error("%s", message)
            out = _error(rid, status, message)
        except Exception as exc:  # every refusal becomes the status the HTTP route would answer
            status, message = answer_of(exc)
            out = _error(rid, status, message)
        if status == 200:
            delivering[rid] = hold
        else:
            hold.release()
        await writer.send(out)
    except BaseException:
        delivering.pop(rid, None)
        hold.release()
        raise
    finally:
        if metrics is not None:
            metrics.in_progress.labels("attested", ROUTE).dec()
            metrics.record("attested", ROUTE, status, time.perf_counter() - start)


class _FrameWriter:
    """Frames to one worker, whole and one at a time, a large one in slices as the socket takes them.

    Written at once, a result of a few MB would be copied into the transport's buffer and held
    twice (array and copy) until the worker read it; in slices, this process holds each output
    once, counted in the budget, plus one slice.
    """

    SLICE = HeldResponse.SLICE

    def __init__(self, stream: asyncio.StreamWriter) -> None:
        self.stream = stream
        self.lock = asyncio.Lock()

    async def send(self, pieces: list[bytes | memoryview]) -> None:
        async with self.lock:
            if sum(len(p) for p in pieces) <= self.SLICE:
                self.stream.writelines(pieces)
                await self.stream.drain()
                return
            for piece in pieces:
                view = memoryview(piece).cast("B")
                for i in range(0, len(view), self.SLICE):
                    self.stream.write(view[i : i + self.SLICE])
                    await self.stream.drain()


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
