"""Regression tests for what an independent red-team review of the attested channel found.

Each test replays one finding against the real client and asserts the fixed behaviour:
typed errors (never a foreign exception), bounded memory and time on hostile evidence
answers, no fallback onto another tenant's model, policies built in code as strict as
loaded ones.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blindai
from blindai.attestation import PolicyLoadError, TeePolicy
from blindai.client import BlindAiClient
from blindai.testing import LocalServer
from tests import onnx_models
from tests.fakes.attacker import EvidenceAttacker, RawEvidenceServer, fetch_doc


@pytest.fixture(scope="module")
def srv() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blindai.SimulationModeWarning)
        yield


def _send(body: bytes, **headers: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    return answer


@pytest.mark.parametrize(
    "answer",
    [
        _send(b"[" * 200_000),  # nesting that overflows Python's recursion
        _send(b"definitely not gzip", **{"Content-Encoding": "gzip"}),
        _send(gzip.compress(b" " * (8 << 20)), **{"Content-Encoding": "gzip"}),  # an 8 KB answer, 8 MB inflated
    ],
    ids=["deep-json", "bad-gzip", "gzip-bomb"],
)
def test_hostile_evidence_answers_are_typed_refusals(answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
    evil = RawEvidenceServer(answer)
    try:
        with pytest.raises(blindai.AttestationError, match="parse"):
            blindai.attest("127.0.0.1", unattested_port=evil.port, simulation=True)
    finally:
        evil.close()


def test_a_trickling_evidence_port_cannot_hold_the_client() -> None:
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(100):
            try:
                h.wfile.write(b" ")
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    evil = RawEvidenceServer(trickle)
    try:
        start = time.monotonic()
        with pytest.raises(blindai.TransportError):
            blindai.attest("127.0.0.1", unattested_port=evil.port, simulation=True, timeout=1.0)
        assert time.monotonic() - start < 3.0
    finally:
        evil.close()


def test_a_certificate_with_an_unknown_key_type_is_a_typed_refusal(srv: LocalServer) -> None:
    """Relay the genuine evidence, swap in a certificate whose key cryptography cannot load."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = bytearray(
        x509.load_pem_x509_certificate(
            fetch_doc(srv.unattested_port, "/attestation").get("certificate").encode()
        ).public_bytes(Encoding.DER)
    )
    oid = bytes.fromhex("2a8648ce3d0201")  # id-ecPublicKey -> a made-up algorithm
    at = der.find(oid)
    der[at + len(oid) - 1] ^= 0x7F
    pem = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)).decode() + "-----END CERTIFICATE-----\n"
    evil = EvidenceAttacker(srv.unattested_port, lambda doc, _p: {**doc, "certificate": pem})
    try:
        with pytest.raises(blindai.AttestationError):
            blindai.attest("127.0.0.1", unattested_port=evil.port, simulation=True)
    finally:
        evil.close()


def test_connect_replicas_survives_a_replica_that_crashes_the_parser(srv: LocalServer) -> None:
    evil = RawEvidenceServer(_send(b"[" * 200_000))
    try:
        good = blindai.Endpoint("127.0.0.1", srv.attested_port, srv.unattested_port)
        bad = blindai.Endpoint("127.0.0.1", srv.attested_port, evil.port)
        replicas = blindai.connect_replicas([good, bad], simulation=True)
        assert list(replicas.connections) == [good] and isinstance(replicas.refused[bad], blindai.AttestationError)
        replicas.close()
    finally:
        evil.close()


def test_short_nonces_are_refused(srv: LocalServer) -> None:
    with pytest.raises(ValueError, match="16 to 64"):
        blindai.connect("127.0.0.1", simulation=True, nonce=b"", **srv.connect_kwargs())


def test_seed_client_does_not_fall_back_when_its_model_is_gone(tmp_path: Path) -> None:
    """The recorded model vanished (server restart) and a stranger's is the only one left: refuse."""
    import os

    os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "victim")
    with LocalServer() as first:
        client = BlindAiClient()
        client.connect_server(
            "127.0.0.1", simulation=True, untrusted_port=first.unattested_port, attested_port=first.attested_port
        )
        client.upload_model(onnx_models.mlp(), shape=(1, 16))
        client.close()
        port_a, port_u = first.attested_port, first.unattested_port
    with LocalServer(attested_port=port_a, unattested_port=port_u) as second:  # "restarted", models gone
        os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "stranger")
        stranger = BlindAiClient()
        stranger.connect_server("127.0.0.1", simulation=True, untrusted_port=port_u, attested_port=port_a)
        stranger.upload_model(onnx_models.mlp(seed=7), shape=(1, 16))
        os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "victim")
        again = BlindAiClient()
        again.connect_server("127.0.0.1", simulation=True, untrusted_port=port_u, attested_port=port_a)
        with pytest.raises(blindai.ModelNotFoundError, match="upload it again"):
            again.run_model(np.ones(16, np.float32).tolist())
        again.close()
        stranger.close()
        assert second.proc is not None


def test_policies_built_in_code_are_type_checked_and_frozen() -> None:
    mr = {"mrenclave": ("aa" * 32,)}
    with pytest.raises(PolicyLoadError, match="accepted_tcb_status"):
        TeePolicy(measurements=mr, accepted_tcb_status="OutOfDateConfigurationNeeded")  # type: ignore[arg-type]
    with pytest.raises(PolicyLoadError, match="allow_debug"):
        TeePolicy(measurements=mr, allow_debug="no")  # type: ignore[arg-type]
    with pytest.raises(PolicyLoadError, match="measurement mrenclave"):
        TeePolicy(measurements={"mrenclave": "aa" * 32})  # type: ignore[dict-item]
    policy = blindai.Policy({"sgx": TeePolicy(measurements=mr)})
    with pytest.raises(TypeError):
        policy.sections["sgx"].measurements["mrenclave"] = ()  # type: ignore[index]
    with pytest.raises(TypeError):
        policy.sections["tdx"] = TeePolicy()  # type: ignore[index]


def test_simulation_cannot_ride_along_in_a_production_policy() -> None:
    with pytest.raises(PolicyLoadError, match="cannot sit beside"):
        blindai.load_policy(f'[sgx]\nmrenclave = ["{"aa" * 32}"]\n[simulation]\n')
    text = blindai.Policy({"simulation": TeePolicy()}).to_toml()
    assert text.startswith("# DANGER")


def test_cli_attest_verify_gives_one_line_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    quote = tmp_path / "q.bin"
    quote.write_bytes(b"\x03\x00\x02\x00" + bytes(600))
    bad_json = tmp_path / "c.json"
    bad_json.write_text("{not json")
    bad_crl = tmp_path / "x.crl"
    bad_crl.write_bytes(b"garbage")
    for argv in (
        ["attest", "verify", str(tmp_path / "missing.bin")],
        ["attest", "verify", str(quote), "--collateral", str(bad_json)],
        ["attest", "verify", str(quote), "--crl", str(bad_crl)],
        ["attest", "verify", str(quote), "--at", "yesterday"],
    ):
        proc = subprocess.run([sys.executable, "-m", "blindai", *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode in (1, 2), proc
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_evidence_port_answer_is_never_decompressed(srv: LocalServer) -> None:
    """The client asks for identity encoding: the answer it receives is the server's own JSON."""
    seen: dict[str, Any] = {}

    def answer(h: BaseHTTPRequestHandler) -> None:
        seen["accept"] = h.headers.get("Accept-Encoding")
        body = json.dumps(fetch_doc(srv.unattested_port, h.path)).encode()
        _send(body)(h)

    proxy = RawEvidenceServer(answer)
    try:
        blindai.attest("127.0.0.1", unattested_port=proxy.port, simulation=True)
        assert seen["accept"] == "identity"
    finally:
        proxy.close()
