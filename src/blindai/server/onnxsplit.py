"""An uploaded ONNX model split into its graph and its weights, so neither is copied to be read.

Why: the weights are most of a model (99.9% of a 360 MiB wav2vec2-base) and nothing in vetting
reads them, yet parsing the whole file with protobuf copies every one of them (a second copy
of the model, 0.3-0.5 s on the 2-core box), and ``onnxruntime.InferenceSession`` parses the
file once more, copying them again. Here the file is walked at the protobuf wire level down to
its top-level initializers only; each large ``raw_data`` field is cut out and replaced by an
external-data reference to its byte range in the upload itself, leaving a *skeleton* of a few
hundred kilobytes. Vetting parses the skeleton, and onnxruntime loads the same skeleton bytes
with the upload given as an in-memory external-data file
(``SessionOptions.add_external_initializers_from_files_in_memory``), copying each tensor once
from the upload's read-only mapping into its own memory. No path is ever opened.

What onnxruntime sees is therefore exactly what vetting parsed: the skeleton's bytes, plus
byte ranges of the sealed upload read as tensor data. The walk accepts only framing whose
protobuf meaning is unambiguous, so that the skeleton with each range put back parses to the
same model as the upload (a parser differential here would let a model's hash stand for one
graph while another is served): ``graph`` at most once (protobuf would merge repeats),
``raw_data`` at most once per initializer (protobuf keeps the last), only the four wire types
protobuf defines outside groups, and an initializer it moves carries no external-data fields
of its own. Anything else is refused with the reason, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedModel

__all__ = ["LOCATION", "MIN_MOVED", "Moved", "Split", "split_model"]

LOCATION = "blindai-upload"  # the in-memory external-data "file": never a path on any disk
MIN_MOVED = 4096  # smaller raw_data stays in the skeleton (its copy costs nothing)

# Field numbers of onnx.proto (ModelProto.graph, GraphProto.initializer, TensorProto.*).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Moved:
    """One initializer whose data now lives in the upload at ``offset`` (``index`` in the graph)."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True)
class Split:
    """The skeleton (a complete ONNX model whose moved initializers point into the upload) and
    which initializers were moved; no skeleton when nothing was (the upload is loaded as it is)."""

    skeleton: bytes | None
    moved: tuple[Moved, ...]


def _bad(why: str) -> UnsupportedModel:
    return UnsupportedModel(f"the upload is not an ONNX model (protobuf framing: {why})")


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(10):
        if pos + i >= end:
            raise _bad("truncated varint")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos + i + 1
        shift += 7
    raise _bad("varint longer than 10 bytes")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _encode_varint(field << 3 | wire)


def _fields(buf: memoryview, pos: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(field, wire type, field start, value start, field end) of each field in ``buf[pos:end]``."""
    out = []
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0 or key > 0xFFFFFFFF:
            raise _bad("field number 0 or out of range")
        if wire == _VARINT:
            _, pos = _varint(buf, pos, end)
            out.append((field, wire, start, start, pos))
            continue
        if wire == _LEN:
            length, value = _varint(buf, pos, end)
            if length > end - value:
                raise _bad("length beyond the end of its message")
            pos = value + length
            out.append((field, wire, start, value, pos))
            continue
        if wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise _bad("truncated fixed-width field")
            out.append((field, wire, start, start, pos))
            continue
        raise _bad(f"wire type {wire} (groups are not ONNX)")
    return out


def _entry(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    body = _key(1, _LEN) + _encode_varint(len(k)) + k + _key(2, _LEN) + _encode_varint(len(v)) + v
    return _key(_TENSOR_EXTERNAL_DATA, _LEN) + _encode_varint(len(body)) + body


def _tensor(buf: memoryview, start: int, end: int, min_moved: int) -> tuple[list[bytes | memoryview], int, int] | None:
    """The tensor re-encoded with its raw_data as an external reference, or None to keep it as is."""
    fields = _fields(buf, start, end)
    raw = [f for f in fields if f[0] == _TENSOR_RAW_DATA]
    if len(raw) > 1:
        raise _bad("an initializer has raw_data twice")
    if not raw or raw[0][4] - raw[0][3] < min_moved:
        return None
    _, wire, _, value, stop = raw[0]
    if wire != _LEN:
        raise _bad("an initializer's raw_data is not length-delimited")
    if any(f[0] in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION) for f in fields):
        raise _bad("an initializer has both raw_data and external-data fields")
    body: list[bytes | memoryview] = [buf[f[2] : f[4]] for f in fields if f[0] != _TENSOR_RAW_DATA]
    body += [_entry("location", LOCATION), _entry("offset", str(value)), _entry("length", str(stop - value))]
    body.append(_key(_TENSOR_DATA_LOCATION, _VARINT) + _encode_varint(_EXTERNAL))
    return body, value, stop - value


def _framed(field: int, pieces: list[bytes | memoryview]) -> list[bytes | memoryview]:
    return [_key(field, _LEN) + _encode_varint(sum(len(p) for p in pieces)), *pieces]


def split_model(data: bytes | memoryview, min_moved: int = MIN_MOVED) -> Split:
    """Cut the large raw_data of the top-level initializers out of a serialized ModelProto.

    Raises `UnsupportedModel` on framing that is not plain protobuf (see the module's
    docstring); the skeleton itself is parsed and vetted by the caller.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    top = _fields(buf, 0, len(buf))
    graphs = [f for f in top if f[0] == _MODEL_GRAPH]
    if len(graphs) > 1:
        raise _bad("the graph field appears twice")
    if not graphs:
        return Split(None, ())
    if graphs[0][1] != _LEN:
        raise _bad("the graph field is not length-delimited")
    _, _, gstart, gvalue, gend = graphs[0]
    # Pieces are views of the upload until the one join: a model whose bulk is not in initializers
    # (constants in nodes) costs one copy of that bulk, as parsing it did.
    graph: list[bytes | memoryview] = []
    moved: list[Moved] = []
    index = 0
    for field, wire, start, value, stop in _fields(buf, gvalue, gend):
        if field != _GRAPH_INITIALIZER:
            graph.append(buf[start:stop])
            continue
        if wire != _LEN:
            raise _bad("an initializer is not length-delimited")
        rewritten = _tensor(buf, value, stop, min_moved)
        if rewritten is None:
            graph.append(buf[start:stop])
        else:
            body, offset, length = rewritten
            graph += _framed(_GRAPH_INITIALIZER, body)
            moved.append(Moved(index, offset, length))
        index += 1
    if not moved:
        return Split(None, ())
    return Split(b"".join([buf[:gstart], *_framed(_MODEL_GRAPH, graph), buf[gend:]]), tuple(moved))
