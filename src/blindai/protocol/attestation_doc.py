"""The ``/attestation`` document: one encoder for the server, one strict decoder for the client.

The answer travels over plain HTTP, so the network may rewrite any of it. The decoder
accepts exactly the shape the encoder writes and refuses everything else before any
cryptography runs: above all, the certificate field must hold **exactly one**
certificate, because the client builds its TLS trust store from it (a second one would
be an attacker's way into that store).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BindingError, Check, EvidenceParseError

__all__ = ["AttestationDoc", "MAX_DOC_BYTES", "decode_attestation_doc", "encode_attestation_doc"]

# A DCAP quote with its PCK chain is ~5 KB, Intel collateral ~20 KB, an SNP certificate table
# and CRL ~10 KB; anything far beyond that is not evidence.
MAX_DOC_BYTES = 4 << 20
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_PEM_ANY = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")


@dataclass(frozen=True, slots=True)
class AttestationDoc:
    """A decoded ``/attestation`` answer: nothing in it is trusted until verified."""

    tee: str
    evidence: bytes
    collateral: dict[str, Any] | None
    certificate_pem: str
    nonce: bytes
    version: str | None = None


def encode_attestation_doc(
    *, tee: str, evidence: bytes, collateral: Mapping[str, Any] | None, certificate_pem: str, nonce: bytes, version: str
) -> dict[str, Any]:
    return {
        "tee": tee,
        "evidence": base64.b64encode(evidence).decode(),
        "collateral": dict(collateral) if collateral is not None else None,
        "certificate": certificate_pem,
        "nonce": nonce.hex(),
        "version": version,
    }


def decode_attestation_doc(doc: object, expected_nonce: bytes) -> AttestationDoc:
    """Shape checks, the one-certificate rule and the nonce echo; typed errors only."""
    if not isinstance(doc, dict):
        raise EvidenceParseError("the /attestation answer is not a JSON object", check=Check.PARSE)
    tee, evidence_b64, cert_pem, nonce = doc.get("tee"), doc.get("evidence"), doc.get("certificate"), doc.get("nonce")
    for key, value in (("tee", tee), ("evidence", evidence_b64), ("certificate", cert_pem), ("nonce", nonce)):
        if not isinstance(value, str):
            raise EvidenceParseError(
                f"the /attestation answer's {key!r} is missing or not a string",
                check=Check.PARSE,
                got=type(value).__name__,
            )
    assert isinstance(tee, str) and isinstance(evidence_b64, str) and isinstance(cert_pem, str)
    collateral = doc.get("collateral")
    if collateral is not None and not isinstance(collateral, dict):
        raise EvidenceParseError("the /attestation answer's 'collateral' is not an object or null", check=Check.PARSE)
    if nonce != expected_nonce.hex():
        raise BindingError(
            "the server answered for another nonce (stale or replayed evidence)",
            check=Check.NONCE,
            got=nonce,
            expected=expected_nonce.hex(),
        )
    try:
        evidence = base64.b64decode(evidence_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceParseError("evidence is not base64", check=Check.PARSE) from exc
    certs = _PEM_CERT.findall(cert_pem)
    blocks = _PEM_ANY.findall(cert_pem)
    if len(certs) != 1 or len(blocks) != 1:
        raise EvidenceParseError(
            "the /attestation answer must carry exactly one certificate",
            check=Check.CERTIFICATE,
            got=f"{len(blocks)} PEM blocks",
            expected="exactly one certificate",
        )
    version = doc.get("version")
    return AttestationDoc(
        tee=tee,
        evidence=evidence,
        collateral=collateral,
        certificate_pem=certs[0].strip() + "\n",
        nonce=expected_nonce,
        version=version if isinstance(version, str) else None,
    )
