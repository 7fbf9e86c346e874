"""The two apps and their route tables; every refusal becomes a status in ``errors.py``.

The *unattested* app serves only public evidence over plain HTTP; the *attested* one (TLS
with the key bound into that evidence) serves model management (``v1.py``), the Open
Inference Protocol (``oip.py``) and the BlindAI 0.6 routes (``compat_v06.py``). Every error
is JSON ``{"error": "..."}`` with a 4xx/5xx status; nothing here logs tensor data.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..._version import __version__
from ...attestation.binding import MAX_NONCE_BYTES
from ...protocol.attestation_doc import encode_attestation_doc
from ...tees import is_simulation
from ..errors import InvalidRequest
from . import oip, v1
from .errors import HANDLERS
from .state import ServerState

__all__ = ["ServerState", "attested_app", "unattested_app"]


def unattested_app(state: ServerState) -> Starlette:
    async def attestation(request: Request) -> Response:
        raw = request.query_params.get("nonce", "")
        if len(raw) > 4 * MAX_NONCE_BYTES:  # more than any hex nonce, spaced or not: refused before decoding
            raise InvalidRequest(f"nonce is {len(raw)} characters; at most {MAX_NONCE_BYTES} bytes of hex")
        try:
            nonce = bytes.fromhex(raw)
        except ValueError:
            raise InvalidRequest("nonce must be hex") from None
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
            is_simulation(state.provider.tee),
            lambda: state.evidence.get(b""),
        )
    return Starlette(routes=routes, exception_handlers=HANDLERS)


def attested_app(state: ServerState) -> Starlette:
    routes = v1.routes(state) + oip.routes(state)
    if state.v06:
        from . import compat_v06

        routes += compat_v06.attested_routes(state)
    return Starlette(routes=routes, exception_handlers=HANDLERS)
