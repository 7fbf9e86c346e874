"""What every route shares: the server's state, bounded body reading, the caller's tokens, and
`held`, which gives back a request's share of the in-flight budget when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from ...protocol.models import OWNER_TOKENS
from ..errors import InvalidRequest
from ..evidence import EvidenceService, NonceRateLimiter
from ..inference import InferenceEngine
from ..providers import EvidenceProvider
from ..store import ModelEntry, ModelStore
from ..tls import TlsIdentity
from .bodies import Body, BodyLimits, HeldResponse, Hold, MemoryBudget, Sink, UploadSlots, content_length, read_body

__all__ = [
    "MAX_PRESENTED_TOKENS",
    "ServerState",
    "bearer",
    "bearer_of",
    "flag",
    "held",
    "presented_tokens",
    "tokens_of",
]

# Owner tokens one request may present (each is hashed and compared): enough for any tenant.
MAX_PRESENTED_TOKENS = 256


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
    inflight: MemoryBudget | None = None  # the budget, when made before the front workers forked (shared)
    budget: MemoryBudget = field(init=False)
    uploads: UploadSlots = field(init=False)
    evidence: EvidenceService = field(init=False)

    def __post_init__(self) -> None:
        self.evidence = EvidenceService(self.provider, self.identity.spki_sha256, self.limiter)
        self.budget = self.inflight or MemoryBudget(self.body_limits.max_inflight_bytes)
        self.uploads = UploadSlots(self.body_limits.max_concurrent_uploads, 2 * self.body_limits.idle_timeout_s)

    async def model(self, ref: str, *, sha256: str | None = None, tokens: Iterable[str] = ()) -> ModelEntry:
        """``store.get`` for handlers: a due reload of a listed model that did not load (a whole
        sealed file read and decrypted) runs in a thread, never on the event loop."""
        if self.store.reload_due(ref):
            return await asyncio.to_thread(self.store.get, ref, sha256=sha256, tokens=tokens)
        return self.store.get(ref, sha256=sha256, tokens=tokens)

    async def read(
        self, request: Request, hold: Hold, limit: int, what: str, *, sha256: bool = False, into: Sink | None = None
    ) -> Body:
        """A bounded body (see bodies.py); memory is counted in ``hold`` as bytes arrive."""
        return await read_body(
            request.stream(),
            content_length(request.headers.get("content-length")),
            max_bytes=limit,
            limits=self.body_limits,
            hold=hold,
            what=what,
            sha256=sha256,
            into=into,
        )


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    return bearer_of(request.headers.get("authorization", ""))


def bearer_of(authorization: str) -> str | None:
    """The token of an ``Authorization`` header's value, if it is ``Bearer <token>``."""
    return (authorization[7:].strip() or None) if authorization[:7].lower() == "bearer " else None


def presented_tokens(request: Request) -> list[str]:
    """Owner tokens the caller presents: its bearer token and any in BlindAI-Owner-Tokens."""
    return tokens_of(request.headers.get("authorization", ""), request.headers.get(OWNER_TOKENS, ""))


def tokens_of(authorization: str, owner_tokens: str) -> list[str]:
    """``presented_tokens`` from the two headers' values (a front worker parses them itself)."""
    found = [t.strip() for t in owner_tokens.split(",") if t.strip()]
    token = bearer_of(authorization)
    return ([token] if token else []) + found[:MAX_PRESENTED_TOKENS]


def flag(raw: str | None, name: str) -> bool:
    """A boolean header: true/false, 1/0, yes/no (absent or empty is false)."""
    if raw is None or raw.strip().lower() in ("", "0", "false", "no"):
        return False
    if raw.strip().lower() in ("1", "true", "yes"):
        return True
    raise InvalidRequest(f"{name} must be true or false, not {raw[:40]!r}")


Handler = Callable[[Request, Hold], Awaitable[Response]]


def held(state: ServerState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
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
