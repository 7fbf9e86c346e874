"""A front worker's fast path: small inference requests parsed, decoded and encoded in the worker.

With ``--workers N`` each worker terminates TLS (``front.py``). For the one request that
dominates traffic, a small ``POST /v2/models/{ref}/infer``, the worker also parses the HTTP
head, decodes the OIP body and encodes the response itself, so that work spreads over the
workers' cores; the main process only receives the decoded tensors in a frame
(``frames.py``), runs the model and sends the outputs back (``fast_main.py``).

Everything else goes to the main process's HTTP server unchanged: the first request on a
connection that is not a plain small inference request (another route, a body over
``MAX_BODY``, chunked encoding, ``Expect``, HTTP/1.0, a query string, a header this module does
not read exactly as llhttp would, a head larger than the limit) and everything after it on
that connection are forwarded byte for byte, so the framing of what is forwarded is only ever
decided by the main process's parser: the two parsers can never disagree on where a request
ends. The head rules here are a strict subset of HTTP/1.1 (no folding, no bare LF, one
Content-Length of digits, no duplicate header); a head outside them is not refused, just not
taken.

Bounds are the main process's (``connections.py``, ``bodies.py``): a head within
``--head-timeout`` of the connection (or of its first byte after a response), keep-alive
connections closed after 30 s idle, a body within the body idle timeout, its bytes and its
decoder's allocations taken from the server-wide in-flight budget (shared with the main
process), a response cut off when the client takes nothing for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from ...protocol.error_body import encode_error
from ...protocol.infer import HEADER_LENGTH, decode_request
from ...protocol.models import MODEL_SHA256, OWNER_TOKENS
from .. import frames
from ..errors import LimitExceeded, Unavailable
from ..inference import string_bytes
from .bodies import BodyLimits, HeldResponse, Hold, MemoryBudget, too_slow
from .connections import ConnectionLimits, plain_answer
from .errors import answer_of
from .oip import INLINE_BYTES, PIN, binary_flags, encode_outputs, header_length, json_bound_of
from .state import tokens_of

__all__ = [
    "KEEP_ALIVE_S",
    "MAX_BODY",
    "Channel",
    "FastHead",
    "FastSettings",
    "linger",
    "parse_head",
    "serve_connection",
]

log = logging.getLogger("blindai.front")

MAX_BODY = INLINE_BYTES  # bodies the worker decodes itself; larger ones go to the main process
MAX_HEAD = 64 << 10  # heads the worker reads itself (and --max-head-bytes if lower); larger ones go there too
KEEP_ALIVE_S = 30.0  # as the main process's HTTP server (serving.py)
CHUNK = 1 << 18  # one read from a client (and the workers' stream limit)
_SLICE = HeldResponse.SLICE  # a large answer leaves in these, each waiting for the client
_ONE_WRITE = 16 << 10

_TARGET = re.compile(r"/v2/models/([A-Za-z0-9._~-]+)(?:/versions/[A-Za-z0-9._~-]+)?/infer")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")
_DIGITS = re.compile(r"[0-9]{1,9}")
# Headers whose presence means semantics this module does not implement: the request is forwarded.
_NOT_TAKEN = frozenset({"transfer-encoding", "expect", "upgrade", "te", "trailer"})


@dataclass(frozen=True, slots=True)
class FastHead:
    """What the fast path reads from a request head; every other header is ignored, as the route does."""

    ref: str
    length: int
    close: bool
    header_length: str | None
    sha256: str | None
    authorization: str
    owner_tokens: str


def parse_head(head: bytes, max_body: int = MAX_BODY) -> FastHead | None:
    """The head (without its blank line) of an inference request with a body of at most
    ``max_body`` bytes, or None: forward it."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if any("\n" in line or "\r" in line for line in lines):
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1":
        return None
    target = _TARGET.fullmatch(parts[1])
    if target is None or target.group(1) in (".", ".."):
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        value = value.strip(" \t")
        if not sep or not _TOKEN.fullmatch(name) or (value and not _VALUE.fullmatch(value)):
            return None
        name = name.lower()
        if name in fields or name in _NOT_TAKEN:
            return None
        fields[name] = value
    length = fields.get("content-length")
    if length is None or not _DIGITS.fullmatch(length) or int(length) > max_body:
        return None
    connection = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    if "upgrade" in connection:
        return None
    return FastHead(
        ref=target.group(1),
        length=int(length),
        close="close" in connection,
        header_length=fields.get(HEADER_LENGTH.lower()),
        sha256=fields.get(MODEL_SHA256.lower()),
        authorization=fields.get("authorization", ""),
        owner_tokens=fields.get(OWNER_TOKENS.lower(), ""),
    )


@dataclass(frozen=True, slots=True)
class FastSettings:
    """The main process's limits, as a worker applies them (made before the workers fork)."""

    connection: ConnectionLimits
    body: BodyLimits
    budget: MemoryBudget
    max_connections: int  # per worker
    max_body: int  # bodies decoded in the worker: MAX_BODY, or --max-request-bytes if lower (the rest: 413 there)
    max_result_bytes: int  # the largest result frame the main process may send (frames.max_result)


class Channel:
    """A worker's end of its frame channel: requests out, results matched back to their callers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_result_bytes: int) -> None:
        self._reader, self._writer = reader, writer
        self._max = max_result_bytes
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next = 0
        self.closed = False

    async def run(self) -> None:
        """Deliver results until the main process closes the channel; then every caller gets a ConnectionError."""
        try:
            while True:
                kind, rid, payload = await frames.read_frame(self._reader, self._max)
                waiter = self._waiting.pop(rid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result((kind, payload))
                elif kind == frames.RESULT:  # its caller left: the outputs are taken all the same
                    self.delivered(rid)
        except (asyncio.IncompleteReadError, ConnectionError, frames.FrameError) as exc:
            log.warning("front worker: the main process closed the channel (%s)", type(exc).__name__)
        finally:
            self.closed = True
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the main process closed the channel"))
            self._waiting.clear()

    async def call(self, payload: list[bytes | memoryview]) -> tuple[int, int, bytes]:
        """Send a request frame; its id, and the kind and payload of the answer."""
        if self.closed:
            raise ConnectionError("the main process closed the channel")
        size = sum(len(p) for p in payload)
        if size > frames.MAX_REQUEST:  # never reached from a 64 KiB body and head; never a frame that ends the channel
            raise LimitExceeded(f"this request decodes to {size} bytes, over {frames.MAX_REQUEST}")
        self._next = rid = (self._next + 1) & 0xFFFFFFFF
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = waiter
        try:
            self._writer.writelines(frames.frame(frames.REQUEST, rid, payload))
            await self._writer.drain()
            kind, answer = await waiter
        finally:
            self._waiting.pop(rid, None)
        return rid, kind, answer

    def delivered(self, rid: int) -> None:
        if not self.closed:
            self._writer.writelines(frames.frame(frames.DELIVERED, rid))


Pipe = Callable[[bytes], Awaitable[None]]


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    settings: FastSettings,
    channel: Channel,
    pipe: Pipe,
) -> None:
    """Serve small inference requests until the connection ends or a request must go to the main
    process: then ``pipe(bytes not yet consumed)`` forwards the rest of the connection."""
    loop = asyncio.get_running_loop()
    conn, body_limits = settings.connection, settings.body
    buf = bytearray()
    head_deadline = loop.time() + conn.head_timeout_s  # the first head: counted from the connection
    idle = False
    while True:
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > conn.max_head_bytes:
                await pipe(bytes(buf))  # the main process answers 431
                return
            wait = KEEP_ALIVE_S if idle else head_deadline - loop.time()
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    data = await reader.read(CHUNK)
            except TimeoutError:
                if not idle:
                    writer.write(plain_answer(408, f"no complete request head within {conn.head_timeout_s:g} s"))
                return
            if not data:
                return
            if idle:
                idle, head_deadline = False, loop.time() + conn.head_timeout_s
            buf += data
        if end + 4 > min(MAX_HEAD, conn.max_head_bytes):  # its limit, and its 431, are the main process's
            await pipe(bytes(buf))
            return
        head = parse_head(bytes(buf[:end]), settings.max_body)
        if head is None:
            await pipe(bytes(buf))
            return
        hold = Hold(settings.budget, wait_s=body_limits.idle_timeout_s)
        try:
            try:
                body = await _body(reader, buf, end + 4, head.length, body_limits, hold)
            except ConnectionError:
                return
            except Unavailable as exc:  # the budget stayed full: answered while the body may still come
                await _send_error(writer, *answer_of(exc))
                await linger(reader)
                return
            except Exception as exc:  # too slow: answered, and closed at once
                await _send_error(writer, *answer_of(exc))
                return
            if not await _answer(head, body, writer, settings, channel, hold):
                return
        finally:
            hold.release()
        idle = not buf
        if not idle:
            head_deadline = loop.time() + conn.head_timeout_s  # a pipelined request: its head is already here


async def _body(
    reader: asyncio.StreamReader, buf: bytearray, start: int, length: int, limits: BodyLimits, hold: Hold
) -> bytes:
    """The body that follows the head in ``buf`` (reading more as needed), cut from ``buf``; its bytes
    are taken from the budget as they arrive (a declared length alone holds nothing, as in bodies.py)."""
    loop = asyncio.get_running_loop()
    begun = last = loop.time()
    await hold.take_async(min(len(buf) - start, length), "request body")
    # As bodies.py bounds a body this small: no silence over the idle timeout, and (the rate's bound
    # for a small body being the same grace) all of it within that time.
    deadline = begun + limits.idle_timeout_s
    while len(buf) < start + length:
        reason = "rate" if deadline < last + limits.idle_timeout_s else "idle"
        try:
            async with asyncio.timeout(max(min(deadline, last + limits.idle_timeout_s) - loop.time(), 0.0)):
                data = await reader.read(CHUNK)
        except TimeoutError:
            raise too_slow("request body", reason, len(buf) - start, loop.time() - begun, limits) from None
        if not data:
            raise ConnectionError("the client closed the connection")
        last = loop.time()
        await hold.take_async(min(len(data), start + length - len(buf)), "request body")
        buf += data
    body = bytes(buf[start : start + length])
    del buf[: start + length]
    return body


async def linger(reader: asyncio.StreamReader, seconds: float = 2.0) -> None:
    """Read and drop what the client still sends, for a moment, before closing after an error:
    closing with its bytes unread would make the kernel reset the connection, and the client
    could lose the answer (a lingering close, as the main process's server does)."""

    async def discard() -> None:
        while await reader.read(CHUNK):
            pass

    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, TimeoutError):
        await asyncio.wait_for(discard(), seconds)


async def _answer(
    head: FastHead, body: bytes, writer: asyncio.StreamWriter, settings: FastSettings, channel: Channel, hold: Hold
) -> bool:
    """Decode, run through the main process, encode and send; whether the connection stays open
    (after an error it closes, as the main process's error answers do)."""
    rid: int | None = None
    try:
        req = decode_request(
            body,
            header_length(head.header_length),
            max_json_bytes=settings.body.max_json_bytes,
            reserve=lambda n: hold.take(n, "decoding this request"),
        )
        meta: dict[str, Any] = {
            "ref": head.ref,
            "sha256": head.sha256,
            "tokens": tokens_of(head.authorization, head.owner_tokens),
            "outputs": [o.name for o in req.outputs] if req.outputs is not None else None,
            "pin": req.parameters.get(PIN),
        }
        rid, kind, payload = await channel.call(frames.pack(meta, req.inputs))
        if kind == frames.ERROR:
            rid = None  # an error holds nothing in the main process
            answer = json.loads(payload)
            await _send_error(writer, int(answer["status"]), str(answer["error"]))
            return False
        if kind != frames.RESULT:
            raise frames.FrameError(f"the main process answered with frame kind {kind}")
        # String outputs are decoded element by element: in a thread when the frame is large.
        result, outputs, strings = (
            await asyncio.to_thread(_unpack, payload) if len(payload) > INLINE_BYTES else _unpack(payload)
        )
        binary = binary_flags(req, outputs)
        json_bound = await json_bound_of(settings.body.max_json_response_bytes, outputs, binary)
        # The request is decoded and gone; the frame and its string objects are counted by the main
        # process, the strings' encoding and the JSON text here.
        hold.release()
        hold.take(strings + 3 * json_bound, "this response")
        chunks, head_len = await encode_outputs(
            str(result["model"]), outputs, binary, req.id, json_bound + len(payload)
        )
        headers = [(b"content-type", b"application/json" if head_len is None else b"application/octet-stream")]
        if head_len is not None:
            headers.append((HEADER_LENGTH.lower().encode(), b"%d" % head_len))
        if head.close:
            headers.append((b"connection", b"close"))
        return await _send(writer, 200, headers, chunks, settings.body.idle_timeout_s) and not head.close
    except ConnectionError:  # the channel: the main process is stopping
        await _send_error(writer, 503, "the server is stopping; retry")
        return False
    except Exception as exc:
        await _send_error(writer, *answer_of(exc))
        return False
    finally:
        if rid is not None:
            channel.delivered(rid)


def _unpack(payload: bytes) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]], int]:
    result, outputs = frames.unpack(payload)
    return result, outputs, string_bytes(outputs)


_date: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date[1]


async def _send(
    writer: asyncio.StreamWriter, status: int, headers: list[tuple[bytes, bytes]], chunks: list[Any], timeout_s: float
) -> bool:
    """One response; False when the client took nothing for ``timeout_s`` (cut off, as HeldResponse does)."""
    pieces = [c if isinstance(c, bytes) else memoryview(c).cast("B") for c in chunks]
    lines = [b"HTTP/1.1 %d %s" % (status, http.HTTPStatus(status).phrase.encode()), b"date: " + _date_header()]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"content-length: %d" % sum(len(p) for p in pieces))
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if sum(len(p) for p in pieces) <= _ONE_WRITE:  # one TLS record for a small answer
        pieces = [b"".join([head, *pieces])]
    else:
        writer.write(head)
    try:
        for piece in pieces:
            for i in range(0, len(piece), _SLICE):
                writer.write(piece[i : i + _SLICE])
                async with asyncio.timeout(timeout_s):
                    await writer.drain()
        if not pieces:
            async with asyncio.timeout(timeout_s):
                await writer.drain()
    except (TimeoutError, ConnectionError):
        return False
    return True


async def _send_error(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    """``{"error": message}`` and a close, as the main process's error answers (errors.py)."""
    body = json.dumps(encode_error(message), ensure_ascii=False, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await _send(writer, status, headers, [body], 5.0)
