"""The SDK's inference hot path (client/wire.py): bare HTTP/1.1 on the pinned channel.

The attacker is the network (a key swapped in after connect), or a server that closes or cuts
connections. What must hold: a changed key is refused inside the handshake with nothing sent; a
socket the server closed while idle is replaced once, silently, while an answer cut short is an
error, never a silent retry; threads never share a socket or see each other's answers; and the
real server answers the hot path exactly as it answers httpx.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import numpy as np
import onnxruntime as ort
import pytest

import blindai
from blindai.attestation.binding import load_certificate
from blindai.attestation.channel import is_pin_failure, pinned_context
from blindai.client import wire
from blindai.client.wire import PinnedHTTP
from blindai.server.tls import TlsIdentity, make_identity
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect


@dataclass
class FakeServer:
    """A TLS server test double: echoes each request body; ``mode`` says how it misbehaves.

    ``keep``: keep-alive, like the real server; ``close``: closes every connection after its
    answer without saying so (an idle timeout, seen by the next request); ``cut``: announces 100
    bytes, sends 10 and closes; ``swallow``: reads the request and closes without answering;
    ``extra``: sends a second, unrequested answer after each real one; ``early``: answers 413
    from the head and closes; ``drip``: one byte every 0.2 s; ``unframed``: no length.
    """

    identity: TlsIdentity
    mode: str = "keep"
    delay: float = 0.0
    connections: int = 0
    requests: int = 0
    bytes_received: int = 0
    _sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._ctx = self.identity.ssl_context()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._ctx.wrap_socket(raw, server_side=True) as sock:
                conn = h11.Connection(h11.SERVER)
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = sock.recv(65536)
                        self.bytes_received += len(data)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        self.requests += 1
                        body = b""
                        if self.mode == "early":  # refused from the head, the body then drained unread
                            answer = h11.Response(
                                status_code=413, headers=[("Content-Length", "8"), ("Connection", "close")]
                            )
                            out = conn.send(answer)
                            sock.sendall((out or b"") + b"too big!")
                            sock.settimeout(1.0)
                            with contextlib.suppress(OSError):
                                while sock.recv(1 << 16):
                                    pass
                            return
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        time.sleep(self.delay)
                        if self.mode == "swallow":  # took the request in, then the connection went
                            return
                        if self.mode == "drip":  # a valid answer, one byte at a time
                            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                                sock.sendall(bytes([byte]))
                                time.sleep(0.2)
                            return
                        if self.mode == "unframed":  # no length: its end would be the connection's
                            sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
                            return
                        if self.mode == "cut":
                            head = conn.send(h11.Response(status_code=200, headers=[("Content-Length", "100")]))
                            sock.sendall((head or b"") + b"0123456789")
                            return
                        out = conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))]))
                        sock.sendall((out or b"") + body)
                        conn.send(h11.Data(data=body))
                        conn.send(h11.EndOfMessage())
                        if self.mode == "close":
                            return
                        if self.mode == "extra":  # an answer nobody asked for, after the real one
                            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE")
                        conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return

    def close(self) -> None:
        self._sock.close()


@pytest.fixture()
def identity() -> TlsIdentity:
    return make_identity(["127.0.0.1"])


def _client(identity: TlsIdentity, port: int) -> PinnedHTTP:
    ctx = pinned_context(load_certificate(identity.certificate_pem))
    return PinnedHTTP("127.0.0.1", port, ctx, connect_timeout=5, timeout=5)


@pytest.fixture()
def server(identity: TlsIdentity) -> Iterator[FakeServer]:
    srv = FakeServer(identity)
    yield srv
    srv.close()


def test_answers_come_back_on_one_kept_alive_socket(identity: TlsIdentity, server: FakeServer) -> None:
    client = _client(identity, server.port)
    for i in range(5):
        assert client.exchange("POST", "/x", [], b"hello %d" % i).body == b"hello %d" % i
    assert server.connections == 1 and server.requests == 5
    client.close()


def test_a_socket_closed_while_idle_is_replaced_once(identity: TlsIdentity, server: FakeServer) -> None:
    server.mode = "close"
    client = _client(identity, server.port)
    for i in range(3):
        assert client.exchange("POST", "/x", [], b"again %d" % i).body == b"again %d" % i
    assert server.requests == 3  # each request answered once: no request was sent twice to be answered twice
    client.close()


def test_an_answer_cut_short_is_an_error_never_a_retry(identity: TlsIdentity, server: FakeServer) -> None:
    server.mode = "cut"
    client = _client(identity, server.port)
    with pytest.raises((OSError, h11.ProtocolError)):
        client.exchange("POST", "/x", [], b"once")
    assert server.requests == 1
    client.close()


def test_several_idle_sockets_closed_by_the_server_do_not_fail_the_next_call(
    identity: TlsIdentity, server: FakeServer
) -> None:
    """Red team (F1): after concurrent calls and the server's keep-alive timeout, two dead idle
    sockets in a row made the next call fail (the retry took another dead one)."""
    server.mode, server.delay = "close", 0.5
    client = _client(identity, server.port)
    together = threading.Barrier(3)

    def warm() -> None:
        together.wait(10)
        client.exchange("POST", "/x", [], b"warm")

    threads = [threading.Thread(target=warm) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(client._idle) >= 2, "the three calls did not overlap: the test proves nothing"
    deadline = time.monotonic() + 10
    while not all(wire._readable(sock) for sock, _, _ in client._idle):  # the server's closes have arrived
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.delay = 0.0
    assert client.exchange("POST", "/x", [], b"after the idle timeout").body == b"after the idle timeout"
    assert server.requests == 4
    client.close()


def test_a_request_taken_in_is_never_sent_again(identity: TlsIdentity, server: FakeServer) -> None:
    """Red team (F2): the server (or a relay cutting the answer) takes a request in on a reused
    socket and the connection goes: the first version sent it again on a fresh socket, so the
    server ran it twice and the caller saw success. It is an error for the caller now."""
    client = _client(identity, server.port)
    client.exchange("POST", "/x", [], b"first")  # leaves a kept-alive socket
    server.mode = "swallow"
    with pytest.raises((OSError, h11.ProtocolError)):
        client.exchange("POST", "/x", [], b"RUN-ONCE")
    assert server.requests == 2  # "first" and one "RUN-ONCE"
    client.close()


def test_bytes_nobody_asked_for_are_never_read_as_the_next_answer(identity: TlsIdentity, server: FakeServer) -> None:
    """Red team (F3): an unrequested answer left on an idle socket was returned to the next caller
    (another thread's, perhaps). Such a socket is not reused."""
    server.mode = "extra"
    client = _client(identity, server.port)
    assert client.exchange("POST", "/x", [], b"mine").body == b"mine"
    time.sleep(0.2)  # the stray answer arrives while the socket is idle
    assert client.exchange("POST", "/x", [], b"mine too").body == b"mine too"
    client.close()


def _forked(fn: Callable[[], bytes]) -> bytes:
    """``fn()`` run in a forked child; what it returned."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.write(w, fn())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def test_a_forked_child_never_uses_its_parents_sockets(identity: TlsIdentity, server: FakeServer) -> None:
    """Red team round 2: a child inherited the pool and shared the parent's TLS session on one
    descriptor; with answers in flight each could read the other's (the child's secret, read
    by the parent). The child now opens its own."""
    client = _client(identity, server.port)
    client.exchange("POST", "/x", [], b"parent warms")
    assert server.connections == 1
    assert _forked(lambda: client.exchange("POST", "/x", [], b"CHILD-SECRET").body) == b"CHILD-SECRET"
    assert server.connections == 2  # the child's own connection
    assert client.exchange("POST", "/x", [], b"parent again").body == b"parent again"
    assert server.connections == 2  # the parent's socket, untouched by the child
    client.close()


def test_a_fork_while_another_thread_holds_the_pool_does_not_hang_the_child(
    identity: TlsIdentity, server: FakeServer
) -> None:
    """A process forked while one of its threads was inside the pool's lock gave the child a lock
    nobody would ever release: its first call hung forever. The child now starts with its own."""
    client = _client(identity, server.port)
    client.exchange("POST", "/x", [], b"parent warms")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with client._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.write(w, client.exchange("POST", "/x", [], b"CHILD").body)
        finally:
            os._exit(0)
    os.close(w)
    release.set()
    t.join()
    answered = select.select([r], [], [], 10)[0]
    if not answered:
        os.kill(pid, 9)
    with os.fdopen(r, "rb") as f:
        out = f.read() if answered else b""
    os.waitpid(pid, 0)
    assert out == b"CHILD", "the forked child hung on a lock its parent's thread held"
    client.close()


def test_an_answer_sent_before_the_body_was_read_is_the_answer(identity: TlsIdentity, server: FakeServer) -> None:
    """Red team round 2: a 413 sent from the head (the server draining the body without
    reading it, as servers do) must be the answer, and the request must not go again. (Where the
    server closes without draining, the kernel may discard the answer on the reset: then the
    caller gets a TransportError; the body never reached any handler either way.)"""
    client = _client(identity, server.port)
    client.exchange("POST", "/x", [], b"warm")  # a reused socket for the next call
    server.mode = "early"
    for _ in range(2):  # reused, then fresh
        reply = client.exchange("POST", "/x", [], bytes(8 << 20))
        assert (reply.status, reply.body) == (413, b"too big!")
    assert server.requests == 3
    client.close()


def test_the_timeout_bounds_the_whole_answer(identity: TlsIdentity, server: FakeServer) -> None:
    server.mode = "drip"  # 40 bytes at 0.2 s each: 8 s, each read well within the 1 s timeout
    ctx = pinned_context(load_certificate(identity.certificate_pem))
    client = PinnedHTTP("127.0.0.1", server.port, ctx, connect_timeout=5, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.exchange("POST", "/x", [], b"x")
    assert time.monotonic() - started < 3
    client.close()


def test_an_answer_without_length_is_refused(identity: TlsIdentity, server: FakeServer) -> None:
    server.mode = "unframed"
    client = _client(identity, server.port)
    with pytest.raises(ConnectionError, match="no length"):
        client.exchange("POST", "/x", [], b"x")
    client.close()


def test_close_during_a_connect_leaves_no_socket(
    identity: TlsIdentity, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red team round 2: close() while another thread opened a socket let that socket carry a
    request after close() had returned."""
    client = _client(identity, server.port)
    real = socket.create_connection

    def connect_then_close(*args: Any, **kwargs: Any) -> socket.socket:
        sock = real(*args, **kwargs)
        client.close()  # another thread's close, while this one connects
        return sock

    monkeypatch.setattr(wire.socket, "create_connection", connect_then_close)
    with pytest.raises(ConnectionError, match="closed"):
        client.exchange("POST", "/x", [], b"after close")
    assert server.requests == 0


def test_an_interrupt_after_pooling_leaves_a_usable_pool(identity: TlsIdentity, server: FakeServer) -> None:
    """Red team round 2: a KeyboardInterrupt just after the socket went back to the pool closed
    it behind the pool, and the next call failed with an untyped ValueError."""
    client = _client(identity, server.port)
    finish = client._finish

    def finish_then_interrupt(sock: ssl.SSLSocket, conn: h11.Connection) -> None:
        finish(sock, conn)
        raise KeyboardInterrupt

    client._finish = finish_then_interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        client.exchange("POST", "/x", [], b"one")
    client._finish = finish  # type: ignore[method-assign]
    assert client.exchange("POST", "/x", [], b"two").body == b"two"
    assert server.connections == 1  # the pooled socket was fine, and reused
    client.close()


def test_a_changed_key_is_refused_in_the_handshake_with_nothing_sent(identity: TlsIdentity) -> None:
    """The network swaps in another key after connect: the pinned context refuses it inside the
    handshake; the request's bytes never reach the impostor."""
    impostor = FakeServer(make_identity(["127.0.0.1"]))
    try:
        client = _client(identity, impostor.port)  # pinned to ``identity``, talking to the impostor
        with pytest.raises(ssl.SSLError) as err:
            client.exchange("POST", "/secret", [], b"PRIVATE-MEDICAL-AUDIO" * 100)
        assert is_pin_failure(err.value)
        assert impostor.requests == 0
        assert (
            impostor.bytes_received == 0
        )  # not one byte of the request (the handshake's own bytes are the TLS layer's)
    finally:
        impostor.close()


def test_threads_never_see_each_others_answers(identity: TlsIdentity, server: FakeServer) -> None:
    client = _client(identity, server.port)
    wrong: list[str] = []

    def worker(n: int) -> None:
        for i in range(40):
            payload = f"thread {n} call {i}".encode() * (1 + i % 7)
            if client.exchange("POST", "/x", [], payload).body != payload:
                wrong.append(f"{n}/{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not wrong
    assert server.requests == 320
    client.close()
    with pytest.raises(ConnectionError):
        client.exchange("POST", "/x", [], b"after close")


def test_the_real_server_answers_the_hot_path_as_it_answers_httpx() -> None:
    model = onnx_models.mlp(in_dim=16, hidden=32, out_dim=4)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    with LocalServer() as srv, sim_connect(srv) as conn:
        info = conn.upload_model(model)
        fast = conn.run_model(info.model_id, x).output
        assert conn._wire._idle  # the hot path was taken, and kept its socket
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
            0
        ]
        np.testing.assert_allclose(fast, want, rtol=1e-6)
        with pytest.raises(blindai.InvalidInputError):  # a malformed pin goes through httpx, as before: 400
            conn.run_model(info.model_id, x, model_sha256="not-a-hash")
        with pytest.raises(blindai.ModelNotFoundError):
            conn.run_model("no-such-model", {"x": x})  # a dict: no metadata lookup, the hot path answers 404
        with pytest.raises(blindai.ModelHashMismatchError):
            conn.run_model(info.model_id, x, model_sha256="0" * 64)
        np.testing.assert_array_equal(conn.run_model(info.model_id, x, model_sha256=info.sha256).output, fast)
    # Red team (F4): run_model after close() opened a new socket nobody would close.
    with LocalServer() as srv:
        conn = sim_connect(srv)
        info = conn.upload_model(model)
        conn.close()
        with pytest.raises(blindai.TransportError, match="closed"):
            conn.run_model(info.model_id, x)
        with pytest.raises(blindai.TransportError, match="closed"):
            conn.list_models()
        assert not conn._wire._idle
