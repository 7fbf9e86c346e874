"""BlindAI 0.6 wire routes (CBOR), mapped onto the same store and inference path.

Message shapes, as the 0.6.x client sends and reads them:
- unattested ``GET /``: CBOR byte string of the TLS certificate (DER); the ``Server``
  header contains ``mock`` for a simulation server, which 0.6 clients refuse unless
  they run in simulation mode. ``GET /quote`` and ``GET /collateral``: the evidence and
  collateral, CBOR-encoded (0.6 clients verify SGX evidence with their own, older
  binding rule, so hardware attestation needs the current client);
- ``POST /upload``: ``{model: [byte values], length, model_name, optimize, client_info}``
  (checked and decoded by ``read_upload``, never by cbor2 as a whole)
  -> ``{model_id, hash (sha256 digest bytes)}``;
- ``POST /run``: ``{model_id, model_hash, inputs: [{info: {fact, datum_type, node_name},
  bytes_data}], client_info}`` -> ``{outputs: [same shape]}``;
- ``POST /delete``: ``{model_id}``.

The 0.6 protocol has no owner tokens. Models uploaded through it can be deleted
through it by anyone who knows their id, as in 0.6; models uploaded through the v1
API keep their owner protection and are refused here (403).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from typing import Any

import cbor2
import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...protocol.tensors import check_shape, decode_binary
from ..errors import Forbidden, InvalidRequest, LimitExceeded, NotFound, UnsupportedModel
from ..store import ModelStore
from .bodies import HeldResponse, Hold, UploadSlots

__all__ = ["LEGACY_HINT", "attested_routes", "unattested_routes"]

# ModelDatumType of 0.6 -> OIP datatype.
DATUM_TYPES = ["FP32", "FP64", "INT32", "INT64", "UINT32", "UINT64", "UINT8", "UINT16", "INT8", "INT16", "BOOL"]
LEGACY_HINT = "v06_open_delete"
MAX_CBOR_DEPTH = 16

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _cbor(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(cbor2.dumps(obj), status_code=status, media_type="application/cbor", headers=headers)


def _load(body: bytes) -> dict[str, Any]:
    try:
        obj = cbor2.loads(body, max_depth=MAX_CBOR_DEPTH) if _HAS_MAX_DEPTH else cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequest(f"body is not valid CBOR: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRequest("body must be a CBOR map")
    return obj


def _has_max_depth() -> bool:
    import inspect

    try:
        return "max_depth" in inspect.signature(cbor2.loads).parameters
    except (TypeError, ValueError):
        return False


_HAS_MAX_DEPTH = _has_max_depth()


def unattested_routes(certificate_der: bytes, simulation: bool, evidence: Callable[[], Any]) -> list[Route]:
    server = "blindai (mock: simulation mode)" if simulation else "blindai"

    async def root(_req: Request) -> Response:
        return _cbor(certificate_der, headers={"Server": server})

    async def quote(_req: Request) -> Response:
        if simulation:
            raise NotFound("a simulation server has no SGX quote")
        ev = await asyncio.to_thread(evidence)
        return _cbor(ev.evidence, headers={"Server": server})

    async def collateral(_req: Request) -> Response:
        if simulation:
            raise NotFound("a simulation server has no collateral")
        ev = await asyncio.to_thread(evidence)
        return _cbor(ev.collateral or {}, headers={"Server": server})

    return [Route("/", root), Route("/quote", quote), Route("/collateral", collateral)]


# Python objects a CBOR message of /run or /delete may become, per byte of CBOR (a list of empty
# lists; empty maps are ~85); reserved from the server's request budget before decoding. A 0.6
# upload is checked and decoded by read_upload, and charged what that can cost (upload_cost).
CBOR_COST = 64
# A 0.6 upload's small fields besides the model (name, client_info) may decode to any objects.
UPLOAD_FIELDS_COST = 128


def attested_routes(
    store: ModelStore,
    infer: Callable[..., Any],
    read_body: Callable[..., Any],
    held: Callable[[Callable[[Request, Hold], Any]], Callable[[Request], Any]],
    uploads: UploadSlots,
    send_timeout_s: float = 20.0,
) -> list[Route]:
    async def root(_req: Request) -> Response:
        return _cbor({"server": "blindai"})

    async def decode(raw: bytes, hold: Hold, cost: int) -> dict[str, Any]:
        # cbor2 decodes in one call that holds the interpreter lock: 32 MiB of small integers kept
        # /health waiting 1.1 s. Counted first, in Python (which yields the lock), at most 16K items.
        await asyncio.to_thread(check_item_count, raw)
        hold.take(len(raw) * cost, "decoding this CBOR message")
        return await asyncio.to_thread(_load, raw)

    async def upload(request: Request, hold: Hold) -> Response:
        store.check_upload_token(None)
        # A CBOR list of byte values takes up to 2 bytes per model byte.
        async with uploads.slot():
            raw = await read_body(request, hold, store.limits.max_model_bytes * 2 + (1 << 20))
        # Checked and decoded without cbor2 building a Python list: the model's bytes, then the small fields.
        hold.take(upload_cost(raw), "decoding this CBOR message")
        data, msg = await asyncio.to_thread(read_upload, raw, store.limits.max_model_bytes)
        del raw
        name = msg.get("model_name") if isinstance(msg.get("model_name"), str) else None
        del msg
        if not data:
            raise InvalidRequest("the upload is empty: 'model' holds no bytes")
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        entry, _token = await asyncio.to_thread(store.add, data, sha256, name=name, hints={LEGACY_HINT: True})
        return _cbor({"model_id": entry.model_id, "hash": bytes.fromhex(entry.sha256)})

    async def run(request: Request, hold: Hold) -> Response:
        msg = await decode(await read_body(request, hold), hold, CBOR_COST)
        model_id = _model_id(msg)
        if model_id:  # 0.6 clients send the hash field too (empty) when they name the id
            entry = store.get(model_id)
        else:
            model_hash = _model_hash(msg)
            # A content hash is no capability (anyone may know a public checkpoint's): only models
            # uploaded through these routes, which 0.6 clients address by hash, or public ones.
            matches = [m for m in store.all() if m.sha256 == model_hash and (m.public or m.hints.get(LEGACY_HINT))]
            if not matches:
                raise NotFound("no model with that hash")
            entry = matches[-1]
        feed = parse_run_inputs(msg, [s.name for s in entry.inputs])
        del msg
        outputs = await infer(entry.model, feed, None)
        del feed
        hold.release()  # the request is gone; the outputs and their encoding are held instead
        # The arrays, their little-endian bytes and the CBOR body that copies those: three times.
        hold.take(3 * sum(a.nbytes for a in outputs.values()), "this response")  # no waiting: see app.infer

        def encode() -> bytes:
            out = []
            for name, arr in outputs.items():
                a = np.ascontiguousarray(arr)
                code = _datum_type(a.dtype)
                out.append(
                    {
                        "info": {"fact": list(a.shape), "datum_type": code, "node_name": name},
                        "bytes_data": a.astype(a.dtype.newbyteorder("<")).tobytes(),
                    }
                )
            return cbor2.dumps({"outputs": out})

        body = await asyncio.to_thread(encode)
        outputs.clear()
        return HeldResponse([body], hold, "application/cbor", {}, send_timeout_s)

    async def delete(request: Request, hold: Hold) -> Response:
        msg = await decode(await read_body(request, hold), hold, CBOR_COST)
        entry = store.get(_model_id(msg))
        if not entry.hints.get(LEGACY_HINT):
            raise Forbidden("this model is owner-protected: delete it with DELETE /v1/models/{id} and its owner token")
        await asyncio.to_thread(store.delete_unprotected, entry.model_id)
        return _cbor({})

    return [
        Route("/", root, methods=["GET"]),
        Route("/upload", held(upload), methods=["POST"]),
        Route("/run", held(run), methods=["POST"]),
        Route("/delete", held(delete), methods=["POST"]),
    ]


def _model_id(msg: dict[str, Any]) -> str:
    """0.6 model ids are text (uuids); anything else is a 400, never str() of a 5,000-digit number."""
    value = msg.get("model_id") or ""
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidRequest("'model_id' must be a model id (text)")
    return value


def _model_hash(msg: dict[str, Any]) -> str:
    """The SHA-256 digest a 0.6 client pins: 32 bytes, or 64 hex digits; returned as lowercase hex."""
    value = msg.get("model_hash") or ""
    if isinstance(value, bytes) and len(value) == 32:
        return value.hex()
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    raise InvalidRequest("'model_hash' must be a SHA-256 digest (32 bytes or 64 hex digits)")


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
            raise LimitExceeded(f"a 0.6 message may hold at most {limit} CBOR items (tensors travel as bytes_data)")
        if major in (2, 3):
            if arg > len(raw) - pos:
                raise InvalidRequest("body is not valid CBOR: truncated")
            pos += arg
        elif major in (4, 5):
            pending += arg * (2 if major == 5 else 1)
        elif major == 6:
            pending += 1  # a tag: its item follows
    if pos != len(raw):
        raise InvalidRequest("body is not valid CBOR: bytes after the message")


def _head(raw: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head) of the CBOR item at pos; definite lengths only."""
    if pos >= len(raw):
        raise InvalidRequest("body is not valid CBOR: truncated")
    major, info = raw[pos] >> 5, raw[pos] & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise InvalidRequest("a 0.6 message takes definite-length CBOR only")
    n = 1 << (info - 24)
    if pos + n > len(raw):
        raise InvalidRequest("body is not valid CBOR: truncated")
    return major, int.from_bytes(raw[pos : pos + n], "big"), pos + n


def _skip(raw: bytes, pos: int, depth: int = 0) -> int:
    """Past one CBOR item (no tags: a 0.6 client sends none, and bignums and dates hide behind them)."""
    if depth > _MAX_SCAN_DEPTH:
        raise InvalidRequest("a 0.6 upload field is nested too deeply")
    major, arg, pos = _head(raw, pos)
    if major in (0, 1, 7):
        return pos
    if major in (2, 3):
        if arg > len(raw) - pos:
            raise InvalidRequest("body is not valid CBOR: truncated")
        return pos + arg
    if major == 6:
        raise InvalidRequest("a 0.6 upload takes no CBOR tags")
    items = arg * (2 if major == 5 else 1)
    if items > len(raw) - pos:  # every item takes at least one byte
        raise InvalidRequest("body is not valid CBOR: truncated")
    for _ in range(items):
        pos = _skip(raw, pos, depth + 1)
    return pos


def _byte_values(raw: bytes, pos: int, count: int, out: Any) -> int:
    """Decode an array of ``count`` byte values (CBOR 0..23 in one byte, 24..255 as 0x18 XX) into ``out``.

    Vectorised, 1 MiB at a time, each slice starting at an item's head; returns the end. Every
    head must be <= 0x18: anything else (maps, lists, strings, larger ints) is what would cost
    memory when decoded, and is refused before anything is built from it.
    """
    import numpy as np

    bad = InvalidRequest("'model' must be the model's bytes (a byte string or a list of byte values)")
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
    import numpy as np

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
    import numpy as np

    major, pairs, pos = _head(raw, 0)
    if major != 5:
        raise InvalidRequest("body must be a CBOR map")
    if pairs > len(raw):
        raise InvalidRequest("body is not valid CBOR: truncated")
    data: bytes | None = None
    fields: dict[str, Any] = {}
    rest = 0
    for _ in range(pairs):
        kmajor, klen, pos = _head(raw, pos)
        if kmajor != 3 or klen > 64 or klen > len(raw) - pos:
            raise InvalidRequest("a 0.6 upload's keys are short text")
        try:
            key = raw[pos : pos + klen].decode()
        except UnicodeDecodeError:
            raise InvalidRequest("a 0.6 upload's keys are short text") from None
        pos += klen
        if key != "model":
            start, pos = pos, _skip(raw, pos)
            rest += pos - start
            if rest > MAX_UPLOAD_FIELDS:
                raise InvalidRequest(f"a 0.6 upload's fields besides 'model' exceed {MAX_UPLOAD_FIELDS} bytes")
            fields[key] = _load_item(raw[start:pos])
            continue
        vmajor, n, pos = _head(raw, pos)
        if vmajor not in (2, 4):
            raise InvalidRequest("'model' must be the model's bytes (a byte string or a list of byte values)")
        if n > max_bytes:
            raise LimitExceeded(f"model exceeds the limit of {max_bytes} bytes")
        if vmajor == 2:
            if n > len(raw) - pos:
                raise InvalidRequest("body is not valid CBOR: truncated")
            data, pos = raw[pos : pos + n], pos + n
        else:
            out = np.empty(n, np.uint8)
            pos = _byte_values(raw, pos, n, out)
            data = out.tobytes()
            del out
    if pos != len(raw):
        raise InvalidRequest("body is not valid CBOR: bytes after the message")
    if data is None:
        raise InvalidRequest("'model' must be the model's bytes")
    _check_length(fields.get("length"), len(data))
    return data, fields


def _load_item(item: bytes) -> Any:
    try:
        return cbor2.loads(item)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequest(f"body is not valid CBOR: {exc}") from None


def _check_length(length: Any, size: int) -> None:
    if length is None:
        return
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length < 1 << 63:
        raise InvalidRequest("'length' must be the model's size in bytes")
    if length != size:
        raise InvalidRequest(f"'length' says {length} bytes but the model has {size}")


def load_message(body: bytes) -> dict[str, Any]:
    """A 0.6 message: a CBOR map, depth-limited; anything else is a 400."""
    return _load(body)


def parse_upload(msg: dict[str, Any], max_bytes: int) -> bytes:
    raw = msg.get("model")
    if isinstance(raw, list):
        if len(raw) > max_bytes:
            raise LimitExceeded(f"model exceeds the limit of {max_bytes} bytes")
        try:
            data = bytes(raw)
        except (TypeError, ValueError):
            raise InvalidRequest("'model' must be a list of byte values") from None
    elif isinstance(raw, bytes):
        data = raw
    else:
        raise InvalidRequest("'model' must be the model's bytes")
    _check_length(msg.get("length"), len(data))
    return data


def parse_run_inputs(msg: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """0.6 tensors -> named arrays; inputs without node_name take the model's input order."""
    inputs = msg.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
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
            raise InvalidRequest(f"input {i} is not a 0.6 tensor: {exc}") from None
    return feed


def _datum_type(dtype: np.dtype[Any]) -> int:
    names = {
        "float32": 0,
        "float64": 1,
        "int32": 2,
        "int64": 3,
        "uint32": 4,
        "uint64": 5,
        "uint8": 6,
        "uint16": 7,
        "int8": 8,
        "int16": 9,
        "bool": 10,
    }
    try:
        return names[dtype.name]
    except KeyError:
        raise UnsupportedModel(f"output type {dtype} has no BlindAI 0.6 datum type") from None
