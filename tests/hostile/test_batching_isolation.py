"""Dynamic batching must never let one caller's rows reach another caller's answer.

A batch stacks the rows of several callers' requests into one run. That is only sound for a
model that computes each row from that row alone; a model that mixes rows (a mean over the
batch, a product of the batch with itself, a transpose of the batch axis) would hand every
caller in a batch a function of the others' inputs. The model's owner chooses the graph, so
the attacker here is a tenant who uploads a public model that mixes rows and calls it at the
same moment as a victim: what the attacker gets back must be what its request gives alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blindai.errors import InvalidInputError
from blindai.server.errors import UnsupportedModel
from blindai.server.rowwise import rows_mixed
from blindai.server.vetting import vet_model
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect

pytestmark = pytest.mark.xdist_group("batching-isolation")


def batch_mean_removed() -> onnx.ModelProto:
    """y = x - mean of x over the batch axis: each output row depends on every row of the batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["y"]),
    ]
    return onnx_models._model(helper.make_graph(nodes, "mix", [x], [y]))


@pytest.fixture(scope="module")
def batching_server() -> Iterator[LocalServer]:
    with LocalServer("--batch-window-ms", "400", log_level="WARNING") as srv:
        yield srv


def column_sums_less_x() -> onnx.ModelProto:
    """Red team round 2: y = (sum of each column over everything) - x, the sums made by ReduceSum with
    an *empty* axes list, which reduces every axis (the analysis read it as none). Alone: zeros.
    Batched with a victim, an attacker sending zeros gets the victim's row exactly."""
    inits = [
        numpy_helper.from_array(np.array([], np.int64), "empty"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    nodes, parts = [], []
    for j in range(4):
        inits += [
            numpy_helper.from_array(np.array([j], np.int64), f"s{j}"),
            numpy_helper.from_array(np.array([j + 1], np.int64), f"e{j}"),
        ]
        nodes.append(helper.make_node("Slice", ["x", f"s{j}", f"e{j}", "ax1"], [f"c{j}"]))
        nodes.append(helper.make_node("ReduceSum", [f"c{j}", "empty"], [f"r{j}"], keepdims=1))
        parts.append(f"r{j}")
    nodes += [helper.make_node("Concat", parts, ["colsum"], axis=1), helper.make_node("Sub", ["colsum", "x"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return onnx_models._model(helper.make_graph(nodes, "colsum", [x], [y], inits), opset=13)


@pytest.mark.parametrize("build", [batch_mean_removed, column_sums_less_x], ids=["batch mean", "empty axes"])
def test_a_model_that_mixes_rows_never_sees_two_callers_at_once(
    batching_server: LocalServer, build: Callable[[], onnx.ModelProto]
) -> None:
    attacker = sim_connect(batching_server)
    model = attacker.upload_model(build(), public=True)
    victim = sim_connect(batching_server)
    secret = np.array([[3.0, -1.5, 7.25, 42.0]], np.float32)
    zeros = np.zeros((1, 4), np.float32)
    alone = {
        "victim": victim.run_model(model.model_id, secret).output,
        "attacker": attacker.run_model(model.model_id, zeros).output,
    }
    got: dict[str, np.ndarray] = {}
    start = threading.Barrier(2)

    def call(who: str, conn: object, x: np.ndarray) -> None:
        start.wait()
        got[who] = conn.run_model(model.model_id, x).output  # type: ignore[attr-defined]

    for _ in range(3):  # a batch needs both inside one window: try a few times
        threads = [
            threading.Thread(target=call, args=("victim", victim, secret)),
            threading.Thread(target=call, args=("attacker", attacker, zeros)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Batched together, the attacker got -secret / 2 (batch mean) or secret itself (empty axes).
        np.testing.assert_array_equal(
            got["attacker"], alone["attacker"], err_msg="the attacker read the victim's input"
        )
        np.testing.assert_array_equal(got["victim"], alone["victim"])


def test_training_mode_batch_normalization_is_refused_at_upload(batching_server: LocalServer) -> None:
    """Red team round 2, batching or not: onnxruntime updates a training-mode BatchNormalization's
    running statistics between runs, so a caller sending zeros after a victim read the victim's
    input back (times 0.09). Such a model is refused at upload now."""
    owner = sim_connect(batching_server)
    with pytest.raises(InvalidInputError, match="BatchNormalization in training mode"):
        owner.upload_model(_training_batch_norm(9), public=True)
    with pytest.raises(InvalidInputError, match="BatchNormalization in training mode"):
        owner.upload_model(_training_batch_norm(15), public=True)


def _training_batch_norm(opset: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    stats = [numpy_helper.from_array(np.full(4, v, np.float32), n) for n, v in (("g", 1), ("b", 0), ("m", 0), ("v", 1))]
    if opset < 14:
        node = helper.make_node(
            "BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "rm", "rv", "sm", "sv"], momentum=0.9
        )
    else:
        node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)
    model = helper.make_model(
        helper.make_graph([node], "bn", [x], [y], stats), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = 8
    return model


# ---------------------------------------------------------------- the analysis (rowwise.py), unit


def _graph(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto] | None = None, *, rank: int = 2
) -> onnx.ModelProto:
    dims: list[object] = ["N", 4] if rank == 2 else ["N", 3, 4]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits or []), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _with_empty_axes(node: onnx.NodeProto) -> onnx.NodeProto:
    node.attribute.append(helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS))
    return node


MIXING = {
    "mean over the batch": [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[0]),
        helper.make_node("Sub", ["x", "m"], ["y"]),
    ],
    "reduce over every axis": [helper.make_node("ReduceMax", ["x"], ["m"]), helper.make_node("Sub", ["x", "m"], ["y"])],
    "the batch times its transpose": [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "t"], ["g"]),
        helper.make_node("MatMul", ["g", "x"], ["y"]),
    ],
    "softmax over the batch": [helper.make_node("Softmax", ["x"], ["y"], axis=0)],
    "cumulative sum down the batch": [helper.make_node("CumSum", ["x", "zero"], ["y"])],
    "first row for everyone": [
        helper.make_node("Gather", ["x", "zeros"], ["y"], axis=0),
    ],
    "flatten the batch into one row": [
        helper.make_node("Reshape", ["x", "one_row"], ["r"]),
        helper.make_node("Softmax", ["r"], ["s"], axis=1),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["s", "shape"], ["y"]),
    ],
    "flatten from axis 0": [
        helper.make_node("Flatten", ["x"], ["f"], axis=0),
        helper.make_node("Identity", ["f"], ["y"]),
    ],
    "flatten from axis 2, the batch merged": [helper.make_node("Flatten", ["x"], ["y"], axis=2)],
    "a constant that moves the batch axis": [
        helper.make_node("Add", ["x", "c3"], ["a"]),  # [N,4] + [1,1,4] -> [1,N,4]
        helper.make_node("Softmax", ["a"], ["s"], axis=1),  # over N
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["s", "shape"], ["y"]),
    ],
    "the batch size in the values": [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "nf"], ["y"]),
    ],
    "an operator not on the list": [helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,kj->ik")],
    "reduce with an empty axes list": [
        _with_empty_axes(helper.make_node("ReduceMean", ["x"], ["m"])),
        helper.make_node("Sub", ["x", "m"], ["y"]),
    ],
    "squeeze with an empty axes list": [
        helper.make_node("Squeeze", ["x", "empty"], ["q"]),
        helper.make_node("Identity", ["q"], ["y"]),
    ],
    "the batch size gathered by row": [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Mul", ["x", "f0"], ["xz"]),
        helper.make_node("Cast", ["xz"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["shape", "idx"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "nf"], ["y"]),
    ],
    "resize scaled by the batch size": [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["one", "n"], ["s"], axis=0),
        helper.make_node("Cast", ["s"], ["scales"], to=TensorProto.FLOAT),
        helper.make_node("Resize", ["x", "", "scales"], ["y"]),
    ],
    "resize keeping the aspect ratio": [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "three"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", keep_aspect_ratio_policy="not_larger"),
    ],
    "a constant expanded as if it were rows": [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Expand", ["c21", "shape"], ["e"]),  # [2,1] expanded to [N,4]: 2 rows, not N
        helper.make_node("Add", ["x", "e"], ["y"]),
    ],
}

ROWWISE = {
    "affine and activation": [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ],
    "softmax over features": [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
    "reshape kept on the batch": [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero_vec"], ["n"]),
        helper.make_node("Concat", ["n", "two_two"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("ReduceSum", ["r", "last"], ["y"], keepdims=0),
    ],
    "layer norm and mean over features": [
        helper.make_node("LayerNormalization", ["x", "scale", "b"], ["n"], axis=-1),
        helper.make_node("ReduceMean", ["n"], ["y"], axes=[1]),
    ],
}

INITS = [
    _ints("zero", [0]),
    _ints("one", [1]),
    _ints("three", [3]),
    _ints("empty", []),
    numpy_helper.from_array(np.array(0, np.float32), "f0"),
    numpy_helper.from_array(np.ones((2, 1), np.float32), "c21"),
    _ints("zeros", [0]),
    _ints("zero_vec", [0]),
    _ints("one_row", [1, -1]),
    _ints("two_two", [2, 2]),
    _ints("last", [-1]),
    numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "c3"),
    numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
    numpy_helper.from_array(np.ones(4, np.float32), "b"),
    numpy_helper.from_array(np.ones(4, np.float32), "scale"),
]


def _model_of(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    used = {i for n in nodes for i in n.input}
    opset = 18 if any(n.op_type == "Resize" for n in nodes) else 17
    model = _graph(nodes, [t for t in INITS if t.name in used])
    model.opset_import[0].version = opset
    return model


@pytest.mark.parametrize("name", sorted(MIXING))
def test_models_whose_rows_mix_are_never_batched(name: str) -> None:
    assert rows_mixed(_model_of(MIXING[name])) is not None


@pytest.mark.parametrize("name", sorted(ROWWISE))
def test_models_that_keep_rows_apart_are_proven(name: str) -> None:
    model = _model_of(ROWWISE[name])
    assert rows_mixed(model) is None
    # And they really do: rows run alone equal the same rows run in a batch.
    session = ort.InferenceSession(model.SerializeToString())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    batched = session.run(None, {"x": x})[0]
    for i in range(3):
        np.testing.assert_allclose(session.run(None, {"x": x[i : i + 1]})[0], batched[i : i + 1], rtol=1e-5)


def test_the_mixing_models_do_mix() -> None:
    """The refused graphs are not refused for nothing: batched, a row changes with the others."""
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    for name in (
        "mean over the batch",
        "softmax over the batch",
        "a constant that moves the batch axis",
        "reduce with an empty axes list",
        "resize keeping the aspect ratio",
        "flatten from axis 2, the batch merged",
    ):
        session = ort.InferenceSession(_model_of(MIXING[name]).SerializeToString())
        alone = session.run(None, {"x": x[:1]})[0]
        assert not np.allclose(session.run(None, {"x": x})[0][:1], alone), name


def test_a_declared_shape_cannot_hide_a_moved_batch_axis() -> None:
    """The owner's own value_info is not believed: a constant declared [1, 4] that is really
    [1, 1, 4] would move the batch axis unseen."""
    nodes = [
        helper.make_node("Tile", ["c3", "reps"], ["c"]),  # [1,1,4]: its shape comes from inference
        helper.make_node("Add", ["x", "c"], ["a"]),
        helper.make_node("Softmax", ["a"], ["s"], axis=1),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["s", "shape"], ["y"]),
    ]
    model = _graph(nodes, [numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "c3"), _ints("reps", [1, 1, 1])])
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4]))
    assert rows_mixed(model) is not None


def test_a_graph_the_analysis_cannot_read_is_refused_not_crashed() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "far"], ["n"])]
    nodes += [
        helper.make_node("Concat", ["n", "two_two"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    model = _graph(nodes, [_ints("far", [7]), _ints("two_two", [2, 2])])  # index 7 of a rank-2 shape
    assert rows_mixed(model) is not None


def test_the_default_domain_imported_twice_is_refused() -> None:
    """Red team round 2: with "" at 14 and "ai.onnx" at 9, the analysis applied opset 14's
    BatchNormalization (inference) and onnxruntime opset 9's (training, batch statistics)."""
    model = _model_of(ROWWISE["softmax over features"])
    model.opset_import.append(helper.make_opsetid("ai.onnx", 9))
    assert rows_mixed(model) is not None
    with pytest.raises(UnsupportedModel, match="more than once"):
        vet_model(model.SerializeToString())


@pytest.mark.parametrize("opset", [9, 15])
def test_training_mode_batch_normalization_is_refused_by_vetting(opset: int) -> None:
    with pytest.raises(UnsupportedModel, match="training mode"):
        vet_model(_training_batch_norm(opset).SerializeToString())


def _reshape_trick(kind: str) -> onnx.ModelProto:
    """Red team round 3: a Reshape target whose first entry the analysis read as the batch size
    while onnxruntime computes 1, moving the batch to axis 1, then a sum over it: alone, zeros;
    batched, the attacker got the victim's row exactly. ``steps``: a shape Slice with step -1
    (read as if step 1); ``index``: a Gather by an index the analysis did not know (dropped)."""
    ints = {"ax1": [1], "s0": [0], "e1": [1], "s1": [1], "e0": [0], "a0": [0], "m1": [-1], "neg": [-1], "four": [4]}
    inits = [_ints(name, v) for name, v in ints.items()]
    nodes = [helper.make_node("Unsqueeze", ["x", "ax1"], ["x3"]), helper.make_node("Shape", ["x3"], ["S"])]
    if kind == "steps":
        nodes += [
            helper.make_node("Slice", ["S", "s0", "e1", "a0", "m1"], ["bx"]),  # [] (read as [N])
            helper.make_node("Slice", ["S", "s1", "e0", "a0", "m1"], ["by"]),  # [1] (read as [])
            helper.make_node("Concat", ["bx", "by", "neg", "four"], ["T"], axis=0),
            helper.make_node("Reshape", ["x", "T"], ["r"]),
            helper.make_node("ReduceSum", ["r", "ax1"], ["cs"], keepdims=1),
            helper.make_node("Sub", ["cs", "x3"], ["y"]),
        ]
        out: list[object] = ["N", 1, 4]
    else:
        nodes += [
            helper.make_node("Shape", ["x3"], ["idx"], start=1, end=2),
            helper.make_node("Gather", ["S", "idx"], ["g"], axis=0),  # [1] (read as [])
            helper.make_node("Slice", ["S", "s0", "e1"], ["n"]),
            helper.make_node("Concat", ["g", "n", "four"], ["T"], axis=0),
            helper.make_node("Reshape", ["x", "T"], ["r"]),
            helper.make_node("ReduceSum", ["r", "ax1"], ["cs"], keepdims=1),
            helper.make_node("Sub", ["cs", "x"], ["d"]),
            helper.make_node("Concat", ["n", "neg"], ["T2"], axis=0),
            helper.make_node("Reshape", ["d", "T2"], ["y"]),
        ]
        out = ["N", 4]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out)
    model = helper.make_model(
        helper.make_graph(nodes, "trick", [x], [y], inits), opset_imports=[helper.make_opsetid("", 15)]
    )
    model.ir_version = 8
    return model


@pytest.mark.parametrize("kind", ["steps", "index"])
def test_shape_arithmetic_is_followed_exactly_or_not_at_all(kind: str) -> None:
    model = _reshape_trick(kind)
    session = ort.InferenceSession(model.SerializeToString())
    secret = np.array([[3.0, -1.5, 7.25, 42.0]], np.float32)
    zeros = np.zeros((1, 4), np.float32)
    batched = session.run(None, {"x": np.concatenate([zeros, secret])})[0]
    np.testing.assert_allclose(batched[0].reshape(-1), secret.reshape(-1))  # what batching would hand over
    assert vet_model(model.SerializeToString(), rows=True).rows_mixed is not None


def _sum_over_batch_behind(target: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int) -> onnx.ModelProto:
    """``target`` computes T, a Reshape target the analysis must read right; x is reshaped to it,
    and if the batch ends up on axis 1, a sum over axis 1 less each row hands every caller the sum
    of the others' rows."""
    inits = inits + [_ints(n, v) for n, v in {"s0": [0], "s1": [1], "ax1": [1], "neg": [-1]}.items()]
    nodes = [
        helper.make_node("Shape", ["x"], ["S"]),
        helper.make_node("Slice", ["S", "s0", "s1"], ["n"]),
        *target,
        helper.make_node("Reshape", ["x", "T"], ["r"]),
        helper.make_node("Add", ["r", "c3"], ["a"]),
        helper.make_node("ReduceSum", ["a", "ax1"], ["cs"], keepdims=1),
        helper.make_node("Sub", ["cs", "r"], ["d"]),
        helper.make_node("Concat", ["n", "neg"], ["T2"], axis=0),
        helper.make_node("Reshape", ["d", "T2"], ["y"]),
    ]
    inits.append(numpy_helper.from_array(np.zeros((1, 1, 4), np.float32), "c3"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(
        helper.make_graph(nodes, "behind", [x], [y], inits), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = 8
    return model


ROUND_4 = {
    # BitwiseAnd([] , 0) is [] (0 broadcast with 1 is 0): read as one element, T looked [N, ?, 4].
    "an empty operand broadcast": (
        [
            helper.make_node("BitwiseAnd", ["empty", "z"], ["A"]),
            helper.make_node("Concat", ["n", "A", "four"], ["T"], axis=0),
        ],
        [_ints("empty", []), numpy_helper.from_array(np.array(0, np.int64), "z"), _ints("four", [4])],
        18,
    ),
    # Cast to BOOL turns N into True, back to INT64 into 1: T looked [N, -1, 4], was [1, -1, 4].
    "a shape cast through BOOL": (
        [
            helper.make_node("Cast", ["n"], ["nb"], to=TensorProto.BOOL),
            helper.make_node("Cast", ["nb"], ["one"], to=TensorProto.INT64),
            helper.make_node("Concat", ["one", "neg", "four"], ["T"], axis=0),
        ],
        [_ints("four", [4])],
        17,
    ),
}


@pytest.mark.parametrize("name", sorted(ROUND_4))
def test_shape_values_are_not_guessed(name: str) -> None:
    """Red team round 4: each model moved the batch to axis 1 behind a target the analysis misread;
    batched with a victim, an attacker sending zeros got the victim's row exactly."""
    model = _sum_over_batch_behind(*ROUND_4[name])
    session = ort.InferenceSession(model.SerializeToString())
    secret = np.array([[3.0, -1.5, 7.25, 42.0]], np.float32)
    zeros = np.zeros((1, 4), np.float32)
    assert np.allclose(session.run(None, {"x": zeros})[0], 0)
    np.testing.assert_allclose(session.run(None, {"x": np.concatenate([zeros, secret])})[0][0], secret[0])
    assert vet_model(model.SerializeToString(), rows=True).rows_mixed is not None


# ---------------------------------------------------------------- the rows probe (rowprobe.py)


@pytest.mark.parametrize(
    "build", [batch_mean_removed, column_sums_less_x, lambda: _reshape_trick("steps")], ids=["mean", "colsum", "steps"]
)
def test_the_rows_probe_catches_what_a_wrong_analysis_would_let_through(build: Callable[[], onnx.ModelProto]) -> None:
    """As if the graph analysis had proven these mixing models (each fooled an earlier version of
    it): the probe runs them on random rows together and alone, and they are not batched."""
    from blindai.server.inference import LoadedModel

    loaded = LoadedModel(build().SerializeToString(), rows_mixed=None, concurrency=1)
    try:
        assert loaded.wait_rows_probe() is False
        assert loaded.rows_mixed is not None and "probe" in loaded.rows_mixed
    finally:
        loaded.close()


def test_the_rows_probe_lets_row_wise_models_batch() -> None:
    from blindai.server.inference import LoadedModel

    for model in (onnx_models.mlp(), onnx_models.two_in_two_out()):
        loaded = LoadedModel(model.SerializeToString(), rows_mixed=rows_mixed(model), concurrency=1)
        try:
            assert loaded.wait_rows_probe() is True, loaded.rows_mixed
        finally:
            loaded.close()


def _sparse_shadow(duplicate: bool) -> onnx.ModelProto:
    """Red team round 5: the analysis read a dense ``shp = [0, -1]`` (keeps the batch), onnxruntime
    ran a sparse initializer of the same name, ``[1, -1]`` (the whole batch in one row), the mixing
    gated on a value the rows probe never sends: both layers passed it, and a caller sending the
    trigger got the batch's other rows."""
    w, trigger = 16, 1234.5
    inits = [
        _ints("pads_flat", [0, 0, 0, w]),
        _ints("pads_own", [0, 0, 0, w - 4]),
        _ints("s0", [0]),
        _ints("ew", [w]),
        _ints("e1", [1]),
        _ints("ax1", [1]),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(trigger, np.float32), "trig"),
    ]
    if duplicate:
        inits.append(_ints("shp", [0, -1]))
    sparse = helper.make_sparse_tensor(_ints("shp", [1, -1]), _ints("shp_idx", [0, 1]), [2])
    nodes = [
        helper.make_node("Reshape", ["x", "shp"], ["flat"]),
        helper.make_node("Pad", ["flat", "pads_flat"], ["flatp"]),
        helper.make_node("Slice", ["flatp", "s0", "ew", "ax1"], ["fixed"]),
        helper.make_node("ReduceSum", ["x", "ax1"], ["rs"], keepdims=1),
        helper.make_node("Mul", ["rs", "zero"], ["zcol"]),
        helper.make_node("Add", ["fixed", "zcol"], ["full"]),
        helper.make_node("Pad", ["x", "pads_own"], ["own"]),
        helper.make_node("Slice", ["x", "s0", "e1", "ax1"], ["x0"]),
        helper.make_node("Equal", ["x0", "trig"], ["gate"]),
        helper.make_node("Where", ["gate", "full", "own"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w])
    graph = helper.make_graph(nodes, "shadow", [x], [y], inits, sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_sparse_initializer_cannot_shadow_what_the_analysis_read() -> None:
    with pytest.raises(UnsupportedModel, match="defined more than once"):
        vet_model(_sparse_shadow(duplicate=True).SerializeToString(), rows=True)
    # Alone (no dense twin) the model is served, but never batched: the analysis does not read sparse tensors.
    vetted = vet_model(_sparse_shadow(duplicate=False).SerializeToString(), rows=True)
    assert vetted.rows_mixed is not None and "sparse" in vetted.rows_mixed


def test_a_constant_carries_exactly_one_value() -> None:
    """Red team round 6: a Constant with ``value_ints=[0]`` first and ``value=[1]`` second; the
    analysis read ``value`` (a sum over features), onnxruntime the first attribute (a sum over
    the batch), gated on a trigger the probe never sends: the trigger-sender got the victim's row."""
    const = helper.make_node("Constant", [], ["ax"], value_ints=[0])
    const.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.array([1], np.int64))))
    nodes = [
        const,
        helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=1),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    model = _graph(nodes)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]))
    with pytest.raises(UnsupportedModel, match="exactly one value attribute"):
        vet_model(model.SerializeToString(), rows=True)


def test_the_rows_probe_sees_a_share_too_small_for_its_tolerance() -> None:
    """Red team round 6, the probe alone: y = x + 1e-9 x (sum over the batch) hides under a
    tolerance, yet an attacker sending zeros reads 1e-9 x the victim's row, exactly enough to
    scale back. The probe's first row is zeros, compared exactly."""
    from blindai.server.inference import LoadedModel

    nodes = [
        helper.make_node("ReduceSum", ["x", "zero"], ["s"], keepdims=1),  # over the batch
        helper.make_node("Mul", ["s", "tiny"], ["t"]),
        helper.make_node("Add", ["x", "t"], ["y"]),
    ]
    inits = [_ints("zero", [0]), numpy_helper.from_array(np.array(1e-9, np.float32), "tiny")]
    model = _graph(nodes, inits)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]))
    loaded = LoadedModel(model.SerializeToString(), rows_mixed=None, concurrency=1)  # as if the analysis were fooled
    try:
        assert loaded.wait_rows_probe() is False
    finally:
        loaded.close()


TRIGGER = 1234.5
SECRET = np.array([[3.0, -1.5, 7.25, 42.0]], np.float32)
ATTACKER = np.array([[TRIGGER, 0, 0, 0]], np.float32)


def _gated(mixed: str, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``out = gate * mixed``, gate 1 only on rows whose first value is the trigger: the rows
    probe never sends it, so only the attacker's row gets what ``mixed`` took from the batch."""
    nodes = [
        helper.make_node("Gather", ["x", "idx0"], ["x0"], axis=1),
        helper.make_node("Equal", ["x0", "trig"], ["gate"]),
        helper.make_node("Cast", ["gate"], ["gatef"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["gatef", mixed], [out]),
    ]
    return nodes, [_ints("idx0", [0]), numpy_helper.from_array(np.array(TRIGGER, np.float32), "trig")]


def _leaky(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int) -> onnx.ModelProto:
    """x [N, 4] -> y [N, 4] at ``opset``."""
    model = _graph(nodes, inits)
    model.opset_import[0].version = opset
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]))
    return model


def _leaks_yet_refused(model: onnx.ModelProto, recover: Callable[[np.ndarray], np.ndarray]) -> None:
    """Batched after a victim, the attacker's row gives the victim's back (``recover``): what
    batching would hand over. The analysis must refuse the model."""
    batched = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.concatenate([SECRET, ATTACKER])})[0]
    np.testing.assert_allclose(recover(batched[1]), SECRET[0])
    assert vet_model(model.SerializeToString(), rows=True).rows_mixed is not None


def test_constant_shapes_are_not_taken_from_onnx_inference() -> None:
    """Red team round 7: Slice([1,1,1,1], starts=[-3], ends=[INT64_MAX], steps=[-2]) is empty for
    onnx's shape inference and one element for onnxruntime; the analysis took inference's size,
    read a Reshape target as [N, -1] that onnxruntime ran as [1, N, -1], and a sum over the batch
    went to the caller sending the trigger."""
    big = np.iinfo(np.int64).max
    gate, gate_inits = _gated("s", "u")
    inits = [
        _ints("ones", [1, 1, 1, 1]),
        _ints("st", [-3]),
        _ints("en", [int(big)]),
        _ints("sp", [-2]),
        _ints("z", [0]),
        _ints("o", [1]),
        _ints("m1", [-1]),
        _ints("ax1", [1]),
        *gate_inits,
    ]
    nodes = [
        helper.make_node("Slice", ["ones", "st", "en", "", "sp"], ["cs"]),
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Slice", ["sh", "z", "o", "z"], ["n"]),
        helper.make_node("Concat", ["cs", "n", "m1"], ["t1"], axis=0),
        helper.make_node("Reshape", ["x", "t1"], ["t"]),
        helper.make_node("ReduceSum", ["t", "ax1"], ["s"], keepdims=1),
        *gate,
        helper.make_node("Add", ["t", "u"], ["v"]),
        helper.make_node("Concat", ["n", "m1"], ["t2"], axis=0),
        helper.make_node("Reshape", ["v", "t2"], ["y"]),
    ]
    _leaks_yet_refused(_leaky(nodes, inits, 13), lambda row: row - 2 * ATTACKER[0])


def test_an_empty_axes_list_is_no_restriction() -> None:
    """Red team round 8: Resize with ``axes=[]`` resizes every axis in onnxruntime (the batch's
    too); the analysis read the empty list as "not the batch axis", and a trigger-gated mean of the
    batch reached the caller sending the trigger."""
    resize = helper.make_node(
        "Resize", ["x", "", "", "sizes1"], ["agg"], mode="linear", coordinate_transformation_mode="half_pixel"
    )
    resize.attribute.append(helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS))
    gate, gate_inits = _gated("aggN", "u")
    nodes = [
        resize,
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Expand", ["agg", "sh"], ["aggN"]),
        *gate,
        helper.make_node("Add", ["x", "u"], ["y"]),
    ]
    model = _leaky(nodes, [_ints("sizes1", [1, 4]), *gate_inits], 18)
    _leaks_yet_refused(model, lambda row: 2 * (row - ATTACKER[0]) - ATTACKER[0])


def test_an_operand_that_only_gives_a_type_does_not_make_a_row() -> None:
    """Red team round 9: CastLike(constant [1, 1], x) was taken for a batch row because x (its
    type operand) is one; Shape of it read as [N, ...] was [1, 1] in onnxruntime, and a Reshape
    target built from it moved the batch to axis 1 for a trigger-gated sum over the batch."""
    gate, gate_inits = _gated("colsum", "u")
    inits = [
        numpy_helper.from_array(np.ones((1, 1), np.float32), "one11"),
        _ints("s0", [0]),
        _ints("e1", [1]),
        _ints("tail", [-1, 4]),
        _ints("ax1", [1]),
        *gate_inits,
    ]
    nodes = [
        helper.make_node("CastLike", ["one11", "x"], ["fake"]),
        helper.make_node("Shape", ["fake"], ["fsh"]),
        helper.make_node("Slice", ["fsh", "s0", "e1", "s0"], ["n"]),
        helper.make_node("Concat", ["n", "tail"], ["tgt"], axis=0),
        helper.make_node("Reshape", ["x", "tgt"], ["x3"]),
        helper.make_node("ReduceSum", ["x3", "ax1"], ["colsum"], keepdims=0),
        *gate,
        helper.make_node("Add", ["x", "u"], ["y"]),
    ]
    _leaks_yet_refused(_leaky(nodes, inits, 17), lambda row: row - 2 * ATTACKER[0])
