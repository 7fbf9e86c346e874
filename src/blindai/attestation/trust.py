"""Trust anchors and where collateral may come from, injected per call (never global).

The vendor roots are pinned here by key: the Intel SGX Root CA and AMD's ARKs. Neither
verifier takes a root from anywhere else: ``TrustOptions.unsafe_trust_roots`` adds test PKI
roots, in one shape for every TEE (PEM or DER certificates); the name says what it is.
A root is never trusted because the evidence or the collateral carries it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from ..errors import Check, EvidenceParseError
from .binding import spki_sha256

__all__ = [
    "INTEL_SGX_ROOT_SPKI_SHA256",
    "PINNED_ARK_SPKI_SHA256",
    "TrustOptions",
    "unsafe_root_pins",
    "unsafe_roots",
]

# SHA-256 of the Intel SGX Root CA's SubjectPublicKeyInfo: the key is pinned, not the
# certificate bytes (Intel reissued the certificate with the same key).
INTEL_SGX_ROOT_SPKI_SHA256 = bytes.fromhex("a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e")

# SHA-256 of the SubjectPublicKeyInfo of AMD's root keys (ARK), per product.
PINNED_ARK_SPKI_SHA256: dict[str, bytes] = {
    "Milan": bytes.fromhex("9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9"),
    "Genoa": bytes.fromhex("429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831"),
    "Turin": bytes.fromhex("4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08"),
}


@dataclass(frozen=True, slots=True)
class TrustOptions:
    """Injected time and trust anchors; ``unsafe_`` roots are for test PKIs only.

    ``collateral_url``: the client's own collateral source (a PCCS or Intel PCS for SGX/TDX,
    an AMD KDS for SEV-SNP CRLs). When set, collateral the host served is ignored: the
    client verifies with what it fetched itself. None: never go to the network.
    """

    now: dt.datetime | None = None
    unsafe_trust_roots: tuple[bytes, ...] = ()
    collateral_url: str | None = None


def unsafe_roots(options: TrustOptions) -> list[x509.Certificate]:
    """The test roots of ``options`` as certificates (PEM, possibly several per entry, or DER)."""
    out: list[x509.Certificate] = []
    for pem in options.unsafe_trust_roots:
        try:
            out += x509.load_pem_x509_certificates(pem) if b"BEGIN" in pem else [x509.load_der_x509_certificate(pem)]
        except ValueError as exc:
            raise EvidenceParseError("an unsafe trust root is not a PEM or DER certificate", check=Check.ROOT) from exc
    return out


def unsafe_root_pins(options: TrustOptions) -> tuple[bytes, ...]:
    """The SPKI SHA-256 of each test root: what the verifiers compare a chain's root key with."""
    return tuple(spki_sha256(c) for c in unsafe_roots(options))
