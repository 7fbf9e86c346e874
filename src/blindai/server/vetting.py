"""What a model must be before onnxruntime loads it.

ONNX that parses, no external data, operators only from allowed domains, what it holds
once loaded (folded constants, dense sparse tensors) counted against the limits, and no
string tensors that could grow outside the inference memory cap. Pure: bytes in, a
`VettedModel` (what onnxruntime loads: the upload's skeleton from `onnxsplit`, whose graph
is what was vetted) or an `UnsupportedModel`/`LimitExceeded` out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import LimitExceeded, UnsupportedModel
from .onnxsplit import LOCATION, Moved, split_model
from .rowwise import rows_mixed

__all__ = [
    "DEFAULT_DOMAINS",
    "MAX_STRING_TENSORS",
    "MAX_STRING_VALUE",
    "check_string_constants",
    "check_string_growth",
    "loaded_size",
    "VettedModel",
    "vet_model",
]

log = logging.getLogger("blindai.models")

DEFAULT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
MAX_STRING_VALUE = 1024
MAX_STRING_TENSORS = 16


@dataclass(frozen=True)
class VettedModel:
    """What vetting found a model to be: what onnxruntime loads, and what it holds once loaded."""

    # The graph with its large weights pointing into the upload (onnxsplit); None: the upload itself.
    skeleton: bytes | None
    held: int  # bytes held once loaded, one session (the store's limits count this)
    per_session: int  # of which each session holds its own copy: constants folded, sparse tensors made dense
    # Why requests to it must never share a dynamic batch (rowwise.py), or None: each output row
    # provably depends on its own input row alone.
    rows_mixed: str | None = "not analysed"


def vet_model(
    data: bytes | memoryview,
    allowed_domains: Iterable[str] = DEFAULT_DOMAINS,
    max_bytes: int | None = None,
    *,
    rows: bool = False,
) -> VettedModel:
    """Refuse anything that is not a self-contained ONNX model of allowed operators.

    External data is refused whatever its path: a model must never make the server open a
    file, so the check walks every graph, subgraph and tensor attribute, not only the
    top-level initializers. The only external references allowed are the ones `onnxsplit`
    wrote into the skeleton (exactly: its location, offsets and lengths), so the bytes vetted
    here are the bytes onnxruntime loads. ``data`` may be a read-only view of the model file.
    With ``rows``, the graph is also analysed for rows of a batch that mix (``VettedModel.rows_mixed``).
    """
    import onnx
    from google.protobuf.message import DecodeError

    if bytes(data[4:8]) == _ORT_FORMAT_MARK:
        # onnxruntime reads such bytes as its own flatbuffer format, whatever protobuf makes of them.
        raise UnsupportedModel(
            "the upload is in onnxruntime's ORT format (bytes 4-8 'ORTM'): only ONNX models are accepted"
        )
    split = split_model(data)
    graph_bytes = data if split.skeleton is None else split.skeleton
    model = onnx.ModelProto()
    try:
        decoded = model.ParseFromString(graph_bytes)
    except (DecodeError, ValueError, RuntimeError, TypeError) as exc:
        raise UnsupportedModel("the upload is not an ONNX model (protobuf parse failed)") from exc
    if decoded is not None and decoded != len(graph_bytes):
        raise UnsupportedModel("the upload is not an ONNX model (protobuf parse stopped early)")
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise UnsupportedModel("the upload is not an ONNX model (no graph)")
    if sum(1 for o in model.opset_import if _domain(o.domain) == "") > 1:
        # "" and "ai.onnx" name one domain: which of two versions onnxruntime applies is its choice, and
        # checks that read the version (rowwise.py) could read the other one.
        raise UnsupportedModel("the model imports the default operator domain ('' / 'ai.onnx') more than once")
    _check_unique_names(model.graph)
    allowed = {_domain(d) for d in allowed_domains}
    functions = _check_functions(model)
    for opset in model.opset_import:
        if _domain(opset.domain) not in allowed and opset.domain not in {d for d, _ in functions}:
            raise UnsupportedModel(
                f"operator domain {opset.domain!r} is not allowed (allowed: {sorted(d or 'ai.onnx' for d in allowed)})"
            )
    moved = {m.index: m for m in split.moved}
    for i, init in enumerate(model.graph.initializer):
        if i in moved:
            _check_moved(init, moved[i])
    # Every message at any depth, not a list of known places (a list missed functions' default
    # attributes, whose external data onnxruntime read): graphs, functions and their defaults,
    # subgraphs, training graphs, sparse tensors. Only the moved top-level initializers may (and
    # must, exactly) point outside, into the upload: checked above.
    sparse: list[Any] = []
    for msg in walk(model, skip_initializers=frozenset(moved)):
        kind = msg.DESCRIPTOR.full_name
        if (
            kind == "onnx.NodeProto"
            and _domain(msg.domain) not in allowed
            and (msg.domain, msg.op_type) not in functions
        ):
            own = any(msg.domain == d for d, _ in functions)
            raise UnsupportedModel(
                f"operator {msg.op_type!r} of domain {msg.domain!r} is not allowed"
                + (" (that domain holds only the model's own functions)" if own else "")
            )
        if kind == "onnx.NodeProto" and _domain(msg.domain) == "" and msg.op_type == "BatchNormalization":
            _check_batch_norm(msg)
        if (
            kind == "onnx.NodeProto"
            and _domain(msg.domain) == ""
            and msg.op_type == "Constant"
            and len(msg.attribute) != 1
        ):
            # onnxruntime takes the first of several values and a check could read another (a red
            # team hid a reduction over the batch that way).
            raise UnsupportedModel(f"Constant node {msg.name!r} must carry exactly one value attribute")
        if kind == "onnx.NodeProto" and _domain(msg.domain) == "" and msg.op_type in _UNBOUNDED_KERNELS:
            raise UnsupportedModel(
                f"operator {msg.op_type!r} is refused: {_UNBOUNDED_KERNELS[msg.op_type]} (see docs/models.md)"
            )
        if kind == "onnx.SparseTensorProto":
            sparse.append(msg)
        if kind == "onnx.TensorProto" and (msg.data_location == onnx.TensorProto.EXTERNAL or len(msg.external_data)):
            raise UnsupportedModel(
                f"tensor {msg.name!r} uses external data; only self-contained models are accepted "
                "(save with onnx.save_model(..., save_as_external_data=False))"
            )
    # On the model as parsed: the checks below fold constants into it with onnx's reference
    # evaluator, whose results can differ from onnxruntime's (a red team used one such Slice).
    mixed = rows_mixed(model) if rows else "dynamic batching is off (not analysed)"
    _check_expansion(model)
    try:
        check_string_growth(model)
        loaded = loaded_size(model, len(data), sparse)
    except (UnsupportedModel, LimitExceeded):
        raise
    except Exception as exc:  # a model shaped so that a check itself fails: refused, never a 500
        log.info("vetting failed on an uploaded model: %s: %s", type(exc).__name__, exc)
        raise UnsupportedModel(f"the model could not be checked ({type(exc).__name__}); it is refused") from None
    if max_bytes is not None and loaded > max_bytes:
        raise LimitExceeded(
            f"the model holds {loaded} bytes once onnxruntime has loaded it (its {len(data)} bytes, sparse tensors "
            f"made dense, constants folded at load): above the limit of {max_bytes} bytes (--max-model-bytes)"
        )
    return VettedModel(split.skeleton, loaded, loaded - len(data), mixed)


def _check_unique_names(graph: Any) -> None:
    """Every value of the top-level graph is defined once: initializers, sparse initializers and
    node outputs. For a name given twice onnxruntime keeps whichever it meets last (a sparse
    initializer over a dense one, found by a red team), so a check that read the other would check
    a tensor that never runs."""
    seen: set[str] = set()
    names = [t.name for t in graph.initializer]
    names += [t.values.name for t in graph.sparse_initializer]
    names += [o for node in graph.node for o in node.output if o]
    for name in names:
        if name in seen:
            raise UnsupportedModel(f"the value {name!r} is defined more than once in the graph")
        seen.add(name)


def _check_batch_norm(node: Any) -> None:
    """BatchNormalization in training mode (more than one output before opset 14, ``training_mode``
    from 14) makes onnxruntime update the running statistics it keeps between runs: one caller's
    input would shift every later caller's answer (a red team read a victim's input back from it)."""
    from onnx import helper

    training = any(a.name == "training_mode" and helper.get_attribute_value(a) for a in node.attribute)
    if training or sum(1 for o in node.output if o) > 1:
        raise UnsupportedModel(
            "BatchNormalization in training mode is refused: onnxruntime would carry statistics from one "
            "request to the next (export the model in inference mode: model.eval())"
        )


# Operators whose onnxruntime kernels allocate, outside the capped arena, memory that follows the
# *values* of a request's inputs: one request could take the server's memory.
_UNBOUNDED_KERNELS = {
    "RoiAlign": "onnxruntime's kernel sizes a buffer outside the memory limit from the squared size of "
    "each region of interest in the request",
}
_ORT_FORMAT_MARK = b"ORTM"  # onnxruntime's flatbuffer model format: its file identifier, at bytes 4..8


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name  # two names of the default ONNX domain


@functools.cache
def _builtin_domains() -> frozenset[str]:
    """Domains in which onnx defines or onnxruntime implements operators (its kernels' own list,
    plus the ones this onnxruntime build might leave out)."""
    import onnx

    found = {_domain(s.domain) for s in onnx.defs.get_all_schemas()}  # (every version's domain is the latest's)
    found |= {"", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"}
    found |= {"com.ms.internal.nhwc", "ai.onnx.training", "ai.onnx.preview.training", "org.pytorch.aten"}
    try:
        from onnxruntime.capi import _pybind_state

        found |= {_domain(k.domain) for k in _pybind_state.get_all_opkernel_def()}
    except (ImportError, AttributeError):  # the fixed list above stands
        pass
    return frozenset(found)


def _check_functions(model: Any) -> frozenset[tuple[str, str]]:
    """The model's own functions, as (domain, name), none in a domain of built-in operators.

    onnxruntime runs its own kernel where a function shares a built-in operator's name, while
    onnx's inliner (through which vetting type-checks the model) puts the function's body there:
    the model checked would not be the model run. A function in such a domain, even unused, also
    used to open that whole domain past the operator allowlist.
    """
    for f in model.functions:  # (the lists are built on first need: ~15 MB while they are)
        if _domain(f.domain) in _builtin_domains():
            raise UnsupportedModel(
                f"model-local function {f.name!r} is in domain {f.domain or 'ai.onnx'!r}, which has built-in "
                "operators; put the model's own functions in a domain of their own"
            )
    return frozenset((f.domain, f.name) for f in model.functions)


# What vetting inspects; a walk descends only into messages that are, or can hold, one of these.
_INSPECTED = frozenset({"onnx.TensorProto", "onnx.SparseTensorProto", "onnx.NodeProto", "onnx.AttributeProto"})


def _children(descriptor: Any) -> list[Any]:
    return [f.message_type for f in descriptor.fields if f.message_type is not None]


@functools.cache
def _holding(root: Any) -> frozenset[str]:
    """Message types under ``root`` that are, or can hold at any depth, an inspected type: found
    from the descriptors (a future onnx that puts a tensor somewhere new is walked there too)."""
    found: dict[str, Any] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        if d.full_name not in found:
            found[d.full_name] = d
            stack.extend(_children(d))
    holding = set(_INSPECTED) & set(found)
    changed = True
    while changed:
        changed = False
        for name, d in found.items():
            if name not in holding and any(c.full_name in holding for c in _children(d)):
                holding.add(name)
                changed = True
    return frozenset(holding)


@functools.cache
def _message_fields(descriptor: Any, root: Any) -> tuple[tuple[str, bool], ...]:
    """(name, repeated) of a message type's fields that can lead to an inspected type."""
    holding = _holding(root)
    out = []
    for f in descriptor.fields:
        if f.message_type is not None and f.message_type.full_name in holding:
            repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == 3  # protobuf < 5.28
            out.append((f.name, bool(repeated)))
    return tuple(out)


def walk(model: Any, skip_initializers: frozenset[int] = frozenset()) -> Iterator[Any]:
    """Every tensor, sparse tensor, node and attribute in ``model`` at any depth (and the messages
    on the way to them: graphs, functions, training info, the model itself), but the top-level
    graph's initializers at the indices in ``skip_initializers``. Not a list of known places: the
    fields to follow come from the protobuf descriptors. Scalar fields are never read, so a
    tensor's data is never touched (nor copied)."""
    root = model.DESCRIPTOR
    stack: list[tuple[Any, bool]] = [(model, False)]
    while stack:
        msg, top_graph = stack.pop()
        yield msg
        is_model = msg is model
        for name, repeated in _message_fields(msg.DESCRIPTOR, root):
            if repeated:
                items = getattr(msg, name)
                if top_graph and name == "initializer":
                    stack.extend((m, False) for i, m in enumerate(items) if i not in skip_initializers)
                else:
                    stack.extend((m, False) for m in items)
            elif msg.HasField(name):
                stack.append((getattr(msg, name), is_model and name == "graph"))


_NO_EXTERNAL_TYPES = (0, 8)  # UNDEFINED, STRING: onnxruntime reads neither from external data
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _check_moved(t: Any, moved: Moved) -> None:
    """An initializer `onnxsplit` moved must say exactly what it wrote, and hold nothing else."""
    import onnx

    entries = [(e.key, e.value) for e in t.external_data]
    expected = [("location", LOCATION), ("offset", str(moved.offset)), ("length", str(moved.length))]
    if t.data_location != onnx.TensorProto.EXTERNAL or entries != expected:
        raise UnsupportedModel(f"initializer {t.name!r}: its data could not be located in the upload")
    if t.data_type in _NO_EXTERNAL_TYPES or any(len(getattr(t, f)) for f in _DATA_FIELDS):
        raise UnsupportedModel(
            f"initializer {t.name!r} has raw_data of type {t.data_type} or data in two fields at once "
            "(ONNX allows exactly one)"
        )


# Operators onnxruntime never folds at load (their result differs per run).
_NOT_FOLDED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})
_UNKNOWN_ITEMSIZE = 8


def _itemsize(data_type: int) -> int:
    import onnx

    try:
        return max(int(onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize), 1)
    except (KeyError, ValueError, TypeError):
        return _UNKNOWN_ITEMSIZE  # strings and exotic types: their own checks bound them


def loaded_size(model: Any, file_bytes: int, sparse: list[Any]) -> int:
    """Bytes the model holds once onnxruntime has loaded it, which its file size can hide.

    onnxruntime makes every sparse tensor dense, and folds every node whose inputs are all
    constants, keeping the results for the session's life, outside any arena or limit: a
    146-byte model whose ConstantOfShape of a [67108864] shape fed an Add held 266 MiB per
    session, and a 120-byte sparse [67108864] constant as much. Both therefore count as model
    bytes. Folded sizes come from ONNX shape inference, which reads shapes held in initializers;
    without data propagation, which itself made a 64M-element ConstantOfShape cost 15 GB. A
    constant-only node whose size cannot be inferred is refused, as its cost is unknown until
    it is paid (exporters fold such nodes themselves: the demo, benchmark and Whisper models
    have none).
    """
    import onnx
    from onnx import shape_inference

    total = file_bytes
    for sp in sparse:
        elements = 1
        for d in sp.dims:
            elements *= max(int(d), 0)
        total += elements * _itemsize(sp.values.data_type)
    # Shape inference copies the whole model; weights only matter through their dims, which stay
    # (the caller is done with ``model``): 1.8 s -> 0.05 s on a 377 MB wav2vec2.
    # Initializers onnxsplit moved out point into the upload: onnx would try to read them as files.
    for init in model.graph.initializer:
        if init.ByteSize() > 4096 or init.data_location == onnx.TensorProto.EXTERNAL:
            for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                init.ClearField(name)
            init.ClearField("external_data")
            init.ClearField("data_location")
    # Sizes come from inference alone: a shape the model declares for a value (value_info, an
    # output) could understate what onnxruntime, which infers for itself, folds; and constants
    # inside functions are folded once onnxruntime has inlined them.
    for msg in walk(model):
        if msg.DESCRIPTOR.full_name in ("onnx.GraphProto", "onnx.FunctionProto"):
            del msg.value_info[:]
            for out in getattr(msg, "output", []):
                if not isinstance(out, str) and out.type.HasField("tensor_type"):
                    out.type.tensor_type.ClearField("shape")
    model = inlined(model)
    shapes: dict[str, Any] = {}
    values: dict[str, Any] = {}  # small constants whose values are known: shape arithmetic
    versions = {o.domain: int(o.version) for o in model.opset_import}

    def folded(g: Any, outer: frozenset[str]) -> int:
        for v in [*g.value_info, *g.output, *g.input]:
            shapes.setdefault(v.name, v.type)
        const = set(outer) | {t.name for t in g.initializer} | {sp.values.name for sp in g.sparse_initializer}
        for t in g.initializer:
            _remember(values, t)
        size = 0
        for node in g.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else []:
                    size += folded(sub, frozenset(const))
                for sub in attr.graphs:
                    size += folded(sub, frozenset(const))
            default = node.domain in ("", "ai.onnx")
            if node.op_type == "Constant" and default:
                const.update(node.output)  # its value is in the file (or a sparse tensor above)
                _evaluate(node, values, versions)
                continue
            if node.op_type in ("Shape", "Size") and default and len(node.input):
                of = shapes.get(node.input[0])
                if _fixed(of):
                    const.update(o for o in node.output if o)  # onnxruntime folds these too: a few integers
                    _shape_value(node, of, values)
                    continue
                if not _dynamic(of):
                    # onnx could not infer this shape; onnxruntime (contrib operators, its own
                    # inference) may know it fixed and fold: a constant of unknown value.
                    const.update(o for o in node.output if o)
                    continue
            # onnxruntime replaces an If whose condition is constant by the branch taken, then folds on.
            const_if = node.op_type == "If" and default and len(node.input) and node.input[0] in const
            if not const_if and (
                node.op_type in _NOT_FOLDED or any(a.HasField("g") or len(a.graphs) for a in node.attribute)
            ):
                continue
            if not all(not i or i in const for i in node.input) and not const_if:
                continue
            const.update(o for o in node.output if o)
            computed = _evaluate(node, values, versions) if default else None
            for out in filter(None, node.output):
                tp = shapes.get(out)
                tensor = tp.tensor_type if tp is not None and tp.HasField("tensor_type") else None
                dims = list(tensor.shape.dim) if tensor is not None and tensor.HasField("shape") else None
                if dims is not None and all(d.HasField("dim_value") for d in dims):
                    elements = 1
                    for d in dims:
                        elements *= max(int(d.dim_value), 0)
                else:
                    elements = computed.get(out, -1) if computed is not None else -1
                if elements < 0:
                    raise UnsupportedModel(
                        f"node {node.name or node.op_type!r} ({node.op_type}) depends only on constants, so "
                        "onnxruntime computes it when the model loads, outside the server's memory limits, and "
                        f"the size of its output {out!r} cannot be inferred: fold constants before uploading "
                        "(torch.onnx.export does by default; or onnxsim)"
                    )
                size += elements * _itemsize(tensor.elem_type if tensor is not None else 0)
        return size

    # onnxruntime folds, then infers again with what it folded, and folds on (a Reshape to a shape
    # it computed becomes fixed, and its Shape a constant): so does this, a few rounds, each value
    # computed above becoming an initializer for the next round's inference.
    injected = 0
    for _ in range(_ROUNDS):
        shapes.clear()
        values.clear()
        try:
            inferred = shape_inference.infer_shapes(model, data_prop=False)
        except Exception:  # onnx raises several types on models onnxruntime may still load
            inferred = model
        size = folded(inferred.graph, frozenset())
        known = {o for node in model.graph.node for o in node.output if o in values}
        done = [n for n in model.graph.node if n.output and all(o in known for o in n.output if o)]
        # Another round can only learn something where a computed value meets a runtime input
        # (a Reshape of an input to a computed shape): otherwise this round's count stands.
        if not any(
            any(i in known for i in n.input) and any(i and i not in values for i in n.input) for n in model.graph.node
        ):
            break
        for node in done:
            model.graph.node.remove(node)
            for out in filter(None, node.output):
                model.graph.initializer.append(onnx.numpy_helper.from_array(values[out], out))
                injected += int(values[out].nbytes)
    return total + size + injected


_ROUNDS = 4  # of folding and inferring again (real models need one or two)
_SMALL = 1024  # elements: constants this small have their values computed, for the sizes they decide
# Operators whose output sizes follow from their inputs' values: computed, never materialised.
_SIZE_OPS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range"})
# The only operators evaluated: shape arithmetic, whose outputs are bounded by their inputs (each
# checked before it runs). Anything else (Pad, OneHot, RoiAlign, ...: onnx's reference kernels are
# Python, and their outputs can follow their inputs' values) is sized from inference or refused.
_SAME_SIZE = frozenset({"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Neg", "Abs",
                        "Not", "Floor", "Ceil", "Sign", "Reciprocal", "Sqrt", "Relu"})  # fmt: skip
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Min", "Max", "Equal", "Less", "Greater",
                        "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "Sum"})  # fmt: skip
_SHRINKING = frozenset({"Slice", "ReduceSum", "ReduceProd", "ReduceMin", "ReduceMax", "ReduceMean", "ArgMax",
                        "ArgMin", "Gather", "GatherElements", "Concat", "Shape", "Size", "Constant"})  # fmt: skip


def _remember(values: dict[str, Any], t: Any) -> None:
    """A small initializer's value (large ones had their data cleared, and are not needed)."""
    from onnx import numpy_helper

    elements = 1
    for d in t.dims:
        elements *= max(int(d), 0)
    if elements <= _SMALL and t.data_type != _STRING:
        with contextlib.suppress(Exception):  # malformed data: its value stays unknown
            values[t.name] = numpy_helper.to_array(t)


def _shape_value(node: Any, tp: Any, values: dict[str, Any]) -> None:
    import numpy as np

    if not node.output or not node.output[0]:
        return

    dims = [int(d.dim_value) for d in tp.tensor_type.shape.dim]
    if node.op_type == "Size":
        values[node.output[0]] = np.array(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)
        return
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (max(0, min(rank, x + rank if x < 0 else x)) for x in (start, end))
    values[node.output[0]] = np.array(dims[start:end], dtype=np.int64)


def _predicted(node: Any, values: dict[str, Any]) -> int | None:
    """Elements of a size operator's output from its inputs' values, without computing it."""
    import numpy as np

    ins = [values.get(i) for i in node.input]
    try:
        if node.op_type == "ConstantOfShape" and ins and ins[0] is not None:
            return int(np.prod(ins[0], dtype=np.int64)) if ins[0].size else 1
        if node.op_type == "Expand" and len(ins) == 2 and ins[0] is not None and ins[1] is not None:
            return int(np.prod(np.broadcast_shapes(ins[0].shape, tuple(int(x) for x in ins[1])), dtype=np.int64))
        if node.op_type == "Tile" and len(ins) == 2 and ins[0] is not None and ins[1] is not None:
            return int(ins[0].size * np.prod(ins[1], dtype=np.int64))
        if node.op_type == "Range" and len(ins) == 3 and all(x is not None for x in ins):
            start, limit, delta = (float(x) for x in ins)  # type: ignore[arg-type]
            return max(int(np.ceil((limit - start) / delta)), 0) if delta else None
    except (ValueError, TypeError, OverflowError):
        return None
    return None


def _bound(node: Any, values: dict[str, Any]) -> int:
    """At most how many elements the node's output has (known-valued inputs only); huge if unknown."""
    import numpy as np

    ins = [values[i] for i in node.input if i]
    sizes = [int(v.size) for v in ins]
    try:
        if node.op_type in _SAME_SIZE or (node.op_type in _SHRINKING and node.op_type not in ("Gather", "Concat")):
            return max(sizes, default=1)
        if node.op_type == "Concat":
            return sum(sizes)
        if node.op_type == "Gather" and len(ins) == 2:
            return int(ins[1].size) * max(int(ins[0].size), 1)
        if node.op_type in _BROADCAST:
            return int(np.prod(np.broadcast_shapes(*(v.shape for v in ins)), dtype=np.int64))
    except (ValueError, TypeError):
        pass
    return 1 << 62


def _evaluate(node: Any, values: dict[str, Any], versions: dict[str, int]) -> dict[str, int] | None:
    """Elements of a constant node's outputs where its inputs' values are known and small: computed
    by onnx's reference evaluator when the outputs are small too (their values then known for the
    next nodes), else predicted for size operators. None where nothing is known."""
    import numpy as np
    import onnx
    from onnx import helper

    if any(i and i not in values for i in node.input) or not node.output or not node.output[0]:
        return None
    if node.op_type in _SIZE_OPS:
        predicted = _predicted(node, values)
        if predicted is None or predicted > _SMALL:
            return None if predicted is None else {node.output[0]: predicted}
    elif _bound(node, values) > _SMALL:
        return None
    feeds = {i: values[i] for i in node.input if i}
    if any(v.size > _SMALL or v.dtype.kind not in "biuf" for v in feeds.values()) or node.ByteSize() > 65536:
        return None  # (a large Constant: its size is inferred, its value is not needed)
    try:
        from onnx.reference import ReferenceEvaluator

        graph = helper.make_graph(
            [node],
            "one",
            [
                helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for n, v in feeds.items()
            ],
            [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
        )
        opsets = [helper.make_opsetid(d, v) for d, v in versions.items()]
        outs = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, feeds)
    except Exception:  # an operator the evaluator lacks, or inputs it refuses: unknown
        return None
    sizes = {}
    for name, value in zip([o for o in node.output if o], outs, strict=False):
        arr = np.asarray(value)
        sizes[name] = int(arr.size)
        if arr.size <= _SMALL and arr.dtype.kind in "biuf":
            values[name] = arr
    return sizes


def _dynamic(tp: Any) -> bool:
    """A tensor type onnx inferred with a rank, every dimension a number or a named (runtime) one:
    onnxruntime cannot know more of it at load than onnx did."""
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") or d.HasField("dim_param") for d in tp.tensor_type.shape.dim)


def _fixed(tp: Any) -> bool:
    """A tensor type whose every dimension is a number (onnxruntime folds its Shape at load)."""
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") for d in tp.tensor_type.shape.dim)


# Operators that may produce a string tensor: each output element is an input element (moved,
# selected, normalised) or a model constant, so string memory never exceeds what came in plus
# what the model holds. Anything else producing strings (Expand, Tile, Gather, Where, Pad,
# Concat, Resize, loops, sequences, Cast to string, ...) could repeat one string as often as a
# numeric input says, in memory onnxruntime keeps outside its capped arena: refused.
STRING_SAFE_OPS = frozenset(
    {
        "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split",
        "Compress", "Unique", "StringNormalizer", "Constant", "LabelEncoder", "CategoryMapper",
    }
)  # fmt: skip
# Even the safe operators copy: a string tensor fanned out to many Identity nodes is held once
# per copy, and a lookup writes one label per input element. So every string constant of a model
# (labels, default strings, Constant values, string tensors) is at most MAX_STRING_VALUE bytes,
# all of them together at most MAX_STRING_CONSTANTS, and a graph makes at most MAX_STRING_TENSORS
# string tensors: a run holds at most that many times its input strings (or 1 KiB per element).
MAX_STRING_CONSTANTS = 4 << 20
_STRING = 8  # onnx.TensorProto.STRING
_NOT_STRING = -2  # a tensor known not to hold strings although its exact type was not inferred
_SAFE_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def _has_string(tp: Any, string: int = _STRING) -> bool:
    """A type that is, or holds (sequence, map, optional), a string tensor."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return bool(tp.tensor_type.elem_type == string)
    if kind == "sequence_type":
        return _has_string(tp.sequence_type.elem_type, string)
    if kind == "optional_type":
        return _has_string(tp.optional_type.elem_type, string)
    if kind == "map_type":
        return bool(tp.map_type.key_type == string) or _has_string(tp.map_type.value_type, string)
    return False


def _kind(tp: Any) -> int:
    """_STRING, 0 (not known), or a code that is not a string type."""
    if _has_string(tp):
        return _STRING
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return int(tp.tensor_type.elem_type)  # 0 when the elem type is unset
    return _NOT_STRING if kind in ("sequence_type", "optional_type", "map_type", "sparse_tensor_type") else 0


def check_string_constants(model: Any) -> None:
    """Every string a model holds (attribute values, string tensors) is short, and all of them bounded."""
    total = 0

    def check(values: Iterable[bytes], where: str) -> None:
        nonlocal total
        for v in values:
            if len(v) > MAX_STRING_VALUE:
                raise UnsupportedModel(
                    f"{where} holds a string of {len(v)} bytes; string constants are limited to "
                    f"{MAX_STRING_VALUE} bytes each (see docs/models.md, string tensors)"
                )
            total += len(v)
        if total > MAX_STRING_CONSTANTS:
            raise UnsupportedModel(
                f"the model's string constants exceed {MAX_STRING_CONSTANTS} bytes in all (see docs/models.md)"
            )

    # Every tensor and attribute at any depth (functions' default attributes and sparse tensors
    # too), training graphs included: onnxruntime ignores them today.
    for msg in walk(model):
        kind = msg.DESCRIPTOR.full_name
        if kind == "onnx.TensorProto":
            check(msg.string_data, f"tensor {msg.name!r}")
        elif kind == "onnx.AttributeProto":
            check([msg.s, *msg.strings], f"attribute {msg.name!r}")


def _skeleton(model: Any) -> Any:
    """The model without its weights, functions inlined: what type inference needs, at little cost.

    Initializers become typed graph inputs (types flow the same; only constant-folded shapes are
    lost), so vetting a 2 GB model does not copy 2 GB through onnx's C++ bindings several times.
    """
    import onnx

    skel = onnx.ModelProto()
    skel.ir_version = model.ir_version
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    g, src = skel.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    declared = {vi.name for vi in src.input}
    for init in [*src.initializer, *(sp.values for sp in src.sparse_initializer)]:
        if init.name not in declared:
            declared.add(init.name)
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return inlined(skel)


MAX_INLINED_NODES = 200_000  # nodes of a model once its local functions are inlined (Whisper: 10k)


def _check_expansion(model: Any) -> None:
    """Refuse a model whose local functions, inlined, would make more than `MAX_INLINED_NODES`
    nodes, counted without inlining: nested calls grow exponentially (1.5 KB of functions calling
    functions ten times a level cost vetting 46 s and 1.8 GB, and onnxruntime minutes), and both
    vetting and onnxruntime inline them. Calls in a cycle are refused too."""
    if not model.functions:
        return
    local = {(f.domain, f.name): f for f in model.functions}
    sizes: dict[tuple[str, str], int] = {}

    def count(body: Any, within: frozenset[tuple[str, str]]) -> int:
        total = 0
        for msg in walk(body):
            if msg.DESCRIPTOR.full_name != "onnx.NodeProto":
                continue
            key = (msg.domain, msg.op_type)
            if key not in local:
                total += 1
            elif key in within:
                raise UnsupportedModel(f"model-local function {msg.op_type!r} calls itself")
            else:
                if key not in sizes:
                    sizes[key] = count(local[key], within | {key})
                total += sizes[key]
            if total > MAX_INLINED_NODES:
                raise LimitExceeded(
                    f"the model's local functions, inlined, make more than {MAX_INLINED_NODES} nodes "
                    "(onnxruntime inlines them as vetting does): flatten or fold the model before uploading"
                )
        return total

    count(model.graph, frozenset())


def inlined(model: Any) -> Any:
    """``model`` with its local functions inlined into its graph, as onnxruntime runs it. Refused
    where onnx's inliner fails or leaves a call in place (it does, silently, for a function whose
    operator set versions differ from the model's): a body the checks cannot see is never run."""
    if not model.functions:
        return model
    from onnx import inliner

    try:
        out = inliner.inline_local_functions(model)
    except Exception as exc:  # onnx raises several types
        raise UnsupportedModel(f"the model's local functions cannot be inlined for checking: {exc}") from None
    local = {(f.domain, f.name) for f in model.functions}
    for msg in walk(out.graph):
        if msg.DESCRIPTOR.full_name == "onnx.NodeProto" and (msg.domain, msg.op_type) in local:
            raise UnsupportedModel(
                f"model-local function {msg.op_type!r} (domain {msg.domain!r}) cannot be inlined for checking: "
                "give it the model's operator set versions"
            )
    return out


def _infer(skel: Any) -> Any:
    """ONNX type inference, strict where the model allows it; best effort otherwise (unknowns refused)."""
    import onnx

    for strict in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(skel, check_type=strict, strict_mode=strict)
        except Exception as exc:  # onnx raises InferenceError, ValidationError, RuntimeError...
            log.debug("type inference (strict=%s) failed: %s", strict, exc)
    return skel


_ORT_SCHEMAS: dict[tuple[str, str], list[Any]] | None = None


def _schema(op: str, domain: str, version: int) -> Any:
    """The operator's schema (ONNX's own, else onnxruntime's contrib ones), or None."""
    global _ORT_SCHEMAS
    import onnx

    try:
        return onnx.defs.get_schema(op, version, domain)
    except Exception:  # SchemaError: not an ONNX operator, perhaps an onnxruntime one
        pass
    if _ORT_SCHEMAS is None:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        found: dict[tuple[str, str], list[Any]] = {}
        for sch in ort_state.get_all_operator_schema():
            found.setdefault((sch.domain, sch.name), []).append(sch)
        _ORT_SCHEMAS = found
    candidates = sorted(_ORT_SCHEMAS.get((domain, op), []), key=lambda sch: int(sch.since_version))
    usable = [sch for sch in candidates if int(sch.since_version) <= version] or candidates[-1:]
    return usable[-1] if usable else None


def _formal(params: list[Any], i: int) -> Any:
    if i < len(params):
        return params[i]
    return params[-1] if params else None  # a variadic last parameter repeats


def _type_str(param: Any) -> str:
    return str(getattr(param, "type_str", None) or getattr(param, "typeStr", ""))


def _derive(node: Any, i: int, schema: Any, types: dict[str, int]) -> int:
    """A type inference could not give: _NOT_STRING when the schema rules strings out, else 0."""
    if node.domain in _SAFE_DOMAINS and node.op_type in ("Constant", "Cast") and i == 0:
        # Their type is an attribute: read it, so a model whose inference failed is not refused for them.
        for attr in node.attribute:
            if attr.ref_attr_name:
                continue
            if attr.name == "to":
                return _STRING if attr.i == _STRING else _NOT_STRING
            if attr.name in ("value_string", "value_strings"):
                return _STRING
            if attr.name == "value":
                return _STRING if attr.t.data_type == _STRING else _NOT_STRING
            if attr.name in ("value_float", "value_floats", "value_int", "value_ints", "sparse_value"):
                return _STRING if attr.sparse_tensor.values.data_type == _STRING else _NOT_STRING
    if schema is None:
        return 0
    out = _formal(list(schema.outputs), i)
    if out is None:
        return 0
    param = _type_str(out)
    allowed = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}.get(param, [param])
    if not any("string" in a for a in allowed):
        return _NOT_STRING
    # Same type parameter as some inputs (Gather's T, Expand's T...): strings only if one of them may be.
    tied = [
        types.get(name, 0)
        for j, name in enumerate(node.input)
        if name and (p := _formal(list(schema.inputs), j)) is not None and _type_str(p) == param
    ]
    if tied and all(t not in (_STRING, 0) for t in tied):
        return _NOT_STRING
    return _STRING if _STRING in tied else 0


def check_string_growth(model: Any) -> None:
    """Refuse graphs whose string tensors can grow beyond their inputs (see STRING_SAFE_OPS). Fails closed.

    Runs type inference on every model (declarations can omit strings: Constant value_string,
    CastLike, a Cast inside a function), and refuses any tensor that is a string, or whose type
    neither inference nor the operator's schema can tell, made by an operator not on the list.
    """
    check_string_constants(model)
    inferred = _infer(_skeleton(model))
    versions = {o.domain or "": int(o.version) for o in inferred.opset_import}
    versions.setdefault("ai.onnx", versions.get("", 1))
    made: list[str] = []

    def walk(g: Any, outer: dict[str, int]) -> None:
        types = dict(outer)
        for vi in [*g.input, *g.value_info, *g.output]:
            kind = _kind(vi.type)
            if kind or vi.name not in types:
                types[vi.name] = kind
        for init in g.initializer:
            types[init.name] = int(init.data_type)
        for node in g.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else []:
                    walk(sub, types)
                for sub in attr.graphs:
                    walk(sub, types)
            domain = node.domain or ""
            schema = _schema(node.op_type, domain, versions.get(domain, 1))
            for i, out in enumerate(node.output):
                if not out:
                    continue
                if types.get(out, 0) == 0:
                    types[out] = _derive(node, i, schema, types)
                kind = types[out]
                if kind not in (_STRING, 0):
                    continue
                if node.op_type in STRING_SAFE_OPS and domain in _SAFE_DOMAINS:
                    made.append(out)
                    continue
                what = "a string tensor" if kind == _STRING else "a tensor whose type cannot be inferred"
                raise UnsupportedModel(
                    f"operator {node.op_type!r} makes {what} ({out!r}): string tensors live outside the "
                    f"inference memory cap, so only operators that cannot make them grow may yield them "
                    f"({', '.join(sorted(STRING_SAFE_OPS))}); see docs/models.md"
                )
        # A graph input handed straight back as an output is copied too.
        made.extend(o.name for o in g.output if types.get(o.name) == _STRING and o.name in {i.name for i in g.input})

    walk(inferred.graph, {})
    if len(made) > MAX_STRING_TENSORS:
        raise UnsupportedModel(
            f"the model makes {len(made)} string tensors; at most {MAX_STRING_TENSORS} string tensors are "
            "accepted (each holds its own copy of the strings, outside the inference memory cap; see docs/models.md)"
        )
