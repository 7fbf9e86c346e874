"""Whether a model computes each row of its batch from that row alone: what dynamic batching needs.

A dynamic batch (``--batch-window-ms``) stacks several callers' requests along the first
dimension and runs them as one. That is only sound when each output row is a function of the
same input row and nothing else: a model that mixes rows (a mean over the batch, the batch
times its own transpose, a transpose or reshape that moves the batch axis) would hand every
caller in a batch a function of the others' inputs. The graph is the model owner's choice, so
this is a tenant-isolation check, not an optimisation hint: ``rows_mixed`` proves row
independence for a whitelist of operators, following the batch axis through the graph, and
refuses (returns why) anything it cannot prove. A refused model still runs; only never batched.

What it tracks for each value of the top-level graph:

- ``_Row``: depends on the inputs row by row, with the batch on axis 0 (and its rank);
- ``_Const``: depends on no input (weights, constants, what is computed from them only);
- ``_Shape``: computed from the inputs' shapes only (``Shape`` and arithmetic on it). Its known
  entries are followed, with the batch size as ``N``, so the usual exported patterns (a
  ``Reshape`` to ``[N, ...]`` built from ``Shape(x)[0]``) are proven. A shape value that holds
  the batch size never reaches a row's values: the number of rows other callers sent would.

The whitelist holds the operators of the graphs batching is for (convolutional networks,
transformers, MLPs: every operator of the benchmark models) and no more: each handler is a
place the analysis could misread onnxruntime, as eight red-team rounds showed; resizing,
padding, tiling, expanding, quantising and the like are refused. So are other operators, control
flow, non-default domains and model-local functions. The check reads the graph only (small
integer constants included); it never runs the model (``rowprobe.py`` does, as a second layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["rows_mixed"]

N = "N"  # the batch size, as an entry of a tracked shape vector
Entry = int | float | str | None  # a known number, the batch size, or unknown


@dataclass(frozen=True)
class _Row:
    rank: int


@dataclass(frozen=True)
class _Const:
    dims: tuple[int | None, ...] | None = None  # None: unknown rank; an entry None: unknown size
    values: tuple[Entry, ...] | None = None  # known contents of a small tensor, flattened


@dataclass(frozen=True)
class _Shape:
    rank: int  # 0 (a scalar) or 1 (a vector)
    entries: tuple[Entry, ...] | None  # None: unknown length


Value = _Row | _Const | _Shape


class _Refused(Exception):
    """Row independence could not be proven; the message says where."""


# Same-shape (after broadcasting) element-by-element operators: each output element comes from
# the elements at the same position of the inputs.
_ELEMENTWISE = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Mod",
        "And",
        "Or",
        "Xor",
        "Equal",
        "Less",
        "LessOrEqual",
        "Greater",
        "GreaterOrEqual",
        "Where",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "PRelu",
        "BitShift",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
        "BitwiseNot",
        "Relu",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Erf",
        "Gelu",
        "Sqrt",
        "Reciprocal",
        "Exp",
        "Log",
        "Neg",
        "Abs",
        "Sign",
        "Ceil",
        "Floor",
        "Round",
        "Not",
        "Cast",
        "CastLike",
        "Identity",
        "Clip",
        "Sin",
        "Cos",
        "Tan",
        "Asin",
        "Acos",
        "Atan",
        "Sinh",
        "Cosh",
        "Asinh",
        "Acosh",
        "Atanh",
        "Softplus",
        "Softsign",
        "IsNaN",
        "IsInf",
        "Shrink",
        "ThresholdedRelu",
        "Mish",
    ]
)
# Operators that work on each sample (axis 0) on its own, whose other operands are weights.
_PER_SAMPLE = frozenset(
    [
        "Conv",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "InstanceNormalization",
    ]
)
_REDUCE = frozenset(
    [
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ]
)
# Reductions whose axes moved from an attribute to the second input, from this opset on.
_AXES_AS_INPUT = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13}
_AXES_AS_INPUT_REST = 18  # the other Reduce* operators


def rows_mixed(model: Any) -> str | None:
    """None if every output row provably depends on the same input row alone, else why not."""
    try:
        _check(model)
    except _Refused as exc:
        return str(exc)
    except Exception as exc:  # a graph shaped so that the analysis itself fails: not batched
        return f"the graph could not be analysed ({type(exc).__name__})"
    return None


def _check(model: Any) -> None:
    from onnx import numpy_helper

    if len(model.functions):
        raise _Refused("the model defines its own functions")
    defaults = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if len(defaults) != 1:  # two imports of one domain: which version onnxruntime applies is its own choice
        raise _Refused("the model imports the default operator domain other than exactly once")
    opset = defaults[0]
    graph = model.graph
    if len(graph.sparse_initializer):
        # onnxruntime makes them dense and, for a name also given densely, keeps whichever it meets
        # last: the analysis would read one tensor and onnxruntime run another.
        raise _Refused("the graph has sparse initializers")
    values: dict[str, Value] = {}
    for init in graph.initializer:
        if init.name in values:
            raise _Refused(f"initializer {init.name!r} is given twice")
        values[init.name] = _Const(tuple(init.dims), _small(init, numpy_helper))
    for inp in graph.input:
        if inp.name in values:
            continue  # an initializer listed as an input: requests cannot set it (only declared inputs)
        dims = inp.type.tensor_type.shape.dim
        if not inp.type.HasField("tensor_type") or not inp.type.tensor_type.HasField("shape") or not dims:
            raise _Refused(f"input {inp.name!r} declares no rank")
        values[inp.name] = _Row(len(dims))
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise _Refused(f"node {node.name!r}: operator {node.op_type!r} of domain {node.domain!r}")
        ins = [values[name] if name else None for name in node.input]
        if any(name and name not in values for name in node.input):
            raise _Refused(f"node {node.name!r} ({node.op_type}) reads a value defined nowhere before it")
        outs = _node(node, ins, opset)
        for name, value in zip(node.output, outs, strict=False):
            if name in values:
                raise _Refused(f"node {node.name!r} redefines {name!r}")
            if name:
                values[name] = value
    for out in graph.output:
        if not isinstance(values.get(out.name), _Row):
            raise _Refused(f"output {out.name!r} is not computed row by row from the batch")


def _small(tensor: Any, numpy_helper: Any) -> tuple[int | float, ...] | None:
    """The contents of a small numeric tensor held in the graph (shapes, axes, scales), else None."""
    if tensor.data_location == 1 or len(tensor.external_data) or _count(tensor.dims) > 64:
        return None
    if tensor.data_type in (6, 7):  # INT32, INT64
        return tuple(int(v) for v in numpy_helper.to_array(tensor).reshape(-1))
    if tensor.data_type in (1, 10, 11):  # FLOAT, FLOAT16, DOUBLE
        return tuple(float(v) for v in numpy_helper.to_array(tensor).reshape(-1))
    return None


def _count(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _rank(v: Value | None) -> int | None:
    if isinstance(v, _Row):
        return v.rank
    if isinstance(v, _Shape):
        return v.rank
    if isinstance(v, _Const) and v.dims is not None:
        return len(v.dims)
    return None


def _uses_batch(v: Value | None) -> bool:
    """A shape value that holds (or may hold) the batch size."""
    return isinstance(v, _Shape) and (v.entries is None or N in v.entries)


def _ints(v: Value | None, what: str, node: Any) -> tuple[Entry, ...]:
    """Known entries of a constant or shape operand (the batch size as N); refused when unknown."""
    if isinstance(v, _Const) and v.values is not None:
        return v.values
    if isinstance(v, _Shape) and v.entries is not None:
        return v.entries
    raise _Refused(f"node {node.name!r} ({node.op_type}): its {what} is not a known constant")


def _axes(node: Any, ins: list[Value | None], opset: int, rank: int) -> tuple[int, ...] | None:
    """The normalised axes of a Reduce/Squeeze/Unsqueeze node; None when none (or an empty list) are given."""
    moved = _AXES_AS_INPUT.get(node.op_type, _AXES_AS_INPUT_REST)
    if opset >= moved:
        if len(ins) < 2 or ins[1] is None:
            return None
        raw = _ints(ins[1], "axes", node)
    else:
        attr = _attr(node, "axes")
        if attr is None:
            return None
        raw = tuple(attr)
    if not raw:  # an empty list means what no list means: every axis (Reduce*), every size-1 axis (Squeeze)
        return None
    axes = []
    for a in raw:
        if not isinstance(a, int):
            raise _Refused(f"node {node.name!r} ({node.op_type}): axes are not known")
        if rank and not -rank <= a < rank:
            raise _Refused(f"node {node.name!r} ({node.op_type}): axis {a} outside a rank-{rank} tensor")
        axes.append(a + rank if a < 0 else a)
    return tuple(axes)


def _axis(node: Any, rank: int, default: int) -> int:
    a = int(_attr(node, "axis", default))
    a = a + rank if a < 0 else a
    if not 0 <= a < max(rank, 1):
        raise _Refused(f"node {node.name!r} ({node.op_type}): axis {a} outside a rank-{rank} tensor")
    return a


def _node(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    op = node.op_type
    if op in ("If", "Loop", "Scan") or any(a.type in (5, 10) for a in node.attribute):  # GRAPH, GRAPHS
        raise _Refused(f"node {node.name!r}: control flow ({op})")
    present = [v for v in ins if v is not None]
    if op == "Constant":
        return [_constant(node)]
    handler = _HANDLERS.get(op)
    if not any(isinstance(v, _Row) for v in present):
        if any(_uses_batch(v) for v in present):
            return _shape_op(node, ins, opset)
        if any(isinstance(v, _Shape) for v in present):  # per-request sizes, the same across a batch
            out = [v if isinstance(v, _Const) else _Const() for v in _shape_op(node, ins, opset)]
            if any(v.dims is not None or v.values is not None for v in out):
                return list(out)
            return _const_op(node, [None if v is None else _as_const(v) for v in ins], opset)
        return _const_op(node, ins, opset)
    if handler is None:
        if op in _ELEMENTWISE:
            return _elementwise(node, ins)
        if op in _PER_SAMPLE:
            return _per_sample(node, ins)
        if op in _REDUCE:
            return _reduce(node, ins, opset)
        raise _Refused(f"node {node.name!r}: operator {op} is not known to keep batch rows apart")
    return handler(node, ins, opset)


def _constant(node: Any) -> _Const:
    """A Constant's value; vetting lets only one value attribute through (onnxruntime reads the first)."""
    from onnx import numpy_helper

    if len(node.attribute) != 1:
        raise _Refused(f"Constant node {node.name!r} carries {len(node.attribute)} value attributes")

    value = _attr(node, "value")
    if value is not None:
        return _Const(tuple(value.dims), _small(value, numpy_helper))
    if _attr(node, "value_int") is not None:
        return _Const((), (int(_attr(node, "value_int")),))
    if _attr(node, "value_ints") is not None:
        ints = tuple(int(v) for v in _attr(node, "value_ints"))
        return _Const((len(ints),), ints)
    if _attr(node, "value_float") is not None:
        return _Const((), (float(_attr(node, "value_float")),))
    if _attr(node, "value_floats") is not None:
        floats = tuple(float(v) for v in _attr(node, "value_floats"))
        return _Const((len(floats),), floats)
    return _Const()


def _const_op(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    """Computed from constants only: the same for every request of a batch. Their shapes are
    followed here, by the operators' own rules, through the operators that exported graphs use to
    build them (a broadcasting rule needs each operand's rank); any other leaves the shape unknown,
    never taken from onnx's shape inference (a red team found it disagreeing with onnxruntime)."""
    if node.op_type in _ELEMENTWISE:
        dims = (
            [_dims(v) for v in ins[:1] if v is not None]
            if node.op_type in _PARAMETRISED
            else [_dims(v) for v in ins if v is not None]
        )
        if dims and all(d is not None for d in dims):
            rank = max(len(d) for d in dims if d is not None)
            padded = [(1,) * (rank - len(d)) + d for d in dims if d is not None]
            cols = zip(*padded, strict=True)
            return [_Const(tuple(_broadcast(col) for col in cols))] * len(node.output)
    if node.op_type == "Gather" and len(ins) > 1:
        data, idx = _dims(ins[0]), _dims(ins[1])
        if data is not None and idx is not None and data:
            axis = _axis(node, len(data), 0)
            return [_Const(data[:axis] + idx + data[axis + 1 :])]
    data = _dims(ins[0]) if ins else None
    if node.op_type == "Slice" and opset >= 10 and data is not None and len(ins) >= 3:
        if len(ins) > 3 and ins[3] is not None:
            axes = ins[3].values if isinstance(ins[3], _Const) else None
        else:  # no axes: the first len(starts) axes
            starts = _dims(ins[1])
            axes = tuple(range(starts[0])) if starts is not None and len(starts) == 1 and starts[0] else None
        if axes is not None and all(isinstance(a, int) and -len(data) <= a < len(data) for a in axes):
            cut = {int(a) + len(data) if int(a) < 0 else int(a) for a in axes if isinstance(a, int)}
            return [_Const(tuple(None if i in cut else d for i, d in enumerate(data)))]
    if node.op_type == "Unsqueeze" and data is not None:
        added = _axes(node, ins, opset, 0)
        axes = _axes(node, ins, opset, len(data) + len(added or ()))
        if axes is not None and len(set(axes)) == len(axes) and all(0 <= a < len(data) + len(axes) for a in axes):
            rest = iter(data)
            return [_Const(tuple(1 if i in axes else next(rest) for i in range(len(data) + len(axes))))]
    if node.op_type == "Squeeze" and data is not None:
        axes = _axes(node, ins, opset, len(data))
        if axes is not None and all(0 <= a < len(data) and data[a] == 1 for a in axes):
            return [_Const(tuple(d for i, d in enumerate(data) if i not in axes))]
    return [_Const()] * len(node.output)


def _broadcast(sizes: tuple[int | None, ...]) -> int | None:
    """One dimension of a broadcast result: 0 wins over 1 (an empty operand stays empty), and any
    doubt (an unknown size beside 0 or 1) leaves it unknown."""
    known = [s for s in sizes if s is not None]
    if len(known) == len(sizes):
        return 0 if 0 in known else max(known, default=1)
    wide = [s for s in known if s > 1]
    return wide[0] if wide and 0 not in known else None


_PARAMETRISED = frozenset({"Clip", "CastLike"})


def _dims(v: Value | None) -> tuple[int | None, ...] | None:
    return v.dims if isinstance(v, _Const) else None


def _elementwise(node: Any, ins: list[Value | None]) -> list[Value]:
    if node.op_type == "CastLike":
        ins = ins[:1]  # its second input gives a type only
        if not isinstance(ins[0], _Row):  # a constant cast like a row stays that constant (its shape, not N)
            return [_Const(_dims(ins[0]))]
    if node.op_type == "Clip":
        if any(isinstance(v, _Row) or _uses_batch(v) for v in ins[1:] if v is not None):
            raise _Refused(f"node {node.name!r} ({node.op_type}): a parameter computed from the batch")
        ins = ins[:1]
    present = [v for v in ins if v is not None]
    if not any(isinstance(v, _Row) for v in present):  # the batch was only in operands set aside above
        raise _Refused(f"node {node.name!r} ({node.op_type}): its data operand is not a batch row")
    if any(_uses_batch(v) for v in present):
        raise _Refused(f"node {node.name!r} ({node.op_type}): the batch size reaches the values")
    ranks = [_rank(v) for v in present]
    if any(r is None for r in ranks):
        raise _Refused(f"node {node.name!r} ({node.op_type}): an operand of unknown rank")
    out = max(r for r in ranks if r is not None)
    for v in present:
        if isinstance(v, _Row) and v.rank != out:
            raise _Refused(f"node {node.name!r} ({node.op_type}): broadcasting moves the batch axis")
        if isinstance(v, _Const | _Shape) and _rank(v) == out and (_lead(v) != 1):
            raise _Refused(f"node {node.name!r} ({node.op_type}): a constant spans the batch axis")
    return [_Row(out)] * len(node.output)


def _lead(v: Value | None) -> int | None:
    """The first dimension of a constant operand, when known."""
    if isinstance(v, _Const) and v.dims:
        return v.dims[0]
    if isinstance(v, _Shape) and v.rank == 1 and v.entries is not None:
        return len(v.entries)
    return None


def _only_first_row(node: Any, ins: list[Value | None]) -> _Row:
    """The node's first input is the batch; every other operand must be free of it."""
    x = ins[0]
    if not isinstance(x, _Row):
        raise _Refused(f"node {node.name!r} ({node.op_type}): the batch is not its data input")
    if any(isinstance(v, _Row) or _uses_batch(v) for v in ins[1:] if v is not None):
        raise _Refused(f"node {node.name!r} ({node.op_type}): a parameter computed from the batch")
    return x


def _per_sample(node: Any, ins: list[Value | None]) -> list[Value]:
    return [_only_first_row(node, ins)] * len(node.output)


def _pool(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    if len(node.output) > 1 and node.output[1]:
        raise _Refused(f"node {node.name!r} (MaxPool): its indices count the batch's earlier rows")
    return [x]


def _batch_norm(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    if int(_attr(node, "training_mode", 0) or 0) or (opset < 14 and len([o for o in node.output if o]) > 1):
        raise _Refused(f"node {node.name!r}: BatchNormalization in training mode (statistics over the batch)")
    return [_only_first_row(node, ins)]


def _softmax(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    default = -1 if opset >= 13 else 1
    if _axis(node, x.rank, default) == 0:
        raise _Refused(f"node {node.name!r} ({node.op_type}) over the batch axis")
    return [x]


def _layer_norm(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    if _axis(node, x.rank, -1) == 0:
        raise _Refused(f"node {node.name!r} (LayerNormalization) over the batch axis")
    return [x] * len(node.output)


def _reduce(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, [*ins[:1], None])
    if len(ins) > 1 and (isinstance(ins[1], _Row) or _uses_batch(ins[1])):
        raise _Refused(f"node {node.name!r} ({node.op_type}): axes computed from the batch")
    axes = _axes(node, ins, opset, x.rank)
    if axes is None:
        if int(_attr(node, "noop_with_empty_axes", 0) or 0):
            return [x]
        raise _Refused(f"node {node.name!r} ({node.op_type}) reduces over every axis, the batch's included")
    if 0 in axes:
        raise _Refused(f"node {node.name!r} ({node.op_type}) reduces over the batch axis")
    keep = int(_attr(node, "keepdims", 1))
    return [_Row(x.rank if keep else x.rank - len(set(axes)))]


def _arg(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    if _axis(node, x.rank, 0) == 0:
        raise _Refused(f"node {node.name!r} ({node.op_type}) over the batch axis")
    return [_Row(x.rank if int(_attr(node, "keepdims", 1)) else x.rank - 1)]


def _matmul(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    a, b = ins[0], ins[1]
    if _uses_batch(a) or _uses_batch(b):
        raise _Refused(f"node {node.name!r} (MatMul): the batch size reaches the values")
    ra, rb = _rank(a), _rank(b)
    if ra is None or rb is None:
        raise _Refused(f"node {node.name!r} (MatMul): an operand of unknown rank")
    # A 1-D operand is promoted to a matrix and its added axis removed from the result.
    out = max(ra, rb) - (1 if min(ra, rb) == 1 else 0)
    if isinstance(a, _Row) and isinstance(b, _Row):
        if ra == rb >= 3:  # stacked matrices, sample by sample
            return [_Row(out)]
        raise _Refused(f"node {node.name!r} (MatMul) multiplies batch rows with each other")
    if isinstance(a, _Row):  # the batch times weights
        if (ra == 2 and rb <= 2) or (ra >= 3 and (rb <= 2 or rb < ra or (rb == ra and _lead(b) == 1))):
            return [_Row(out)]
        raise _Refused(f"node {node.name!r} (MatMul): the weights span the batch axis")
    assert isinstance(b, _Row)
    if rb >= 3 and (ra <= 2 or ra < rb or (ra == rb and _lead(a) == 1)):  # weights times stacked matrices
        return [_Row(out)]
    raise _Refused(f"node {node.name!r} (MatMul) contracts over the batch axis")


def _gemm(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    a = _only_first_row(node, ins)
    if int(_attr(node, "transA", 0)) or a.rank != 2:
        raise _Refused(f"node {node.name!r} (Gemm) with the batch transposed")
    c = ins[2] if len(ins) > 2 else None
    if c is not None and (_rank(c) is None or (_rank(c) == 2 and _lead(c) != 1)):
        raise _Refused(f"node {node.name!r} (Gemm): its bias spans the batch axis")
    return [_Row(2)]


def _transpose(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    perm = _attr(node, "perm")
    if x.rank > 1 and (perm is None or perm[0] != 0):
        raise _Refused(f"node {node.name!r} (Transpose) moves the batch axis")
    return [x]


def _flatten(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    axis = int(_attr(node, "axis", 1))
    # [d0 x ... x d(axis-1), the rest]: the first dimension is the batch only when axis is 1 (axis 0
    # makes one row of everything, axis 2 and on merge the batch with the next dimensions).
    if (axis + x.rank if axis < 0 else axis) != 1:
        raise _Refused(f"node {node.name!r} (Flatten) at axis {axis} merges the batch with other dimensions")
    return [_Row(2)]


def _squeeze(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    axes = _axes(node, ins, opset, x.rank)
    if axes is None or 0 in axes:
        raise _Refused(f"node {node.name!r} (Squeeze) may remove the batch axis")
    return [_Row(x.rank - len(set(axes)))]


def _unsqueeze(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    out_rank = x.rank + len(_axes(node, ins, opset, 0) or ())
    axes = _axes(node, ins, opset, out_rank)
    if axes is None or 0 in axes:
        raise _Refused(f"node {node.name!r} (Unsqueeze) puts an axis before the batch")
    return [_Row(out_rank)]


def _concat(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    rows = [v for v in ins if v is not None]
    if not all(isinstance(v, _Row) for v in rows) or len({_rank(v) for v in rows}) != 1:
        raise _Refused(f"node {node.name!r} (Concat) joins the batch with values that do not follow it")
    rank = _rank(rows[0])
    assert rank is not None
    if _axis(node, rank, 0) == 0:
        raise _Refused(f"node {node.name!r} (Concat) along the batch axis")
    return [_Row(rank)]


def _split(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    if _axis(node, x.rank, 0) == 0:
        raise _Refused(f"node {node.name!r} (Split) along the batch axis")
    return [x] * len(node.output)


def _slice(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = _only_first_row(node, ins)
    if opset < 10:
        raw = _attr(node, "axes")
    else:
        raw = _ints(ins[3], "axes", node) if len(ins) > 3 and ins[3] is not None else None
    if not raw or any(
        not isinstance(a, int) or not -x.rank <= a < x.rank or (a + x.rank if a < 0 else a) == 0 for a in raw
    ):
        raise _Refused(f"node {node.name!r} (Slice) may cut the batch axis")
    return [x]


def _gather(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    data, idx = ins[0], ins[1]
    if _uses_batch(idx):
        raise _Refused(f"node {node.name!r} (Gather): indices computed from the batch size")
    rd, ri = _rank(data), _rank(idx)
    if rd is None or ri is None:
        raise _Refused(f"node {node.name!r} (Gather): an operand of unknown rank")
    axis = _axis(node, rd, 0)
    if isinstance(data, _Row) and not isinstance(idx, _Row) and axis != 0:
        return [_Row(rd - 1 + ri)]
    if isinstance(idx, _Row) and isinstance(data, _Const) and axis == 0:  # an embedding lookup
        return [_Row(rd - 1 + ri)]
    raise _Refused(f"node {node.name!r} (Gather) picks across the batch axis")


def _reshape(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    _only_first_row(node, [ins[0], None])
    if isinstance(ins[1], _Row):
        raise _Refused(f"node {node.name!r} (Reshape): a target shape computed from the batch's values")
    entries = _ints(ins[1], "target shape", node)
    first = entries[0] if entries else None
    keeps = first == N or (first == 0 and not int(_attr(node, "allowzero", 0) or 0))
    if keeps and N not in entries[1:]:
        return [_Row(len(entries))]
    raise _Refused(f"node {node.name!r} (Reshape): the batch is not provably kept as the first dimension")


def _shape_of(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    x = ins[0]
    if not isinstance(x, _Row):
        return [_Const()]  # only reached for a shape vector's own shape (constants are handled before)
    entries: tuple[Entry, ...] = (N,) + (None,) * (x.rank - 1)
    start = int(_attr(node, "start", 0))
    end = _attr(node, "end")
    return [_Shape(1, entries[slice(start, None if end is None else int(end))])]


def _size(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    return [_Shape(0, None)]  # counts the batch: may be carried, never reaches the values


def _shape_op(node: Any, ins: list[Value | None], opset: int) -> list[Value]:
    """Arithmetic on shape vectors, followed only where its result is known exactly: a Gather by
    known indices, a Slice of one vector with step 1, a Concat of vectors, Unsqueeze and Squeeze of
    one element. Anything else (another operator, a step, an unknown index) gives a value whose
    entries are unknown, holding the batch size if any input might: never a guessed vector."""
    op = node.op_type
    unknown: list[Value] = (
        [_Shape(_rank(ins[0]) or 1, None)] * len(node.output)
        if any(_uses_batch(v) for v in ins)
        else [_Const()] * len(node.output)
    )
    try:
        # A cast keeps a shape's entries only to a type that holds them all (to BOOL, N becomes 1).
        if isinstance(ins[0], _Shape) and (op == "Identity" or (op == "Cast" and _attr(node, "to") in (6, 7))):
            return [ins[0]]
        if op == "Gather" and _rank(ins[0]) == 1 and _rank(ins[1]) in (0, 1):
            vec, idx = _ints(ins[0], "", node), _ints(ins[1], "", node)
            if int(_attr(node, "axis", 0)) not in (0, -1) or not all(
                isinstance(i, int) and -len(vec) <= i < len(vec) for i in idx
            ):
                return unknown
            picked = tuple(vec[int(i)] for i in idx if isinstance(i, int))
            rank = 0 if _rank(ins[1]) == 0 else 1
            return [_vector(rank, picked)]
        if op == "Unsqueeze" and _rank(ins[0]) == 0 and _axes(node, ins, opset, 1) == (0,):
            return [_vector(1, _ints(ins[0], "", node))]
        if op == "Squeeze" and _rank(ins[0]) == 1 and _axes(node, ins, opset, 1) in (None, (0,)):
            entries = _ints(ins[0], "", node)
            return [_vector(0, entries)] if len(entries) == 1 else unknown
        if op == "Concat" and int(_attr(node, "axis", 0)) in (0, -1):
            parts = [v for v in ins if v is not None]
            if not all(_rank(v) == 1 for v in parts):
                return unknown
            joined: tuple[Entry, ...] = ()
            for v in parts:
                joined += _entries(v, node)
            return [_vector(1, joined)]
        if op == "Slice" and opset >= 10 and _rank(ins[0]) == 1:
            vec = _ints(ins[0], "", node)
            starts, ends = _ints(ins[1], "", node), _ints(ins[2], "", node)
            axes = _ints(ins[3], "", node) if len(ins) > 3 and ins[3] is not None else (0,)
            steps = _ints(ins[4], "", node) if len(ins) > 4 and ins[4] is not None else (1,)
            if (
                len(starts) == len(ends) == 1
                and isinstance(starts[0], int)
                and isinstance(ends[0], int)
                and tuple(axes) in ((0,), (-1,))
                and tuple(steps) == (1,)
            ):
                return [_vector(1, vec[slice(starts[0], ends[0])])]
    except _Refused:
        return unknown
    return unknown


def _vector(rank: int, entries: tuple[Entry, ...]) -> Value:
    """A followed shape value: one that holds the batch size, or a constant of known contents."""
    if N in entries:
        return _Shape(rank, entries)
    return _Const(() if rank == 0 else (len(entries),), _known(entries))


def _as_const(v: Value) -> _Const:
    """A shape value that does not hold the batch size, seen as the constant it is for one batch."""
    if isinstance(v, _Shape):
        dims = None if v.entries is None else (() if v.rank == 0 else (len(v.entries),))
        return _Const(dims, None if v.entries is None else _known(v.entries))
    if isinstance(v, _Const):
        return v
    raise _Refused("a batch row where a constant was expected")


def _entries(v: Value, node: Any) -> tuple[Entry, ...]:
    """A shape vector's entries, unknown ones (a per-request size) as None when only its length is known."""
    if isinstance(v, _Const) and v.values is None and v.dims is not None and len(v.dims) <= 1:
        length = v.dims[0] if v.dims else 1
        if length is not None:
            return (None,) * length
    return _ints(v, "", node)


def _known(entries: tuple[Entry, ...]) -> tuple[int, ...] | None:
    return tuple(e for e in entries if isinstance(e, int)) if all(isinstance(e, int) for e in entries) else None


_HANDLERS: dict[str, Callable[[Any, list[Value | None], int], list[Value]]] = {
    "MaxPool": _pool,
    "BatchNormalization": _batch_norm,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "LayerNormalization": _layer_norm,
    "ArgMax": _arg,
    "ArgMin": _arg,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Transpose": _transpose,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Reshape": _reshape,
    "Shape": _shape_of,
    "Size": _size,
}
