"""The evidence service: fresh evidence for a client's nonce, the empty-nonce answer cached.

Fresh evidence costs the TEE real work (a quote from the QE, a report from the PSP), so
nonces are rate-limited by a token bucket; the empty nonce's evidence is cached, but not
longer than `EvidenceService.EMPTY_NONCE_TTL_S`, because the collateral served with it (TCB
Info, CRLs) changes and clients refuse expired collateral. Knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import threading
import time

from ..attestation.binding import MAX_NONCE_BYTES, report_data_for
from ..errors import BlindAIError
from .errors import CoreError, InvalidRequest, RateLimited, Unavailable
from .providers import Evidence, EvidenceProvider

__all__ = ["EvidenceService", "NonceRateLimiter"]

log = logging.getLogger("blindai.server")


class NonceRateLimiter:
    """Token bucket: fresh evidence costs the TEE real work, so bound how often it is made."""

    def __init__(self, rate_per_s: float = 50.0, burst: int = 100) -> None:
        self.rate, self.burst = rate_per_s, float(burst)
        self._tokens, self._at = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take one token if there is one (thread-safe)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class EvidenceService:
    """Evidence bound to ``spki_sha256`` and a nonce; blocking (call it from a worker thread)."""

    EMPTY_NONCE_TTL_S = 300.0

    def __init__(self, provider: EvidenceProvider, spki_sha256: bytes, limiter: NonceRateLimiter | None = None) -> None:
        self.provider, self.spki_sha256 = provider, spki_sha256
        self.limiter = limiter or NonceRateLimiter()
        self._empty: Evidence | None = None
        self._empty_at = 0.0
        self._lock = threading.Lock()

    def get(self, nonce: bytes) -> Evidence:
        """The empty nonce may be answered from the cache; any other is fresh and rate-limited."""
        if len(nonce) > MAX_NONCE_BYTES:
            raise InvalidRequest(f"nonce is {len(nonce)} bytes; at most {MAX_NONCE_BYTES}")
        if not nonce:
            with self._lock:
                if self._empty is not None and time.monotonic() - self._empty_at < self.EMPTY_NONCE_TTL_S:
                    return self._empty
        elif not self.limiter.allow():
            raise RateLimited("too many fresh attestation requests; retry shortly")
        try:
            ev = self.provider.get_evidence(report_data_for(self.spki_sha256, nonce))
        except (OSError, BlindAIError, CoreError) as exc:  # NoTeeError, collateral and CRL fetches
            log.error("the TEE could not produce evidence: %s", exc)
            raise Unavailable("the TEE could not produce evidence; see the server log") from exc
        if not nonce:
            with self._lock:
                self._empty, self._empty_at = ev, time.monotonic()
        return ev
