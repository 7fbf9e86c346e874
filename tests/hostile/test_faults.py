"""Faults: kill -9 at bad moments, a full disk while sealing, an unreadable store.

After each, the server restarts cleanly and loses no model whose upload was acknowledged.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import blindai
from tests import onnx_models
from tests.conftest import sim_connect
from tests.test_model_store import slow_model, store_server


def assert_store_clean(store: Path, expected: set[str]) -> None:
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            # Listing shows only a caller's own models: ids are capabilities, look each one up.
            lost = set()
            for model_id in expected:
                try:
                    conn.get_model(model_id)
                except blindai.ModelNotFoundError:
                    lost.add(model_id)
            assert not lost, f"acknowledged models lost: {lost}"
            for m in [conn.get_model(i) for i in expected]:
                shape = tuple(1 if d < 0 else d for d in m.inputs[0].shape)
                conn.run_model(m.model_id, np.ones(shape, np.float32))
        assert not list(store.glob(".*.tmp"))
    finally:
        srv.stop()


def test_kill_9_during_inference(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = store_server(store)
    conn = sim_connect(srv)
    kept = conn.upload_model(onnx_models.mlp(seed=41))
    slow = conn.upload_model(slow_model(layers=6000))
    outcome: list[object] = []
    t = threading.Thread(
        target=lambda: outcome.append(_catch(lambda: conn.run_model(slow.model_id, np.ones((384, 384), np.float32))))
    )
    t.start()
    time.sleep(0.3)
    srv.stop(signal.SIGKILL)
    t.join(30)
    conn.close()
    assert isinstance(outcome[0], blindai.TransportError)
    srv = store_server(store)
    try:
        with sim_connect(srv) as c:
            assert [c.get_model(i.model_id).sha256 for i in (kept, slow)] == [kept.sha256, slow.sha256]
    finally:
        srv.stop()


def _catch(fn: object) -> object:
    try:
        return fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc


def test_kill_9_at_random_moments_of_upload_and_sealing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    acknowledged: set[str] = set()
    rng = random.Random(7)
    big = onnx_models.mlp(in_dim=256, hidden=1024, seed=5).SerializeToString()
    for round_ in range(6):
        srv = store_server(store)
        conn = sim_connect(srv)
        results: list[object] = []

        def upload(conn: blindai.Connection, results: list[object], seed: int) -> None:
            for i in range(3):
                model = big if i % 2 else onnx_models.mlp(seed=100 + seed * 3 + i).SerializeToString()
                results.append(_catch(lambda m=model: conn.upload_model(m)))

        t = threading.Thread(target=upload, args=(conn, results, round_))
        t.start()
        time.sleep(rng.uniform(0.0, 0.4))
        srv.stop(signal.SIGKILL)
        t.join(30)
        conn.close()
        acknowledged |= {r.model_id for r in results if isinstance(r, blindai.ModelInfo)}
    assert acknowledged, "no upload finished before a kill: the test proves little"
    assert_store_clean(store, acknowledged)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a size-limited tmpfs here (needs root); the full-disk fault is untested")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_while_sealing(small_disk: Path) -> None:
    store = small_disk / "store"
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            small = conn.upload_model(onnx_models.mlp(seed=42))
            with pytest.raises(blindai.ServerError, match="could not be stored") as err:
                conn.upload_model(onnx_models.mlp(in_dim=256, hidden=512, seed=43))  # ~530 kB sealed
            assert err.value.status == 507
            assert [m.model_id for m in conn.list_models()] == [small.model_id]
            conn.run_model(small.model_id, np.ones((1, 16), np.float32))
            with pytest.raises(blindai.ServerError):
                conn.upload_model(onnx_models.mlp(in_dim=256, hidden=512, seed=44))
    finally:
        srv.stop()
    assert_store_clean(store, {small.model_id})


def test_unreadable_store_entries(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = store_server(store)
    with sim_connect(srv) as conn:
        a = conn.upload_model(onnx_models.mlp(seed=45))
        b = conn.upload_model(onnx_models.mlp(seed=46))
        tokens = [conn.owner_token(a.model_id) or "", conn.owner_token(b.model_id) or ""]
    srv.stop()
    victim = store / f"{a.model_id}.model.sealed"
    victim.unlink()
    victim.mkdir()  # reading it fails (EISDIR), whatever the user
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            assert [m.model_id for m in conn.list_models(owner_tokens=tokens)] == [b.model_id]
            with pytest.raises(blindai.ServerError, match="kept"):
                conn.get_model(a.model_id)
        log = srv.log()
        assert f"cannot read {a.model_id}.model.sealed" in log
        assert victim.is_dir()  # left as it was
    finally:
        srv.stop()
