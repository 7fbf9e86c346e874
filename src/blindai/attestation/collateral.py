"""The one place collateral is fetched or decoded: Intel PCCS / PCS, AMD KDS CRLs, CRL bytes.

Fetching happens only where the user asked for it (``TrustOptions.collateral_url``, the
server's ``--pccs-url`` / ``--snp-crl-url``); what comes back is verified like collateral
from anywhere else, against the pinned roots.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509

from ..errors import Check, CollateralError, EvidenceParseError

__all__ = ["KDS_URL", "fetch_collateral", "fetch_snp_crl", "load_crl"]

KDS_URL = "https://kdsintf.amd.com"


def fetch_collateral(url: str, quote: bytes) -> dict[str, Any]:
    """Intel collateral from a PCCS (or Intel PCS: ``dcap_qvl.INTEL_PCS_URL``), in the QuoteCollateralV3 layout."""
    import asyncio
    import json

    import dcap_qvl

    try:
        fetched = asyncio.run(dcap_qvl.get_collateral(url, quote))
    except (ValueError, RuntimeError, OSError) as exc:
        raise CollateralError(f"could not fetch collateral from {url}: {exc}", check=Check.COLLATERAL_FETCH) from exc
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
        raise EvidenceParseError("the CRL is not a PEM or DER X.509 CRL", check=Check.CRL) from exc


def fetch_snp_crl(url: str, product: str, vlek: bool, *, proxy_env: bool = False) -> x509.CertificateRevocationList:
    """The VCEK (or VLEK) CRL from an AMD KDS-shaped service: ``{url}/{vcek|vlek}/v1/{product}/crl``.

    ``proxy_env``: honour ``HTTPS_PROXY`` and friends (a server in a CVM may only reach KDS
    through one; the CRL is signed by AMD's root, so a proxy cannot forge it).
    """
    import httpx

    full = f"{url.rstrip('/')}/{'vlek' if vlek else 'vcek'}/v1/{product}/crl"
    try:
        resp = httpx.get(full, timeout=30, follow_redirects=True, trust_env=proxy_env)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise CollateralError(
            f"could not fetch the SEV-SNP CRL from {full}: {exc}", check=Check.COLLATERAL_FETCH
        ) from exc
    return load_crl(resp.content)
