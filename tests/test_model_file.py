"""Uploads held as in-memory files (server/modelfile.py), read by onnxruntime without a copy.

What must hold: the bytes hashed are the bytes vetted, loaded and sealed (nothing in the process
can write the file once received: a memfd is sealed, a tmpfs file has no writable descriptor);
no descriptor, name or page outlives its owner (a request abandoned mid-load closes only its
own; a tmpfs file has a name only while a session is built, and keeps only the pages sessions
map); a model is not held twice while it is served; a full tmpfs or a dead server's leftovers
lose nothing and leak nothing; and the bytes fallback (SGX) behaves the same.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import mmap
import os
import stat
import subprocess
import sys
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from starlette.testclient import TestClient

from blindai.server import modelfile
from blindai.server.errors import CapacityExceeded, UnsupportedModel
from blindai.server.http.app import ServerState, attested_app
from blindai.server.http.bodies import Body, BodyLimits, Hold, MemoryBudget, read_body
from blindai.server.http.v1 import in_thread
from blindai.server.inference import InferenceEngine, LoadedModel
from blindai.server.modelfile import TMPFS_ROOT, ModelFile, model_memory, sweep_stale
from blindai.server.providers import SimulationProvider
from blindai.server.store import ModelStore, StoreLimits
from blindai.server.tls import make_identity
from blindai.server.vetting import vet_model
from tests import onnx_models
from tests.conftest import memory_usable

FILE_KINDS = [
    pytest.param(
        k, marks=pytest.mark.skipif(not memory_usable(k), reason=f"this system cannot hold models in {k} files")
    )
    for k in ("tmpfs", "memfd")
]
needs_tmpfs = pytest.mark.skipif(not memory_usable("tmpfs"), reason=f"{TMPFS_ROOT} is no usable tmpfs here")


@pytest.fixture(params=FILE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _mlp() -> bytes:
    return onnx_models.mlp(in_dim=4, hidden=8, out_dim=2).SerializeToString()


def _embedding_model(rows: int = 4096, width: int = 256, seed: int = 0) -> bytes:
    """A 4 MiB table read by Gather, which onnxruntime does not prepack (so a tmpfs upload's
    pages stay mapped as the weights), beside a MatMul weight it does prepack (so its range is
    unmapped after the load)."""
    rng = np.random.default_rng(seed)
    table = numpy_helper.from_array(rng.standard_normal((rows, width)).astype(np.float32), "table")
    proj = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "proj")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "proj"], ["y"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [table, proj],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _model_files() -> set[int]:
    """Inodes of the model files (memfds, tmpfs files) this process has open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith(("/memfd:blindai-model", TMPFS_ROOT + "/")):
                found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            continue
    return found


def _mappings_of(ino: int) -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line for line in maps if len(line.split()) > 4 and line.split()[4] == str(ino)]


def _load_folders() -> list[str]:
    return [n for n in os.listdir(TMPFS_ROOT) if n.startswith(f"blindai-load-{os.getpid()}-")]


def test_where_uploads_are_held_follows_the_tee_row() -> None:
    best = model_memory("simulation")
    assert best in ("tmpfs", "memfd") or not (memory_usable("tmpfs") or memory_usable("memfd"))
    for tee in ("tdx", "sev-snp"):
        assert model_memory(tee) == best
    assert model_memory("sgx") == "bytes"  # Gramine's memfd/tmpfs emulation is not relied on
    assert model_memory("no-such-tee") == "bytes"
    with pytest.raises(ValueError, match="bytes only"):
        model_memory("sgx", "tmpfs")
    with pytest.raises(ValueError, match="one of"):
        model_memory("simulation", "disk")


def test_a_received_model_cannot_be_changed_through_any_descriptor(kind: str) -> None:
    """The attacker is code in (or a bug of) the server process after the hash was taken."""
    data = _mlp()
    with ModelFile.from_bytes(data, memory=kind) as f:
        assert f.path is not None and f.path.startswith("/proc/self/fd/")
        with pytest.raises(ValueError, match="finished"):
            f.write(b"more")
        fd = int(f.path.rsplit("/", 1)[1])
        with pytest.raises(OSError):
            os.write(fd, b"X")
        with pytest.raises(PermissionError):
            mmap.mmap(fd, f.size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(OSError):
            os.ftruncate(fd, 1)
        if kind == "memfd" or os.geteuid() != 0:
            # A memfd's seals hold even against its owner reopening it; a tmpfs file's mode 0400
            # against anyone but root (documented: such code could patch the process anyway).
            with pytest.raises(PermissionError), open(f.path, "r+b") as w:
                w.write(b"X")
        if kind == "tmpfs":
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o400
        with f.view() as view:
            assert hashlib.sha256(view).digest() == hashlib.sha256(data).digest()
        assert Path(f.path).read_bytes() == data


def test_a_write_after_close_goes_nowhere(kind: str) -> None:
    """A body writer racing an abandoned request never writes into whatever reuses the number."""
    f = ModelFile(memory=kind)
    f.write(b"abc")
    f.close()
    with pytest.raises(ValueError):
        f.write(b"def")
    assert f.path is None


def test_each_owner_closes_its_own_descriptor(kind: str) -> None:
    before = _model_files()
    f = ModelFile.from_bytes(_mlp(), memory=kind)
    other = f.dup()
    f.close()
    assert other.path is not None and Path(other.path).read_bytes() == _mlp()
    other.close()
    assert _model_files() == before


@pytest.mark.parametrize("memory", [*FILE_KINDS, "bytes"])
def test_sessions_do_not_keep_the_model_a_second_time(memory: str) -> None:
    with ModelFile.from_bytes(_mlp(), memory=memory) as f:
        loaded = LoadedModel(f, concurrency=1)
    try:
        # onnxruntime keeps a bytes argument for the session's life; a path costs nothing.
        assert getattr(loaded.session, "_model_bytes", None) is None
        by_path = (loaded.session._model_path or "").startswith("/proc/self/fd/")  # type: ignore[attr-defined]
        assert by_path == (memory != "bytes")
        out = loaded.session.run(None, {loaded.inputs[0].name: np.ones((1, 4), np.float32)})
        assert out[0].shape == (1, 2)
    finally:
        loaded.close()


def test_the_background_session_reads_its_own_descriptor(kind: str) -> None:
    """The concurrent (1-thread) session is built after the upload answered and its file closed."""
    before = _model_files()
    with ModelFile.from_bytes(_mlp(), memory=kind) as f:
        loaded = LoadedModel(f, concurrency=2)
    try:
        assert loaded.wait_narrow()
        assert loaded.narrow is not None
    finally:
        loaded.close()
    assert _model_files() == before


def test_store_work_survives_its_request_being_abandoned(kind: str) -> None:
    """The request's file is closed while the store still loads from it: the store has a dup."""
    store = ModelStore(StoreLimits(), memory=kind)
    data = _mlp()

    async def scenario() -> str:
        model = ModelFile.from_bytes(data, memory=kind)
        task = asyncio.ensure_future(
            in_thread(model, lambda own: store.add(own, hashlib.sha256(data).hexdigest(), name="m")[0].model_id)
        )
        await asyncio.sleep(0)
        model.close()  # what an abandoned request's `with` block does
        return await task

    before = _model_files()
    model_id = asyncio.run(scenario())
    entry = store.get(model_id)
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    entry.model.wait_narrow()
    assert _model_files() == before


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


def test_a_body_streams_into_the_file_in_order_with_its_hash(kind: str) -> None:
    parts = [os.urandom(n) for n in (1, 70_000, 3, 262_144, 5000)]
    data = b"".join(parts)
    with ModelFile(memory=kind) as f:
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
def api(kind: str) -> Iterator[tuple[TestClient, ServerState]]:
    st = ServerState(
        provider=SimulationProvider(),
        identity=make_identity([]),
        store=ModelStore(StoreLimits(max_models=64), memory=kind),
        engine=InferenceEngine(),
    )
    with TestClient(attested_app(st), base_url="https://blindai") as client:
        yield client, st
    st.engine.close()


def test_uploads_and_deletes_leave_no_model_file_open(api: tuple[TestClient, ServerState]) -> None:
    client, _state = api
    before = _model_files()
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
    assert _model_files() == before


def test_an_error_while_a_view_is_in_use_is_the_error_raised(kind: str) -> None:
    """A full disk while sealing from the mapping was reported as a BufferError (500), not a 507:
    the failing write's traceback still held a slice of the mapping when it was closed."""
    with ModelFile.from_bytes(_mlp(), memory=kind) as f:
        kept: list[memoryview] = []
        with pytest.raises(OSError, match="No space"), f.view() as view:
            kept.append(view[10:20])
            raise OSError(28, "No space left on device")
        assert bytes(kept[0]) == _mlp()[10:20]  # the mapping stays until its last view goes


def _raw(data: bytes, ids: np.ndarray) -> np.ndarray:
    out = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert isinstance(out, np.ndarray)
    return out


@needs_tmpfs
def test_a_tmpfs_upload_is_the_weights_and_only_what_is_mapped_stays() -> None:
    """The upload's own pages serve the weights onnxruntime maps (no copy); once the last owner
    closes the file, everything else is punched out; the outputs never move; and when the model
    goes, nothing of the file is left."""
    data = _embedding_model()
    vetted = vet_model(data)
    assert vetted.skeleton is not None
    ids = np.array([0, 7, 4095], np.int64)
    want = _raw(data, ids)
    f = ModelFile.from_bytes(data, memory="tmpfs")
    ino = os.fstat(int(f.path.rsplit("/", 1)[1])).st_ino  # type: ignore[union-attr]
    loaded = LoadedModel(f, skeleton=vetted.skeleton, concurrency=2, narrow_now=True)
    assert loaded.narrow is not None
    mapped = _mappings_of(ino)
    assert mapped, "onnxruntime copied the weights instead of mapping them"
    maps_file = f"/proc/self/map_files/{mapped[0].split()[0]}"
    before = os.stat(maps_file).st_blocks * 512
    assert before >= len(data) - 4096
    f.close()  # the last owner: the name goes, and what no session maps is freed
    assert not _load_folders()
    after = os.stat(maps_file).st_blocks * 512
    table = 4096 * 256 * 4
    assert table <= after < table + (64 << 10), (before, after)  # the table stays; the MatMul weight went
    for session in (loaded.session, loaded.narrow):
        np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], want)
    loaded.close()
    del loaded, session
    gc.collect()
    assert not _mappings_of(ino), "the model was deleted but its file is still mapped"


@needs_tmpfs
def test_pages_are_freed_only_once_the_last_owner_closes() -> None:
    """Sealing reads the whole upload after the session is built: nothing may be punched while
    any owner (the request, the background build) still holds the file."""
    data = _embedding_model(seed=1)
    vetted = vet_model(data)
    with ModelFile.from_bytes(data, memory="tmpfs") as f:
        other = f.dup()
        loaded = LoadedModel(f, skeleton=vetted.skeleton, concurrency=1)
        other.close()
        with f.view() as view:
            assert hashlib.sha256(view).digest() == hashlib.sha256(data).digest()
        assert loaded.session.run(None, {"ids": np.array([3], np.int64)})[0].shape == (1, 256)
    loaded.close()


@needs_tmpfs
def test_the_name_exists_from_the_first_build_to_the_last_close_in_a_private_folder() -> None:
    data = _embedding_model(seed=2)
    f = ModelFile.from_bytes(data, memory="tmpfs")
    assert not _load_folders(), "an upload has no name until a session is built from it"
    other = f.dup()
    first, second = f.weights_folder(), other.weights_folder()
    assert first == second and first is not None  # owners share one name
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o700
    assert os.listdir(first) == ["blindai-upload"]
    assert Path(first, "blindai-upload").read_bytes() == data
    f.close()
    assert _load_folders() == [os.path.basename(first)]
    other.close()
    assert not _load_folders()


@needs_tmpfs
def test_a_planted_location_cannot_reach_past_the_folder() -> None:
    """Were vetting to let a foreign external-data location through, onnxruntime resolves it in
    the private folder, whose only file is the upload: /etc/hostname and ../ are refused."""
    data = _embedding_model(seed=3)
    vetted = vet_model(data)
    assert vetted.skeleton is not None
    for planted in ("/etc/hostname", "../../etc/hostname", "other-file"):
        skel = onnx.load_from_string(vetted.skeleton)
        for t in skel.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = planted
        with ModelFile.from_bytes(data, memory="tmpfs") as f, pytest.raises(UnsupportedModel):
            LoadedModel(f, skeleton=skel.SerializeToString(), concurrency=1)
    assert not _load_folders()


@needs_tmpfs
def test_a_full_tmpfs_moves_the_upload_to_a_memfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's default /dev/shm is 64 MiB: an upload that fills it goes on in a memfd, whole."""
    data = os.urandom(300_000)
    f = ModelFile(memory="tmpfs")
    tmpfs_fd = f._fd
    real_write = os.write

    def full_after_100k(fd: int, chunk: bytes | memoryview) -> int:
        """Like a full tmpfs: the write that reaches the limit is short, the next one fails."""
        if fd == tmpfs_fd:
            room = 100_000 - os.lseek(fd, 0, os.SEEK_CUR)
            if room <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            chunk = memoryview(chunk)[:room]
        return real_write(fd, chunk)

    monkeypatch.setattr(modelfile.os, "write", full_after_100k)
    try:
        for i in range(0, len(data), 30_000):
            f.write(data[i : i + 30_000])
        monkeypatch.undo()
        f.finish()
        assert f.memory == "memfd"
        with f.view() as view:
            assert bytes(view) == data
    finally:
        monkeypatch.undo()
        f.close()


@needs_tmpfs
def test_a_dead_servers_load_folder_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    """A server killed while building a session (OOM, the peak of a load) leaves its upload named
    in /dev/shm: the next start removes it. Folders of live processes and others' names stay."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    made = []
    for pid in (dead_pid, os.getppid()):
        folder = Path(TMPFS_ROOT, f"blindai-load-{pid}-test{os.getpid()}")
        folder.mkdir()
        (folder / "blindai-upload").write_bytes(b"a model in plaintext")
        made.append(folder)
    empty_of_dead = Path(tempfile.gettempdir(), f"blindai-no-files-{dead_pid}-test{os.getpid()}")
    empty_of_dead.mkdir()  # the empty folder a killed server leaves (red team round 2)
    unrelated = Path(TMPFS_ROOT, f"not-blindai-{os.getpid()}")
    unrelated.mkdir()
    try:
        assert sweep_stale() >= 2
        assert not made[0].exists() and not empty_of_dead.exists()
        assert made[1].exists() and unrelated.exists()
    finally:
        for folder in (*made, empty_of_dead, unrelated):
            if folder.exists():
                for child in folder.iterdir():
                    child.unlink()
                folder.rmdir()


@needs_tmpfs
def test_a_starting_server_sweeps_its_own_pids_folders() -> None:
    """In a container the server is pid 1 at every start: a folder a killed pid-1 server left
    carries the new server's own pid. A starting server has made none yet: they are stale."""
    code = (
        "import os, pathlib, sys\n"
        "from blindai.server.modelfile import TMPFS_ROOT, sweep_stale\n"
        "f = pathlib.Path(TMPFS_ROOT, f'blindai-load-{os.getpid()}-left')\n"
        "f.mkdir(); (f / 'blindai-upload').write_bytes(b'model')\n"
        "kept = sweep_stale() == 0 and f.exists()\n"
        "swept = sweep_stale(starting=True) >= 1 and not f.exists()\n"
        "print(kept, swept)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr


def test_a_deleted_model_is_freed_at_once_not_by_the_cycle_collector(kind: str) -> None:
    """Red team: once a model had run, it and its run scheduler referred to each other, so a
    deleted model's sessions (and the upload pages a tmpfs model maps) stayed until Python's
    cycle collector happened to run, while the store already counted that memory as free."""
    store = ModelStore(StoreLimits(), memory=kind)
    engine = InferenceEngine()
    data = _mlp()
    entry, token = store.add(data, hashlib.sha256(data).hexdigest(), name="m")
    model = entry.model
    model.wait_narrow()
    feed = {model.inputs[0].name: np.ones((1, 4), np.float32)}

    async def runs(m: LoadedModel) -> None:
        await asyncio.gather(*(engine.infer(m, feed, None) for _ in range(4)))

    asyncio.run(runs(model))
    freed = weakref.ref(model)
    model_id = entry.model_id
    del entry, model
    gc.collect()
    gc.disable()
    try:
        store.delete(model_id, token)
        assert freed() is None, "the deleted model is still alive (a reference cycle)"
    finally:
        gc.enable()
        engine.close()
