"""A model must never make the server read a file, wherever in the model the reference hides.

Red team of the model memory change: vetting walked graphs, nodes, attributes and sparse
tensors by a list of known places, and missed a model-local function's *default* attribute
values (``FunctionProto.attribute_proto``). A default tensor there with external data passed
vetting; onnxruntime inlined the function, made the Constant an initializer and read the file,
relative to the server's working directory for a model loaded from bytes (memfd uploads split
into a skeleton, and SGX's bytes), and served its contents as the output. The attacker is a
model uploader; what they must get: a refusal that reads the same whether the file exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import blindai
from blindai.server.errors import UnsupportedModel
from blindai.server.inference import LoadedModel
from blindai.server.modelfile import ModelFile
from blindai.server.onnxsplit import split_model
from blindai.server.vetting import check_string_constants, vet_model
from blindai.testing import LocalServer
from tests.conftest import memory_usable, sim_connect

SECRET = np.array([3.25, -7.5, 1e6, 42.0] * 1024, np.float32)  # 16 KiB: enough for onnxruntime to read it


KINDS = [k for k in ("tmpfs", "memfd", "bytes") if memory_usable(k)]


def _external(name: str, location: str, elements: int) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[elements])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(elements * 4))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
    return t


def function_default_model(location: str, *, nested: bool = False) -> bytes:
    """Y = F(X), F's body a Constant whose value is F's default attribute ``v``: a tensor whose
    data is the file at ``location`` (``nested``: inside a default *graph* attribute instead).
    A second, large initializer makes the upload split, so the skeleton is loaded from bytes."""
    n = SECRET.size
    const = helper.make_node("Constant", [], ["c"])
    ref = onnx.AttributeProto(name="value", ref_attr_name="v", type=onnx.AttributeProto.TENSOR)
    const.attribute.append(ref)
    body = [const, helper.make_node("Add", ["x", "c"], ["y"])]
    f = helper.make_function("custom", "F", ["x"], ["y"], body, [helper.make_opsetid("", 18)])
    secret = _external("v", location, n)
    if nested:
        inner = helper.make_graph(
            [helper.make_node("Identity", ["s"], ["o"])],
            "inner",
            [],
            [helper.make_tensor_value_info("o", TensorProto.FLOAT, [n])],
            [_external("s", location, n)],
        )
        f.attribute_proto.append(helper.make_attribute("unused_graph", inner))
        secret = numpy_helper.from_array(np.zeros(n, np.float32), "v")
    f.attribute_proto.append(helper.make_attribute("v", secret))
    g = helper.make_graph(
        [helper.make_node("F", ["X"], ["Y"], domain="custom"), helper.make_node("Add", ["X2", "W"], ["Y2"])],
        "g",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [n]),
            helper.make_tensor_value_info("X2", TensorProto.FLOAT, [2048]),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n]),
            helper.make_tensor_value_info("Y2", TensorProto.FLOAT, [2048]),
        ],
        [numpy_helper.from_array(np.ones(2048, np.float32), "W")],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)], functions=[f]
    )
    m.ir_version = 10
    return m.SerializeToString()


@pytest.mark.parametrize("nested", [False, True], ids=["default-tensor", "tensor-in-default-graph"])
def test_external_data_in_a_function_default_is_refused(nested: bool) -> None:
    with pytest.raises(UnsupportedModel, match="external data"):
        vet_model(function_default_model("secret.bin", nested=nested))


def test_strings_in_a_function_default_are_bounded() -> None:
    """The same blind spot let string constants past their bounds (memory: each string costs
    onnxruntime an object, whatever its bytes)."""
    f = helper.make_function("custom", "F", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])], [])
    f.attribute_proto.append(helper.make_attribute("s", "x" * (1 << 20)))
    g = helper.make_graph(
        [helper.make_node("F", ["X"], ["Y"], domain="custom")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)], functions=[f]
    )
    with pytest.raises(UnsupportedModel, match="string"):
        check_string_constants(m)


@pytest.mark.parametrize("memory", KINDS)
def test_a_reference_past_vetting_still_reads_no_file(
    memory: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: were vetting to miss a reference again, onnxruntime resolves every
    external-data location in a folder holding nothing but the upload itself, never the
    working directory: the load fails and the file's bytes are never served."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    data = function_default_model("secret.bin")
    split = split_model(data)  # what vetting would hand onnxruntime, minus the vetting
    assert split.skeleton is not None
    for skeleton in (split.skeleton, None):  # split, and whole (SGX's bytes, a walk that gave up)
        with ModelFile.from_bytes(data, memory=memory) as f, pytest.raises(UnsupportedModel):
            loaded = LoadedModel(f, skeleton=skeleton, concurrency=1)
            out = loaded.run({"X": np.zeros(SECRET.size, np.float32), "X2": np.zeros(2048, np.float32)}, ["Y"])
            assert not np.array_equal(out["Y"], SECRET), "onnxruntime read the file in the working directory"


@pytest.mark.parametrize("memory", KINDS)
def test_an_uploader_cannot_read_a_file_of_the_server(
    memory: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real server, started in a folder holding keys/secret.bin: the upload is refused with
    the same answer whether the file exists or not."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "secret.bin").write_bytes(SECRET.tobytes())
    monkeypatch.chdir(tmp_path)
    answers = []
    with LocalServer("--model-memory", memory, log_level="WARNING") as srv, sim_connect(srv) as conn:
        for location in ("keys/secret.bin", "keys/absent.bin"):
            with pytest.raises(blindai.InvalidInputError, match="external data") as err:
                conn.upload_model(function_default_model(location))
            answers.append(str(err.value).replace(location, "LOCATION"))
    assert answers[0] == answers[1]
