"""Connections before a request exists: TLS handshakes, request heads, and how many there are.

uvicorn bounds neither the time a client may take to send a request head nor its size, nor
how many connections are open: its keep-alive timer starts only after a response, and
httptools hands every header line to Python, which keeps it. Measured on the unguarded server
(hostile tests): 3,000 connections that each sent half a request head stayed open for ever;
190 MiB of header lines became 190 MiB of server memory; with 1,024 open files a thousand
silent sockets made ``accept()`` fail, ``/health`` included. This module bounds all three,
per listening port:

- a TLS handshake must finish within ``handshake_timeout_s`` (asyncio's default is 60 s);
- a request head must be complete ``head_timeout_s`` after the connection is made or its
  first byte arrives, else the connection gets a 408 and is closed (bodies have their own
  deadlines in bodies.py; idle keep-alive connections uvicorn's ``timeout_keep_alive``);
- a request head (URL and headers) of more than ``max_head_bytes`` gets a 431 and a close;
- beyond ``max_connections`` open connections a new one is closed at once, so file
  descriptors stay for the other port and for the model store;
- at most ``MAX_PIPELINED`` requests wait behind the one being answered on a connection (one
  more is answered 400, after the answers of those before it, and the connection closed):
  uvicorn queued every pipelined request it parsed, so 20-byte requests never read back grew
  the server by ~115x what the client sent (a red team: +470 MB for 4 MB);
- a header value that never ends was kept by httptools whole (+150 MB before the head
  deadline): the head's raw bytes are now counted as they arrive, not only the header lines
  httptools hands over; and each line counts ``HEADER_LINE_COST`` bytes beyond its text, for
  what the server keeps of it (10,000 empty lines in a 54 KB head held ~1.4 MB).

What remains (threat-model.md): a peer that opens connections faster than the timeouts
expire them can still keep the ports busy; that is a network flood, for the network's
defences (rate limits in front of the TEE) to absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ABORT",
    "ConnectionLimits",
    "default_max_connections",
    "guarded_protocol",
    "handshake_timeout",
    "HEADER_LINE_COST",
    "MAX_PIPELINED",
    "plain_answer",
    "raise_open_file_limit",
]

log = logging.getLogger("blindai.server")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per listening port; every field is a ``blindai serve`` flag."""

    head_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    max_head_bytes: int = 64 << 10
    max_connections: int = 0  # 0: a quarter of the open-file limit each port (default_max_connections)


def default_max_connections(open_files: int) -> int:
    """Both ports together stay well inside the open-file limit: model files, logs and the
    front workers' sockets need descriptors too."""
    return max(16, min(10_000, (open_files - 256) // 4))


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the limit now in force.

    Many systems start services with a soft limit of 1,024, which a thousand idle sockets
    exhaust; the hard limit is what the operator allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


@contextlib.contextmanager
def handshake_timeout(loop: asyncio.AbstractEventLoop, seconds: float) -> Iterator[None]:
    """While uvicorn creates its listening server, TLS handshakes (and closing shutdowns) get
    ``seconds``, not asyncio's 60 (and 30).

    uvicorn passes no ``ssl_handshake_timeout`` to ``loop.create_server``; this supplies one
    for the servers created inside the block (the loop attribute is restored after).
    """
    original = loop.create_server

    async def create_server(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
            kwargs.setdefault("ssl_shutdown_timeout", seconds)  # a closed TLS connection waits no longer for the peer
        return await original(*args, **kwargs)

    loop.create_server = create_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.create_server  # back to the class's method


_REFUSALS_LOGGED_EVERY_S = 10.0
ABORT = "blindai.abort"  # scope key: a callable that drops the connection without flushing
MAX_PIPELINED = 32
HEADER_LINE_COST = 128  # counted per header line beyond its text, against --max-head-bytes


def guarded_protocol(limits: ConnectionLimits) -> type[Any]:
    """uvicorn's httptools protocol with the bounds above; pass it as ``uvicorn.Config(http=...)``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    last_refusal_log = [0.0]

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _in_head = False
        _raw_head = 0  # bytes of reads spent wholly inside one head (its size, however httptools splits it)
        _boundaries = 0  # heads and messages completed: a read that crossed one is not all head
        _refusal: bytes | None = None
        _pipelined = False  # the refusal is for pipelining: deferred until the requests before it are answered
        _deferred: bytes | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                now = time.monotonic()
                if now - last_refusal_log[0] > _REFUSALS_LOGGED_EVERY_S:
                    last_refusal_log[0] = now
                    log.warning(
                        "refusing connections: %d open on this port (the limit, --max-connections)",
                        limits.max_connections,
                    )
                transport.abort()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refusal is not None:
                return  # refused: the answer is on its way, the connection closing
            heading, boundaries = self._raw_head >= 0, self._boundaries
            super().data_received(data)
            if heading and self._boundaries == boundaries and self._refusal is None:
                self._raw_head += len(data)
                if self._raw_head > limits.max_head_bytes and not self.transport.is_closing():
                    self.transport.write(plain_answer(431, _too_large(limits)))
                    self.transport.close()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._raw_head = 0  # the next request's head starts here (bytes after it in this read are not counted)
            self._boundaries += 1

        def on_response_complete(self) -> None:
            last = not self.pipeline  # nothing queued: the answer just completed was the last in flight
            super().on_response_complete()
            if self._deferred is not None and last:
                self.transport.write(self._deferred)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # A response cut off for not being read (bodies.HeldResponse) ends the connection at once:
            # closed gracefully, its unsent rest would wait for a reader that never comes, held in
            # memory (the TLS layer's close flushes first, with no deadline while the peer is silent).
            self.scope[ABORT] = self.transport.abort  # type: ignore[literal-required]
            self._head_bytes = 0
            self._in_head = True
            if self._head_timer is None:
                self._arm()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            # What the server keeps of a line is more than its text (a tuple of two bytes objects):
            # each is counted at HEADER_LINE_COST more, so 10,000 empty lines cannot hold ~1.4 MB.
            self._count(len(name) + len(value) + 4 + HEADER_LINE_COST)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._raw_head = -1  # the body follows: not counted as head
            self._boundaries += 1
            self._disarm()
            super().on_headers_complete()
            if len(self.pipeline) > MAX_PIPELINED:
                self.pipeline.popleft()  # this one is refused, never run; those before it are answered first
                self._refusal = plain_answer(
                    400, f"more than {MAX_PIPELINED} requests pipelined on one connection before their answers"
                )
                self._pipelined = True
                raise ValueError("too many pipelined requests")  # stops httptools; answered in send_400_response

        def send_400_response(self, msg: str) -> None:
            if self._refusal is not None:  # our own refusal stopped the parser: send it, not a 400
                if self._pipelined and self.pipeline:
                    # Requests before the refused one run (or queue): their answers go first, in order,
                    # then the refusal and the close (else a client would be told 400 for a request
                    # that ran). Nothing more is read meanwhile.
                    self._deferred = self._refusal
                    self.flow.pause_reading()
                    return
                self.transport.write(self._refusal)
                self.transport.close()
                return
            super().send_400_response(msg)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > limits.max_head_bytes:
                self._refusal = plain_answer(431, _too_large(limits))
                raise ValueError("request head too large")  # stops httptools; answered in send_400_response

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(limits.head_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self._in_head and not self.cycle.response_complete:
                return  # a request is being served: its body and run have their own deadlines
            if self._in_head:
                self.transport.write(plain_answer(408, f"no complete request head within {limits.head_timeout_s:g} s"))
            self.transport.close()

    return GuardedProtocol


def _too_large(limits: ConnectionLimits) -> str:
    return f"the request head exceeds {limits.max_head_bytes} bytes (URL and headers)"


def plain_answer(status: int, message: str) -> bytes:
    """A whole plain-text answer that closes the connection (408 and 431: before any route runs)."""
    reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
    body = message.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )
