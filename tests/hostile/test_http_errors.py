"""Every bad request gets a 4xx JSON {"error": ...} naming the problem, and the server keeps serving."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

import blindai
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect


@pytest.fixture(scope="module")
def raw(server: LocalServer) -> Iterator[tuple[httpx.Client, httpx.Client, str]]:
    conn = sim_connect(server)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=conn.certificate_pem)
    ctx.check_hostname = False
    info = conn.upload_model(onnx_models.fixed_shape_model(), name="fixed")
    tls = httpx.Client(base_url=f"https://127.0.0.1:{server.attested_port}", verify=ctx)
    plain = httpx.Client(base_url=f"http://127.0.0.1:{server.unattested_port}")
    yield tls, plain, info.model_id
    tls.close()
    plain.close()
    conn.close()


def _assert_error(resp: httpx.Response, status: int, needle: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert needle.lower() in body["error"].lower(), body["error"]


def infer_json(inputs: list[dict[str, object]]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


X_OK = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (b"{", {}, 400, "not valid JSON"),
        (b"[1,2]", {}, 400, "JSON object"),
        (infer_json([{**X_OK, "datatype": "INT32"}]), {}, 400, "must be FP32"),
        (infer_json([{**X_OK, "shape": [3, 2]}]), {}, 400, "dimension 0 must be 2"),
        (infer_json([{**X_OK, "shape": [2, 4]}]), {}, 400, "needs 8 elements"),
        (infer_json([{**X_OK, "shape": [2, -3]}]), {}, 400, "non-negative"),
        (infer_json([{**X_OK, "shape": [1 << 40, 1 << 40]}]), {}, 400, "more than"),
        (infer_json([{**X_OK, "name": "y"}]), {}, 400, "unknown input"),
        (infer_json([{**X_OK, "datatype": "FP128"}]), {}, 400, "unknown datatype"),
        (
            infer_json([{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]),
            {"Inference-Header-Content-Length": "400"},
            400,
            "beyond",
        ),
        (
            infer_json([{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]),
            {"Inference-Header-Content-Length": "nope"},
            400,
            "not an integer",
        ),
    ],
)
def test_bad_infer_requests(
    raw: tuple[httpx.Client, httpx.Client, str], body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    tls, _, model_id = raw
    _assert_error(tls.post(f"/v2/models/{model_id}/infer", content=body, headers=headers), status, needle)


def test_binary_size_beyond_body(raw: tuple[httpx.Client, httpx.Client, str]) -> None:
    tls, _, model_id = raw
    head = json.dumps(
        {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]}
    ).encode()
    resp = tls.post(
        f"/v2/models/{model_id}/infer",
        content=head + b"\0" * 8,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    _assert_error(resp, 400, "runs past")


def test_unknown_model_and_route(raw: tuple[httpx.Client, httpx.Client, str]) -> None:
    tls, plain, _ = raw
    _assert_error(tls.post("/v2/models/nope/infer", content=infer_json([X_OK])), 404, "no model")
    _assert_error(tls.get("/v2/models/nope"), 404, "no model")
    _assert_error(tls.get("/v1/models/nope"), 404, "no model")
    _assert_error(tls.get("/nothing-here"), 404, "not found")
    _assert_error(plain.get("/nothing-here"), 404, "not found")
    _assert_error(tls.put("/v1/models"), 405, "method not allowed")


def test_model_pin_mismatch_is_412(raw: tuple[httpx.Client, httpx.Client, str]) -> None:
    tls, _, model_id = raw
    resp = tls.post(
        f"/v2/models/{model_id}/infer", content=infer_json([X_OK]), headers={"BlindAI-Model-SHA256": "ab" * 32}
    )
    _assert_error(resp, 412, "pinned")


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [(b"", 400, "empty"), (b"\x08\x01garbage", 422, "not an ONNX model"), (b"\xff" * 1000, 422, "ONNX")],
)
def test_bad_uploads(raw: tuple[httpx.Client, httpx.Client, str], body: bytes, status: int, needle: str) -> None:
    tls, _, _ = raw
    _assert_error(tls.post("/v1/models", content=body), status, needle)


def test_bad_upload_hints(raw: tuple[httpx.Client, httpx.Client, str]) -> None:
    tls, _, _ = raw
    body = onnx_models.mlp().SerializeToString()
    _assert_error(tls.post("/v1/models", content=body, headers={"BlindAI-Input-Shape": "1,x"}), 400, "shape hint")
    _assert_error(tls.post("/v1/models", content=body, headers={"BlindAI-Input-Datatype": "F32"}), 400, "hint")


def test_delete_without_token(raw: tuple[httpx.Client, httpx.Client, str]) -> None:
    tls, _, model_id = raw
    _assert_error(tls.delete(f"/v1/models/{model_id}"), 401, "owner token")
    _assert_error(tls.delete(f"/v1/models/{model_id}", headers={"Authorization": "Bearer x"}), 403, "wrong owner")


@pytest.mark.parametrize(
    ("query", "needle"), [("nonce=zz", "hex"), ("nonce=" + "00" * 65, "at most 64"), ("nonce=abc", "hex")]
)
def test_bad_nonces(raw: tuple[httpx.Client, httpx.Client, str], query: str, needle: str) -> None:
    _, plain, _ = raw
    _assert_error(plain.get(f"/attestation?{query}"), 400, needle)


def test_attestation_document_shape(raw: tuple[httpx.Client, httpx.Client, str]) -> None:
    _, plain, _ = raw
    doc = plain.get("/attestation", params={"nonce": "0102"}).json()
    assert set(doc) == {"tee", "evidence", "collateral", "certificate", "nonce", "version"}
    assert doc["tee"] == "simulation" and doc["nonce"] == "0102" and doc["collateral"] is None
    assert doc["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert plain.get("/health").json()["status"] == "ok"


def test_request_size_limit() -> None:
    with LocalServer("--max-request-bytes", "1k", "--max-model-bytes", "2k") as srv:
        conn = sim_connect(srv)
        info = conn.upload_model(onnx_models.scale_model(shape=["N"]))
        with pytest.raises(blindai.InvalidInputError, match="exceeds the limit"):
            conn.run_model(info.model_id, np.ones(1000, np.float32))
        with pytest.raises(blindai.InvalidInputError, match="exceeds the limit of 2048"):
            conn.upload_model(onnx_models.mlp(in_dim=64, hidden=64))
        # and it still serves
        assert conn.run_model(info.model_id, np.ones(10, np.float32)).output.sum() == 20
        conn.close()


def test_server_keeps_serving_after_all_that(raw: tuple[httpx.Client, httpx.Client, str]) -> None:
    tls, _, model_id = raw
    ok = tls.post(f"/v2/models/{model_id}/infer", content=infer_json([X_OK]))
    assert ok.status_code == 200
    assert ok.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
