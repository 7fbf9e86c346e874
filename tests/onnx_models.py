"""Small ONNX models built with onnx.helper, for the tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def varint(v: int) -> bytes:
    """A protobuf varint, minimally encoded (for tests that write protobuf framing by hand)."""
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def scale_model(
    dtype: int = TensorProto.FLOAT, shape: list[object] | None = None, factor: float = 2.0
) -> onnx.ModelProto:
    """y = x * factor, for any numeric dtype."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    shape = shape or ["N", 4]
    x = helper.make_tensor_value_info("x", dtype, shape)
    y = helper.make_tensor_value_info("y", dtype, shape)
    k = numpy_helper.from_array(np.array(factor, dtype=np_dtype), "k")
    return _model(helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k]))


def two_in_two_out() -> onnx.ModelProto:
    """sum = a + b (FP32 [N,3]); idx = ArgMax(a) as INT64 [N]; also a BOOL output mask = a > b."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3])
    i = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])
    g = helper.make_tensor_value_info("greater", TensorProto.BOOL, ["N", 3])
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("ArgMax", ["a"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Greater", ["a", "b"], ["greater"]),
    ]
    return _model(helper.make_graph(nodes, "multi", [a, b], [s, i, g]))


def mlp(in_dim: int = 16, hidden: int = 32, out_dim: int = 4, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((in_dim, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, out_dim)).astype(np.float32), "w2")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_dim])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    return _model(helper.make_graph(nodes, "mlp", [x], [y], [w1, w2]))


def string_identity() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])
    y = helper.make_tensor_value_info("same", TensorProto.STRING, ["N"])
    return _model(helper.make_graph([helper.make_node("Identity", ["text"], ["same"])], "str", [x], [y]))


def fixed_shape_model() -> onnx.ModelProto:
    return scale_model(TensorProto.FLOAT, [2, 3])


def gather_rows(rows: int = 10, width: int = 2) -> onnx.ModelProto:
    """y = table[idx]: an index out of range fails the run in onnxruntime (a request that breaks its batch)."""
    table = numpy_helper.from_array(np.arange(rows * width, dtype=np.float32).reshape(rows, width), "table")
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    node = helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)
    return _model(helper.make_graph([node], "gather", [idx], [y], [table]))


def column_sum() -> onnx.ModelProto:
    """y = sum over the rows of x: the output's first dimension is not the batch dimension."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    return _model(helper.make_graph([node], "colsum", [x], [y], [axes]))
