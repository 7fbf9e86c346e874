"""A certificate not bound in the evidence is refused, and nothing secret is sent.

The proxies here are test-only fakes of an attacker on the network (or a
malicious host) sitting in front of the real server.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import blindai
from blindai.local import LocalServer
from blindai.server.tls import make_identity
from tests import onnx_models
from tests.conftest import sim_connect


class FakeTlsInterceptor:
    """Terminates TLS with its own key, records every decrypted byte, forwards to the real server."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.identity = make_identity(["127.0.0.1"])
        self.ctx = self.identity.ssl_context()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.handshakes_completed = 0
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes_completed += 1
        up_ctx = ssl.create_default_context()
        up_ctx.check_hostname = False
        up_ctx.verify_mode = ssl.CERT_NONE
        up = up_ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.upstream_port)))
        tls.settimeout(2)
        try:
            while data := tls.recv(65536):
                self.received += data
                up.sendall(data)
                up.settimeout(2)
                tls.sendall(up.recv(65536))
        except (OSError, ssl.SSLError):
            pass
        finally:
            tls.close()
            up.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class FakeEvidenceRewriter:
    """Plain-HTTP proxy for the unattested port that swaps the certificate for the attacker's."""

    def __init__(self, upstream_port: int, cert_pem: str) -> None:
        import http.server
        import urllib.request

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}{self.path}") as r:
                    doc = json.loads(r.read())
                doc["certificate"] = cert_pem
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        del outer

    def close(self) -> None:
        self.httpd.shutdown()


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
    proxy = FakeTlsInterceptor(fresh_server.attested_port)
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
        assert proxy.handshakes_completed == 0
        assert bytes(proxy.received) == b""
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
    rewriter = FakeEvidenceRewriter(fresh_server.unattested_port, attacker.certificate_pem)
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

    proxy = FakeTlsInterceptor(fresh_server.attested_port)
    client = BlindAiClient()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(blindai.AttestationError):
                client.connect_server(
                    "127.0.0.1", simulation=True, untrusted_port=fresh_server.unattested_port, attested_port=proxy.port
                )
        assert bytes(proxy.received) == b""
    finally:
        proxy.close()
