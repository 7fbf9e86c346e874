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


# Python objects a CBOR message may become, per byte of CBOR, at worst (a list of empty lists);
# reserved from the server's request budget before decoding. A 0.6 upload is a list of byte
# values (small ints are shared objects: one 8-byte slot per model byte, 1 or 2 CBOR bytes).
CBOR_COST = 64
CBOR_UPLOAD_COST = 8


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
        msg = await decode(raw, hold, CBOR_UPLOAD_COST)
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
        model_id, model_hash = msg.get("model_id") or "", msg.get("model_hash") or ""
        if model_id:
            entry = store.get(str(model_id))
        else:
            wanted = model_hash.hex() if isinstance(model_hash, bytes) else str(model_hash).lower()
            matches = [m for m in store.all() if m.sha256 == wanted]
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
        entry = store.get(str(msg.get("model_id", "")))
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
