"""BlindAI's model management routes (``/v1/models``): thin handlers over the store.

Upload and replace stream the body through the bounded reader into an in-memory model file,
its SHA-256 computed on the way (``modelfile.py``); the store vets, loads and seals. Owner
and upload tokens travel as bearer tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...protocol.models import (
    INPUT_DATATYPE,
    INPUT_SHAPE,
    MODEL_NAME,
    MODEL_PUBLIC,
    OUTPUT_DATATYPE,
    encode_model_list,
    encode_upload_answer,
)
from ..errors import InvalidRequest
from ..modelfile import ModelFile
from ..store import parse_hints
from .bodies import Hold
from .state import ServerState, bearer, flag, held, presented_tokens

__all__ = ["routes"]

log = logging.getLogger("blindai.models")

T = TypeVar("T")


async def in_thread(model: ModelFile, work: Callable[[ModelFile], T]) -> T:
    """Store work in a worker thread, on a descriptor of its own: a request abandoned meanwhile
    closes its file, never the one the store is reading (nor a number some other file reuses)."""
    own = model.dup()

    def run() -> T:
        with own:
            return work(own)

    return await asyncio.to_thread(run)


def routes(state: ServerState) -> list[Route]:
    """The ``/v1/models`` routes over ``state.store``."""
    store = state.store

    async def receive_and_store(request: Request, hold: Hold, work: Callable[[ModelFile, str], T]) -> T:
        """The body into an in-memory file (hashed as it arrives), then ``work(file, sha256)`` in a
        thread. The upload slot covers receiving, vetting and loading: each costs memory no budget sees."""
        async with state.uploads.slot():
            with store.new_model_file() as model:
                body = await state.read(
                    request, hold, store.limits.max_model_bytes, "model", sha256=True, into=model.write
                )
                if not body.size:
                    raise InvalidRequest("the upload is empty: send the ONNX model bytes as the request body")
                model.finish()
                sha256 = body.sha256
                assert sha256 is not None
                return await in_thread(model, lambda own: work(own, sha256))

    async def replace(request: Request, hold: Hold) -> Response:
        ref = request.path_params["ref"]
        token = bearer(request)
        await state.model(ref, tokens=[token] if token else [])  # a due reload happens in a thread
        store.check_owner_early(ref, token)
        entry = await receive_and_store(request, hold, lambda own, sha256: store.replace(ref, token, own, sha256))
        return JSONResponse(entry.info().to_json())

    async def upload(request: Request, hold: Hold) -> Response:
        store.check_upload_token(bearer(request))
        hints = parse_hints(
            request.headers.get(INPUT_SHAPE),
            request.headers.get(INPUT_DATATYPE),
            request.headers.get(OUTPUT_DATATYPE),
        )
        # Private unless the owner says otherwise (listing shows a model's name and hash), except
        # uploads of the seed-compatible API (they carry its hints): the tutorial's second script,
        # possibly on another machine, finds the model it runs by listing a single-model server.
        raw_public = request.headers.get(MODEL_PUBLIC)
        public = flag(raw_public, MODEL_PUBLIC) if raw_public is not None else bool(hints)
        name = request.headers.get(MODEL_NAME) or request.query_params.get("name")
        entry, token = await receive_and_store(
            request, hold, lambda own, sha256: store.add(own, sha256, name=name, hints=hints, public=public)
        )
        if await request.is_disconnected():
            # The owner token could not reach anyone, so nobody could ever delete or replace this
            # model: it would hold a slot (and a public name) for good. Withdrawn instead.
            await asyncio.to_thread(store.delete, entry.model_id, token)
            log.warning("model %s withdrawn: its uploader left before the answer", entry.model_id)
        return JSONResponse(encode_upload_answer(entry.info(), token), status_code=201)

    async def list_models(request: Request) -> Response:
        return JSONResponse(encode_model_list([m.info() for m in store.list(presented_tokens(request))]))

    async def get_model(request: Request) -> Response:
        entry = await state.model(request.path_params["ref"], tokens=presented_tokens(request))
        return JSONResponse(entry.info().to_json())

    async def delete_model(request: Request) -> Response:
        entry = await asyncio.to_thread(store.delete, request.path_params["ref"], bearer(request))
        return JSONResponse({"deleted": entry.model_id})

    return [
        Route("/v1/models", held(state, upload), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{ref}", get_model, methods=["GET"]),
        Route("/v1/models/{ref}", delete_model, methods=["DELETE"]),
        Route("/v1/models/{ref}", held(state, replace), methods=["PUT"]),
    ]
