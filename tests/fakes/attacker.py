"""FAKE network attacker for tests: it owns the wire between client and server.

The threat model's adversary controls the plain-HTTP evidence port and can relay or
TLS-terminate the attested port whenever it likes. Two test-only pieces play it:

- :class:`EvidenceAttacker` sits in front of the unattested port and may rewrite every
  ``/attestation`` answer (append, prepend or replace certificates, swap in another
  server's evidence, replay an old answer).
- :class:`ChannelAttacker` sits in front of the attested port. Per TCP connection it
  either relays the real server's TLS untouched (it then sees only ciphertext) or
  terminates TLS with its own key and records every decrypted byte the client sends
  (``plaintext``). A relayed connection can be cut by the "server" after its first
  response, after an idle pause, or after some bytes of an upload, so the client has
  to open a new connection at a moment the attacker chooses.

The tests assert ``plaintext == b""``: whatever the attacker did, it read nothing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from blindai.server.tls import TlsIdentity, make_identity

Doc = dict[str, Any]


def fetch_doc(port: int, path: str) -> Doc:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        doc: Doc = json.loads(r.read())
    return doc


class RawEvidenceServer:
    """A hostile evidence port: ``answer(handler)`` writes whatever each GET gets (bytes, headers, pace)."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(self)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class EvidenceAttacker(RawEvidenceServer):
    """Plain-HTTP proxy for the unattested port; ``rewrite(doc, path)`` changes each answer."""

    def __init__(self, upstream_port: int, rewrite: Callable[[Doc, str], Doc] | None = None) -> None:
        self.upstream_port = upstream_port
        self.rewrite = rewrite
        self.requests = 0
        super().__init__(self._answer)

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.upstream_port}{h.path}", timeout=10) as r:
                raw = r.read()
                ctype = r.headers.get("Content-Type", "application/json")
        except OSError:
            h.send_error(502)
            return
        if h.path.startswith("/attestation") and self.rewrite is not None:
            raw = json.dumps(self.rewrite(json.loads(raw), h.path)).encode()
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)


# ---------------------------------------------------------------- rewrites of the evidence answer


def append_cert(attacker_pem: str) -> Callable[[Doc, str], Doc]:
    return lambda doc, _path: {**doc, "certificate": doc["certificate"] + attacker_pem}


def prepend_cert(attacker_pem: str) -> Callable[[Doc, str], Doc]:
    return lambda doc, _path: {**doc, "certificate": attacker_pem + doc["certificate"]}


def replace_cert(attacker_pem: str) -> Callable[[Doc, str], Doc]:
    return lambda doc, _path: {**doc, "certificate": attacker_pem}


def swap_from(other_port: int) -> Callable[[Doc, str], Doc]:
    """Serve another server's evidence (and certificate), made for the client's own nonce."""
    return lambda _doc, path: fetch_doc(other_port, path)


def replay(old: Doc) -> Callable[[Doc, str], Doc]:
    """An answer recorded earlier (for another nonce), relabelled with the client's nonce."""

    def rewrite(doc: Doc, _path: str) -> Doc:
        return {**old, "nonce": doc["nonce"]}

    return rewrite


# ---------------------------------------------------------------- the attested port


@dataclass
class Plan:
    """What the attacker does with the n-th TCP connection (0-based) to the attested port.

    ``terminate_from``: connections from this index on are TLS-terminated with the attacker's key
    (None: never). The first connection, when relayed, is cut ``after_first_response`` (a
    server-side close), after ``idle_close_s`` without traffic (a load balancer's idle timeout),
    or once the client sent ``cut_after_bytes`` (mid-upload); later relayed connections are
    relayed untouched.
    """

    terminate_from: int | None = 0
    after_first_response: bool = False
    idle_close_s: float | None = None
    cut_after_bytes: int | None = None


class ChannelAttacker:
    def __init__(self, upstream_port: int, plan: Plan | None = None, identity: TlsIdentity | None = None) -> None:
        self.upstream_port = upstream_port
        self.plan = plan or Plan()
        self.identity = identity or make_identity(["127.0.0.1", "localhost"])
        self._ctx = self.identity.ssl_context()
        self.plaintext = bytearray()
        self.cuts = 0  # relayed connections the attacker cut
        self._cut = threading.Condition()
        self.connections = 0
        self.terminate_attempts = 0  # connections the attacker tried to terminate
        self.terminated_handshakes = 0  # of those, handshakes the client completed
        self._lock = threading.Lock()
        self._stop = False
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            start = self.plan.terminate_from
            if start is not None and index >= start:
                threading.Thread(target=self._terminate, args=(raw,), daemon=True).start()
            else:
                threading.Thread(target=self._relay, args=(raw, index == 0), daemon=True).start()

    # -- relay: the real server's TLS, untouched

    def _relay(self, client: socket.socket, first: bool) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        plan = self.plan if first else Plan(terminate_from=None)
        lock = threading.Lock()
        # up: client->server reads; after the ClientHello, a second read is the client's Finished
        # and/or first request. held: what the server answered since then, when it is to be
        # delivered as one response followed at once by a close (a server-side close that cannot
        # race the client's next request, because the client is still waiting for this answer).
        state: dict[str, Any] = {"sent": 0, "up": 0, "answered": False, "last": time.monotonic(), "closed": False}
        held = bytearray()

        def close_both(cut: bool = False) -> None:
            with lock:
                if state["closed"]:
                    return
                state["closed"] = True
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            if cut:
                with self._cut:
                    self.cuts += 1
                    self._cut.notify_all()

        def pump(src: socket.socket, dst: socket.socket, upward: bool) -> None:
            try:
                while data := src.recv(65536):
                    state["last"] = time.monotonic()
                    if upward:
                        state["sent"] += len(data)
                        state["up"] += 1
                        if plan.cut_after_bytes is not None and state["sent"] > plan.cut_after_bytes:
                            close_both(cut=True)
                            return
                    elif state["up"] >= 2:
                        state["answered"] = True
                        if plan.after_first_response:
                            held.extend(data)
                            continue
                    dst.sendall(data)
            except OSError:
                pass
            close_both()

        def watchdog() -> None:
            while not state["closed"]:
                time.sleep(0.02)
                idle = time.monotonic() - float(state["last"])
                if plan.after_first_response and state["answered"] and idle > 0.15:
                    with contextlib.suppress(OSError):
                        client.sendall(bytes(held))
                    close_both(cut=True)
                elif plan.idle_close_s is not None and state["answered"] and idle > plan.idle_close_s:
                    close_both(cut=True)

        threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()
        threading.Thread(target=watchdog, daemon=True).start()

    # -- terminate: the attacker's own key, every decrypted byte recorded

    def _terminate(self, raw: socket.socket) -> None:
        with self._lock:
            self.terminate_attempts += 1
        try:
            tls = self._ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with self._lock:
            self.terminated_handshakes += 1
        up_ctx = ssl.create_default_context()
        up_ctx.check_hostname = False
        up_ctx.verify_mode = ssl.CERT_NONE
        try:
            up = up_ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.upstream_port)))
        except OSError:
            tls.close()
            return
        tls.settimeout(2)
        up.settimeout(2)
        try:
            while data := tls.recv(65536):
                with self._lock:
                    self.plaintext += data
                up.sendall(data)
                tls.sendall(up.recv(65536))
        except (OSError, ssl.SSLError):
            pass
        finally:
            tls.close()
            up.close()

    def wait_cut(self, n: int = 1, timeout: float = 10.0) -> None:
        """Block until the attacker has cut ``n`` relayed connections (so the client must reconnect)."""
        with self._cut:
            if not self._cut.wait_for(lambda: self.cuts >= n, timeout):
                raise AssertionError(f"the attacker cut {self.cuts} connection(s), expected {n}")

    def close(self) -> None:
        self._stop = True
        self.sock.close()
