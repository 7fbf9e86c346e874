"""String tensors at upload: the vetting fails closed (red-team findings F1, F2 of issue 12).

onnxruntime keeps string contents outside the capped arena, so a model is refused when any
operator that can make strings grow yields a string (or a tensor whose type nobody can tell),
whatever the model declares; and the "safe" operators are bounded too: string constants are
short, and a run makes at most a few string tensors. Numeric models must not notice any of it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import blindai
from blindai.server.errors import UnsupportedModel
from blindai.server.http.errors import status_of
from blindai.server.vetting import MAX_STRING_TENSORS, MAX_STRING_VALUE, vet_model
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect


def _model(nodes: list[onnx.NodeProto], ins: list[onnx.ValueInfoProto], outs: list[onnx.ValueInfoProto],
           *, ml: int | None = None, functions: list[onnx.FunctionProto] | None = None,
           ms: bool = False) -> bytes:  # fmt: skip
    ops = [helper.make_opsetid("", 17)]
    if ml:
        ops.append(helper.make_opsetid("ai.onnx.ml", ml))
    if ms:
        ops.append(helper.make_opsetid("com.microsoft", 1))
    g = helper.make_graph(nodes, "g", ins, outs)
    m = helper.make_model(g, opset_imports=ops, functions=functions or [])
    m.ir_version = 8
    return m.SerializeToString()


SHAPE = helper.make_tensor_value_info("shape", TensorProto.INT64, [1])
Y_INT = helper.make_tensor_value_info("y", TensorProto.INT64, [1])
X_INT = helper.make_tensor_value_info("x", TensorProto.INT64, ["N"])


def const_string_expand(attr: str = "value_string") -> bytes:
    """The red team's a1: no string is declared anywhere, Expand repeats one as often as asked."""
    value: object = "A" * 100 if attr == "value_string" else ["A" * 100]
    nodes = [
        helper.make_node("Constant", [], ["c"], **{attr: value}),
        helper.make_node("Expand", ["c", "shape"], ["e"]),
        helper.make_node("Shape", ["e"], ["y"]),
    ]
    return _model(nodes, [SHAPE], [Y_INT])


def castlike_expand() -> bytes:
    """CastLike takes its target type from a string tensor: numbers become strings, then grow."""
    nodes = [
        helper.make_node("Constant", [], ["like"], value_strings=["a"]),
        helper.make_node("CastLike", ["shape", "like"], ["s"]),
        helper.make_node("Expand", ["s", "shape"], ["e"]),
        helper.make_node("Shape", ["e"], ["y"]),
    ]
    return _model(nodes, [SHAPE], [Y_INT])


def function_cast_ref_attr() -> bytes:
    """Cast inside a model-local function, its target type given by the call (ref_attr_name)."""
    to = helper.make_attribute_ref("to", onnx.AttributeProto.INT)
    cast = helper.make_node("Cast", ["a"], ["b"])
    cast.attribute.append(to)
    fn = helper.make_function("local", "ToType", ["a"], ["b"], [cast], [helper.make_opsetid("", 17)], attributes=["to"])
    nodes = [
        helper.make_node("ToType", ["shape"], ["s"], domain="local", to=TensorProto.STRING),
        helper.make_node("Expand", ["s", "shape"], ["e"]),
        helper.make_node("Shape", ["e"], ["y"]),
    ]
    m = onnx.load_from_string(_model(nodes, [SHAPE], [Y_INT], functions=[fn]))
    m.opset_import.append(helper.make_opsetid("local", 1))
    return m.SerializeToString()


def contrib_then_gather() -> bytes:
    """A numeric com.microsoft op (no ONNX schema: its type is not inferred) feeding Gather."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    idx = onnx.numpy_helper.from_array(np.array([0, 1], np.int64), "idx")
    nodes = [
        helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
        helper.make_node("Gather", ["g", "idx"], ["y"], axis=1),
    ]
    m = onnx.load_from_string(_model(nodes, [x], [y], ms=True))
    m.graph.initializer.append(idx)
    return m.SerializeToString()


@pytest.mark.parametrize(
    ("make", "op"),
    [
        (const_string_expand, "Expand"),
        (lambda: const_string_expand("value_strings"), "Expand"),
        (castlike_expand, "CastLike"),
        (function_cast_ref_attr, "Cast"),
    ],
    ids=["constant-value_string", "constant-value_strings", "castlike", "function-cast-ref-attr"],
)
def test_strings_nobody_declared_are_found(make: object, op: str) -> None:
    with pytest.raises(UnsupportedModel, match=repr(op)) as err:
        vet_model(make())  # type: ignore[operator]
    assert status_of(err.value) == 422


def label_encoder(label_len: int) -> bytes:
    """The red team's a2: one long label per 8-byte input element."""
    nodes = [
        helper.make_node(
            "LabelEncoder", ["x"], ["s"], domain="ai.onnx.ml",
            keys_int64s=[0], values_strings=["B" * label_len], default_string="z",
        ),
        helper.make_node("Shape", ["s"], ["y"]),
    ]  # fmt: skip
    return _model(nodes, [X_INT], [Y_INT], ml=2)


def fan_out(k: int) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["N"])
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.STRING, ["N"]) for i in range(k)]
    return _model([helper.make_node("Identity", ["x"], [f"y{i}"]) for i in range(k)], [x], outs)


def test_long_string_constants_are_refused() -> None:
    with pytest.raises(UnsupportedModel, match="values_strings") as err:
        vet_model(label_encoder(1 << 20))
    assert status_of(err.value) == 422 and str(MAX_STRING_VALUE) in str(err.value)
    with pytest.raises(UnsupportedModel, match="value_string"):
        vet_model(
            _model([helper.make_node("Constant", [], ["y"], value_string="C" * (MAX_STRING_VALUE + 1))], [],
                   [helper.make_tensor_value_info("y", TensorProto.STRING, [])])
        )  # fmt: skip
    vet_model(label_encoder(MAX_STRING_VALUE))  # at the bound: accepted


def test_string_fan_out_is_bounded() -> None:
    with pytest.raises(UnsupportedModel, match="string tensors") as err:
        vet_model(fan_out(100))
    assert status_of(err.value) == 422 and str(MAX_STRING_TENSORS) in str(err.value)
    vet_model(fan_out(MAX_STRING_TENSORS))


@pytest.mark.parametrize(
    "make",
    [
        onnx_models.mlp,
        onnx_models.scale_model,
        onnx_models.two_in_two_out,
        onnx_models.string_identity,
        onnx_models.fixed_shape_model,
        lambda: onnx.load_from_string(contrib_then_gather()),
    ],
    ids=["mlp", "scale", "two-in-two-out", "string-identity", "fixed-shape", "contrib-op-then-gather"],
)
def test_numeric_and_plain_string_models_are_unaffected(make: object) -> None:
    vet_model(make().SerializeToString())  # type: ignore[operator]


def test_vetting_cost_is_small_for_a_large_numeric_model() -> None:
    """Type inference on every model runs without the weights: a 64 MB model vets in well under a second."""
    data = onnx_models.mlp(in_dim=2048, hidden=8192, seed=3).SerializeToString()
    assert len(data) > 64 << 20
    t = time.perf_counter()
    vet_model(data)
    assert time.perf_counter() - t < 1.0


@pytest.fixture(scope="module")
def srv() -> Iterator[LocalServer]:
    with LocalServer("--max-inference-memory", "64m", "--max-output-bytes", "16m") as s:
        yield s


def test_the_red_team_models_are_refused_by_a_live_server(srv: LocalServer) -> None:
    with warnings.catch_warnings(), sim_connect(srv) as conn:
        warnings.simplefilter("ignore", blindai.SimulationModeWarning)
        for data, needle in ((const_string_expand(), "Expand"), (label_encoder(1 << 20), "values_strings"),
                             (fan_out(100), "string tensors")):  # fmt: skip
            with pytest.raises(blindai.InvalidInputError, match=needle) as err:
                conn.upload_model(data)
            assert err.value.status == 422
        info = conn.upload_model(label_encoder(16))
        assert conn.run_model(info.model_id, np.zeros(3, np.int64)).output.tolist() == [3]
    assert srv.proc is not None and srv.proc.poll() is None


def test_when_type_inference_fails_the_schemas_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """No inferred type at all: numeric operators are told apart by their schemas, strings still refused."""
    from blindai.server import vetting as models

    monkeypatch.setattr(models, "_infer", lambda skel: skel)
    nodes, prev = [], "x"
    for i in range(MAX_STRING_TENSORS + 4):  # more Constants than string tensors allowed: all numeric
        k = onnx.numpy_helper.from_array(np.array([1.0], np.float32))
        nodes.append(helper.make_node("Constant", [], [f"c{i}"], value=k))
        nodes.append(helper.make_node("Add", [prev, f"c{i}"], [f"a{i}"]))
        prev = f"a{i}"
    nodes.append(helper.make_node("Reshape", [prev, "shape"], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    vet_model(_model(nodes, [x, SHAPE], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]))
    vet_model(contrib_then_gather())
    for data, op in ((const_string_expand(), "Expand"), (castlike_expand(), "CastLike")):
        with pytest.raises(UnsupportedModel, match=repr(op)):
            vet_model(data)
