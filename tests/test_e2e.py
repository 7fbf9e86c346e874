"""The modern API against a real server: several models, dtypes, multi-input/output, errors."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

import blindai
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect


def test_attestation_is_exposed(conn: blindai.Connection) -> None:
    a = conn.attestation
    assert a.tee == "simulation" and a.simulation
    assert len(a.measurements["measurement"]) == 96
    assert len(a.report_data) == 64


@pytest.mark.parametrize(
    ("onnx_type", "np_type"),
    [
        (TensorProto.FLOAT, np.float32),
        (TensorProto.DOUBLE, np.float64),
        (TensorProto.FLOAT16, np.float16),
        (TensorProto.INT32, np.int32),
        (TensorProto.INT64, np.int64),
        (TensorProto.INT8, np.int8),
        (TensorProto.UINT8, np.uint8),
    ],
)
def test_dtypes(conn: blindai.Connection, onnx_type: int, np_type: type) -> None:
    info = conn.upload_model(onnx_models.scale_model(onnx_type, factor=3), name=f"scale-{np_type.__name__}")
    x = (np.arange(8) % 5).astype(np_type).reshape(2, 4)
    out = conn.run_model(info.model_id, x).output
    assert out.dtype == np_type
    np.testing.assert_array_equal(out, x * np_type(3))
    conn.delete_model(info.model_id)


def test_multi_input_multi_output(conn: blindai.Connection) -> None:
    info = conn.upload_model(onnx_models.two_in_two_out().SerializeToString())
    assert [t.name for t in info.inputs] == ["a", "b"]
    assert [(t.name, t.datatype) for t in info.outputs] == [("sum", "FP32"), ("idx", "INT64"), ("greater", "BOOL")]
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    by_name = conn.run_model(info.model_id, {"a": a, "b": b})
    np.testing.assert_allclose(by_name.outputs["sum"], a + b, rtol=1e-6)
    np.testing.assert_array_equal(by_name.outputs["idx"], a.argmax(1))
    np.testing.assert_array_equal(by_name.outputs["greater"], a > b)
    by_list = conn.run_model(info.model_id, [a, b], outputs=["idx"])
    assert list(by_list.outputs) == ["idx"]
    by_torch = conn.run_model(info.model_id, {"a": torch.from_numpy(a), "b": torch.from_numpy(b)})
    np.testing.assert_array_equal(by_torch.outputs["idx"], a.argmax(1))


def test_mlp_matches_local_onnxruntime(conn: blindai.Connection) -> None:
    import onnxruntime as ort

    model = onnx_models.mlp()
    info = conn.upload_model(model)
    x = np.random.default_rng(2).standard_normal((7, 16)).astype(np.float32)
    local = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(conn.run_model(info.model_id, x).output, local, rtol=1e-5, atol=1e-6)


def test_strings(conn: blindai.Connection) -> None:
    info = conn.upload_model(onnx_models.string_identity())
    out = conn.run_model(info.model_id, np.array(["héllo", "wörld"], dtype=object)).output
    assert [x if isinstance(x, bytes) else x.encode() for x in out] == ["héllo".encode(), "wörld".encode()]


def test_upload_from_path_and_list(conn: blindai.Connection, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "m.onnx"
    onnx.save_model(onnx_models.mlp(seed=5), path)
    seen: list[tuple[int, int]] = []
    info = conn.upload_model(path, progress=lambda s, t: seen.append((s, t)))
    assert info.name == "m"
    assert seen and seen[-1][0] == seen[-1][1] == path.stat().st_size
    listed = {m.model_id: m for m in conn.list_models()}
    assert listed[info.model_id].sha256 == info.sha256
    import hashlib

    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_inputs_raise_typed_errors(conn: blindai.Connection) -> None:
    info = conn.upload_model(onnx_models.fixed_shape_model())
    with pytest.raises(blindai.InvalidInputError, match=r"must be FP32 .*x\.astype\(np\.float32\)"):
        conn.run_model(info.model_id, np.full((2, 3), 0.1))
    with pytest.raises(blindai.InvalidInputError, match="dimension 1 must be 3"):
        conn.run_model(info.model_id, np.ones((2, 4), np.float32))
    with pytest.raises(blindai.InvalidInputError, match="rank 2"):
        conn.run_model(info.model_id, np.ones((6,), np.float32))
    with pytest.raises(blindai.InvalidInputError, match="unknown input"):
        conn.run_model(info.model_id, {"nope": np.ones((2, 3), np.float32)})
    with pytest.raises(blindai.InvalidInputError, match="unknown output"):
        conn.run_model(info.model_id, np.ones((2, 3), np.float32), outputs=["zzz"])
    with pytest.raises(blindai.InvalidInputError, match="not an ONNX model"):
        conn.upload_model(b"definitely not onnx")
    with pytest.raises(blindai.InvalidInputError, match="empty"):
        conn.upload_model(b"")


def test_delete_then_run_is_model_not_found(conn: blindai.Connection) -> None:
    info = conn.upload_model(onnx_models.mlp())
    conn.delete_model(info.model_id)
    with pytest.raises(blindai.ModelNotFoundError):
        conn.run_model(info.model_id, np.ones((1, 16), np.float32))
    with pytest.raises(blindai.ModelNotFoundError):
        conn.delete_model(info.model_id)


def test_model_sha256_pin(conn: blindai.Connection) -> None:
    info = conn.upload_model(onnx_models.mlp(seed=9))
    x = np.ones((1, 16), np.float32)
    conn.run_model(info.model_id, x, model_sha256=info.sha256)
    with pytest.raises(blindai.ModelHashMismatchError, match="not the pinned"):
        conn.run_model(info.model_id, x, model_sha256="00" * 32)


def test_only_the_owner_deletes(server: LocalServer) -> None:
    owner, other = sim_connect(server), sim_connect(server)
    info = owner.upload_model(onnx_models.mlp(seed=3))
    with pytest.raises(blindai.PermissionDeniedError):
        other.delete_model(info.model_id)
    with pytest.raises(blindai.PermissionDeniedError):
        other.delete_model(info.model_id, owner_token="wrong")
    token = owner.owner_token(info.model_id)
    assert token and len(token) >= 43  # 256 bits, url-safe base64
    other.delete_model(info.model_id, owner_token=token)
    assert info.model_id not in {m.model_id for m in owner.list_models()}
    owner.close()
    other.close()


def test_non_simulation_client_refuses_simulation_server(server: LocalServer) -> None:
    with pytest.raises(blindai.SimulationRefusedError, match="SIMULATION"):
        blindai.connect("127.0.0.1", **server.connect_kwargs())
    with pytest.raises(blindai.SimulationRefusedError):
        blindai.connect("127.0.0.1", policy=f"[sgx]\nmrenclave = ['{'00' * 32}']\n", **server.connect_kwargs())


def test_simulation_warns_on_every_connect(server: LocalServer) -> None:
    for _ in range(2):
        with pytest.warns(blindai.SimulationModeWarning):
            blindai.connect("127.0.0.1", simulation=True, **server.connect_kwargs()).close()


def test_simulation_policy_pins_the_measurement(server: LocalServer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = sim_connect(server)
        good = f"[simulation]\nmeasurement = ['{first.attestation.measurements['measurement']}']\n"
        sim_connect(server, policy=good).close()
        with pytest.raises(blindai.PolicyError, match="measurement"):
            sim_connect(server, policy=f"[simulation]\nmeasurement = ['{'00' * 48}']\n")
        first.close()


def test_each_connection_uses_a_fresh_nonce(server: LocalServer) -> None:
    a, b = sim_connect(server), sim_connect(server)
    assert a.attestation.report_data != b.attestation.report_data
    a.close()
    b.close()


def test_unreachable_server_is_a_transport_error() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(blindai.TransportError):
        blindai.connect("127.0.0.1", unattested_port=port, simulation=True)


def test_inputs_are_cast_to_the_models_types_when_exact(conn: blindai.Connection) -> None:
    info = conn.upload_model(onnx_models.mlp())
    want = conn.run_model(info.model_id, np.ones((1, 16), np.float32)).output
    assert np.array_equal(conn.run_model(info.model_id, np.ones((1, 16))).output, want)  # float64 ones
    assert np.array_equal(conn.run_model(info.model_id, [[1] * 16]).output, want)  # a Python list
    with pytest.raises(blindai.InvalidInputError, match=r"astype\(np\.float32\)"):
        conn.run_model(info.model_id, np.full((1, 16), 0.1))
    conn.delete_model(info.model_id)
