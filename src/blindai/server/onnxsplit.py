"""An uploaded ONNX model split into its graph and its weights, so neither is copied to be read.

Why: the weights are most of a model (99.9% of a 360 MiB wav2vec2-base) and nothing in vetting
reads them, yet parsing the whole file with protobuf copies every one of them (a second copy
of the model, 0.3-0.5 s on the 2-core box), and ``onnxruntime.InferenceSession`` parses the
file once more, copying them again. Here the file is walked at the protobuf wire level down to
its top-level initializers only; each large ``raw_data`` field is cut out and replaced by an
external-data reference to its byte range in the upload itself, leaving a *skeleton* of a few
hundred kilobytes. Vetting parses the skeleton, and onnxruntime loads the same skeleton bytes
with its weights read from the upload: where the upload is a tmpfs file (modelfile.py),
onnxruntime maps each tensor from that file, named `LOCATION` in a private folder for the
session build, so the upload's pages are the weights; otherwise the upload is given as an
in-memory external-data file (``SessionOptions.add_external_initializers_from_files_in_memory``)
and each tensor is copied once from its read-only mapping. No other path is ever opened.

What onnxruntime sees is therefore exactly what vetting parsed: the skeleton's bytes, plus
byte ranges of the sealed upload read as tensor data. The walk accepts only framing whose
protobuf meaning is unambiguous, so that the skeleton with each range put back parses to the
same model as the upload (a parser differential here would let a model's hash stand for one
graph while another is served): ``graph`` at most once (protobuf would merge repeats),
``raw_data`` at most once per initializer (protobuf keeps the last), only the four wire types
protobuf defines outside groups, tags and lengths minimally encoded (protobuf refuses some
padded varints that the walker would otherwise have cut out, leaving a skeleton that parses),
and an initializer it moves carries no external-data fields of its own (an explicit
``data_location`` DEFAULT, which ``onnx.load`` writes after reading external data, is kept
before the EXTERNAL the walker appends, so protobuf's last-one-wins gives EXTERNAL). Anything else is
refused with the reason, never guessed at. The walk keeps nothing per field it skips, and
stops after `MAX_FIELDS` fields (at most about 0.4 s of Python on the 2-core box, for the
costliest fields): a model padded with more tiny fields is vetted and loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import UnsupportedModel

__all__ = ["LOCATION", "MAX_FIELDS", "MIN_MOVED", "Moved", "Split", "split_model"]

LOCATION = "blindai-upload"  # the moved weights' "file": in memory, or the upload named in a private tmpfs folder
MIN_MOVED = 4096  # smaller raw_data stays in the skeleton (its copy costs nothing)
# Fields walked at most (model, graph and initializer levels together): exported graphs have tens
# of thousands (a node, an input or a value_info is one field); beyond this the walk would cost
# more than it saves, so the model is vetted and loaded whole, as protobuf parses it.
MAX_FIELDS = 100_000

# Field numbers of onnx.proto (ModelProto.graph, GraphProto.initializer, TensorProto.*).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_DEFAULT, _EXTERNAL = 0, 1  # TensorProto.DataLocation

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_LEN = (1 << 31) - 1  # protobuf refuses longer fields
_TENSOR_WATCHED = frozenset({_TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION})


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


class _TooManyFields(Exception):
    """More fields than any exported model has: split nothing, vet and load the upload whole."""


def _bad(why: str) -> UnsupportedModel:
    return UnsupportedModel(f"the upload is not an ONNX model (protobuf framing: {why})")


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """A varint as protobuf reads it, refused unless minimally encoded: serializers never write
    padded varints, and the walker must not accept bytes protobuf refuses (a 6-byte tag, a
    10-byte length), since it re-encodes some of them."""
    b = buf[pos] if pos < end else -1
    if 0 <= b < 0x80:
        return b, pos + 1  # the common case, one byte
    value = shift = 0
    for i in range(10):
        if pos + i >= end:
            raise _bad("truncated varint")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and i > 0:
                raise _bad("a varint is not minimally encoded")
            if value >= 1 << 64:
                raise _bad("a varint above 64 bits")
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


class _Walker:
    """Walks fields, keeping only those asked for; every field walked counts against a budget,
    so a model padded with millions of tiny fields costs bounded time and no memory here
    (protobuf keeps such padding as one blob; a tuple per field made 16 MiB cost 2.6 GiB)."""

    def __init__(self, buf: memoryview, budget: int) -> None:
        self.buf = buf
        self.budget = budget

    def fields(self, pos: int, end: int, wanted: frozenset[int]) -> Iterator[tuple[int, int, int, int, int]]:
        """(field, wire type, field start, value start, field end) of each wanted field in
        ``buf[pos:end]``, as it is reached; every other field is checked and skipped."""
        buf = self.buf
        while pos < end:
            self.budget -= 1
            if self.budget < 0:
                raise _TooManyFields
            start = pos
            key, pos = _varint(buf, pos, end)
            field, wire = key >> 3, key & 7
            if field == 0 or key > 0xFFFFFFFF:
                raise _bad("field number 0 or out of range")
            value = pos
            if wire == _VARINT:
                _, pos = _varint(buf, pos, end)
            elif wire == _LEN:
                length, value = _varint(buf, pos, end)
                if length > end - value or length > _MAX_LEN:
                    raise _bad("length beyond the end of its message")
                pos = value + length
            elif wire in (_I64, _I32):
                pos += 8 if wire == _I64 else 4
                if pos > end:
                    raise _bad("truncated fixed-width field")
            else:
                raise _bad(f"wire type {wire} (groups are not ONNX)")
            if field in wanted:
                yield field, wire, start, value, pos


def _entry(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    body = _key(1, _LEN) + _encode_varint(len(k)) + k + _key(2, _LEN) + _encode_varint(len(v)) + v
    return _key(_TENSOR_EXTERNAL_DATA, _LEN) + _encode_varint(len(body)) + body


def _tensor(walk: _Walker, start: int, end: int, min_moved: int) -> tuple[list[bytes | memoryview], int, int] | None:
    """The tensor re-encoded with its raw_data as an external reference, or None to keep it as is."""
    buf = walk.buf
    raw: tuple[int, int, int, int, int] | None = None
    external = False
    for f in walk.fields(start, end, _TENSOR_WATCHED):
        if f[0] == _TENSOR_DATA_LOCATION and f[1] == _VARINT and buf[f[3] : f[4]] == bytes([_DEFAULT]):
            # An explicit data_location DEFAULT (onnx.load writes it into every tensor it read from
            # external data): kept as it is; the EXTERNAL appended after it is the value protobuf keeps.
            continue
        if f[0] != _TENSOR_RAW_DATA:
            external = True
        elif raw is not None:
            raise _bad("an initializer has raw_data twice")
        else:
            raw = f
    if raw is None or raw[4] - raw[3] < min_moved:
        return None
    _, wire, cut, value, stop = raw
    if wire != _LEN:
        raise _bad("an initializer's raw_data is not length-delimited")
    if external:
        raise _bad("an initializer has both raw_data and external-data fields")
    body: list[bytes | memoryview] = [buf[start:cut], buf[stop:end]]
    body += [_entry("location", LOCATION), _entry("offset", str(value)), _entry("length", str(stop - value))]
    body.append(_key(_TENSOR_DATA_LOCATION, _VARINT) + _encode_varint(_EXTERNAL))
    return body, value, stop - value


def _framed(field: int, pieces: list[bytes | memoryview]) -> list[bytes | memoryview]:
    return [_key(field, _LEN) + _encode_varint(sum(len(p) for p in pieces)), *pieces]


def split_model(data: bytes | memoryview, min_moved: int = MIN_MOVED, max_fields: int = MAX_FIELDS) -> Split:
    """Cut the large raw_data of the top-level initializers out of a serialized ModelProto.

    Raises `UnsupportedModel` on framing that is not plain protobuf (see the module's
    docstring); the skeleton itself is parsed and vetted by the caller. A model with more
    than ``max_fields`` fields at the levels walked is not split (vetted and loaded whole).
    """
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    walk = _Walker(buf, max_fields)
    try:
        return _split(walk, min_moved)
    except _TooManyFields:
        return Split(None, ())


def _split(walk: _Walker, min_moved: int) -> Split:
    buf = walk.buf
    found: tuple[int, int, int, int, int] | None = None
    for f in walk.fields(0, len(buf), frozenset({_MODEL_GRAPH})):
        if found is not None:
            raise _bad("the graph field appears twice")
        found = f
    if found is None:
        return Split(None, ())
    if found[1] != _LEN:
        raise _bad("the graph field is not length-delimited")
    _, _, gstart, gvalue, gend = found
    # Pieces are views of the upload until the one join, and runs of fields kept as they are stay
    # one piece: a model whose bulk is not in initializers (constants in nodes) costs one copy of
    # that bulk while it is vetted and loaded, as parsing it did (no session keeps the skeleton).
    graph: list[bytes | memoryview] = []
    moved: list[Moved] = []
    kept = gvalue  # start of the run of graph bytes not yet added
    for index, (_, wire, start, value, stop) in enumerate(walk.fields(gvalue, gend, frozenset({_GRAPH_INITIALIZER}))):
        if wire != _LEN:
            raise _bad("an initializer is not length-delimited")
        rewritten = _tensor(walk, value, stop, min_moved)
        if rewritten is not None:
            body, offset, length = rewritten
            graph += [buf[kept:start], *_framed(_GRAPH_INITIALIZER, body)]
            kept = stop
            moved.append(Moved(index, offset, length))
    if not moved:
        return Split(None, ())
    graph.append(buf[kept:gend])
    return Split(b"".join([buf[:gstart], *_framed(_MODEL_GRAPH, graph), buf[gend:]]), tuple(moved))
