"""Trust anchors and where collateral may come from, injected per call (never global).

Vendor roots are pinned by key in the TEE modules (``sgx_tdx.INTEL_SGX_ROOT_SPKI_SHA256``,
``sev_snp.PINNED_ARK_SPKI_SHA256``). ``unsafe_trust_roots`` adds test PKI roots, in one
shape for every TEE (PEM or DER certificates); the name says what it is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from ..errors import EvidenceParseError

__all__ = ["TrustOptions", "unsafe_roots"]


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
    out: list[x509.Certificate] = []
    for pem in options.unsafe_trust_roots:
        try:
            out += x509.load_pem_x509_certificates(pem) if b"BEGIN" in pem else [x509.load_der_x509_certificate(pem)]
        except ValueError as exc:
            raise EvidenceParseError("an unsafe trust root is not a PEM or DER certificate", check="root") from exc
    return out
