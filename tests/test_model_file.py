"""Uploads held as sealed in-memory files (server/modelfile.py), loaded by onnxruntime by path.

What must hold: the bytes hashed are the bytes vetted, loaded and sealed (nothing can write
to the file once received, not even through ``/proc/self/fd``); no descriptor outlives its
owner (a request abandoned mid-load closes only its own); a model is not held twice while it
is served; and the bytes fallback (SGX) behaves the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from blindai.server.errors import CapacityExceeded
from blindai.server.http.app import ServerState, attested_app
from blindai.server.http.bodies import Body, BodyLimits, Hold, MemoryBudget, read_body
from blindai.server.http.v1 import in_thread
from blindai.server.inference import InferenceEngine, LoadedModel
from blindai.server.modelfile import ModelFile, memfd_usable
from blindai.server.providers import SimulationProvider
from blindai.server.store import ModelStore, StoreLimits
from blindai.server.tls import make_identity
from tests import onnx_models

pytestmark = pytest.mark.skipif(not memfd_usable("simulation"), reason="this system has no usable memfd_create")


def _mlp() -> bytes:
    return onnx_models.mlp(in_dim=4, hidden=8, out_dim=2).SerializeToString()


def _memfds() -> set[int]:
    """Inodes of the memfds this process has open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:blindai-model"):
                found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            continue
    return found


def test_where_uploads_are_held_follows_the_tee_row() -> None:
    assert memfd_usable("simulation") and memfd_usable("tdx") and memfd_usable("sev-snp")
    assert not memfd_usable("sgx")  # Gramine's memfd emulation is not relied on: bytes
    assert not memfd_usable("no-such-tee")


def test_a_received_model_cannot_be_changed_through_any_descriptor() -> None:
    """The attacker is code in (or a bug of) the server process after the hash was taken."""
    data = _mlp()
    with ModelFile.from_bytes(data, memfd=True) as f:
        assert f.path is not None and f.path.startswith("/proc/self/fd/")
        with pytest.raises(ValueError, match="finished"):
            f.write(b"more")
        with pytest.raises(PermissionError), open(f.path, "r+b") as w:
            w.write(b"X")
        fd = int(f.path.rsplit("/", 1)[1])
        with pytest.raises(PermissionError):
            mmap.mmap(fd, f.size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 1)
        with f.view() as view:
            assert hashlib.sha256(view).digest() == hashlib.sha256(data).digest()
        assert Path(f.path).read_bytes() == data


def test_a_write_after_close_goes_nowhere() -> None:
    """A body writer racing an abandoned request never writes into whatever reuses the number."""
    f = ModelFile(memfd=True)
    f.write(b"abc")
    f.close()
    with pytest.raises(ValueError):
        f.write(b"def")
    assert f.path is None


def test_each_owner_closes_its_own_descriptor() -> None:
    before = _memfds()
    f = ModelFile.from_bytes(_mlp(), memfd=True)
    other = f.dup()
    f.close()
    assert other.path is not None and Path(other.path).read_bytes() == _mlp()
    other.close()
    assert _memfds() == before


@pytest.mark.parametrize("memfd", [True, False])
def test_sessions_do_not_keep_the_model_a_second_time(memfd: bool) -> None:
    with ModelFile.from_bytes(_mlp(), memfd=memfd) as f:
        loaded = LoadedModel(f, concurrency=1)
    try:
        # onnxruntime keeps a bytes argument for the session's life; a path costs nothing.
        assert getattr(loaded.session, "_model_bytes", None) is None
        assert (loaded.session._model_path or "").startswith("/proc/self/fd/") == memfd  # type: ignore[attr-defined]
        out = loaded.session.run(None, {loaded.inputs[0].name: np.ones((1, 4), np.float32)})
        assert out[0].shape == (1, 2)
    finally:
        loaded.close()


def test_the_background_session_reads_its_own_descriptor() -> None:
    """The concurrent (1-thread) session is built after the upload answered and its file closed."""
    before = _memfds()
    with ModelFile.from_bytes(_mlp(), memfd=True) as f:
        loaded = LoadedModel(f, concurrency=2)
    try:
        assert loaded.wait_narrow()
        assert loaded.narrow is not None
    finally:
        loaded.close()
    assert _memfds() == before


def test_store_work_survives_its_request_being_abandoned() -> None:
    """The request's file is closed while the store still loads from it: the store has a dup."""
    store = ModelStore(StoreLimits(), memfd=True)
    data = _mlp()

    async def scenario() -> str:
        model = ModelFile.from_bytes(data, memfd=True)
        task = asyncio.ensure_future(
            in_thread(model, lambda own: store.add(own, hashlib.sha256(data).hexdigest(), name="m")[0].model_id)
        )
        await asyncio.sleep(0)
        model.close()  # what an abandoned request's `with` block does
        return await task

    before = _memfds()
    model_id = asyncio.run(scenario())
    entry = store.get(model_id)
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    entry.model.wait_narrow()
    assert _memfds() == before


def _read_into(parts: list[bytes], into: Callable[[bytes], None]) -> Body:
    """The body reader over these chunks, with hashing and a sink (a model upload's settings)."""

    async def chunks() -> AsyncIterator[bytes]:
        for p in parts:
            yield p
            await asyncio.sleep(0)

    hold = Hold(MemoryBudget(1 << 30))
    try:
        return asyncio.run(
            read_body(
                chunks(), None, max_bytes=1 << 20, limits=BodyLimits(), hold=hold, what="model", sha256=True, into=into
            )
        )
    finally:
        hold.release()


def test_a_body_streams_into_the_file_in_order_with_its_hash() -> None:
    parts = [os.urandom(n) for n in (1, 70_000, 3, 262_144, 5000)]
    data = b"".join(parts)
    with ModelFile(memfd=True) as f:
        body = _read_into(parts, f.write)
        f.finish()
        assert body.data == b"" and body.size == len(data)
        assert body.sha256 == hashlib.sha256(data).hexdigest()
        with f.view() as view:
            assert bytes(view) == data


def test_a_model_the_server_cannot_hold_is_507_not_a_crash() -> None:
    def full(_chunk: bytes) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(CapacityExceeded, match="could not be held"):
        _read_into([b"x" * 1000] * 5, full)


@pytest.fixture
def api() -> Iterator[tuple[TestClient, ServerState]]:
    st = ServerState(
        provider=SimulationProvider(),
        identity=make_identity([]),
        store=ModelStore(StoreLimits(max_models=64), memfd=True),
        engine=InferenceEngine(),
    )
    with TestClient(attested_app(st), base_url="https://blindai") as client:
        yield client, st
    st.engine.close()


def test_uploads_and_deletes_leave_no_model_file_open(api: tuple[TestClient, ServerState]) -> None:
    client, _state = api
    before = _memfds()
    for i in range(8):
        data = onnx_models.mlp(in_dim=4, hidden=8 + i, out_dim=2).SerializeToString()
        resp = client.post("/v1/models", content=data)
        assert resp.status_code == 201, resp.text
        answer = resp.json()
        assert answer["sha256"] == hashlib.sha256(data).hexdigest()
        model_id, token = answer["model_id"], answer["owner_token"]
        resp = client.put(f"/v1/models/{model_id}", content=_mlp(), headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        _state.store.get(model_id).model.wait_narrow()
        gone = client.request("DELETE", f"/v1/models/{model_id}", headers={"Authorization": f"Bearer {token}"})
        assert gone.is_success, gone.text
    for bad in (b"not onnx at all", b""):
        assert client.post("/v1/models", content=bad).status_code in (400, 422)
    assert _memfds() == before


def test_an_error_while_a_view_is_in_use_is_the_error_raised() -> None:
    """A full disk while sealing from the mapping was reported as a BufferError (500), not a 507:
    the failing write's traceback still held a slice of the mapping when it was closed."""
    with ModelFile.from_bytes(_mlp(), memfd=True) as f:
        kept: list[memoryview] = []
        with pytest.raises(OSError, match="No space"), f.view() as view:
            kept.append(view[10:20])
            raise OSError(28, "No space left on device")
        assert bytes(kept[0]) == _mlp()[10:20]  # the mapping stays until its last view goes
