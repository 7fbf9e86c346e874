"""More host attacks on the sealed store between restarts (red-team findings F11, F12, F13 of issue 12).

A planted pending file must never replace a listed model's file; a manifest from another store
(same sealing key) must refuse the start rather than start empty; a FIFO in place of a listed
model file must not hang the start.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from blindai.server import sealing
from tests import onnx_models
from tests.conftest import sim_connect
from tests.hostile.test_sealed_store import refused_start
from tests.test_model_store import store_server

X = np.ones((1, 16), np.float32)
LOG = logging.getLogger("test")


def upload(store: Path, seed: int = 91) -> str:
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            return conn.upload_model(onnx_models.mlp(seed=seed), name="m").model_id
    finally:
        srv.stop()


def test_a_planted_pending_file_never_replaces_a_listed_model(tmp_path: Path) -> None:
    store = tmp_path / "store"
    model_id = upload(store)
    final = store / f"{model_id}.model.sealed"
    good = final.read_bytes()
    planted = store / f".{model_id}.model.sealed.v1.pending.tmp"  # the listed version's pending name
    planted.write_bytes(b"garbage")
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            assert conn.run_model(model_id, X).output.shape == (1, 4)
        assert "not the listed version" in srv.log()
    finally:
        srv.stop()
    assert final.read_bytes() == good and not planted.exists()
    assert [p.name for p in store.glob("rejected-*/*")] == [planted.name]  # moved aside, not lost


def test_a_manifest_from_another_store_refuses_the_start(tmp_path: Path) -> None:
    a, c = tmp_path / "a", tmp_path / "c"
    mine = upload(a, 92)
    c.mkdir()
    shutil.copy(a / sealing.SIMULATION_KEY_NAME, c)  # the same sealing key, another store
    upload(c, 93)
    shutil.copy(c / sealing.MANIFEST, a / sealing.MANIFEST)
    log = refused_start(a)
    assert "another model store" in log and f"{mine}.model.sealed" in log and "blindai store recover" in log
    assert (a / f"{mine}.model.sealed").exists()


def test_a_fifo_in_place_of_a_listed_file_does_not_hang_the_read(tmp_path: Path) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    folder = tmp_path / "store"
    d = sealing.SealedDirectory(folder, key)
    d.open(LOG)
    model_id = "b" * 32
    d.save(model_id, {"sha256": "one"}, b"model bytes")
    path = folder / f"{model_id}.model.sealed"
    path.unlink()
    os.mkfifo(path)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            sealing.SealedDirectory(folder, key).open(LOG)
            d.read(model_id, lambda _chunk: None)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the reader (a writer opens and closes), then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail("reading a FIFO in place of a model file blocked")
    assert isinstance(outcome[0], sealing.SealedFileError) and "regular file" in str(outcome[0])
