"""Verify AMD SEV-SNP attestation reports: certificate chain, CRL, signature, TCB and chip checks.

References: AMD SEV-SNP Firmware ABI Specification (ATTESTATION_REPORT, TCB_VERSION; layouts
in `snp_abi`) and AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification" (extension OIDs 1.3.6.1.4.1.3704.1.*, RSA-PSS SHA-384 chain, CRLs).

Verification steps, in order (`verify_report`; steps 1-4 are `verify_cert_chain`):
  0. the report names a VCEK or VLEK as its signing key, and the certificate given is that kind;
  1. find the endorsement key certificate (VCEK or VLEK), its intermediate (ASK or ASVK) and
     the root (ARK) among the certificates given;
  2. the ARK's key must be pinned (`trust.PINNED_ARK_SPKI_SHA256`, or an ``unsafe_`` test root
     of `TrustOptions`): a root is never trusted because the input carries it;
  3. ARK self-signature, ARK -> ASK/ASVK -> VCEK/VLEK signatures (RSA-PSS SHA-384), validity at ``now``;
  4. the CRL, when given: signed by the ARK, current at ``now``, revoking neither certificate;
  5. the report's ECDSA P-384 signature over bytes 0x000..0x29F with the endorsement key;
  6. the report's REPORTED_TCB equals the TCB in the VCEK's extensions, and CHIP_ID its hwID.
"""

from __future__ import annotations

import base64
import datetime as dt
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from ..errors import Check, CollateralError, EvidenceParseError, SignatureError
from .binding import spki_sha256
from .collateral import fetch_snp_crl, load_crl
from .evidence import VerifiedAttestation
from .snp_abi import (
    KEY_VCEK,
    KEY_VLEK,
    SIG_ALGO_ECDSA_P384_SHA384,
    SnpReport,
    TcbVersion,
    parse_cert_table,
    parse_report,
)
from .trust import PINNED_ARK_SPKI_SHA256, TrustOptions, unsafe_root_pins

__all__ = [
    "SnpCerts",
    "cert_product",
    "certs_from_collateral",
    "sort_certs",
    "verify_cert_chain",
    "verify_report",
    "verify_snp_evidence",
]

_OID = "1.3.6.1.4.1.3704.1."
OID_PRODUCT = _OID + "2"
OID_TCB = {
    "bootloader": _OID + "3.1",
    "tee": _OID + "3.2",
    "snp": _OID + "3.3",
    "microcode": _OID + "3.8",
    "fmc": _OID + "3.9",
}
OID_HWID = _OID + "4"


@dataclass(frozen=True, slots=True)
class SnpCerts:
    endorsement: x509.Certificate  # VCEK or VLEK
    intermediate: x509.Certificate | None  # ASK or ASVK
    root: x509.Certificate | None  # ARK


def _load_any(blob: bytes) -> list[x509.Certificate]:
    # AMD's certificates all have serial number 0, which cryptography warns about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if b"-----BEGIN" in blob:
            return x509.load_pem_x509_certificates(blob)
        return [x509.load_der_x509_certificate(blob)]


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def sort_certs(blobs: Iterable[bytes]) -> SnpCerts:
    """Classify certificates by role: self-signed RSA is the ARK, EC is the VCEK/VLEK, other RSA the ASK/ASVK."""
    end = mid = root = None
    try:
        certs = [c for b in blobs for c in _load_any(b)]
    except ValueError as exc:
        raise EvidenceParseError(f"a certificate could not be parsed: {exc}", check=Check.CERTIFICATES) from exc
    for c in certs:
        if isinstance(c.public_key(), ec.EllipticCurvePublicKey):
            end = c
        elif c.issuer == c.subject:
            root = c
        else:
            mid = c
    if end is None:
        raise CollateralError("no VCEK or VLEK certificate among those given", check=Check.CERTIFICATES)
    return SnpCerts(end, mid, root)


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError(f"{what}: issuer key is not RSA", check=Check.CHAIN)
    algo = cert.signature_hash_algorithm or hashes.SHA384()
    try:
        if cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS:
            key.verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size),
                algo,
            )
        else:
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algo)
    except InvalidSignature as exc:
        raise SignatureError(f"{what}: signature does not verify", check=Check.CHAIN) from exc
    if cert.issuer != issuer.subject:
        raise SignatureError(f"{what}: issuer name does not match", check=Check.CHAIN)


def _check_time(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CollateralError(
            f"{what} certificate is not valid at {now.isoformat()}",
            check=Check.CERTIFICATE_TIME,
            got=now.isoformat(),
            expected=f"{cert.not_valid_before_utc.isoformat()}..{cert.not_valid_after_utc.isoformat()}",
        )


def _ext_raw(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return bytes(value.value) if isinstance(value, x509.UnrecognizedExtension) else None


def _der_small_int(raw: bytes) -> int:
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2:
        raise EvidenceParseError("VCEK TCB extension is not a DER INTEGER", check=Check.CERTIFICATES)
    return int.from_bytes(raw[2:], "big")


def cert_product(cert: x509.Certificate) -> str | None:
    """The product name of a VCEK ("Milan", "Genoa", "Turin"), from its productName extension."""
    raw = _ext_raw(cert, OID_PRODUCT)
    if raw is None or len(raw) < 2:
        return None
    return raw[2:].decode("ascii", "replace").split("-")[0]


def verify_cert_chain(
    certs: SnpCerts, *, crl: x509.CertificateRevocationList | None = None, options: TrustOptions | None = None
) -> None:
    """Steps 1-4: VCEK/VLEK -> ASK/ASVK -> a pinned ARK, validity at ``options.now``, revocation."""
    opts = options or TrustOptions()
    now = opts.now or dt.datetime.now(dt.UTC)
    end, mid, root = certs.endorsement, certs.intermediate, certs.root
    kind = "VLEK" if "VLEK" in _cn(end) else "VCEK"
    # Step 1: the whole chain is there.
    if mid is None or root is None:
        raise CollateralError(f"the {kind} chain needs its ASK/ASVK and ARK certificates", check=Check.CERTIFICATES)
    # Step 2: it ends at a pinned ARK.
    root_pin = spki_sha256(root)
    if root_pin not in {*PINNED_ARK_SPKI_SHA256.values(), *unsafe_root_pins(opts)}:
        raise SignatureError(
            "the ARK is not a pinned AMD root key",
            check=Check.ROOT,
            got=root_pin,
            expected="one of the pinned AMD ARKs (Milan, Genoa, Turin)",
        )
    # Step 3: signatures and validity.
    _check_signed_by(root, root, "ARK self-signature")
    _check_signed_by(mid, root, "ASK/ASVK")
    _check_signed_by(end, mid, kind)
    for cert, what in ((root, "ARK"), (mid, "ASK/ASVK"), (end, kind)):
        _check_time(cert, now, what)
    # Step 4: revocation.
    if crl is not None:
        root_key = root.public_key()
        if not isinstance(root_key, rsa.RSAPublicKey) or not crl.is_signature_valid(root_key):
            raise SignatureError("the CRL is not signed by the ARK", check=Check.CRL)
        if crl.next_update_utc is None:
            raise CollateralError("the CRL has no next update: it cannot be known to be current", check=Check.CRL_TIME)
        if not crl.last_update_utc <= now <= crl.next_update_utc:
            raise CollateralError(
                "the CRL is not current",
                check=Check.CRL_TIME,
                got=now.isoformat(),
                expected=f"{crl.last_update_utc.isoformat()}..{crl.next_update_utc.isoformat()}",
            )
        for cert, what in ((mid, "ASK/ASVK"), (end, kind)):
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise CollateralError(f"the {what} certificate is revoked", check=Check.REVOCATION)


def verify_report(
    report: SnpReport,
    certs: SnpCerts,
    *,
    crl: x509.CertificateRevocationList | None = None,
    options: TrustOptions | None = None,
) -> VerifiedAttestation:
    """Steps 0-6 of the module docstring; time and test roots come from ``options`` only."""
    end = certs.endorsement
    # Step 0: the signing key kind agrees with the certificate.
    if report.signing_key not in (KEY_VCEK, KEY_VLEK):
        raise SignatureError(
            "report is signed by no VCEK or VLEK key",
            check=Check.SIGNING_KEY,
            got=report.signing_key,
            expected="0 (VCEK) or 1 (VLEK)",
        )
    vlek = report.signing_key == KEY_VLEK
    kind = "VLEK" if vlek else "VCEK"
    if ("VLEK" in _cn(end)) != vlek:
        raise SignatureError(
            f"report says it is signed by the {kind}, but the certificate is {_cn(end)!r}", check=Check.SIGNING_KEY
        )
    # Steps 1-4.
    verify_cert_chain(certs, crl=crl, options=options)
    # Step 5: the report signature.
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise SignatureError(
            "unsupported signature algorithm",
            check=Check.SIGNATURE,
            got=report.signature_algo,
            expected=SIG_ALGO_ECDSA_P384_SHA384,
        )
    key = end.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SignatureError(f"the {kind} key is not ECDSA P-384", check=Check.SIGNATURE)
    try:
        key.verify(
            encode_dss_signature(report.signature_r, report.signature_s), report.signed, ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature as exc:
        raise SignatureError(f"report signature does not verify with the {kind}", check=Check.SIGNATURE) from exc
    # Step 6: the reported TCB (and chip) must be the one the VCEK was issued for.
    product = cert_product(end) or report.product or ""
    tcb = TcbVersion.decode(report.reported_tcb, turin=product.startswith("Turin"))
    # VCEKs, and VLEKs where they carry them, state the TCB they were issued for.
    mismatched = []
    for name, value in tcb.as_dict().items():
        raw = _ext_raw(end, OID_TCB[name])
        if raw is not None and _der_small_int(raw) != value:
            mismatched.append((name, value, _der_small_int(raw)))
    if mismatched:
        name, got, want = mismatched[0]
        raise SignatureError(f"REPORTED_TCB.{name} differs from the {kind}'s", check=Check.TCB, got=got, expected=want)
    if not vlek:
        hwid = _ext_raw(end, OID_HWID)
        if hwid is not None:
            hw = hwid[2:] if hwid[:1] == b"\x04" and len(hwid) == hwid[1] + 2 else hwid
            if report.chip_id[: len(hw)] != hw:
                raise SignatureError(
                    "CHIP_ID differs from the VCEK's hwID",
                    check=Check.CHIP_ID,
                    got=report.chip_id[: len(hw)],
                    expected=hw,
                )
    svns = {f"tcb.{k}": v for k, v in tcb.as_dict().items()}
    svns.update({"guest_svn": report.guest_svn, "vmpl": report.vmpl, "guest_policy": report.policy})
    return VerifiedAttestation(
        tee="sev-snp",
        measurements={"measurement": report.measurement.hex(), "host_data": report.host_data.hex()},
        debug=report.debug,
        report_data=report.report_data,
        tcb_status=None,
        svns=svns,
        crl_checked=crl is not None,
    )


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise EvidenceParseError(f"collateral {what} is not base64", check=Check.CERTIFICATES) from exc


def certs_from_collateral(collateral: Mapping[str, Any] | None, extra: Sequence[bytes] = ()) -> SnpCerts:
    """Certificates from the server's collateral (the auxblob certificate table) and/or given files."""
    blobs = list(extra)
    if collateral:
        table = collateral.get("snp_certs")
        if isinstance(table, str):
            blobs += parse_cert_table(_b64(table, "snp_certs"))
        for key in ("vcek", "vlek", "ask", "ark"):
            value = collateral.get(key)
            if isinstance(value, str):
                blobs.append(value.encode() if "BEGIN" in value else _b64(value, key))
    if not blobs:
        raise CollateralError(
            "no VCEK/VLEK certificates: give them with --certs or from the server", check=Check.CERTIFICATES
        )
    return sort_certs(blobs)


def verify_snp_evidence(
    evidence: bytes,
    collateral: Mapping[str, Any] | None,
    options: TrustOptions,
    extra_certs: tuple[bytes, ...] = (),
    crl: x509.CertificateRevocationList | None = None,
) -> VerifiedAttestation:
    """Parse the report; certificates from the given files and/or the host's table; the CRL from the
    caller, else the client's own KDS (``options.collateral_url``), else the host's collateral; then
    `verify_report` against the pinned ARKs (plus ``unsafe_`` test roots)."""
    report = parse_report(evidence)
    certs = certs_from_collateral(collateral, extra_certs)
    if crl is None and options.collateral_url is not None:
        product = cert_product(certs.endorsement) or report.product
        if product is None:
            raise CollateralError("cannot tell the AMD product to fetch its CRL", check=Check.COLLATERAL_FETCH)
        crl = fetch_snp_crl(options.collateral_url, product, report.signing_key == KEY_VLEK)
    elif crl is None and collateral and isinstance(collateral.get("crl"), str):
        crl = load_crl(collateral["crl"])
    return verify_report(report, certs, crl=crl, options=options)
