"""Route logic in process over ASGI (no socket, no subprocess): every domain refusal reaches the
wire as its status from the one table, with ``{"error": ...}`` naming the problem.

The channel itself (TLS, pinning) is tested against real servers elsewhere; here the apps are
called directly, as `blindai serve` builds them, so a route test costs milliseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from blindai.server.evidence import NonceRateLimiter
from blindai.server.http.app import ServerState, attested_app, unattested_app
from blindai.server.http.bodies import BodyLimits
from blindai.server.inference import InferenceEngine
from blindai.server.providers import SimulationProvider
from blindai.server.store import ModelStore, StoreLimits, hash_token
from blindai.server.tls import make_identity
from tests import onnx_models

UPLOAD_TOKEN = "upload-token-for-this-test"


@pytest.fixture(scope="module")
def state() -> Iterator[ServerState]:
    st = ServerState(
        provider=SimulationProvider(),
        identity=make_identity([]),
        store=ModelStore(
            StoreLimits(max_model_bytes=64 << 10, max_models=3),
            upload_token_hashes=frozenset({hash_token(UPLOAD_TOKEN)}),
        ),
        engine=InferenceEngine(),
        body_limits=BodyLimits(max_inflight_bytes=16 << 20),
        limiter=NonceRateLimiter(rate_per_s=0.001, burst=2),
    )
    yield st
    st.engine.close()


@pytest.fixture(scope="module")
def api(state: ServerState) -> Iterator[TestClient]:
    with TestClient(attested_app(state), base_url="https://blindai") as client:
        yield client


def _error(resp: httpx.Response, status: int, needle: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and needle.lower() in body["error"].lower(), body


def _upload(api: TestClient, data: bytes, **headers: str) -> httpx.Response:
    return api.post("/v1/models", content=data, headers={"Authorization": f"Bearer {UPLOAD_TOKEN}", **headers})


def test_every_refusal_gets_its_status(api: TestClient) -> None:
    model = onnx_models.fixed_shape_model().SerializeToString()
    _error(api.post("/v1/models", content=model), 401, "Authorization: Bearer")  # the edge adds the header
    _error(_upload(api, model, Authorization="Bearer wrong"), 403, "not accepted")
    _error(_upload(api, b"not onnx at all"), 422, "not an ONNX model")
    _error(_upload(api, bytes(100 << 10)), 413, "exceeds the limit")
    _error(_upload(api, model, **{"BlindAI-Input-Shape": "1,x"}), 400, "shape hint")
    first = _upload(api, model, **{"BlindAI-Model-Name": "twin"})
    assert first.status_code == 201
    owner = first.json()["owner_token"]
    model_id = first.json()["model_id"]
    _error(api.get("/v1/models/nope"), 404, "no model")
    sha = hashlib.sha256(b"another model").hexdigest()
    _error(
        api.post(f"/v2/models/{model_id}/infer", content=b"{}", headers={"BlindAI-Model-SHA256": sha}),
        412,
        "not the pinned",
    )
    _error(api.delete(f"/v1/models/{model_id}"), 401, "owner token")
    _error(api.delete(f"/v1/models/{model_id}", headers={"Authorization": "Bearer x"}), 403, "wrong owner token")
    _error(api.post(f"/v2/models/{model_id}/infer", content=b"{"), 400, "not valid JSON")
    assert api.delete(f"/v1/models/{model_id}", headers={"Authorization": f"Bearer {owner}"}).status_code == 200


def test_the_model_limit_is_507(api: TestClient, state: ServerState) -> None:
    for m in state.store.all():
        state.store.delete_unprotected(m.model_id)
    for _ in range(3):
        assert _upload(api, onnx_models.fixed_shape_model().SerializeToString()).status_code == 201
    _error(_upload(api, onnx_models.fixed_shape_model().SerializeToString()), 507, "3 models")


def test_evidence_port_routes(state: ServerState) -> None:
    with TestClient(unattested_app(state)) as plain:
        assert plain.get("/health").json()["tee"] == "simulation"
        _error(plain.get("/attestation?nonce=zz"), 400, "hex")
        _error(plain.get("/attestation?nonce=" + "00" * 65), 400, "at most 64")
        _error(plain.get("/attestation?nonce=" + "0" * 129), 400, "must be hex")  # odd length
        _error(plain.get("/attestation?nonce=" + "0" * 300), 400, "300 characters")
        spaced = " ".join(["ab"] * 64)  # bytes.fromhex takes spaced hex: a 64-byte nonce in 191 characters
        assert plain.get("/attestation", params={"nonce": spaced}).json()["nonce"] == "ab" * 64
        assert plain.get("/attestation?nonce=01").status_code == 200  # the burst of 2 is now spent
        _error(plain.get("/attestation?nonce=ff"), 429, "too many")
        assert plain.get("/attestation").status_code == 200  # the cached empty nonce is never limited
