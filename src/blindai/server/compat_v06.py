"""BlindAI 0.6 wire routes (CBOR), mapped onto the same store and inference path.

Message shapes, as the 0.6.x client sends and reads them:
- unattested ``GET /``: CBOR byte string of the TLS certificate (DER); the ``Server``
  header contains ``mock`` for a simulation server, which 0.6 clients refuse unless
  they run in simulation mode. ``GET /quote`` and ``GET /collateral``: the evidence and
  collateral, CBOR-encoded (0.6 clients verify SGX evidence with their own, older
  binding rule, so hardware attestation needs the current client);
- ``POST /upload``: ``{model: [byte values], length, model_name, optimize, client_info}``
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

from ..errors import InvalidInputError, ModelNotFoundError, PermissionDeniedError
from ..protocol.tensors import check_shape, decode_binary
from .bodies import Hold, UploadSlots
from .models import ModelStore

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
        raise InvalidInputError(f"body is not valid CBOR: {exc}", status=400) from None
    if not isinstance(obj, dict):
        raise InvalidInputError("body must be a CBOR map", status=400)
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
            raise ModelNotFoundError("a simulation server has no SGX quote", status=404)
        ev = await asyncio.to_thread(evidence)
        return _cbor(ev.evidence, headers={"Server": server})

    async def collateral(_req: Request) -> Response:
        if simulation:
            raise ModelNotFoundError("a simulation server has no collateral", status=404)
        ev = await asyncio.to_thread(evidence)
        return _cbor(ev.collateral or {}, headers={"Server": server})

    return [Route("/", root), Route("/quote", quote), Route("/collateral", collateral)]


# Python objects a CBOR message of /run or /delete may become, per byte of CBOR (a list of empty
# lists; empty maps are ~85); reserved from the server's request budget before decoding. A 0.6
# upload is checked first (scan_upload) and charged what its checked shape costs.
CBOR_COST = 64
# A 0.6 upload's small fields besides the model (name, client_info) may decode to any objects.
UPLOAD_FIELDS_COST = 128


def attested_routes(
    store: ModelStore,
    infer: Callable[..., Any],
    read_body: Callable[..., Any],
    held: Callable[[Callable[[Request, Hold], Any]], Callable[[Request], Any]],
    uploads: UploadSlots,
) -> list[Route]:
    async def root(_req: Request) -> Response:
        return _cbor({"server": "blindai"})

    async def decode(raw: bytes, hold: Hold, cost: int) -> dict[str, Any]:
        hold.take(len(raw) * cost, "decoding this CBOR message")
        return await asyncio.to_thread(_load, raw)

    async def upload(request: Request, hold: Hold) -> Response:
        store.check_upload_token(None)
        # A CBOR list of byte values takes up to 2 bytes per model byte.
        async with uploads.slot():
            raw = await read_body(request, hold, store.limits.max_model_bytes * 2 + (1 << 20))
        cost = await asyncio.to_thread(scan_upload, raw)
        hold.take(cost, "decoding this CBOR message")
        msg = await asyncio.to_thread(_load, raw)
        del raw
        data = await asyncio.to_thread(parse_upload, msg, store.limits.max_model_bytes)
        name = msg.get("model_name") if isinstance(msg.get("model_name"), str) else None
        del msg
        if not data:
            raise InvalidInputError("the upload is empty: 'model' holds no bytes", status=400)
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        entry, _token = await asyncio.to_thread(store.add, data, sha256, name=name, hints={LEGACY_HINT: True})
        return _cbor({"model_id": entry.model_id, "hash": bytes.fromhex(entry.sha256)})

    async def run(request: Request, hold: Hold) -> Response:
        msg = await decode(await read_body(request, hold), hold, CBOR_COST)
        model_id, model_hash = _model_id(msg), _model_hash(msg)
        if model_id:
            entry = store.get(model_id)
        else:
            # A content hash is no capability (anyone may know a public checkpoint's): only models
            # uploaded through these routes, which 0.6 clients address by hash, or public ones.
            matches = [
                m for m in store.all() if m.sha256 == model_hash and (m.public or m.hints.get(LEGACY_HINT))
            ]
            if not matches:
                raise ModelNotFoundError("no model with that hash", status=404)
            entry = matches[-1]
        feed = parse_run_inputs(msg, [s.name for s in entry.inputs])
        outputs = await infer(entry.model, feed, None)
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
        return _cbor({"outputs": out})

    async def delete(request: Request, hold: Hold) -> Response:
        msg = await decode(await read_body(request, hold), hold, CBOR_COST)
        entry = store.get(_model_id(msg))
        if not entry.hints.get(LEGACY_HINT):
            raise PermissionDeniedError(
                "this model is owner-protected: delete it with DELETE /v1/models/{id} and its owner token", status=403
            )
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
        raise InvalidInputError("'model_id' must be a model id (text)", status=400)
    return value


def _model_hash(msg: dict[str, Any]) -> str:
    """The SHA-256 digest a 0.6 client pins: 32 bytes, or 64 hex digits; returned as lowercase hex."""
    value = msg.get("model_hash") or ""
    if isinstance(value, bytes) and len(value) == 32:
        return value.hex()
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    raise InvalidInputError("'model_hash' must be a SHA-256 digest (32 bytes or 64 hex digits)", status=400)


# ------------------------------------------------------------------ the shape of a 0.6 upload, before decoding

MAX_UPLOAD_FIELDS = 64 << 10  # CBOR bytes besides the model: name, length, client_info
_MAX_SCAN_DEPTH = 4


def _head(raw: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head) of the CBOR item at pos; definite lengths only."""
    if pos >= len(raw):
        raise InvalidInputError("body is not valid CBOR: truncated", status=400)
    major, info = raw[pos] >> 5, raw[pos] & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise InvalidInputError("a 0.6 upload takes definite-length CBOR only", status=400)
    n = 1 << (info - 24)
    if pos + n > len(raw):
        raise InvalidInputError("body is not valid CBOR: truncated", status=400)
    return major, int.from_bytes(raw[pos : pos + n], "big"), pos + n


def _skip(raw: bytes, pos: int, depth: int = 0) -> int:
    """Past one CBOR item (no tags: a 0.6 client sends none, and bignums and dates hide behind them)."""
    if depth > _MAX_SCAN_DEPTH:
        raise InvalidInputError("a 0.6 upload field is nested too deeply", status=400)
    major, arg, pos = _head(raw, pos)
    if major in (0, 1, 7):
        return pos
    if major in (2, 3):
        if arg > len(raw) - pos:
            raise InvalidInputError("body is not valid CBOR: truncated", status=400)
        return pos + arg
    if major == 6:
        raise InvalidInputError("a 0.6 upload takes no CBOR tags", status=400)
    items = arg * (2 if major == 5 else 1)
    if items > len(raw) - pos:  # every item takes at least one byte
        raise InvalidInputError("body is not valid CBOR: truncated", status=400)
    for _ in range(items):
        pos = _skip(raw, pos, depth + 1)
    return pos


def _byte_values_end(raw: bytes, pos: int, count: int) -> int:
    """End of an array of ``count`` byte values (CBOR 0..23 in one byte, 24..255 as 0x18 XX).

    Vectorised, 1 MiB at a time, each slice starting at an item's head. Every head must be
    <= 0x18: anything else (maps, lists, strings, larger ints) is what costs memory when decoded.
    """
    import numpy as np

    bad = InvalidInputError("'model' must be the model's bytes (a byte string or a list of byte values)", status=400)
    if count > len(raw) - pos:
        raise bad
    seen = 0
    while seen < count:
        if pos >= len(raw):
            raise bad
        b = np.frombuffer(raw, np.uint8, min(1 << 20, len(raw) - pos), pos)
        heads = np.flatnonzero(_heads(b))[: count - seen]
        if np.any(b[heads] > 0x18):
            raise bad
        seen += len(heads)
        last = int(heads[-1])
        pos += last + (2 if b[last] == 0x18 else 1)  # the next slice starts at the next head
    if pos > len(raw):
        raise bad
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
    head = ~is18 | ((idx - run_start) % 2 == 0)
    head &= ~np.concatenate(([False], is18[:-1] & head[:-1]))
    return head


def scan_upload(raw: bytes) -> int:
    """Check a 0.6 upload's CBOR shape before decoding it; returns what decoding it will cost.

    The message must be a map of text keys whose ``model`` is a byte string or a list of byte
    values, its other fields small (MAX_UPLOAD_FIELDS) and tag-free. So decoding costs at most the
    model's bytes (8 more per byte for a list: one slot each, small ints being shared objects) and
    UPLOAD_FIELDS_COST per byte of the rest, whatever the CBOR: a list of empty maps was ~85 bytes per byte.
    """
    major, pairs, pos = _head(raw, 0)
    if major != 5:
        raise InvalidInputError("body must be a CBOR map", status=400)
    cost = model_span = 0
    for _ in range(min(pairs, len(raw))):
        kmajor, klen, pos = _head(raw, pos)
        if kmajor != 3 or klen > 64 or klen > len(raw) - pos:
            raise InvalidInputError("a 0.6 upload's keys are short text", status=400)
        key, pos = raw[pos : pos + klen], pos + klen
        if key != b"model":
            pos = _skip(raw, pos)
            continue
        start = pos
        vmajor, n, pos = _head(raw, pos)
        if vmajor == 2 and n <= len(raw) - pos:
            pos += n
            cost += n
        elif vmajor == 4:
            pos = _byte_values_end(raw, pos, n)
            cost += 9 * n
        else:
            raise InvalidInputError(
                "'model' must be the model's bytes (a byte string or a list of byte values)", status=400
            )
        model_span += pos - start
    if pos != len(raw) or pairs > len(raw):
        raise InvalidInputError("body is not valid CBOR: bytes after the message", status=400)
    rest = len(raw) - model_span
    if rest > MAX_UPLOAD_FIELDS:
        raise InvalidInputError(f"a 0.6 upload's fields besides 'model' exceed {MAX_UPLOAD_FIELDS} bytes", status=400)
    return cost + rest * UPLOAD_FIELDS_COST


def load_message(body: bytes) -> dict[str, Any]:
    """A 0.6 message: a CBOR map, depth-limited; anything else is a 400."""
    return _load(body)


def parse_upload(msg: dict[str, Any], max_bytes: int) -> bytes:
    raw = msg.get("model")
    if isinstance(raw, list):
        if len(raw) > max_bytes:
            raise InvalidInputError(f"model exceeds the limit of {max_bytes} bytes", status=413)
        try:
            data = bytes(raw)
        except (TypeError, ValueError):
            raise InvalidInputError("'model' must be a list of byte values", status=400) from None
    elif isinstance(raw, bytes):
        data = raw
    else:
        raise InvalidInputError("'model' must be the model's bytes", status=400)
    length = msg.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or not 0 <= length < 1 << 63):
        raise InvalidInputError("'length' must be the model's size in bytes", status=400)
    if length is not None and length != len(data):
        raise InvalidInputError(f"'length' says {length} bytes but the model has {len(data)}", status=400)
    return data


def parse_run_inputs(msg: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """0.6 tensors -> named arrays; inputs without node_name take the model's input order."""
    inputs = msg.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors", status=400)
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
            raise InvalidInputError(f"input {i} is not a 0.6 tensor: {exc}", status=400) from None
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
        raise InvalidInputError(f"output type {dtype} has no BlindAI 0.6 datum type", status=422) from None
