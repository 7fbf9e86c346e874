"""Findings of the red-team pass over the rebuilt upload and store path, kept as tests.

- F1: a replacement racing a delete of the same model re-listed the deleted model (and sealed
  it, and overshot --max-models): the replacement now fails with a 409 and nothing changes.
- F2: a host that rewrote a sealed file as format 1 (one AES-GCM message, authenticated only
  at its end) and padded it made the server read and hold the whole padded file, about twice
  --max-model-bytes, from a 4 KiB sparse file: format 1 is now decrypted as a stream too.
- F3: the reload of a listed model that did not load (a whole file read and decrypted) ran on
  the attested event loop from any GET: it now runs in a thread, and a file whose header names
  another version is refused before its body is read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from blindai.server import sealing
from blindai.server import store as store_module
from blindai.server.errors import Conflict
from blindai.server.http.app import ServerState, attested_app
from blindai.server.http.bodies import BodyLimits
from blindai.server.inference import InferenceEngine
from blindai.server.modelfile import model_memory
from blindai.server.providers import SimulationProvider
from blindai.server.store import ModelStore, StoreLimits
from blindai.server.tls import make_identity
from blindai.server.vetting import VettedModel
from tests import onnx_models

LOG = logging.getLogger("test")


def _model(seed: int) -> bytes:
    return onnx_models.mlp(in_dim=4, hidden=8, out_dim=2, seed=seed).SerializeToString()


def _gate_vetting(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Vetting (inside a store operation) signals the first event, then waits for the second:
    the test acts while the operation is half done."""
    started, go_on = threading.Event(), threading.Event()
    real_vet = store_module.vet_model

    def slow_vet(*args: object, **kwargs: object) -> VettedModel:
        started.set()
        assert go_on.wait(10)
        return real_vet(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "vet_model", slow_vet)
    return started, go_on


def test_f1_a_replacement_racing_a_delete_never_brings_the_model_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    sealed = sealing.SealedDirectory(tmp_path / "store", key)
    store = ModelStore(StoreLimits(max_models=1), sealed=sealed, memory=model_memory("simulation"))
    store.load_sealed()
    first = _model(1)
    entry, token = store.add(first, hashlib.sha256(first).hexdigest(), name="m")

    real_vet = store_module.vet_model
    loading, go_on = _gate_vetting(monkeypatch)
    second = _model(2)
    outcome: list[BaseException | object] = []

    def replace() -> None:
        try:
            outcome.append(store.replace(entry.model_id, token, second, hashlib.sha256(second).hexdigest()))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=replace)
    t.start()
    assert loading.wait(10)
    store.delete(entry.model_id, token)  # the owner's delete is acknowledged...
    monkeypatch.setattr(store_module, "vet_model", real_vet)
    third = _model(3)
    store.add(third, hashlib.sha256(third).hexdigest(), name="other tenant")  # ...and its slot reused
    go_on.set()
    t.join(10)
    assert isinstance(outcome[0], Conflict), outcome  # the old code answered 200 and re-listed the model
    assert entry.model_id not in {m.model_id for m in store.all()}
    assert len(store.all()) == 1  # --max-models 1 holds
    again = ModelStore(StoreLimits(max_models=1), sealed=sealing.SealedDirectory(tmp_path / "store", key))
    assert again.load_sealed() == 1 and entry.model_id not in {m.model_id for m in again.all()}


def _as_format_1(blob: bytes, pad_to: int) -> bytes:
    """What the host can do without the key: relabel a format-2 file as format 1 (adding a data
    nonce to the header) and pad it; authentication can only fail at the end."""
    (hlen,) = struct.unpack_from("<I", blob, 8)
    header = json.loads(blob[12 : 12 + hlen])
    header["data_nonce"] = base64.b64encode(os.urandom(12)).decode()
    raw = json.dumps(header).encode()
    body = blob[12 + hlen :]
    out = sealing.MAGIC + struct.pack("<I", len(raw)) + raw + body
    return out + b"\0" * (pad_to - len(out))


def test_f2_a_file_relabelled_as_format_1_costs_one_chunk_of_memory(tmp_path: Path) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    blob = sealing.seal(key, "abc", {"sha256": "00"}, os.urandom(1000))
    path = tmp_path / "abc.model.sealed"
    size = 96 << 20
    with path.open("wb") as f:  # sparse: the host spends 4 KiB of disk
        f.write(_as_format_1(blob, 4096))
        f.truncate(size)
    received = 0

    def sink(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    tracemalloc.start()
    try:
        with pytest.raises(sealing.SealedFileError):
            sealing.unseal_file(key, path, "abc", sink, size + 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * sealing.CHUNK, peak  # the old reader held the whole file, then its plaintext: 192 MiB
    assert received == 0  # authenticated first (a pass that keeps nothing): no forged byte reaches the sink


def test_f3_a_rolled_back_file_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    d = sealing.SealedDirectory(tmp_path / "store", key)
    d.open(LOG)
    d.save("m1", {"sha256": "aa"}, b"version one" * 1000)
    old = (tmp_path / "store" / "m1.model.sealed").read_bytes()
    d.save("m1", {"sha256": "bb"}, b"version two")
    (tmp_path / "store" / "m1.model.sealed").write_bytes(old)  # the host restores the old file
    got: list[bytes] = []
    with pytest.raises(sealing.SealedFileError, match="version"):
        d.read("m1", got.append)
    assert got == []  # refused on the header: no chunk decrypted


def _store_with_a_broken_model(tmp_path: Path, seed: int) -> tuple[ModelStore, Any, str, bytes]:
    """A store restarted after its one model's file lost its last byte: listed, not loaded.
    Returns the store, the model's first entry, its owner token and the file's good bytes."""
    key = sealing.SealingKey(os.urandom(32), source="test")
    folder = tmp_path / "store"
    first = ModelStore(sealed=sealing.SealedDirectory(folder, key), memory=model_memory("simulation"))
    first.load_sealed()
    data = _model(seed)
    entry, token = first.add(data, hashlib.sha256(data).hexdigest(), name="m")
    path = folder / f"{entry.model_id}.model.sealed"
    good = path.read_bytes()
    path.write_bytes(good[:-1])
    store = ModelStore(sealed=sealing.SealedDirectory(folder, key), memory=model_memory("simulation"))
    assert store.load_sealed() == 0
    return store, entry, token, good


@pytest.fixture
def broken_store(tmp_path: Path) -> Iterator[tuple[TestClient, str, list[bool]]]:
    """A server whose one listed model does not load (its file truncated), and a record of whether
    each reload ran with an event loop running in its thread."""
    store, entry, _token, _good = _store_with_a_broken_model(tmp_path, 4)
    on_loop: list[bool] = []
    real = store._load_one

    def load_one(model_id: str) -> bool:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(model_id)

    store._load_one = load_one  # type: ignore[method-assign]
    state = ServerState(
        provider=SimulationProvider(), identity=make_identity([]), store=store, engine=InferenceEngine()
    )
    app = attested_app(state)
    app.state_ref = state  # type: ignore[attr-defined]
    with TestClient(app, base_url="https://blindai") as client:
        yield client, entry.model_id, on_loop
    state.engine.close()


def test_f3_reloads_never_run_on_the_event_loop(
    broken_store: tuple[TestClient, str, list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, model_id, on_loop = broken_store
    monkeypatch.setattr(store_module, "RETRY_S", 0.0)  # every request is due for a reload
    store = client.app.state_ref.store  # type: ignore[attr-defined]
    store._retry_at.clear()  # the first retry was scheduled RETRY_S after the start
    for path in (f"/v1/models/{model_id}", f"/v2/models/{model_id}", f"/v2/models/{model_id}/ready"):
        resp = client.get(path)
        assert resp.status_code == 503, resp.text
    resp = client.post(f"/v2/models/{model_id}/infer", json={"inputs": []})
    assert resp.status_code == 503, resp.text
    resp = client.put(f"/v1/models/{model_id}", content=b"x", headers={"Authorization": "Bearer t"})
    assert resp.status_code == 503, resp.text
    assert on_loop and not any(on_loop), on_loop  # the old code reloaded on the loop every time


# ------------------------------------------------------------------ second round


def test_r2_a_delete_racing_a_reload_sticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner's DELETE of a listed model that did not load, while a GET reloads it: the
    delete is acknowledged and the model must not be served afterwards (it was, from memory)."""
    store, entry, token, good = _store_with_a_broken_model(tmp_path, 5)
    path = tmp_path / "store" / f"{entry.model_id}.model.sealed"
    path.write_bytes(good)  # the file reads again: the next GET reloads it

    reading, go_on = _gate_vetting(monkeypatch)
    store._retry_at.clear()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(_try(lambda: store.get(entry.model_id))))
    t.start()
    assert reading.wait(10)
    deleted: list[object] = []
    d = threading.Thread(target=lambda: deleted.append(_try(lambda: store.delete(entry.model_id, token))))
    d.start()
    d.join(0.5)  # the old store made the delete wait for the reload's lock, then left the model loaded
    go_on.set()
    t.join(10)
    d.join(10)
    deleted = deleted[0]  # type: ignore[assignment]
    assert not isinstance(deleted, BaseException), deleted
    with pytest.raises(Exception, match="no model"):  # not served from memory, not listed on disk
        store.get(entry.model_id)
    assert store.sealed is not None
    assert entry.model_id not in sealing.SealedDirectory(tmp_path / "store", store.sealed.key).open(LOG)


def _try(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as exc:
        return exc


def test_r2_a_sparse_planted_pending_file_costs_no_memory(tmp_path: Path) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    folder = tmp_path / "store"
    d = sealing.SealedDirectory(folder, key)
    d.open(LOG)
    d.save("m1", {"sha256": "aa"}, b"model")
    version = d.manifest.models["m1"].version
    planted = folder / f".m1.model.sealed.v{version}.pending.tmp"
    with planted.open("wb") as f:  # 4 KiB of disk, 96 MiB to a reader that reads it whole
        f.write((folder / "m1.model.sealed").read_bytes()[:4096])
        f.truncate(96 << 20)
    tracemalloc.start()
    try:
        sealing.SealedDirectory(folder, key).open(LOG)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * sealing.CHUNK, peak  # the old check read and joined the whole file (2x)
    assert not planted.exists()  # moved aside, as before


def test_r2_format_1_never_puts_forged_bytes_in_the_sink(tmp_path: Path) -> None:
    """The sink is the model's in-memory file: what reaches it is what the server holds."""
    key = sealing.SealingKey(os.urandom(32), source="test")
    path = tmp_path / "abc.model.sealed"
    with path.open("wb") as f:
        f.write(_as_format_1(sealing.seal(key, "abc", {"sha256": "00"}, os.urandom(1000)), 4096))
        f.truncate(64 << 20)
    received = 0

    def sink(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    with pytest.raises(sealing.SealedFileError):
        sealing.unseal_file(key, path, "abc", sink, 65 << 20)
    assert received == 0


def test_r2_store_recover_refuses_a_fifo_instead_of_hanging(tmp_path: Path) -> None:
    import subprocess
    import sys

    key_file = tmp_path / "key"
    key_file.write_bytes(os.urandom(32))
    folder = tmp_path / "store"
    d = sealing.SealedDirectory(folder, sealing.SealingKey(key_file.read_bytes(), source="test"))
    d.open(LOG)
    d.save("m1", {"sha256": "aa"}, b"model")
    os.mkfifo(folder / "deadbeef.model.sealed")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "blindai",
            "store",
            "recover",
            str(folder),
            "--adopt-all",
            "--sealing-key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,  # the old command blocked on the FIFO's open for ever
    )
    assert "deadbeef" in done.stdout + done.stderr, done


def test_r2_an_upload_whose_client_left_is_withdrawn() -> None:
    """Nobody got the owner token, so nobody could ever delete the model: it is not kept."""
    store = ModelStore(memory=model_memory("simulation"))
    state = ServerState(
        provider=SimulationProvider(), identity=make_identity([]), store=store, engine=InferenceEngine()
    )
    app = attested_app(state)
    body = _model(6)
    sent: list[dict[str, object]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}  # the client is gone once the body is in

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/v1/models",
        "raw_path": b"/v1/models",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", str(len(body)).encode()), (b"blindai-model-public", b"true")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    try:
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    finally:
        state.engine.close()
    assert store.all() == []  # the old handler kept it, listed and public, with no owner able to act


def test_r2_core_dumps_are_forbidden_in_a_hardware_tee() -> None:
    import subprocess
    import sys

    code = (
        "import ctypes, resource; from blindai.server.runner import forbid_core_dumps; "
        "assert forbid_core_dumps(); "
        "print(resource.getrlimit(resource.RLIMIT_CORE), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["(0,", "0)", "0"], out


def test_r2_finished_uploads_cannot_pile_up_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vetting and loading hold memory no budget counts: they run inside the upload slot, so with
    one slot a second upload waits while the first is still being vetted (before, the slot was
    released once the body was in, and any number of uploads could be vetting and loading)."""
    store = ModelStore(memory=model_memory("simulation"))
    state = ServerState(
        provider=SimulationProvider(),
        identity=make_identity([]),
        store=store,
        engine=InferenceEngine(),
        body_limits=BodyLimits(max_concurrent_uploads=1),
    )
    vetting, go_on = _gate_vetting(monkeypatch)
    calls: list[str] = []
    gated = store_module.vet_model

    def counted(*args: object, **kwargs: object) -> VettedModel:
        calls.append("vet")
        return gated(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "vet_model", counted)
    statuses: list[int] = []
    with TestClient(attested_app(state), base_url="https://blindai") as client:

        def upload(seed: int) -> None:
            statuses.append(client.post("/v1/models", content=_model(seed)).status_code)

        first = threading.Thread(target=upload, args=(7,))
        first.start()
        assert vetting.wait(10)
        second = threading.Thread(target=upload, args=(8,))
        second.start()
        second.join(1.0)
        seen = list(calls)
        go_on.set()
        first.join(10)
        second.join(10)
    state.engine.close()
    assert seen == ["vet"]  # the second upload waited for the slot, not in vetting
    assert statuses == [201, 201] and len(store.all()) == 2
