"""The model onnxruntime serves is the ONNX model vetting checked: no second reading of the bytes.

Red team, round 2 of the model memory change. The attacker is a model uploader who wants a
graph past vetting (here, a string constant grown by an input shape: a 1 KB model that makes
onnxruntime hold gigabytes outside the inference memory cap):
- a file that is ONNX to protobuf and onnxruntime's own flatbuffer format (``ORTM`` at bytes
  4..8) to onnxruntime, which reads bytes in its own format first;
- a model-local function named like a built-in operator, which onnx's inliner (what vetting
  type-checks) substitutes and onnxruntime ignores in favour of its kernel;
- one unused function in a domain, which opened the whole domain past the operator allowlist.
What they must get: a refusal, before onnxruntime sees the bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from blindai.server.errors import UnsupportedModel
from blindai.server.inference import LoadedModel
from blindai.server.modelfile import ModelFile, model_memory
from blindai.server.vetting import DEFAULT_DOMAINS, vet_model
from tests.onnx_models import varint


def _string_bomb(expand_domain: str = "", functions: list[onnx.FunctionProto] | None = None) -> onnx.ModelProto:
    """n = Shape(Expand(s, shape)): a 1000-byte string grown to ``shape`` elements."""
    s = helper.make_tensor("s", TensorProto.STRING, [1], [b"A" * 1000])
    nodes = [
        helper.make_node("Expand", ["s", "shape"], ["y"], domain=expand_domain),
        helper.make_node("Shape", ["y"], ["n"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [s],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], functions=functions or [])
    m.ir_version = 8
    return m


def test_the_plain_string_bomb_is_refused() -> None:
    """The baseline both tricks below try to get past."""
    with pytest.raises(UnsupportedModel, match="string"):
        vet_model(_string_bomb().SerializeToString())


# --- onnxruntime's own format behind an ONNX face ----------------------------------------------


def _ort_format(model: onnx.ModelProto, folder: Path) -> bytes:
    src, dst = folder / "m.onnx", folder / "m.ort"
    onnx.save(model, str(src))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst.read_bytes()


def _polyglot(ort_bytes: bytes) -> bytes:
    """Bytes protobuf parses as a benign ONNX model (Identity, plus a weight large enough for the
    upload to be split) and onnxruntime, from bytes, as ``ort_bytes``'s graph: the flatbuffer's
    root table is copied to an offset the first four bytes read as, inside an unknown field."""
    b = ort_bytes
    root = struct.unpack_from("<I", b, 0)[0]
    vtable = root - struct.unpack_from("<i", b, root)[0]
    vt_size, table_size = struct.unpack_from("<HH", b, vtable)
    fields = [struct.unpack_from("<H", b, vtable + 4 + 2 * i)[0] for i in range((vt_size - 4) // 2)]
    new_root = 0x01808080  # bytes 80 80 80 01: a valid 4-byte varint tag for protobuf
    head = bytes([0x80, 0x80, 0x80, 0x01]) + b"ORTM" + b"\0" * 83  # 'O' ends the varint; 'R','T' a field
    k = (new_root + table_size + 64 + 7) & ~7
    length = varint(k + len(b) - (len(head) + 1 + 4))
    assert len(length) == 4
    out = bytearray(head + bytes([0x52]) + length + b"\0" * (k + len(b) - len(head) - 5))
    out[k : k + len(b)] = b
    table = bytearray(b[root : root + table_size])
    struct.pack_into("<i", table, 0, new_root - (k + vtable))
    for vo in fields:
        if vo:
            target = k + root + vo + struct.unpack_from("<I", b, root + vo)[0]
            struct.pack_into("<I", table, vo, target - (new_root + vo))
    out[new_root : new_root + table_size] = table
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2048], np.zeros(2048, np.float32).tobytes(), raw=True)
    benign = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "benign",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1])],
        [weight],
    )
    m = helper.make_model(benign, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return bytes(out) + m.SerializeToString()


def test_an_upload_onnxruntime_would_read_in_its_own_format_is_refused(tmp_path: Path) -> None:
    poly = _polyglot(_ort_format(_string_bomb(), tmp_path))
    assert poly[4:8] == b"ORTM"
    parsed = onnx.ModelProto()
    parsed.ParseFromString(poly)
    assert [n.op_type for n in parsed.graph.node] == ["Identity"]  # what protobuf sees
    with pytest.raises(UnsupportedModel, match="ORT format"):
        vet_model(poly)


@pytest.mark.parametrize(
    "memory", [k for k in ("tmpfs", "memfd", "bytes") if model_memory("simulation") == k or k == "bytes"]
)
def test_onnxruntime_reads_every_model_as_onnx(memory: str, tmp_path: Path) -> None:
    """Defence in depth: were vetting to pass such bytes, onnxruntime is told they are ONNX; the
    flatbuffer graph (input ``shape``) is never what is served."""
    ort_bytes = _ort_format(_string_bomb(), tmp_path)
    with ModelFile.from_bytes(ort_bytes, memory=memory) as f, pytest.raises(UnsupportedModel):
        LoadedModel(f, concurrency=1)
    poly = _polyglot(ort_bytes)
    with ModelFile.from_bytes(poly, memory=memory) as f:
        from blindai.server.onnxsplit import split_model

        split = split_model(poly)
        assert split.skeleton is not None and split.skeleton[4:8] == b"ORTM"
        try:
            loaded = LoadedModel(f, skeleton=split.skeleton, concurrency=1)
        except UnsupportedModel:
            return
    assert [i.name for i in loaded.inputs] == ["x"], "onnxruntime served the flatbuffer's graph"


# --- functions -----------------------------------------------------------------------------------


def test_a_function_named_like_a_builtin_operator_is_refused() -> None:
    """onnx's inliner put the function's Identity where Expand was, so the string check saw no
    growth; onnxruntime ran its own Expand."""
    shadow = helper.make_function(
        "", "Expand", ["a", "b"], ["c"], [helper.make_node("Identity", ["a"], ["c"])], [helper.make_opsetid("", 17)]
    )
    with pytest.raises(UnsupportedModel, match="built-in"):
        vet_model(_string_bomb(functions=[shadow]).SerializeToString())


def test_a_function_in_a_domain_of_onnxruntime_kernels_is_refused() -> None:
    unused = helper.make_function(
        "com.microsoft",
        "Unused",
        ["a"],
        ["b"],
        [helper.make_node("Identity", ["a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    m = _string_bomb(functions=[unused])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    m.graph.node[0].op_type = "Identity"  # keep the rest harmless: the function alone is refused
    del m.graph.node[0].input[1:]
    with pytest.raises(UnsupportedModel, match="built-in"):
        vet_model(m.SerializeToString())


@pytest.mark.parametrize(("domain", "op"), [("custom.fn", "Gelu"), ("custom.fn", "Expand")])
def test_a_function_domain_admits_only_its_functions(domain: str, op: str) -> None:
    """A domain of model-local functions let any operator of that domain through; only the
    functions it defines may be used there."""
    fn = helper.make_function(
        domain, "Defined", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    g = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], domain=domain)],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)], functions=[fn]
    )
    with pytest.raises(UnsupportedModel, match=f"{op}"):
        vet_model(m.SerializeToString(), DEFAULT_DOMAINS)
    m.graph.node[0].op_type = "Defined"
    vet_model(m.SerializeToString(), DEFAULT_DOMAINS)  # the function itself is fine
