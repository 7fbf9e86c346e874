"""BlindAI 0.6's wire messages (CBOR) and datum-type table, with no transport and no statuses.

The server's 0.6 routes (``server/http/compat_v06.py``) read requests with these functions
and write answers with `encode_run_outputs` and `encode`; the seed client maps its
``ModelDatumType`` through `DATUM_TYPES`. Readers check a message's shape before decoding
it: an upload's model bytes are decoded without building a Python list, and a message's
CBOR items are counted before cbor2 sees it (`check_item_count`).
"""

from __future__ import annotations

from typing import Any, Final

import cbor2
import numpy as np

from ..errors import ProtocolError
from .models import is_sha256_hex
from .tensors import check_shape, datatype_of, decode_binary

__all__ = [
    "DATUM_TYPES",
    "MAX_MESSAGE_ITEMS",
    "MAX_UPLOAD_FIELDS",
    "V06Error",
    "V06LimitError",
    "V06OutputError",
    "check_item_count",
    "datum_type",
    "encode",
    "encode_run_outputs",
    "load_message",
    "model_hash_field",
    "model_id_field",
    "parse_run_inputs",
    "read_upload",
    "upload_cost",
]

DATUM_TYPES: Final = ("FP32", "FP64", "INT32", "INT64", "UINT32", "UINT64", "UINT8", "UINT16", "INT8", "INT16", "BOOL")
"""OIP datatype of each 0.6 ``ModelDatumType`` code (the code is the index)."""
MAX_CBOR_DEPTH: Final = 16
# A 0.6 upload's small fields besides the model (name, client_info) may decode to any objects.
UPLOAD_FIELDS_COST: Final = 128


class V06Error(ProtocolError):
    """A 0.6 message that is not what the 0.6 protocol sends (the message says which field)."""


class V06LimitError(V06Error):
    """A 0.6 message over a size or item limit."""


class V06OutputError(V06Error):
    """A model output that the 0.6 protocol cannot carry (no datum type for it)."""


def load_message(body: bytes) -> dict[str, Any]:
    """A 0.6 message: a CBOR map, depth-limited; anything else is a `V06Error`."""
    try:
        obj = cbor2.loads(body, max_depth=MAX_CBOR_DEPTH) if _HAS_MAX_DEPTH else cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise V06Error(f"body is not valid CBOR: {exc}") from None
    if not isinstance(obj, dict):
        raise V06Error("body must be a CBOR map")
    return obj


def _has_max_depth() -> bool:
    import inspect

    try:
        return "max_depth" in inspect.signature(cbor2.loads).parameters
    except (TypeError, ValueError):
        return False


_HAS_MAX_DEPTH = _has_max_depth()


def model_id_field(msg: dict[str, Any]) -> str:
    """0.6 model ids are text (uuids); anything else is a 400, never str() of a 5,000-digit number."""
    value = msg.get("model_id") or ""
    if not isinstance(value, str) or len(value) > 256:
        raise V06Error("'model_id' must be a model id (text)")
    return value


def model_hash_field(msg: dict[str, Any]) -> str:
    """The SHA-256 digest a 0.6 client pins: 32 bytes, or 64 hex digits; returned as lowercase hex."""
    value = msg.get("model_hash") or ""
    if isinstance(value, bytes) and len(value) == 32:
        return value.hex()
    if is_sha256_hex(value):
        return value.lower()
    raise V06Error("'model_hash' must be a SHA-256 digest (32 bytes or 64 hex digits)")


# ------------------------------------------------------------------ the shape of a 0.6 upload, before decoding

MAX_UPLOAD_FIELDS = 16 << 10  # CBOR bytes besides the model: name, length, client_info
_MAX_SCAN_DEPTH = 4


MAX_MESSAGE_ITEMS = 1 << 14  # a 0.6 run or delete holds tens (tensors travel as one byte string each)


def check_item_count(raw: bytes, limit: int = MAX_MESSAGE_ITEMS) -> None:
    """A 0.6 message of more than ``limit`` CBOR items is a 413, found without decoding it."""
    pos, pending, seen = 0, 1, 0
    while pending:
        major, arg, pos = _head(raw, pos)
        pending -= 1
        seen += 1
        if seen > limit:
            raise V06LimitError(f"a 0.6 message may hold at most {limit} CBOR items (tensors travel as bytes_data)")
        if major in (2, 3):
            if arg > len(raw) - pos:
                raise V06Error("body is not valid CBOR: truncated")
            pos += arg
        elif major in (4, 5):
            pending += arg * (2 if major == 5 else 1)
        elif major == 6:
            pending += 1  # a tag: its item follows
    if pos != len(raw):
        raise V06Error("body is not valid CBOR: bytes after the message")


def _head(raw: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head) of the CBOR item at pos; definite lengths only."""
    if pos >= len(raw):
        raise V06Error("body is not valid CBOR: truncated")
    major, info = raw[pos] >> 5, raw[pos] & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise V06Error("a 0.6 message takes definite-length CBOR only")
    n = 1 << (info - 24)
    if pos + n > len(raw):
        raise V06Error("body is not valid CBOR: truncated")
    return major, int.from_bytes(raw[pos : pos + n], "big"), pos + n


def _skip(raw: bytes, pos: int, depth: int = 0) -> int:
    """Past one CBOR item (no tags: a 0.6 client sends none, and bignums and dates hide behind them)."""
    if depth > _MAX_SCAN_DEPTH:
        raise V06Error("a 0.6 upload field is nested too deeply")
    major, arg, pos = _head(raw, pos)
    if major in (0, 1, 7):
        return pos
    if major in (2, 3):
        if arg > len(raw) - pos:
            raise V06Error("body is not valid CBOR: truncated")
        return pos + arg
    if major == 6:
        raise V06Error("a 0.6 upload takes no CBOR tags")
    items = arg * (2 if major == 5 else 1)
    if items > len(raw) - pos:  # every item takes at least one byte
        raise V06Error("body is not valid CBOR: truncated")
    for _ in range(items):
        pos = _skip(raw, pos, depth + 1)
    return pos


def _byte_values(raw: bytes, pos: int, count: int, out: Any) -> int:
    """Decode an array of ``count`` byte values (CBOR 0..23 in one byte, 24..255 as 0x18 XX) into ``out``.

    Vectorised, 1 MiB at a time, each slice starting at an item's head; returns the end. Every
    head must be <= 0x18: anything else (maps, lists, strings, larger ints) is what would cost
    memory when decoded, and is refused before anything is built from it.
    """
    bad = V06Error("'model' must be the model's bytes (a byte string or a list of byte values)")
    if count > len(raw) - pos:
        raise bad
    seen = 0
    while seen < count:
        if pos >= len(raw):
            raise bad
        n = min(1 << 20, len(raw) - pos)
        b = np.frombuffer(raw, np.uint8, min(n + 1, len(raw) - pos), pos)  # one more: a value past the slice
        heads = np.flatnonzero(_heads(b[:n]))[: count - seen]
        first = b[heads]
        if np.any(first > 0x18):
            raise bad
        two = first == 0x18
        if len(heads) and two[-1] and heads[-1] + 1 >= len(b):
            raise bad  # truncated: the last value byte is missing
        out[seen : seen + len(heads)] = np.where(two, b[np.minimum(heads + 1, len(b) - 1)], first)
        seen += len(heads)
        last = int(heads[-1])
        pos += last + (2 if two[-1] else 1)  # the next slice starts at the next head
    return pos


def _heads(b: Any) -> Any:
    """Which bytes start an item, b[0] being one: all but the value byte after a head 0x18.

    In a run of 0x18 bytes that starts at a head, heads and values alternate; a byte after a
    run is a value exactly when the run's last byte is a head.
    """
    is18 = b == 0x18
    idx = np.arange(len(b), dtype=np.int32)
    starts = is18 & ~np.concatenate(([False], is18[:-1]))
    run_start = np.maximum.accumulate(np.where(starts, idx, 0))
    head = ~is18 | ((idx - run_start) & 1 == 0)
    head &= ~np.concatenate(([False], is18[:-1] & head[:-1]))
    return head


def upload_cost(raw: bytes) -> int:
    """What read_upload holds at most: the model's bytes (at most the body) and its small fields decoded."""
    return len(raw) + MAX_UPLOAD_FIELDS * UPLOAD_FIELDS_COST


def read_upload(raw: bytes, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """A 0.6 upload: the model's bytes and its other fields, its shape checked before anything is decoded.

    The message must be a map of text keys whose ``model`` is a byte string or a list of byte
    values, its other fields small (MAX_UPLOAD_FIELDS), tag-free and definite-length. The list is
    decoded straight into bytes (no Python list: cbor2 built one 8-byte slot per model byte), and
    only the small fields go through cbor2; so decoding costs at most the body plus
    UPLOAD_FIELDS_COST per byte of those fields, whatever the CBOR. A list of empty maps used to
    cost ~85 bytes of Python objects per CBOR byte.
    """
    major, pairs, pos = _head(raw, 0)
    if major != 5:
        raise V06Error("body must be a CBOR map")
    if pairs > len(raw):
        raise V06Error("body is not valid CBOR: truncated")
    data: bytes | None = None
    fields: dict[str, Any] = {}
    rest = 0
    for _ in range(pairs):
        kmajor, klen, pos = _head(raw, pos)
        if kmajor != 3 or klen > 64 or klen > len(raw) - pos:
            raise V06Error("a 0.6 upload's keys are short text")
        try:
            key = raw[pos : pos + klen].decode()
        except UnicodeDecodeError:
            raise V06Error("a 0.6 upload's keys are short text") from None
        pos += klen
        if key != "model":
            start, pos = pos, _skip(raw, pos)
            rest += pos - start
            if rest > MAX_UPLOAD_FIELDS:
                raise V06Error(f"a 0.6 upload's fields besides 'model' exceed {MAX_UPLOAD_FIELDS} bytes")
            fields[key] = _load_item(raw[start:pos])
            continue
        vmajor, n, pos = _head(raw, pos)
        if vmajor not in (2, 4):
            raise V06Error("'model' must be the model's bytes (a byte string or a list of byte values)")
        if n > max_bytes:
            raise V06LimitError(f"model exceeds the limit of {max_bytes} bytes")
        if vmajor == 2:
            if n > len(raw) - pos:
                raise V06Error("body is not valid CBOR: truncated")
            data, pos = raw[pos : pos + n], pos + n
        else:
            out = np.empty(n, np.uint8)
            pos = _byte_values(raw, pos, n, out)
            data = out.tobytes()
            del out
    if pos != len(raw):
        raise V06Error("body is not valid CBOR: bytes after the message")
    if data is None:
        raise V06Error("'model' must be the model's bytes")
    _check_length(fields.get("length"), len(data))
    return data, fields


def _load_item(item: bytes) -> Any:
    try:
        return cbor2.loads(item)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise V06Error(f"body is not valid CBOR: {exc}") from None


def _check_length(length: Any, size: int) -> None:
    if length is None:
        return
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length < 1 << 63:
        raise V06Error("'length' must be the model's size in bytes")
    if length != size:
        raise V06Error(f"'length' says {length} bytes but the model has {size}")


def parse_run_inputs(msg: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """0.6 tensors -> named arrays; inputs without node_name take the model's input order."""
    inputs = msg.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V06Error("'inputs' must be a non-empty list of tensors")
    feed: dict[str, Any] = {}
    for i, t in enumerate(inputs):
        try:
            info, blob = t["info"], t["bytes_data"]
            code = info["datum_type"]
            if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < len(DATUM_TYPES):
                raise ValueError(f"unknown datum_type {code!r}")
            if not isinstance(blob, bytes):
                raise TypeError("bytes_data must be a byte string")
            shape = check_shape(list(info["fact"]), f"input {i}")
            name = info.get("node_name") or (names[i] if i < len(names) else f"input {i}")
            feed[str(name)] = decode_binary(DATUM_TYPES[code], shape, blob, str(name))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise V06Error(f"input {i} is not a 0.6 tensor: {exc}") from None
    return feed


def datum_type(dtype: np.dtype[Any]) -> int:
    """The 0.6 code of a numpy dtype (its OIP datatype's place in `DATUM_TYPES`)."""
    try:
        return DATUM_TYPES.index(datatype_of(np.empty(0, dtype)))
    except (ValueError, TypeError):
        raise V06OutputError(f"output type {dtype} has no BlindAI 0.6 datum type") from None


def encode_run_outputs(outputs: dict[str, Any]) -> bytes:
    """``{outputs: [{info: {fact, datum_type, node_name}, bytes_data}]}``, little-endian data."""
    out = []
    for name, arr in outputs.items():
        a = np.ascontiguousarray(arr)
        out.append(
            {
                "info": {"fact": list(a.shape), "datum_type": datum_type(a.dtype), "node_name": name},
                "bytes_data": a.astype(a.dtype.newbyteorder("<")).tobytes(),
            }
        )
    return cbor2.dumps({"outputs": out})


def encode(obj: Any) -> bytes:
    """Any other 0.6 answer (``{model_id, hash}``, ``{}``, the certificate, evidence)."""
    return cbor2.dumps(obj)
