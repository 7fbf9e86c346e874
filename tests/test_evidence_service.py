"""The evidence service, without HTTP: binding, the empty-nonce cache, the rate limit, failures."""

from __future__ import annotations

import hashlib

import pytest

from blindai.attestation.binding import report_data_for
from blindai.server.errors import InvalidRequest, RateLimited, Unavailable
from blindai.server.evidence import EvidenceService, NonceRateLimiter
from blindai.server.providers import Evidence, SimulationProvider

SPKI = hashlib.sha256(b"the server's key").digest()


class Counting(SimulationProvider):
    """The simulation provider, counting how often the 'TEE' is asked (and failing on request)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bytes] = []
        self.fail: Exception | None = None

    def get_evidence(self, report_data: bytes) -> Evidence:
        self.asked.append(report_data)
        if self.fail is not None:
            raise self.fail
        return super().get_evidence(report_data)


def test_evidence_is_bound_to_the_key_and_nonce_and_the_empty_nonce_is_cached() -> None:
    tee = Counting()
    svc = EvidenceService(tee, SPKI)
    first, again = svc.get(b""), svc.get(b"")
    assert first is again and tee.asked == [report_data_for(SPKI, b"")]
    svc.get(b"n1")
    svc.get(b"n1")
    assert tee.asked[1:] == [report_data_for(SPKI, b"n1")] * 2  # a nonce is never answered from a cache


def test_the_empty_nonce_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    tee = Counting()
    svc = EvidenceService(tee, SPKI)
    svc.get(b"")
    monkeypatch.setattr(EvidenceService, "EMPTY_NONCE_TTL_S", 0.0)
    svc.get(b"")
    assert len(tee.asked) == 2


def test_fresh_nonces_are_rate_limited_and_the_empty_nonce_is_not() -> None:
    tee = Counting()
    svc = EvidenceService(tee, SPKI, NonceRateLimiter(rate_per_s=0.001, burst=3))
    for i in range(3):
        svc.get(bytes([i]))
    with pytest.raises(RateLimited):
        svc.get(b"\x09")
    assert len(tee.asked) == 3  # the refused request cost the TEE nothing
    svc.get(b"")  # the cached answer needs no token


def test_a_long_nonce_and_a_failing_tee_are_typed_refusals() -> None:
    tee = Counting()
    svc = EvidenceService(tee, SPKI)
    with pytest.raises(InvalidRequest, match="at most 64"):
        svc.get(bytes(65))
    tee.fail = OSError("quote device gone")
    with pytest.raises(Unavailable, match="see the server log") as err:
        svc.get(b"n")
    assert "quote device gone" not in str(err.value)  # the host's detail stays in the server log
    assert tee.asked == [report_data_for(SPKI, b"n")]
