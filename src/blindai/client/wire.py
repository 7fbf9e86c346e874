"""Inference requests as bare HTTP/1.1 on the attested channel: the SDK's hot path, without httpx.

Why: for a small model most of a call's added latency was the client's own Python. httpx
spent about 1.0 ms of client CPU per request on URL parsing, request and response objects
and header normalisation (tiny MLP on the 2-core box: 1.25 ms of client CPU per `run_model`
through httpx, 0.23 ms through this; 2.3 ms -> 1.2 ms a call, wall clock), and where clients
share cores with the server that is time the server does not get. So `Connection.run_model`
sends its one request here, and everything else (uploads, model management, evidence) stays
on httpx.

Nothing about trust changes: sockets come from the same context (`pinned_context`: one
trusted certificate, the attested key checked again inside every handshake, so a changed key
fails before a byte is sent), with the connection's timeouts, and h11 frames the messages (no
hand-written HTTP parsing). A request is written at most once: an idle socket is reused only
if, when taken from the pool, it has nothing to read (not closed by the server, no stray bytes
that would pass for the next answer; bytes a misbehaving server sends later than that are not
detected, as with httpx) and has been idle less than 15 s; if a reused socket refuses the write
itself and no early answer (a 413 from the head) is waiting, the request goes once on a fresh
socket; once written, any failure is the caller's error (an attacker who cuts an answer cannot
make the server run a request twice). The timeout bounds the whole answer, not each read (a
peer dripping bytes cannot stretch it); an answer must carry its length or be chunked (a cut
stream must not pass for a complete answer); sockets are never shared with a forked child.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass

import h11

__all__ = ["PinnedHTTP", "Reply"]

_RECV = 1 << 16
_ONE_SEND = 1 << 16  # head and body in one send up to this size (two syscalls cost more than a copy)
_MAX_IDLE = 8  # idle sockets kept for reuse (a client with more threads opens more, and closes the rest)
_IDLE_S = 15.0  # an idle socket older than this is not reused (the server closes them after 30 s)
_EARLY_S = 0.2  # after a refused write, how long an answer already sent (an early 413) is waited for


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer: status, headers (lower-case names, latin-1 values) and body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class _Stale(Exception):
    """A reused idle socket refused the request's bytes: the server had closed it."""


def _readable(sock: ssl.SSLSocket) -> bool:
    """Whether an idle socket has anything to read: the server's close, or bytes nobody asked for."""
    return sock.fileno() < 0 or sock.pending() > 0 or bool(select.select([sock], [], [], 0)[0])


_POOLS: weakref.WeakSet[PinnedHTTP] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A child forked while another thread was inside a pool's lock would inherit it held, and
    hang on its first call: each pool starts the child with a lock of its own and no sockets
    (the parent's TLS sessions are the parent's)."""
    for pool in list(_POOLS):
        pool._lock = threading.Lock()
        pool._idle = []
        pool._pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PinnedHTTP:
    """A small pool of keep-alive HTTP/1.1 sockets to one attested port; thread-safe.

    Each exchange holds one socket alone; sockets go back to the pool only after a complete,
    keep-alive answer with nothing left over, and are used by the process that opened them only
    (a forked child never touches its parent's TLS sessions). Raises OSError (ssl errors,
    timeouts and refused keys included) or ``h11.ProtocolError``; the caller types them.
    """

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, *, connect_timeout: float | None, timeout: float | None
    ) -> None:
        self._address = (host.strip("[]"), port)
        self._host_header = f"[{self._address[0]}]:{port}" if ":" in self._address[0] else f"{host}:{port}"
        self._context = context
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._idle: list[tuple[ssl.SSLSocket, h11.Connection, float]] = []  # with when each went idle
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        _POOLS.add(self)

    def exchange(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Reply:
        """One request and its whole answer; the request is written at most once (module docstring)."""
        sock, conn, reused = self._take(fresh=False)
        try:
            reply = self._once(sock, conn, method, target, headers, body, reused)
        except _Stale:
            sock.close()
        except BaseException:
            sock.close()
            raise
        else:
            self._finish(sock, conn)  # outside the handlers: a pooled socket is never closed behind the pool
            return reply
        sock, conn, _ = self._take(fresh=True)
        try:
            reply = self._once(sock, conn, method, target, headers, body, False)
        except BaseException:
            sock.close()
            raise
        self._finish(sock, conn)
        return reply

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock, _, _ in idle:
            sock.close()

    def _take(self, *, fresh: bool) -> tuple[ssl.SSLSocket, h11.Connection, bool]:
        while True:
            with self._lock:
                if self._closed:
                    raise ConnectionError("the connection is closed")
                if os.getpid() != self._pid:  # forked: the parent's sockets are the parent's
                    self._idle, self._pid = [], os.getpid()
                if fresh or not self._idle:
                    break
                sock, conn, since = self._idle.pop()
            if time.monotonic() - since < _IDLE_S and not _readable(sock):
                return sock, conn, True
            sock.close()
        raw = socket.create_connection(self._address, timeout=self._connect_timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._context.wrap_socket(raw)  # the handshake, and the pin check, happen here
        except BaseException:
            raw.close()
            raise
        with self._lock:
            closed = self._closed  # close() ran while this socket was being opened
        if closed:
            sock.close()
            raise ConnectionError("the connection is closed")
        sock.settimeout(self._timeout)
        return sock, h11.Connection(h11.CLIENT), False

    def _finish(self, sock: ssl.SSLSocket, conn: h11.Connection) -> None:
        """Pool the socket if the exchange ended cleanly with nothing left over; else close it."""
        clean = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        if clean and not conn.trailing_data[0] and not sock.pending():
            conn.start_next_cycle()
            with self._lock:
                if not self._closed and len(self._idle) < _MAX_IDLE and os.getpid() == self._pid:
                    self._idle.append((sock, conn, time.monotonic()))
                    return
        sock.close()

    def _once(
        self,
        sock: ssl.SSLSocket,
        conn: h11.Connection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        reused: bool,
    ) -> Reply:
        head = conn.send(
            h11.Request(
                method=method,
                target=target,
                headers=[("Host", self._host_header), ("Content-Length", str(len(body))), *headers],
            )
        )
        framed = [head or b""]
        if body:  # h11 counts the body against Content-Length; the pieces are the body itself, not copies
            framed += conn.send_with_data_passthrough(h11.Data(data=body)) or []
        framed.append(conn.send(h11.EndOfMessage()) or b"")
        try:
            if len(body) <= _ONE_SEND:
                sock.sendall(b"".join(framed))
            else:
                for piece in framed:
                    sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError) as exc:
            # The server may have answered before the end of the body (a 413 from the head) and
            # closed: that answer is the answer. Else a reused socket had been closed while idle.
            try:
                return self._answer(sock, conn, _EARLY_S)
            except (OSError, h11.ProtocolError):
                pass
            if reused:
                raise _Stale from exc
            raise
        return self._answer(sock, conn, self._timeout)

    def _answer(self, sock: ssl.SSLSocket, conn: h11.Connection, timeout: float | None) -> Reply:
        """The whole answer, within ``timeout`` in all (a peer dripping bytes does not extend it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status, reason, answer_headers, parts = 0, "", {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no complete answer within {timeout} s")
                    sock.settimeout(left)
                conn.receive_data(sock.recv(_RECV))
            elif isinstance(event, h11.Response):
                status, reason = event.status_code, event.reason.decode("latin-1")
                answer_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                framing = answer_headers.get("transfer-encoding", "").lower()
                if "content-length" not in answer_headers and framing != "chunked":
                    # Its end would be the connection's: a cut stream would pass for a complete answer.
                    raise ConnectionError("the answer has no length and is not chunked")
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                sock.settimeout(self._timeout)
                return Reply(status, reason, answer_headers, b"".join(parts))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the server closed the connection before its answer was complete")
            # h11.InformationalResponse (1xx): nothing to do, the final answer follows
