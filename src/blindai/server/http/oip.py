"""The Open Inference Protocol (KServe V2) routes: health, metadata and inference.

Inference looks the model up first (a request for a missing model costs neither its body
nor decoding), reads the body within the in-flight budget, decodes it off the event loop,
runs it on the engine and holds the response's share of the budget until it is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..._version import __version__
from ...protocol.infer import HEADER_LENGTH, InferRequest, decode_request, encode_response, json_response_bound
from ...protocol.models import MODEL_SHA256
from ..errors import InvalidRequest
from ..inference import string_bytes
from ..store import ModelEntry
from .bodies import HeldResponse, Hold
from .state import ServerState, held, presented_tokens

__all__ = [
    "INLINE_BYTES",
    "PIN",
    "binary_flags",
    "encode_outputs",
    "header_length",
    "json_bound_of",
    "response_bytes",
    "routes",
    "run_decoded",
]

# Requests and responses up to this size are decoded and encoded on the event loop: for them a
# thread hop (tens of microseconds, more under load) costs more than the work, which is bounded.
INLINE_BYTES = 64 << 10


PIN = "blindai_model_sha256"  # request parameter: the model's SHA-256, checked when it runs


async def run_decoded(
    state: ServerState,
    entry: ModelEntry,
    inputs: Mapping[str, npt.NDArray[Any]],
    requested: list[str] | None,
    pin: object,
) -> tuple[str, dict[str, npt.NDArray[Any]]]:
    """Run decoded inputs on ``entry``'s model (re-read under the ``pin`` parameter, if any):
    the one place an inference request meets the engine, from HTTP here or from a front
    worker's frame (``fast_main.py``)."""
    if pin is not None:
        if not isinstance(pin, str):
            raise InvalidRequest(f"{PIN} must be a hex string")
        entry = state.store.get(entry.model_id, sha256=pin)
    return entry.model_id, await state.engine.infer(entry.model, inputs, requested)


def header_length(raw: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header's value: the JSON part of a binary request."""
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{HEADER_LENGTH} is not an integer") from None


def binary_flags(req: InferRequest, outputs: Mapping[str, Any]) -> dict[str, bool]:
    """Which outputs go out as binary: the request's default, then each requested output's own."""
    binary = {n: req.binary_output for n in outputs}
    for o in req.outputs or []:
        if o.binary is not None:
            binary[o.name] = o.binary
    return binary


async def json_bound_of(limit: int, outputs: Mapping[str, npt.NDArray[Any]], binary: dict[str, bool]) -> int:
    """The JSON text the outputs could take, refused (400) above ``--max-json-response-bytes``."""
    strings = any(a.dtype.kind in "OSU" for a in outputs.values())  # their bound walks every element
    json_bound = (
        await asyncio.to_thread(json_response_bound, outputs, binary)
        if strings
        else json_response_bound(outputs, binary)
    )
    if json_bound > limit:
        raise InvalidRequest(
            f"the outputs sent as JSON could take {json_bound} bytes, above the server's limit of {limit} for "
            "JSON outputs (--max-json-response-bytes): ask for binary outputs "
            '(parameters: {"binary_data_output": true}), as the BlindAI SDK and tritonclient do'
        )
    return json_bound


async def encode_outputs(
    model_id: str, outputs: Mapping[str, npt.NDArray[Any]], binary: dict[str, bool], rid: str | None, size: int
) -> tuple[list[Any], int | None]:
    """The response body's chunks and JSON header length; off the event loop unless it is small
    (``size``: the outputs and their JSON bound) and holds no strings, whose encoding walks every element."""

    def encode() -> tuple[list[Any], int | None]:
        return encode_response(model_id, outputs, binary, request_id=rid)

    small = size <= INLINE_BYTES and not any(a.dtype.kind in "OSU" for a in outputs.values())
    return encode() if small else await asyncio.to_thread(encode)


async def response_bytes(outputs: Mapping[str, npt.NDArray[Any]]) -> int:
    """What the outputs and their binary encoding hold: numeric arrays once (their encoding is a view
    of them), string outputs twice their objects (``string_bytes``, walked in a thread)."""
    numeric = sum(int(a.nbytes) for a in outputs.values() if a.dtype != object)
    if all(a.dtype != object for a in outputs.values()):
        return numeric
    return numeric + 2 * await asyncio.to_thread(string_bytes, outputs)


def routes(state: ServerState) -> list[Route]:
    """The ``/v2`` routes over ``state.store`` and ``state.engine``."""

    async def live(_request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(_request: Request) -> Response:
        return JSONResponse({"name": "blindai", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(request: Request) -> Response:
        entry = await state.model(request.path_params["ref"], tokens=presented_tokens(request))
        return JSONResponse(
            {
                "name": entry.model_id,
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": [s.to_json() for s in entry.inputs],
                "outputs": [s.to_json() for s in entry.outputs],
            }
        )

    async def model_ready(request: Request) -> Response:
        entry = await state.model(request.path_params["ref"], tokens=presented_tokens(request))
        return JSONResponse({"name": entry.model_id, "ready": True})

    async def infer(request: Request, hold: Hold) -> Response:
        header_len = header_length(request.headers.get(HEADER_LENGTH.lower()))
        # The model first: a request for a model that is not there costs neither its body nor decoding.
        entry = await state.model(
            request.path_params["ref"], sha256=request.headers.get(MODEL_SHA256), tokens=presented_tokens(request)
        )
        body = (await state.read(request, hold, state.max_request_bytes, "request body")).data

        def reserve(n: int) -> None:
            hold.take(n, "decoding this request")

        # Bounded before it allocates (protocol/infer.py), and off the event loop unless the body is
        # small enough that decoding it costs less than the hop to a thread; a TensorError becomes its
        # status in server/http/errors.py.
        def decode(data: bytes) -> InferRequest:
            return decode_request(data, header_len, max_json_bytes=state.body_limits.max_json_bytes, reserve=reserve)

        req = decode(body) if len(body) <= INLINE_BYTES else await asyncio.to_thread(decode, body)
        requested = [o.name for o in req.outputs] if req.outputs is not None else None
        model_id, outputs = await run_decoded(state, entry, req.inputs, requested, req.parameters.get(PIN))
        binary = binary_flags(req, outputs)
        rid = req.id
        del req, body
        hold.release()  # the request's bytes are gone; the outputs and their encoding are held instead
        json_bound = await json_bound_of(state.body_limits.max_json_response_bytes, outputs, binary)
        # Outputs, plus their JSON text and the Python objects made on the way (about twice the text);
        # string outputs as their objects and their encoding (an object array's nbytes counts pointers).
        # Taken without waiting: outputs that waited for room would be memory nobody counts.
        out_bytes = await response_bytes(outputs)
        hold.take(out_bytes + 3 * json_bound, "this response")

        chunks, head_len = await encode_outputs(model_id, outputs, binary, rid, json_bound + out_bytes)
        if head_len is None:
            return HeldResponse(chunks, hold, "application/json", {}, state.body_limits.idle_timeout_s)
        return HeldResponse(
            chunks, hold, "application/octet-stream", {HEADER_LENGTH: str(head_len)}, state.body_limits.idle_timeout_s
        )

    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{ref}", model_metadata, methods=["GET"]),
        Route("/v2/models/{ref}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{ref}/infer", held(state, infer), methods=["POST"]),
        Route("/v2/models/{ref}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{ref}/versions/{version}/infer", held(state, infer), methods=["POST"]),
    ]
