"""A hostile host against the sealed model store: the store fails closed and never loses a listed model.

The host may delete or replace the manifest, restore old model files, make files unreadable,
or plant malformed ones. None of that may load a deleted or older model, delete a model, or
stop the server from starting (except a missing or unusable manifest, which refuses the start
with the recovery commands: guessing which files are live is what the host wants).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import blindai
from blindai.server import sealing
from blindai.server.store import ModelStore
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect
from tests.test_model_store import store_server

X = np.ones((1, 16), np.float32)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blindai", *args], capture_output=True, text=True, timeout=120)


def refused_start(store: Path) -> str:
    srv = LocalServer("--model-store", str(store))
    with pytest.raises(RuntimeError, match="exited with 2"):
        srv.start()
    return srv.log()


def upload_two(store: Path) -> tuple[blindai.ModelInfo, blindai.ModelInfo, dict[str, str]]:
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            a = conn.upload_model(onnx_models.mlp(seed=81), name="a")
            b = conn.upload_model(onnx_models.mlp(seed=82), name="b")
            tokens = {i.model_id: conn.owner_token(i.model_id) or "" for i in (a, b)}
    finally:
        srv.stop()
    return a, b, tokens


def test_a_missing_manifest_refuses_the_start_names_the_files_and_recovers(tmp_path: Path) -> None:
    store = tmp_path / "store"
    a, b, _ = upload_two(store)
    (store / "manifest.sealed").unlink()
    log = refused_start(store)
    assert f"{a.model_id}.model.sealed" in log and f"{b.model_id}.model.sealed" in log
    assert f"blindai store check {store}" in log and "blindai store recover" in log
    assert (store / f"{a.model_id}.model.sealed").exists() and (store / f"{b.model_id}.model.sealed").exists()

    out = cli("store", "check", str(store))
    assert out.returncode == 1 and "manifest: missing" in out.stdout and "'a'" in out.stdout, out.stdout + out.stderr
    out = cli("store", "recover", str(store), "--adopt", a.model_id)
    assert out.returncode == 0, out.stderr
    assert f"adopted {a.model_id}" in out.stdout and f"moved unlisted {b.model_id}" in out.stdout
    assert cli("store", "check", str(store)).returncode == 0
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            assert conn.run_model(a.model_id, X).output.shape == (1, 4)  # adopted: served
            with pytest.raises(blindai.ModelNotFoundError):
                conn.run_model(b.model_id, X)  # not adopted: moved aside, not loaded, not deleted
    finally:
        srv.stop()
    assert list(store.glob(f"unlisted-*/{b.model_id}.model.sealed"))


@pytest.mark.parametrize("how", ["garbage", "foreign-key", "directory"])
def test_an_unusable_manifest_refuses_the_start_and_deletes_nothing(tmp_path: Path, how: str) -> None:
    store = tmp_path / "store"
    a, b, _ = upload_two(store)
    manifest = store / "manifest.sealed"
    if how == "garbage":
        manifest.write_bytes(os.urandom(200))
    elif how == "foreign-key":
        manifest.write_bytes(sealing.seal(sealing.SealingKey(os.urandom(32), source="other"), "manifest", {}, b""))
    else:
        manifest.unlink()
        manifest.mkdir()
    log = refused_start(store)
    assert "manifest" in log and "blindai store recover" in log
    assert {p.name for p in store.glob("*.model.sealed")} == {f"{i.model_id}.model.sealed" for i in (a, b)}


def test_an_older_model_file_or_manifest_never_loads_and_nothing_is_deleted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    a, b, tokens = upload_two(store)
    old_a = (store / f"{a.model_id}.model.sealed").read_bytes()
    old_manifest = (store / "manifest.sealed").read_bytes()
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            new_a = conn.replace_model(a.model_id, onnx_models.mlp(seed=83), owner_token=tokens[a.model_id])
            expected = conn.run_model(a.model_id, X).output
            conn.delete_model(b.model_id, owner_token=tokens[b.model_id])
            c = conn.upload_model(onnx_models.mlp(seed=84), name="c")
    finally:
        srv.stop()
    new_a_file = (store / f"{a.model_id}.model.sealed").read_bytes()

    # 1. An older file of a listed model, restored alone: not loaded, kept, reported; twice.
    (store / f"{a.model_id}.model.sealed").write_bytes(old_a)
    for _ in range(2):
        srv = store_server(store)
        try:
            with sim_connect(srv) as conn:
                with pytest.raises(blindai.ServerError, match="could not be loaded") as err:
                    conn.run_model(a.model_id, X)
                assert err.value.status == 503
                assert conn.run_model(c.model_id, X).output.shape == (1, 4)
            assert "version" in srv.log()
        finally:
            srv.stop()
        assert (store / f"{a.model_id}.model.sealed").read_bytes() == old_a  # untouched
    # The right file back: served again, the new version.
    (store / f"{a.model_id}.model.sealed").write_bytes(new_a_file)
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            assert conn.get_model(a.model_id).sha256 == new_a.sha256
            np.testing.assert_array_equal(conn.run_model(a.model_id, X).output, expected)
    finally:
        srv.stop()

    # 2. The older manifest restored alone: the deleted model stays deleted, the replaced one is
    # not served at its old version, the newer one is not loaded, and no file is removed.
    (store / "manifest.sealed").write_bytes(old_manifest)
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            for ref in (a.model_id, b.model_id):
                with pytest.raises(blindai.ServerError) as err:
                    conn.run_model(ref, X)
                assert err.value.status == 503
            with pytest.raises(blindai.ModelNotFoundError):
                conn.run_model(c.model_id, X)
        assert "not in the manifest" in srv.log()
    finally:
        srv.stop()
    assert (store / f"{a.model_id}.model.sealed").read_bytes() == new_a_file
    assert (store / f"{c.model_id}.model.sealed").exists()
    assert not (store / f"{b.model_id}.model.sealed").exists()


def test_an_unreadable_file_at_start_stays_listed_and_is_served_once_readable(tmp_path: Path) -> None:
    store = tmp_path / "store"
    a, b, tokens = upload_two(store)
    path = store / f"{a.model_id}.model.sealed"
    aside = tmp_path / "aside"
    shutil.move(path, aside)
    path.mkdir()  # reading it fails (EISDIR), whatever the user
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            assert [m.model_id for m in conn.list_models(owner_tokens=list(tokens.values()))] == [b.model_id]
            with pytest.raises(blindai.ServerError, match="cannot read") as err:
                conn.run_model(a.model_id, X)
            assert err.value.status == 503
            # The read error clears (a disk comes back): the model is served, no restart needed.
            path.rmdir()
            shutil.move(aside, path)
            time.sleep(2.1)
            assert conn.run_model(a.model_id, X).output.shape == (1, 4)
    finally:
        srv.stop(signal.SIGKILL)
    srv = store_server(store)  # and it was never dropped from the manifest
    try:
        with sim_connect(srv) as conn:
            assert {m.model_id for m in conn.list_models(owner_tokens=list(tokens.values()))} == {
                a.model_id,
                b.model_id,
            }
    finally:
        srv.stop()


# ------------------------------------------------------------------ malformed sealed files


def forged(key: sealing.SealingKey, model_id: str, **fields: object) -> bytes:
    """A sealed file whose header fields are set by hand (the tag then fails, or parsing does first)."""
    header: dict[str, object] = {
        "id": model_id,
        "meta": {"sha256": "00"},
        "wrap_nonce": base64.b64encode(os.urandom(12)).decode(),
        "wrapped_key": base64.b64encode(os.urandom(48)).decode(),
        "data_nonce": base64.b64encode(os.urandom(12)).decode(),
    }
    header.update(fields)
    raw = json.dumps(header).encode()
    return sealing.MAGIC + struct.pack("<I", len(raw)) + raw + os.urandom(40)


def b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


MALFORMED = {
    "wrap nonce of 3 bytes": {"wrap_nonce": b64(3)},
    "wrap nonce of 0 bytes": {"wrap_nonce": ""},
    "wrap nonce of 200 bytes": {"wrap_nonce": b64(200)},
    "data nonce of 3 bytes": {"data_nonce": b64(3)},
    "wrapped key of 1 byte": {"wrapped_key": b64(1)},
    "wrapped key not base64": {"wrapped_key": "!!!"},
    "nonce a number": {"wrap_nonce": 5},
    "meta a list": {"meta": [1, 2]},
    "id an object": {"id": {"x": 1}},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_every_malformed_field_is_a_sealed_file_error(name: str) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    with pytest.raises(sealing.SealedFileError):
        sealing.unseal(key, forged(key, "abc", **MALFORMED[name]), "abc")


def test_malformed_listed_files_are_skipped_with_a_log_line_and_never_stop_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    folder = tmp_path / "store"
    d = sealing.SealedDirectory(folder, key)
    d.open(logging.getLogger("test"))
    ids = [f"{i:032x}" for i in range(len(MALFORMED) + 3)]
    listed = {i: sealing.Listing("00", 1) for i in ids}
    d._write_manifest(sealing.Manifest(d.manifest.store_id, 1, listed))
    blobs = [forged(key, i, **f) for i, f in zip(ids, MALFORMED.values(), strict=False)]
    blobs += [b"", sealing.MAGIC, sealing.MAGIC + struct.pack("<I", 3) + b"[1]"]
    for model_id, blob in zip(ids, blobs, strict=True):
        (folder / f"{model_id}.model.sealed").write_bytes(blob)
    store = ModelStore(sealed=sealing.SealedDirectory(folder, key))
    with caplog.at_level(logging.ERROR):
        assert store.load_sealed() == 0
    for model_id in ids:
        assert f"{model_id}.model.sealed" in caplog.text
        assert (folder / f"{model_id}.model.sealed").exists()


def test_a_crash_between_listing_and_rename_is_finished_and_an_unlisted_write_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = sealing.SealingKey(os.urandom(32), source="test")
    folder = tmp_path / "store"
    log = logging.getLogger("test")
    d = sealing.SealedDirectory(folder, key)
    d.open(log)
    model_id = "a" * 32
    d.save(model_id, {"sha256": "one"}, b"version one")

    real_replace = os.replace

    def crash_on_rename(src: object, dst: object) -> None:
        if str(src).endswith(".pending.tmp"):
            raise OSError(5, "simulated crash before the rename")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(sealing.os, "replace", crash_on_rename)
    with pytest.raises(OSError):
        d.save(model_id, {"sha256": "two"}, b"version two")  # listed, not renamed
    monkeypatch.setattr(sealing.os, "replace", real_replace)
    again = sealing.SealedDirectory(folder, key)
    assert again.open(log) == [model_id]
    parts: list[bytes] = []
    meta = again.read(model_id, parts.append)
    assert (meta["sha256"], meta["version"], b"".join(parts)) == ("two", 2, b"version two")

    # A write that never got listed (the crash came before the manifest) is an unfinished upload: dropped.
    stray = folder / f".{model_id}.model.sealed.v9.pending.tmp"
    stray.write_bytes(b"half")
    third = sealing.SealedDirectory(folder, key)
    third.open(log)
    parts.clear()
    third.read(model_id, parts.append)
    assert not stray.exists() and b"".join(parts) == b"version two"


def test_store_commands_refuse_in_one_line_never_a_traceback(tmp_path: Path) -> None:
    """A foreign key, a garbage key file and a machine with no TEE: a report or a one-line `error:`."""
    store = tmp_path / "store"
    upload_two(store)
    before = sorted(os.listdir(store))
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    for args in (
        ("--sealing-key-file", str(other)),
        ("--sealing-key-file", str(short)),
        ("--tee", "sgx", "--gramine-dir", str(tmp_path / "no-gramine")),
    ):
        for command in ("check", "recover"):
            out = cli("store", command, str(store), *args)
            assert out.returncode in (1, 2), (command, args, out.stdout, out.stderr)
            said = out.stderr.startswith("error: ") or out.stdout.startswith("manifest:")  # a refusal or a report
            assert "Traceback" not in out.stderr and said, (command, args, out.stdout, out.stderr)
    assert sorted(os.listdir(store)) == before  # a wrong key rearranged nothing (recover refused it)
    assert "this key opens neither" in cli("store", "recover", str(store), "--sealing-key-file", str(other)).stderr
