"""HTTP routes: thin adapters between the wire and the domain (models, inference).

Two apps: the *unattested* one serves only public evidence over plain HTTP; the
*attested* one (TLS with the key bound into that evidence) serves model
management and the Open Inference Protocol. Every error is JSON
``{"error": "..."}`` with a 4xx/5xx status; nothing here logs tensor data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..._version import __version__
from ...attestation.binding import MAX_NONCE_BYTES
from ...protocol.attestation_doc import encode_attestation_doc
from ...protocol.infer import HEADER_LENGTH, decode_request, encode_response, json_response_bound
from ...protocol.models import (
    INPUT_DATATYPE,
    INPUT_SHAPE,
    MODEL_NAME,
    MODEL_PUBLIC,
    MODEL_SHA256,
    OUTPUT_DATATYPE,
    OWNER_TOKENS,
    encode_model_list,
    encode_upload_answer,
)
from ..errors import InvalidRequest
from ..evidence import EvidenceService, NonceRateLimiter
from ..inference import InferenceEngine
from ..providers import EvidenceProvider
from ..store import ModelStore, parse_hints
from ..tls import TlsIdentity
from .bodies import Body, BodyLimits, HeldResponse, Hold, MemoryBudget, UploadSlots, content_length, read_body
from .errors import HANDLERS

__all__ = ["ServerState", "attested_app", "unattested_app"]

log = logging.getLogger("blindai.server")

# Owner tokens one request may present (each is hashed and compared): enough for any tenant.
MAX_PRESENTED_TOKENS = 256


def _flag(raw: str | None, name: str) -> bool:
    if raw is None or raw.strip().lower() in ("", "0", "false", "no"):
        return False
    if raw.strip().lower() in ("1", "true", "yes"):
        return True
    raise InvalidRequest(f"{name} must be true or false, not {raw[:40]!r}")


@dataclass
class ServerState:
    provider: EvidenceProvider
    identity: TlsIdentity
    store: ModelStore
    engine: InferenceEngine
    max_request_bytes: int = 256 << 20
    v06: bool = True
    body_limits: BodyLimits = field(default_factory=BodyLimits)
    limiter: NonceRateLimiter = field(default_factory=NonceRateLimiter)
    budget: MemoryBudget = field(init=False)
    uploads: UploadSlots = field(init=False)
    evidence: EvidenceService = field(init=False)

    def __post_init__(self) -> None:
        self.evidence = EvidenceService(self.provider, self.identity.spki_sha256, self.limiter)
        self.budget = MemoryBudget(self.body_limits.max_inflight_bytes)
        self.uploads = UploadSlots(self.body_limits.max_concurrent_uploads, 2 * self.body_limits.idle_timeout_s)

    async def read(self, request: Request, hold: Hold, limit: int, what: str, *, sha256: bool = False) -> Body:
        """A bounded body (see bodies.py); memory is counted in ``hold`` as bytes arrive."""
        return await read_body(
            request.stream(),
            content_length(request.headers.get("content-length")),
            max_bytes=limit,
            limits=self.body_limits,
            hold=hold,
            what=what,
            sha256=sha256,
        )


# ------------------------------------------------------------------ unattested port


def unattested_app(state: ServerState) -> Starlette:
    async def attestation(request: Request) -> Response:
        raw = request.query_params.get("nonce", "")
        try:
            nonce = bytes.fromhex(raw)
        except ValueError:
            raise InvalidRequest("nonce must be hex") from None
        if len(raw) > 2 * MAX_NONCE_BYTES:  # refused before hex decoding allocates for it
            raise InvalidRequest(f"nonce is {len(raw) // 2} bytes; at most {MAX_NONCE_BYTES}")
        ev = await asyncio.to_thread(state.evidence.get, nonce)
        return JSONResponse(
            encode_attestation_doc(
                tee=ev.tee,
                evidence=ev.evidence,
                collateral=ev.collateral,
                certificate_pem=state.identity.certificate_pem,
                nonce=nonce,
                version=__version__,
            )
        )

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "tee": state.provider.tee, "version": __version__})

    from cryptography.hazmat.primitives.serialization import Encoding

    from . import compat_v06

    routes = [Route("/attestation", attestation), Route("/health", health)]
    if state.v06:
        routes += compat_v06.unattested_routes(
            state.identity.certificate.public_bytes(Encoding.DER),
            state.provider.tee == "simulation",
            lambda: state.evidence.get(b""),
        )
    return Starlette(routes=routes, exception_handlers=HANDLERS)


# ------------------------------------------------------------------ attested port


def attested_app(state: ServerState) -> Starlette:
    store, engine = state.store, state.engine

    def bearer(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None

    def tokens(request: Request) -> list[str]:
        """Owner tokens the caller presents: its bearer token and any in BlindAI-Owner-Tokens."""
        found = [t.strip() for t in request.headers.get(OWNER_TOKENS, "").split(",") if t.strip()]
        token = bearer(request)
        return ([token] if token else []) + found[:MAX_PRESENTED_TOKENS]

    def held(handler: Callable[[Request, Hold], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Every byte a request holds (body, decoder estimates) is given back when it ends."""

        async def run(request: Request) -> Response:
            # Waiting for room outlasts anything a silent client holds (it times out first).
            hold = Hold(state.budget, wait_s=state.body_limits.idle_timeout_s)
            response: Response | None = None
            try:
                response = await handler(request, hold)
                return response
            finally:
                if not isinstance(response, HeldResponse):  # that one gives it back once it is sent
                    hold.release()

        return run

    async def receive_model(request: Request, hold: Hold) -> tuple[bytes, str]:
        async with state.uploads.slot():
            body = await state.read(request, hold, store.limits.max_model_bytes, "model", sha256=True)
        if not body.data:
            raise InvalidRequest("the upload is empty: send the ONNX model bytes as the request body")
        assert body.sha256 is not None
        return body.data, body.sha256

    async def replace(request: Request, hold: Hold) -> Response:
        ref = request.path_params["ref"]
        store.check_owner_early(ref, bearer(request))
        data, sha256 = await receive_model(request, hold)
        entry = await asyncio.to_thread(store.replace, ref, bearer(request), data, sha256)
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
        public = _flag(raw_public, MODEL_PUBLIC) if raw_public is not None else bool(hints)
        name = request.headers.get(MODEL_NAME) or request.query_params.get("name")
        data, sha256 = await receive_model(request, hold)
        # `data` is the only reference to the body: store.add drops it once onnxruntime has the model.
        entry, token = await asyncio.to_thread(store.add, data, sha256, name=name, hints=hints, public=public)
        del data
        return JSONResponse(encode_upload_answer(entry.info(), token), status_code=201)

    async def list_models(request: Request) -> Response:
        return JSONResponse(encode_model_list([m.info() for m in store.list(tokens(request))]))

    async def get_model(request: Request) -> Response:
        return JSONResponse(store.get(request.path_params["ref"], tokens=tokens(request)).info().to_json())

    async def delete_model(request: Request) -> Response:
        entry = await asyncio.to_thread(store.delete, request.path_params["ref"], bearer(request))
        return JSONResponse({"deleted": entry.model_id})

    async def live(_request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(_request: Request) -> Response:
        return JSONResponse({"name": "blindai", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(request: Request) -> Response:
        entry = store.get(request.path_params["ref"], tokens=tokens(request))
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
        entry = store.get(request.path_params["ref"], tokens=tokens(request))
        return JSONResponse({"name": entry.model_id, "ready": True})

    async def infer(request: Request, hold: Hold) -> Response:
        header_len_raw = request.headers.get(HEADER_LENGTH.lower())
        header_len: int | None = None
        if header_len_raw is not None:
            try:
                header_len = int(header_len_raw)
            except ValueError:
                raise InvalidRequest(f"{HEADER_LENGTH} is not an integer") from None
        # The model first: a request for a model that is not there costs neither its body nor decoding.
        entry = store.get(request.path_params["ref"], sha256=request.headers.get(MODEL_SHA256), tokens=tokens(request))
        body = (await state.read(request, hold, state.max_request_bytes, "request body")).data

        def reserve(n: int) -> None:
            hold.take(n, "decoding this request")

        # Off the event loop, and bounded before it allocates (protocol/infer.py); a TensorError
        # becomes its status in server/http/errors.py.
        req = await asyncio.to_thread(
            decode_request, body, header_len, max_json_bytes=state.body_limits.max_json_bytes, reserve=reserve
        )
        pin = req.parameters.get("blindai_model_sha256")
        if pin is not None:
            if not isinstance(pin, str):
                raise InvalidRequest("blindai_model_sha256 must be a hex string")
            entry = store.get(entry.model_id, sha256=pin)
        requested = [o.name for o in req.outputs] if req.outputs is not None else None
        outputs = await engine.infer(entry.model, req.inputs, requested)
        binary = {n: req.binary_output for n in outputs}
        for o in req.outputs or []:
            if o.binary is not None:
                binary[o.name] = o.binary
        rid, model_id = req.id, entry.model_id
        del req, body
        hold.release()  # the request's bytes are gone; the outputs and their encoding are held instead
        json_bound = json_response_bound(outputs, binary)
        limit = state.body_limits.max_json_response_bytes
        if json_bound > limit:
            raise InvalidRequest(
                f"the outputs sent as JSON could take {json_bound} bytes, above the server's limit of {limit} for "
                "JSON outputs (--max-json-response-bytes): ask for binary outputs "
                '(parameters: {"binary_data_output": true}), as the BlindAI SDK and tritonclient do'
            )
        # Outputs, plus their JSON text and the Python objects made on the way (about twice the text).
        # Taken without waiting: outputs that waited for room would be memory nobody counts.
        hold.take(sum(a.nbytes for a in outputs.values()) + 3 * json_bound, "this response")
        chunks, head_len = await asyncio.to_thread(lambda: encode_response(model_id, outputs, binary, request_id=rid))
        if head_len is None:
            return HeldResponse(chunks, hold, "application/json", {}, state.body_limits.idle_timeout_s)
        return HeldResponse(
            chunks, hold, "application/octet-stream", {HEADER_LENGTH: str(head_len)}, state.body_limits.idle_timeout_s
        )

    routes = [
        Route("/v1/models", held(upload), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{ref}", get_model, methods=["GET"]),
        Route("/v1/models/{ref}", delete_model, methods=["DELETE"]),
        Route("/v1/models/{ref}", held(replace), methods=["PUT"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{ref}", model_metadata, methods=["GET"]),
        Route("/v2/models/{ref}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{ref}/infer", held(infer), methods=["POST"]),
        Route("/v2/models/{ref}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{ref}/versions/{version}/infer", held(infer), methods=["POST"]),
    ]
    if state.v06:
        from . import compat_v06

        async def read(req: Request, hold: Hold, limit: int | None = None) -> bytes:
            return (await state.read(req, hold, limit or state.max_request_bytes, "request body")).data

        routes += compat_v06.attested_routes(
            store, engine.infer, read, held, state.uploads, state.body_limits.idle_timeout_s
        )
    return Starlette(routes=routes, exception_handlers=HANDLERS)
