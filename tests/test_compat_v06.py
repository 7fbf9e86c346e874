"""BlindAI 0.6 wire compatibility, tested with the official 0.6.3 client (its own virtualenv)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import cbor2
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import blindai
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import ROOT, sim_connect

VENV06 = ROOT / ".venv06" / "bin" / "python"


@pytest.fixture(scope="module")
def v06_python() -> Path:
    if not VENV06.exists():
        pytest.skip("the official 0.6.3 client is not installed: run `make test` (it builds .venv06)")
    return VENV06


def test_official_063_client_upload_run_delete(v06_python: Path, server: LocalServer, tmp_path: Path) -> None:
    model = onnx_models.mlp(seed=21)
    onnx.save_model(model, tmp_path / "mlp.onnx")
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [
            str(v06_python),
            str(ROOT / "tests" / "v06" / "official_client_flow.py"),
            "127.0.0.1",
            str(server.unattested_port),
            str(server.attested_port),
            str(tmp_path / "mlp.onnx"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify` (psf/requests#3829),
        # which would make the 0.6 client distrust the attested certificate it just pinned.
        env={k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["version"] == "0.6.3"
    assert result["hash"] == hashlib.sha256((tmp_path / "mlp.onnx").read_bytes()).hexdigest()
    assert result["deleted"] is True
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


def test_unattested_root_says_mock_in_simulation(server: LocalServer) -> None:
    r = httpx.get(f"http://127.0.0.1:{server.unattested_port}/")
    assert "mock" in r.headers["server"]
    from cryptography import x509

    cert = x509.load_der_x509_certificate(cbor2.loads(r.content))
    with sim_connect(server) as conn:
        assert (
            cert.public_bytes(encoding=__import__("cryptography").hazmat.primitives.serialization.Encoding.PEM).decode()
            == conn.certificate_pem
        )
    for path in ("/quote", "/collateral"):
        resp = httpx.get(f"http://127.0.0.1:{server.unattested_port}{path}")
        assert resp.status_code == 404 and "simulation" in resp.json()["error"]


def test_v1_models_keep_their_owner_protection_on_the_06_routes(server: LocalServer) -> None:
    with sim_connect(server) as conn:
        info = conn.upload_model(onnx_models.mlp(seed=22))
        with pytest.raises(blindai.PermissionDeniedError, match="owner-protected"):
            conn._request("POST", "/delete", content=cbor2.dumps({"model_id": info.model_id}))
        assert info.model_id in {m.model_id for m in conn.list_models()}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"\xff\x00", "CBOR"),
        (cbor2.dumps([1, 2]), "CBOR map"),
        (cbor2.dumps({"model": "nope"}), "model's bytes"),
        (cbor2.dumps({"model": [1, 2, 300]}), "byte values"),
        (cbor2.dumps({"model": [1, 2, 3], "length": 4}), "'length'"),
        (cbor2.dumps({"model": list(b"garbage")}), "not an ONNX model"),
    ],
)
def test_bad_06_uploads(server: LocalServer, body: bytes, needle: str) -> None:
    with sim_connect(server) as conn, pytest.raises(blindai.InvalidInputError, match=needle):
        conn._request("POST", "/upload", content=body)


def test_bad_06_runs(server: LocalServer) -> None:
    with sim_connect(server) as conn:
        info = conn.upload_model(onnx_models.mlp(seed=23))
        bad = [
            {"model_id": info.model_id, "inputs": []},
            {"model_id": info.model_id, "inputs": [{"info": {"fact": [1, 16], "datum_type": 0}, "bytes_data": b"x"}]},
            {"model_id": info.model_id, "inputs": [{"info": {"fact": [1, 16], "datum_type": 99}, "bytes_data": b""}]},
            {"model_id": info.model_id, "inputs": [{"nope": 1}]},
        ]
        for msg in bad:
            with pytest.raises(blindai.InvalidInputError):
                conn._request("POST", "/run", content=cbor2.dumps(msg))
        with pytest.raises(blindai.ModelNotFoundError):
            conn._request("POST", "/run", content=cbor2.dumps({"model_hash": "00" * 32, "inputs": [1]}))
