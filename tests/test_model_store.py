"""Model owners' protection: sealing, restarts and crashes, hostile models, limits."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import blindai
from blindai.server import sealing
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect

# ------------------------------------------------------------------ the sealed format


@pytest.fixture()
def key() -> sealing.SealingKey:
    return sealing.SealingKey(os.urandom(16), source="test")


def test_seal_round_trip(key: sealing.SealingKey) -> None:
    blob = sealing.seal(key, "abc123", {"sha256": "00"}, b"weights" * 100)
    assert sealing.unseal(key, blob, "abc123") == ("abc123", {"sha256": "00"}, b"weights" * 100)
    assert b"weights" not in blob


def test_every_flipped_byte_is_detected(key: sealing.SealingKey) -> None:
    blob = sealing.seal(key, "abc123", {"sha256": "00", "name": "m"}, os.urandom(300))
    for i in range(0, len(blob), 7):
        bad = bytearray(blob)
        bad[i] ^= 0x20
        with pytest.raises(sealing.SealedFileError):
            sealing.unseal(key, bytes(bad), "abc123")


def test_truncated_foreign_and_renamed_files_are_refused(key: sealing.SealingKey) -> None:
    blob = sealing.seal(key, "abc123", {}, b"x" * 100)
    for n in (0, 8, 12, 40, len(blob) - 1):
        with pytest.raises(sealing.SealedFileError):
            sealing.unseal(key, blob[:n], "abc123")
    with pytest.raises(sealing.SealedFileError, match="another TEE identity"):
        sealing.unseal(sealing.SealingKey(os.urandom(16), source="other"), blob, "abc123")
    with pytest.raises(sealing.SealedFileError, match="holds"):
        sealing.unseal(key, blob, "other1")


def test_no_sealing_key_is_refused_for_other_tees(tmp_path: Path) -> None:
    with pytest.raises(sealing.NoSealingKeyError, match="readable by the host"):
        sealing.sealing_key_for("sev-snp", None, tmp_path)
    k = sealing.sealing_key_for("simulation", None, tmp_path)
    assert "INSECURE" in k.source
    assert stat.S_IMODE((tmp_path / sealing.SIMULATION_KEY_NAME).stat().st_mode) == 0o600
    assert sealing.sealing_key_for("sgx", b"k" * 16, tmp_path).source.startswith("sgx")


# ------------------------------------------------------------------ a live server with a store


def store_server(store: Path, *extra: str) -> LocalServer:
    return LocalServer("--model-store", str(store), *extra).start()


def marked_model(seed: int = 0) -> tuple[onnx.ModelProto, bytes]:
    """An MLP whose first weights carry a recognisable 64-byte pattern, to look for on disk."""
    model = onnx_models.mlp(seed=seed)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    pattern = b"WEIGHTS-PLAINTEXT-CANARY-".ljust(64, b"#")
    assert len(pattern) == 64
    w.reshape(-1)[:16] = np.frombuffer(pattern, np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
    return model, w.reshape(-1)[:16].tobytes()


def test_models_survive_kill_9_and_never_sit_in_clear(tmp_path: Path) -> None:
    store = tmp_path / "store"
    model, canary = marked_model()
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    srv = store_server(store)
    with sim_connect(srv) as conn:
        info = conn.upload_model(model, name="kept")
        before = conn.run_model(info.model_id, x).output
        token = conn.owner_token(info.model_id)
    srv.stop(signal.SIGKILL)
    files = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".model.sealed") for p in files)
    for p in files:
        assert canary not in p.read_bytes() and canary[:16] not in p.read_bytes(), p
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            (m,) = conn.list_models(owner_tokens=[token or ""])
            assert (m.model_id, m.sha256, m.name) == (info.model_id, info.sha256, "kept")
            np.testing.assert_array_equal(conn.run_model(info.model_id, x, model_sha256=info.sha256).output, before)
            with pytest.raises(blindai.PermissionDeniedError):
                conn.delete_model(info.model_id, owner_token="not-the-owner")
            conn.delete_model(info.model_id, owner_token=token)
        assert not list(store.glob("*.model.sealed"))
    finally:
        srv.stop()
    srv = store_server(store)
    with sim_connect(srv) as conn:
        assert conn.list_models(owner_tokens=[token or ""]) == []
        with pytest.raises(blindai.ModelNotFoundError):
            conn.get_model(info.model_id)
    srv.stop()


def test_kill_9_during_upload_leaves_no_partial_model(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = store_server(store)
    with sim_connect(srv) as conn:
        kept = conn.upload_model(onnx_models.mlp(seed=1))
        kept_token = conn.owner_token(kept.model_id) or ""
    big = onnx_models.mlp(in_dim=512, hidden=2048, seed=2).SerializeToString()
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for i in range(0, len(big), 64 << 10):
            yield big[i : i + (64 << 10)]
            sent.set()
            time.sleep(0.02)

    conn = sim_connect(srv)
    outcome: list[BaseException | str] = []

    def upload() -> None:
        try:
            conn._request("POST", "/v1/models", content=slow_body(), headers={"Content-Length": str(len(big))})
            outcome.append("the upload was acknowledged")
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=upload)
    t.start()
    assert sent.wait(10)
    time.sleep(0.1)
    srv.stop(signal.SIGKILL)
    t.join(30)
    conn.close()
    assert len(outcome) == 1 and isinstance(outcome[0], blindai.TransportError), outcome
    srv = store_server(store)
    try:
        with sim_connect(srv) as c:
            assert [m.model_id for m in c.list_models(owner_tokens=[kept_token])] == [kept.model_id]
            c.run_model(kept.model_id, np.ones((1, 16), np.float32))
        assert [p.name for p in store.glob("*.model.sealed")] == [f"{kept.model_id}.model.sealed"]
        assert not list(store.glob(".*.tmp"))
    finally:
        srv.stop()


def test_tampered_orphaned_and_unfinished_files_are_skipped(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = store_server(store)
    with sim_connect(srv) as conn:
        a = conn.upload_model(onnx_models.mlp(seed=3), name="a")
        b = conn.upload_model(onnx_models.mlp(seed=4), name="b")
        tokens = [conn.owner_token(a.model_id) or "", conn.owner_token(b.model_id) or ""]
    srv.stop()
    victim = store / f"{a.model_id}.model.sealed"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    (store / ".junk.model.sealed.1234.tmp").write_bytes(b"half a write")
    orphan = store / ("f" * 32 + ".model.sealed")
    orphan.write_bytes((store / f"{b.model_id}.model.sealed").read_bytes())
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            assert [m.model_id for m in conn.list_models(owner_tokens=tokens)] == [b.model_id]
        log = srv.log()
        assert f"{a.model_id}.model.sealed not loaded" in log and "authentication failed" in log
        assert "not in the manifest" in log and "unfinished write" in log
        assert orphan.exists() and victim.exists()  # not loaded, and never deleted at start
    finally:
        srv.stop()


def test_a_foreign_store_key_refuses_the_start(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = store_server(store)
    with sim_connect(srv) as conn:
        conn.upload_model(onnx_models.mlp(seed=5))
    srv.stop()
    (store / sealing.SIMULATION_KEY_NAME).write_bytes(os.urandom(32))  # as if another TEE identity
    srv = LocalServer("--model-store", str(store))
    with pytest.raises(RuntimeError, match="exited with 2"):
        srv.start()
    assert "manifest" in srv.log() and "does not unwrap" in srv.log()
    assert len(list(store.glob("*.model.sealed"))) == 1


def test_replace_is_for_the_owner_and_persists(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = store_server(store)
    owner, other = sim_connect(srv), sim_connect(srv)
    info = owner.upload_model(onnx_models.mlp(seed=6))
    with pytest.raises(blindai.PermissionDeniedError):
        other.replace_model(info.model_id, onnx_models.mlp(seed=7))
    new = owner.replace_model(info.model_id, onnx_models.mlp(seed=7))
    assert new.model_id == info.model_id and new.sha256 != info.sha256
    with pytest.raises(blindai.ModelHashMismatchError):
        owner.run_model(info.model_id, np.ones((1, 16), np.float32), model_sha256=info.sha256)
    owner.close()
    other.close()
    srv.stop(signal.SIGKILL)
    srv = store_server(store)
    try:
        with sim_connect(srv) as conn:
            assert conn.get_model(info.model_id).sha256 == new.sha256
    finally:
        srv.stop()


def test_model_store_refused_without_a_sealing_key(tmp_path: Path) -> None:
    from tests.fakes.amd_pki import FakeAmdPki
    from tests.fakes.devices import FakeTsm

    pki = FakeAmdPki()
    tsm = FakeTsm(tmp_path / "tsm", "sev_guest", lambda rd: (pki.report(report_data=rd, measurement=bytes(48)), b""))
    srv = LocalServer(
        "--tee", "sev-snp", "--tsm-dir", str(tsm.root), "--model-store", str(tmp_path / "s"), simulation=False
    )
    try:
        with pytest.raises(RuntimeError, match="exited with 2"):
            srv.start()
        assert "offers none" in srv.log()
    finally:
        tsm.stop()


# ------------------------------------------------------------------ hostile models and limits


def external_data_model(location: str) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_external_data_is_refused_and_never_opened(tmp_path: Path, server: LocalServer) -> None:
    canary = tmp_path / "canary"
    os.mkfifo(canary)  # any open() of it by the server, from Python or C++, would be seen below
    opened = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                fd = os.open(canary, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
            except OSError:
                time.sleep(0.001)
                continue
            opened.set()
            os.close(fd)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        with sim_connect(server) as conn:
            for location in (str(canary), "../" * 12 + str(canary).lstrip("/"), "canary"):
                with pytest.raises(blindai.InvalidInputError, match="external data"):
                    conn.upload_model(external_data_model(location))
    finally:
        stop.set()
        t.join()
    assert not opened.is_set()


def test_custom_operator_domains_are_refused(server: LocalServer) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    g = helper.make_graph([helper.make_node("Evil", ["x"], ["y"], domain="com.attacker")], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.attacker", 1)])
    with sim_connect(server) as conn, pytest.raises(blindai.InvalidInputError, match=r"com\.attacker"):
        conn.upload_model(m)


def bomb_model() -> onnx.ModelProto:
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node(
        "ConstantOfShape", ["shape"], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    )
    return helper.make_model(
        helper.make_graph([node], "bomb", [shape], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )


def test_output_size_bomb_is_bounded() -> None:
    with LocalServer("--max-inference-memory", "256m") as srv, sim_connect(srv) as conn:
        info = conn.upload_model(bomb_model())
        assert conn.run_model(info.model_id, np.array([3, 4], np.int64)).output.shape == (3, 4)
        for shape in ([100_000, 100_000], [1 << 31, 1 << 31]):
            with pytest.raises(blindai.ServerError, match="more memory than the server's limit") as err:
                conn.run_model(info.model_id, np.array(shape, np.int64))
            assert err.value.status == 507
        assert conn.run_model(info.model_id, np.array([2, 2], np.int64)).output.sum() == 4
        assert "100000" not in srv.log()


def slow_model(layers: int = 300, n: int = 384) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.full((n, n), 1e-3, np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", "w"], [f"h{i + 1}" if i < layers - 1 else "y"])
        for i in range(layers)
    ]
    return helper.make_model(
        helper.make_graph(nodes, "slow", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)]
    )


def test_inference_timeout_terminates_the_run() -> None:
    with LocalServer("--inference-timeout", "0.05") as srv, sim_connect(srv) as conn:
        info = conn.upload_model(slow_model())
        with pytest.raises(blindai.ServerError, match="time limit") as err:
            conn.run_model(info.model_id, np.ones((384, 384), np.float32))
        assert err.value.status == 504
        small = conn.upload_model(onnx_models.mlp())
        conn.run_model(small.model_id, np.ones((1, 16), np.float32))


def test_model_count_and_store_size_limits(tmp_path: Path) -> None:
    with LocalServer("--max-models", "2", "--max-store-bytes", "1m") as srv, sim_connect(srv) as conn:
        conn.upload_model(onnx_models.mlp(seed=1))
        conn.upload_model(onnx_models.mlp(seed=2))
        with pytest.raises(blindai.ServerError, match="2 models") as err:
            conn.upload_model(onnx_models.mlp(seed=3))
        assert err.value.status == 507
    with (
        LocalServer("--max-store-bytes", "20k") as srv,
        sim_connect(srv) as conn,
        pytest.raises(blindai.ServerError, match="store limit"),
    ):
        conn.upload_model(onnx_models.mlp(in_dim=64, hidden=128))


def raw_tls_request(srv: LocalServer, cert_pem: str, head: bytes, body: bytes = b"") -> bytes:
    """Speak HTTP by hand over TLS, to send what a well-behaved client library would refuse to send."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=cert_pem)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", srv.attested_port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(head + body)
        out = b""
        while True:
            head_end = out.find(b"\r\n\r\n")
            if head_end >= 0:
                length = int(out.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(out) >= head_end + 4 + length:
                    return out
            chunk = tls.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_content_length_over_the_limit_is_refused_at_once() -> None:
    with LocalServer("--max-model-bytes", "1k") as srv, sim_connect(srv) as conn:
        t = time.perf_counter()
        head = b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n"
        answer = raw_tls_request(srv, conn.certificate_pem, head, b"x" * 100)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"exceeds the limit of 1024" in answer
        assert time.perf_counter() - t < 5
        # counted on bytes received too, when the declared length lies low... or is absent (chunked)
        with pytest.raises(blindai.InvalidInputError, match="exceeds the limit of 1024"):
            conn._request("POST", "/v1/models", content=iter([b"x" * 600] * 3))
        conn.upload_model(onnx_models.scale_model())  # and it still serves


def test_upload_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nalpha-token\n\nbeta-token\n")
    with LocalServer("--upload-tokens", str(tokens)) as srv:
        with sim_connect(srv) as conn:
            with pytest.raises(blindai.PermissionDeniedError) as err:
                conn.upload_model(onnx_models.mlp())
            assert err.value.status == 401
            with pytest.raises(blindai.PermissionDeniedError) as err:
                conn.upload_model(onnx_models.mlp(), upload_token="gamma")
            assert err.value.status == 403
            conn.upload_model(onnx_models.mlp(), upload_token="beta-token")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn = blindai.connect("127.0.0.1", simulation=True, upload_token="alpha-token", **srv.connect_kwargs())
        info = conn.upload_model(onnx_models.mlp())
        assert [m.model_id for m in conn.list_models()][-1] == info.model_id
        conn.close()
        assert "alpha-token" not in srv.log()


def test_list_never_shows_tokens(server: LocalServer) -> None:
    with sim_connect(server) as conn:
        info = conn.upload_model(onnx_models.mlp())
        body = conn._request("GET", "/v1/models").text  # the raw JSON, not the SDK's view of it
        token = conn.owner_token(info.model_id)
        assert token is not None and token not in body and "owner_token" not in body
        entry = conn._request("GET", f"/v1/models/{info.model_id}").json()
        assert set(entry) == {"model_id", "name", "sha256", "size", "created_at", "inputs", "outputs", "hints"}
