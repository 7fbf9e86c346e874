"""Hostile traffic against a live server: it answers 4xx JSON, never falls over, and keeps serving."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import blindai
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect


def test_non_tls_bytes_on_the_tls_port(server: LocalServer) -> None:
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096), b"\x16\x03\x01\x00\x05hello", b""):
        with socket.create_connection(("127.0.0.1", server.attested_port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                s.recv(4096)
    with sim_connect(server) as conn:
        assert conn.list_models() is not None


def test_tls_garbage_after_the_handshake(server: LocalServer) -> None:
    with sim_connect(server) as conn:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=conn.certificate_pem)
        ctx.check_hostname = False
        for junk in (
            os.urandom(2048),
            b"POST /v1/models HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
        ):
            with (
                socket.create_connection(("127.0.0.1", server.attested_port), timeout=5) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                tls.sendall(junk)
                try:
                    answer = tls.recv(4096)
                except (ssl.SSLError, ConnectionResetError, TimeoutError):
                    answer = b""
                assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
        assert conn.list_models() is not None


@pytest.mark.parametrize("kind", ["random", "truncated", "zeros"])
def test_bad_model_uploads(server: LocalServer, kind: str) -> None:
    good = onnx_models.mlp(seed=31).SerializeToString()
    body = {"random": os.urandom(20_000), "truncated": good[: len(good) // 2], "zeros": bytes(5000)}[kind]
    with sim_connect(server) as conn:
        with pytest.raises(blindai.InvalidInputError) as err:
            conn.upload_model(body)
        assert err.value.status in (400, 422)
        conn.upload_model(good)


def test_idle_half_open_connections_do_not_starve_clients(server: LocalServer) -> None:
    idle: list[socket.socket] = []
    try:
        for i in range(150):
            port = server.attested_port if i % 3 else server.unattested_port
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 5 == 0:
                s.sendall(b"\x16\x03\x01")  # half a TLS record, then silence
            idle.append(s)
        t = time.perf_counter()
        with sim_connect(server) as conn:
            info = conn.upload_model(onnx_models.mlp(seed=32))
            for _ in range(20):
                conn.run_model(info.model_id, np.ones((1, 16), np.float32))
        assert time.perf_counter() - t < 10
    finally:
        for s in idle:
            s.close()


def test_hundreds_of_concurrent_requests(server: LocalServer) -> None:
    with sim_connect(server) as conn:
        info = conn.upload_model(onnx_models.mlp(seed=33))
        x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        expected = conn.run_model(info.model_id, x).output

        def call(i: int) -> bool:
            if i % 10 == 0:
                return bool(
                    httpx.get(
                        f"http://127.0.0.1:{server.unattested_port}/attestation", params={"nonce": f"{i:04x}"}
                    ).status_code
                    in (200, 429)
                )
            return bool(np.allclose(conn.run_model(info.model_id, x).output, expected))

        with ThreadPoolExecutor(48) as pool:
            results = list(pool.map(call, range(400)))
        assert all(results), results.count(False)


def test_server_log_after_the_abuse_has_no_tracebacks_of_crashes(tmp_path: Path) -> None:
    with LocalServer() as srv:
        with socket.create_connection(("127.0.0.1", srv.attested_port)) as s:
            s.sendall(os.urandom(1000))
        with sim_connect(srv) as conn, pytest.raises(blindai.InvalidInputError):
            conn.upload_model(b"junk")
        assert srv.proc is not None and srv.proc.poll() is None
        log = srv.log()
    assert "internal server error" not in log.lower() and "Traceback" not in log


FUZZ_SECONDS_PER_TARGET = 3


def test_fuzz_harness_runs_bounded(tmp_path: Path) -> None:
    """The atheris harness, as `make fuzz-short` runs it: each target for a few seconds from a fresh corpus.

    A few seconds is enough to find, from an empty corpus, the kind of crash the short run once
    missed (a sealed file with a 3-byte wrap nonce stopped the start; it took 3,000 runs without
    the generated seeds and never came). The crashes kept in fuzz/crashes/ are replayed too.
    """
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("atheris")
    from fuzz.targets import TARGETS

    from tests.conftest import ROOT

    def fuzz(target: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        corpus = tmp_path / target
        corpus.mkdir()
        crashes = ROOT / "fuzz" / "crashes" / target
        return target, subprocess.run(
            [
                sys.executable,
                str(ROOT / "fuzz" / "fuzz.py"),
                target,
                f"-max_total_time={FUZZ_SECONDS_PER_TARGET}",
                f"-artifact_prefix={tmp_path}/{target}-",
                str(corpus),
                *([str(crashes)] if crashes.is_dir() else []),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    # Two at a time: each target still fuzzes for its full time, on a core of its own (CI has two).
    with ThreadPoolExecutor(2) as pool:
        for target, out in pool.map(fuzz, TARGETS):
            assert out.returncode == 0, (target, out.stderr[-2000:])
            assert "Done" in out.stderr, (target, out.stderr[-500:])
