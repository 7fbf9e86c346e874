"""A certificate not bound in the evidence is refused, and nothing secret is sent.

The attacker pieces are the test-only fakes of tests/fakes/attacker.py (the whole matrix of
attacks, surfaces and moments is in tests/hostile/test_attested_channel.py).
"""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import blindai
from blindai.server.tls import make_identity
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect
from tests.fakes.attacker import ChannelAttacker, EvidenceAttacker, Plan, replace_cert


class ConnectionCounter:
    """A listener that only counts who connects to it (stands in for an attested port)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.sock.settimeout(0.2)
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                self.count += 1
                c.close()
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture()
def fresh_server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


def _models_on(srv: LocalServer) -> list[blindai.ModelInfo]:
    with sim_connect(srv) as c:
        return c.list_models()


def test_interceptor_with_its_own_certificate_is_refused_and_sees_nothing(fresh_server: LocalServer) -> None:
    proxy = ChannelAttacker(fresh_server.attested_port, Plan(terminate_from=0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                blindai.connect(
                    "127.0.0.1",
                    simulation=True,
                    unattested_port=fresh_server.unattested_port,
                    attested_port=proxy.port,
                )
        assert proxy.connections >= 1, "the client never reached the interceptor: the test proves nothing"
        assert proxy.terminated_handshakes == 0
        assert bytes(proxy.plaintext) == b""
    finally:
        proxy.close()
    assert _models_on(fresh_server) == []


def test_a_well_behaved_relay_of_the_real_tls_works(fresh_server: LocalServer) -> None:
    """Control: a TCP relay that does not terminate TLS is fine, because the key is still the server's."""
    relay = socket.create_server(("127.0.0.1", 0))
    port = relay.getsockname()[1]

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            b.close()

    def accept() -> None:
        while True:
            try:
                c, _ = relay.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", fresh_server.attested_port))
            threading.Thread(target=pump, args=(c, u), daemon=True).start()
            threading.Thread(target=pump, args=(u, c), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn = blindai.connect(
                "127.0.0.1", simulation=True, unattested_port=fresh_server.unattested_port, attested_port=port
            )
        info = conn.upload_model(onnx_models.mlp())
        assert conn.run_model(info.model_id, np.ones((1, 16), np.float32)).output.shape == (1, 4)
        conn.close()
    finally:
        relay.close()


def test_evidence_for_another_certificate_is_refused_before_connecting(fresh_server: LocalServer) -> None:
    attacker = make_identity()
    rewriter = EvidenceAttacker(fresh_server.unattested_port, replace_cert(attacker.certificate_pem))
    counter = ConnectionCounter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(blindai.BindingError, match="binding"):
                blindai.connect("127.0.0.1", simulation=True, unattested_port=rewriter.port, attested_port=counter.port)
        assert counter.count == 0, "the client contacted the attested port before the binding check passed"
    finally:
        rewriter.close()
        counter.close()
    assert _models_on(fresh_server) == []


def test_seed_client_refuses_the_interceptor_too(fresh_server: LocalServer) -> None:
    from blindai.client import BlindAiClient

    proxy = ChannelAttacker(fresh_server.attested_port, Plan(terminate_from=0))
    client = BlindAiClient()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(blindai.AttestationError):
                client.connect_server(
                    "127.0.0.1", simulation=True, untrusted_port=fresh_server.unattested_port, attested_port=proxy.port
                )
        assert bytes(proxy.plaintext) == b""
    finally:
        proxy.close()
