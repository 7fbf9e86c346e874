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

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...protocol import v06
from ..errors import Forbidden, InvalidRequest, NotFound
from .bodies import HeldResponse, Hold
from .state import ServerState, held

__all__ = ["LEGACY_HINT", "attested_routes", "unattested_routes"]

LEGACY_HINT = "v06_open_delete"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _cbor(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(v06.encode(obj), status_code=status, media_type="application/cbor", headers=headers)


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


def attested_routes(state: ServerState) -> list[Route]:
    """The 0.6 routes over ``state.store`` and ``state.engine``, with the same bounded bodies."""
    store, uploads, send_timeout_s = state.store, state.uploads, state.body_limits.idle_timeout_s

    async def read_body(request: Request, hold: Hold, limit: int | None = None) -> bytes:
        return (await state.read(request, hold, limit or state.max_request_bytes, "request body")).data

    async def root(_req: Request) -> Response:
        return _cbor({"server": "blindai"})

    async def decode(raw: bytes, hold: Hold, cost: int) -> dict[str, Any]:
        # cbor2 decodes in one call that holds the interpreter lock: 32 MiB of small integers kept
        # /health waiting 1.1 s. Counted first, in Python (which yields the lock), at most 16K items.
        await asyncio.to_thread(v06.check_item_count, raw)
        hold.take(len(raw) * cost, "decoding this CBOR message")
        return await asyncio.to_thread(v06.load_message, raw)

    async def upload(request: Request, hold: Hold) -> Response:
        store.check_upload_token(None)
        # A CBOR list of byte values takes up to 2 bytes per model byte.
        async with uploads.slot():  # receiving, decoding, vetting and loading
            raw = await read_body(request, hold, store.limits.max_model_bytes * 2 + (1 << 20))
            # Checked and decoded without cbor2 building a Python list: the model's bytes, then the small fields.
            hold.take(v06.upload_cost(raw), "decoding this CBOR message")
            data, msg = await asyncio.to_thread(v06.read_upload, raw, store.limits.max_model_bytes)
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
        model_id = v06.model_id_field(msg)
        if model_id:  # 0.6 clients send the hash field too (empty) when they name the id
            entry = await state.model(model_id)
        else:
            model_hash = v06.model_hash_field(msg)
            # A content hash is no capability (anyone may know a public checkpoint's): only models
            # uploaded through these routes, which 0.6 clients address by hash, or public ones.
            matches = [m for m in store.all() if m.sha256 == model_hash and (m.public or m.hints.get(LEGACY_HINT))]
            if not matches:
                raise NotFound("no model with that hash")
            entry = matches[-1]
        feed = v06.parse_run_inputs(msg, [s.name for s in entry.inputs])
        del msg
        outputs = await state.engine.infer(entry.model, feed, None)
        del feed
        hold.release()  # the request is gone; the outputs and their encoding are held instead
        # The arrays, their little-endian bytes and the CBOR body that copies those: three times.
        hold.take(3 * sum(a.nbytes for a in outputs.values()), "this response")  # no waiting: see app.infer

        body = await asyncio.to_thread(v06.encode_run_outputs, outputs)
        outputs.clear()
        return HeldResponse([body], hold, "application/cbor", {}, send_timeout_s)

    async def delete(request: Request, hold: Hold) -> Response:
        msg = await decode(await read_body(request, hold), hold, CBOR_COST)
        entry = await state.model(v06.model_id_field(msg))
        if not entry.hints.get(LEGACY_HINT):
            raise Forbidden("this model is owner-protected: delete it with DELETE /v1/models/{id} and its owner token")
        await asyncio.to_thread(store.delete_unprotected, entry.model_id)
        return _cbor({})

    return [
        Route("/", root, methods=["GET"]),
        Route("/upload", held(state, upload), methods=["POST"]),
        Route("/run", held(state, run), methods=["POST"]),
        Route("/delete", held(state, delete), methods=["POST"]),
    ]
