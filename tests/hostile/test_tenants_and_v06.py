"""Tenants and the 0.6 routes against a live server (red-team findings F5, F8, F9, F10 of issue 12).

A 0.6 upload's CBOR is checked before it is decoded (its decoding memory stays within the
budget), a content hash is not a key to another tenant's private model, a public name stays
with its first claimant, and malformed pins and ids get a typed 400, never a 500.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import cbor2
import httpx
import numpy as np
import pytest

import blindai
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect
from tests.hostile.test_resource_attacks import proc_status
from tests.test_model_store import store_server

MiB = 1 << 20
X = np.ones((1, 4), np.float32)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blindai.SimulationModeWarning)
        yield


@pytest.fixture(scope="module")
def srv() -> Iterator[LocalServer]:
    with LocalServer("--max-inflight-bytes", "64m", "--max-model-bytes", "8m") as s:
        yield s
        assert s.proc is not None and s.proc.poll() is None
        assert "internal error" not in s.log()


def client(srv: LocalServer) -> httpx.Client:
    with sim_connect(srv) as conn:
        ctx = conn.ssl_context()
    return httpx.Client(base_url=f"https://127.0.0.1:{srv.attested_port}", verify=ctx, timeout=60)


def run_msg(**ids: object) -> bytes:
    tensor = {"info": {"fact": [1, 4], "datum_type": 0, "node_name": "x"}, "bytes_data": X.tobytes()}
    return cbor2.dumps({**ids, "inputs": [tensor]})


def test_a_v06_upload_of_containers_is_refused_before_decoding(srv: LocalServer) -> None:
    """The red team's a5: {"model": [{}, {}, ...]} cost ~85 bytes of Python objects per CBOR byte."""
    n = 2_000_000
    body = b"\xa1\x65model\x9a" + n.to_bytes(4, "big") + b"\xa0" * n
    before = proc_status(srv.proc.pid)["VmRSS"]  # type: ignore[union-attr]
    with client(srv) as c:
        for _ in range(2):
            r = c.post("/upload", content=body)
            assert r.status_code == 400 and "byte values" in r.text, r.text[:200]
        for bad in (cbor2.dumps([1, 2]), cbor2.dumps({"model": b"x", "length": 10**5000}),
                    b"\xa1\x65model\x5f\x41x\xff", cbor2.dumps({"model": [1, 2, 300]})):  # fmt: skip
            r = c.post("/upload", content=bad)
            assert r.status_code == 400, (bad[:20], r.status_code, r.text[:200])
    # 2 MB of CBOR decoded as Python objects would be ~170 MB; checked first, it costs next to nothing.
    assert proc_status(srv.proc.pid)["VmHWM"] < before + 48 * MiB  # type: ignore[union-attr]


@pytest.mark.parametrize("as_list", [True, False], ids=["list-of-byte-values", "byte-string"])
def test_a_v06_upload_in_both_shapes_still_works(srv: LocalServer, as_list: bool) -> None:
    data = onnx_models.scale_model(factor=3.0).SerializeToString()
    msg = {
        "model": list(data) if as_list else data,
        "length": len(data),
        "model_name": "v06.onnx",
        "optimize": True,
        "client_info": {"uid": "ab" * 32, "platform_name": "Linux", "is_colab": False},
    }
    with client(srv) as c:
        r = c.post("/upload", content=cbor2.dumps(msg))
        assert r.status_code == 200, r.text[:300]
        up = cbor2.loads(r.content)
        assert up["hash"] == hashlib.sha256(data).digest()
        out = cbor2.loads(c.post("/run", content=run_msg(model_hash=up["hash"])).content)["outputs"][0]
        assert np.frombuffer(out["bytes_data"], np.float32).tolist() == [3.0] * 4
        assert c.post("/delete", content=cbor2.dumps({"model_id": up["model_id"]})).status_code == 200


def test_a_hash_is_not_a_key_to_another_tenants_private_model(srv: LocalServer) -> None:
    """The red team's t_tenants T1: /run by model_hash found any model with that content."""
    data = onnx_models.scale_model(factor=7.0).SerializeToString()
    digest = hashlib.sha256(data).digest()
    with sim_connect(srv) as victim, client(srv) as c:
        private = victim.upload_model(data, name="secret")
        r = c.post("/run", content=run_msg(model_hash=digest))
        assert r.status_code == 404, r.text[:200]
        # The same content made public by its owner is reachable by hash, as 0.6 clients expect.
        public = victim.upload_model(data, name="open", public=True)
        r = c.post("/run", content=run_msg(model_hash=digest))
        assert (
            r.status_code == 200
            and np.frombuffer(cbor2.loads(r.content)["outputs"][0]["bytes_data"], np.float32).tolist() == [7.0] * 4
        )
        victim.delete_model(public.model_id)
        victim.delete_model(private.model_id)


def test_a_public_name_stays_with_its_first_claimant(srv: LocalServer) -> None:
    """The red team's t_tenants T2: a second public upload of a name made it ambiguous, then took it."""
    with sim_connect(srv) as owner, sim_connect(srv) as mallory, sim_connect(srv) as user:
        pub = owner.upload_model(onnx_models.scale_model(factor=2.0), name="resnet", public=True)
        with pytest.raises(blindai.InvalidInputError, match="resnet") as err:
            mallory.upload_model(onnx_models.scale_model(factor=-1.0), name="resnet", public=True)
        assert err.value.status == 409 and pub.model_id in str(err.value)
        assert user.run_model("resnet", X).output.tolist() == [[2.0] * 4]
        mine = mallory.upload_model(onnx_models.scale_model(factor=-1.0), name="resnet")  # private: fine
        assert user.run_model("resnet", X).output.tolist() == [[2.0] * 4]
        owner.delete_model(pub.model_id)  # the name is free again once its model is gone
        again = owner.upload_model(onnx_models.scale_model(factor=2.0), name="resnet", public=True)
        assert user.get_model("resnet").model_id == again.model_id
        owner.delete_model(again.model_id)
        mallory.delete_model(mine.model_id)


def test_malformed_pins_and_ids_are_typed_400s(srv: LocalServer) -> None:
    """The red team's a4/a4b: non-ASCII pins reached hmac.compare_digest; huge ints reached str()."""
    with sim_connect(srv) as conn, client(srv) as c:
        mid = conn.upload_model(onnx_models.scale_model()).model_id
        good = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        infer = f"/v2/models/{mid}/infer"
        answers = [
            c.post(infer, json=good, headers={"BlindAI-Model-Sha256": b"\xe9"}),  # type: ignore[dict-item]
            c.post(infer, json={**good, "parameters": {"blindai_model_sha256": "\u00e9"}}),
            c.post(infer, json={**good, "parameters": {"blindai_model_sha256": "g" * 64}}),
            c.post("/run", content=cbor2.dumps({"model_id": 10**5000})),
            c.post("/delete", content=cbor2.dumps({"model_id": 10**5000})),
            c.post("/run", content=cbor2.dumps({"model_hash": 10**5000})),
            c.post("/run", content=cbor2.dumps({"model_id": [1, 2]})),
            c.post("/upload", content=cbor2.dumps({"model": list(b"xx"), "length": 10**5000})),
        ]
        for r in answers:
            assert r.status_code == 400, (r.request.url, r.status_code, r.text[:200])
        pin = hashlib.sha256(onnx_models.scale_model().SerializeToString()).hexdigest().upper()
        assert c.post(infer, json={**good, "parameters": {"blindai_model_sha256": pin}}).status_code == 200
        conn.delete_model(mid)


def test_the_owner_can_delete_a_listed_model_that_does_not_load(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            info = conn.upload_model(onnx_models.scale_model(), name="gone")
            token = conn.owner_token(info.model_id)
    finally:
        srv.stop()
    path = store / f"{info.model_id}.model.sealed"
    shutil.move(path, tmp_path / "aside")
    path.mkdir()  # reading it fails (EISDIR), whatever the user
    srv = store_server(store)
    try:
        with client(srv) as c:
            url = f"/v1/models/{info.model_id}"
            assert c.delete(url).status_code == 401
            assert c.delete(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
            assert c.get(url).status_code == 503  # still listed, still unavailable
            r = c.delete(url, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code in (200, 204), r.text[:300]
            assert c.get(url).status_code == 404
    finally:
        srv.stop(signal.SIGKILL)
    path.rmdir()
    srv = store_server(store)  # gone from the manifest: nothing unavailable at the next start
    try:
        assert "not loaded" not in srv.log()
    finally:
        srv.stop()
