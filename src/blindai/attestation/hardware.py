"""Hardware verification glue (SGX, TDX, SEV-SNP): collateral sources, trust roots, type detection."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import CollateralError, EvidenceParseError
from . import sev_snp, sgx_tdx, simulation
from .evidence import VerifiedAttestation
from .trust import TrustOptions, unsafe_roots

__all__ = ["detect_tee", "fetch_collateral", "fetch_snp_crl", "load_crl", "verify_dcap", "verify_snp"]

KDS_URL = "https://kdsintf.amd.com"


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


def load_crl(data: bytes | str) -> x509.CertificateRevocationList:
    """A CRL as PEM text, DER bytes, or base64 of DER (how the server's collateral carries it)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_crl(raw)
        try:
            return x509.load_der_x509_crl(raw)
        except ValueError:
            return x509.load_der_x509_crl(base64.b64decode(raw, validate=True))
    except ValueError as exc:
        raise EvidenceParseError("the CRL is not a PEM or DER X.509 CRL", check="crl") from exc


def fetch_snp_crl(url: str, product: str, vlek: bool) -> x509.CertificateRevocationList:
    """The VCEK (or VLEK) CRL from an AMD KDS-shaped service: ``{url}/{vcek|vlek}/v1/{product}/crl``."""
    import httpx

    full = f"{url.rstrip('/')}/{'vlek' if vlek else 'vcek'}/v1/{product}/crl"
    try:
        resp = httpx.get(full, timeout=30, follow_redirects=True, trust_env=False)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise CollateralError(f"could not fetch the SEV-SNP CRL from {full}: {exc}", check="collateral-fetch") from exc
    return load_crl(resp.content)


def verify_dcap(tee: str, evidence: bytes, collateral: Mapping[str, Any] | None, options: TrustOptions) -> Any:
    quote = sgx_tdx.parse_quote(evidence)
    if quote.tee != tee:
        raise EvidenceParseError(
            f"the server says {tee} but the quote is {quote.tee}", check="tee", got=quote.tee, expected=tee
        )
    roots = unsafe_roots(options)
    root_der = roots[0].public_bytes(serialization.Encoding.DER) if roots else None
    if options.collateral_url is not None:  # the client's own source wins over the host's
        collateral = fetch_collateral(options.collateral_url, quote.raw)
    return sgx_tdx.verify_quote(quote, collateral, now=options.now, unsafe_root_ca_der=root_der)


def verify_snp(
    evidence: bytes,
    collateral: Mapping[str, Any] | None,
    options: TrustOptions,
    extra_certs: tuple[bytes, ...] = (),
    crl: x509.CertificateRevocationList | None = None,
) -> VerifiedAttestation:
    """Steps: parse the report; certificates from the given files and/or the host's table; the CRL
    from the caller, else the client's own KDS (``collateral_url``), else the host's collateral;
    then `sev_snp.verify_report` against the pinned ARKs (plus ``unsafe_`` test roots)."""
    report = sev_snp.parse_report(evidence)
    certs = sev_snp.certs_from_collateral(collateral, extra_certs)
    pins = [
        hashlib.sha256(
            c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).digest()
        for c in unsafe_roots(options)
    ]
    if crl is None and options.collateral_url is not None:
        product = sev_snp.cert_product(certs.endorsement) or report.product
        if product is None:
            raise CollateralError("cannot tell the AMD product to fetch its CRL", check="collateral-fetch")
        crl = fetch_snp_crl(options.collateral_url, product, report.signing_key == sev_snp.KEY_VLEK)
    elif crl is None and collateral and isinstance(collateral.get("crl"), str):
        crl = load_crl(collateral["crl"])
    return sev_snp.verify_report(report, certs, crl=crl, now=options.now, unsafe_ark_spki_sha256=pins)
