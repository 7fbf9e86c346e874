"""The binding rule: evidence proves which TLS key the client talks to.

``report_data = SHA-512(DOMAIN || SHA-256(SubjectPublicKeyInfo DER) || nonce)``
fills the 64 bytes that SGX, TDX and SEV-SNP reports carry for the caller. The
domain string keeps this hash from ever meaning anything in another protocol;
the client-chosen nonce (0..64 bytes) gives freshness.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import BindingError, Check, EvidenceParseError

__all__ = ["DOMAIN", "MAX_NONCE_BYTES", "check_binding", "report_data_for", "spki_der", "spki_sha256"]

DOMAIN = b"blindai/attestation/v1"
"""Domain separation for ``report_data``: these hashes cannot be mistaken for another protocol's."""
MAX_NONCE_BYTES = 64
REPORT_DATA_BYTES = 64


def spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo: the key, not the certificate, is what gets bound."""
    return hashlib.sha256(spki_der(cert)).digest()


def report_data_for(spki_hash: bytes, nonce: bytes) -> bytes:
    """The 64 bytes a server must put in its evidence: ``SHA-512(DOMAIN || spki_hash || nonce)``.

    The domain string keeps these bytes from meaning anything in another protocol; the nonce
    makes the evidence fresh for this client.
    """
    if len(spki_hash) != 32:
        raise ValueError("spki_hash must be a SHA-256 digest")
    if len(nonce) > MAX_NONCE_BYTES:
        raise ValueError(f"nonce is {len(nonce)} bytes; at most {MAX_NONCE_BYTES}")
    return hashlib.sha512(DOMAIN + spki_hash + nonce).digest()


def load_certificate(pem: str | bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise EvidenceParseError(
            "the server's certificate is not a PEM X.509 certificate", check=Check.CERTIFICATE
        ) from exc


def check_binding(report_data: bytes, cert: x509.Certificate, nonce: bytes) -> None:
    """Fails closed unless the evidence commits to exactly this key and nonce."""
    expected = report_data_for(spki_sha256(cert), nonce)
    if not hmac.compare_digest(bytes(report_data[:REPORT_DATA_BYTES]), expected):
        raise BindingError(
            "report_data does not bind the server's TLS public key and this connection's nonce",
            check=Check.BINDING,
            got=bytes(report_data[:REPORT_DATA_BYTES]),
            expected=expected,
        )
