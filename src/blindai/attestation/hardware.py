"""Hardware verifiers (SGX, TDX, SEV-SNP), registered with the dispatcher, and type detection."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import CollateralError, EvidenceParseError
from . import sev_snp, sgx_tdx, simulation
from .evidence import VerifiedAttestation
from .verify import TrustOptions, register_verifier

__all__ = ["detect_tee", "verify_dcap", "verify_snp"]


def detect_tee(data: bytes) -> str:
    """Tell the evidence kind from its bytes: simulation, sgx, tdx or sev-snp."""
    if data[:8] == simulation.MAGIC:
        return "simulation"
    if len(data) >= 8:
        version, akt, tee_type = struct.unpack_from("<HHI", data, 0)
        if version in (3, 4, 5) and akt == sgx_tdx.ATT_KEY_ECDSA_P256 and tee_type in (0, 0x81):
            return "tdx" if tee_type == 0x81 else "sgx"
    if len(data) >= sev_snp.REPORT_SIZE:
        (version,) = struct.unpack_from("<I", data, 0)
        (algo,) = struct.unpack_from("<I", data, 0x34)
        if version in sev_snp.SUPPORTED_VERSIONS and algo == sev_snp.SIG_ALGO_ECDSA_P384_SHA384:
            return "sev-snp"
    raise EvidenceParseError("not SGX or TDX quote, SEV-SNP report or simulation evidence", check="detect")


def fetch_collateral(url: str, quote: bytes) -> dict[str, Any]:
    """Collateral from a PCCS (or Intel PCS: ``dcap_qvl.INTEL_PCS_URL``); only when the user asked for it."""
    import asyncio
    import json

    import dcap_qvl

    try:
        fetched = asyncio.run(dcap_qvl.get_collateral(url, quote))
    except (ValueError, RuntimeError, OSError) as exc:
        raise CollateralError(f"could not fetch collateral from {url}: {exc}", check="collateral-fetch") from exc
    result: dict[str, Any] = json.loads(fetched.to_json())
    return result


def _roots(options: TrustOptions) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for pem in options.unsafe_trust_roots:
        out += x509.load_pem_x509_certificates(pem) if b"BEGIN" in pem else [x509.load_der_x509_certificate(pem)]
    return out


def verify_dcap(tee: str) -> Any:
    def verifier(evidence: bytes, collateral: Mapping[str, Any] | None, options: TrustOptions) -> VerifiedAttestation:
        quote = sgx_tdx.parse_quote(evidence)
        if quote.tee != tee:
            raise EvidenceParseError(
                f"the server says {tee} but the quote is {quote.tee}", check="tee", got=quote.tee, expected=tee
            )
        roots = _roots(options)
        root_der = roots[0].public_bytes(serialization.Encoding.DER) if roots else None
        if collateral is None and options.collateral_url is not None:
            collateral = fetch_collateral(options.collateral_url, quote.raw)
        return sgx_tdx.verify_quote(quote, collateral, now=options.now, unsafe_root_ca_der=root_der)

    return verifier


def verify_snp(
    evidence: bytes,
    collateral: Mapping[str, Any] | None,
    options: TrustOptions,
    extra_certs: tuple[bytes, ...] = (),
    crl: x509.CertificateRevocationList | None = None,
) -> VerifiedAttestation:
    report = sev_snp.parse_report(evidence)
    certs = sev_snp.certs_from_collateral(collateral, extra_certs)
    pins = [
        hashlib.sha256(
            c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).digest()
        for c in _roots(options)
    ]
    if crl is None and collateral and isinstance(collateral.get("crl"), str):
        crl = x509.load_pem_x509_crl(collateral["crl"].encode())
    return sev_snp.verify_report(report, certs, crl=crl, now=options.now, unsafe_ark_spki_sha256=pins)


register_verifier("sgx", verify_dcap("sgx"))
register_verifier("tdx", verify_dcap("tdx"))
register_verifier("sev-snp", lambda ev, col, opts: verify_snp(ev, col, opts))
