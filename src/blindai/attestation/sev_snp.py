"""AMD SEV-SNP attestation reports: parse, verify, claims.

References: AMD SEV-SNP Firmware ABI Specification (ATTESTATION_REPORT, table
"ATTESTATION_REPORT Structure", 0x4A0 bytes; TCB_VERSION), AMD "Versioned Chip
Endorsement Key (VCEK) Certificate and KDS Interface Specification" (extension
OIDs 1.3.6.1.4.1.3704.1.*), and the GHCB specification (certificate table GUIDs
used by the kernel's ``auxblob``).

Verification steps, in order:
  1. find the endorsement key certificate (VCEK or VLEK), its intermediate (ASK or
     ASVK) and the root (ARK) among the certificates given;
  2. the ARK's key must be one pinned in this module (or an explicit unsafe_ test root):
     a root is never trusted because the input carries it;
  3. ARK self-signature, ARK -> ASK/ASVK -> VCEK/VLEK signatures (RSA-PSS SHA-384), validity at ``now``;
  4. the CRL, when given: signed by the ARK, current at ``now``, revoking neither certificate;
  5. the report's ECDSA P-384 signature over bytes 0x000..0x2A0 with the endorsement key;
  6. the report's REPORTED_TCB equals the TCB in the VCEK extensions, and CHIP_ID the hwID.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import struct
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from ..errors import CollateralError, EvidenceParseError, SignatureError
from .evidence import VerifiedAttestation

__all__ = [
    "PINNED_ARK_SPKI_SHA256",
    "SnpCerts",
    "SnpReport",
    "TcbVersion",
    "parse_cert_table",
    "parse_report",
    "sort_certs",
    "verify_cert_chain",
    "verify_report",
]

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = range(2, 6)
POLICY_DEBUG_BIT = 1 << 19
SIG_ALGO_ECDSA_P384_SHA384 = 1
KEY_VCEK, KEY_VLEK = 0, 1

# SHA-256 of the SubjectPublicKeyInfo of AMD's root keys (ARK), per product.
PINNED_ARK_SPKI_SHA256: dict[str, bytes] = {
    "Milan": bytes.fromhex("9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9"),
    "Genoa": bytes.fromhex("429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831"),
    "Turin": bytes.fromhex("4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08"),
}

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

# GHCB certificate table GUIDs (the kernel's configfs-tsm auxblob for SNP).
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


@dataclass(frozen=True, slots=True)
class TcbVersion:
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, turin: bool) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:  # Turin layout: FMC, BL, TEE, SNP, reserved x3, UCODE
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def as_dict(self) -> dict[str, int]:
        d = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            d["fmc"] = self.fmc
        return d


@dataclass(frozen=True, slots=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: int
    launch_tcb: int
    signature_r: int
    signature_s: int
    signed: bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG_BIT)

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 0x7

    @property
    def product(self) -> str | None:
        """From CPUID (reports v3+): family 0x19 is Milan (models 0x00-0x0F) or Genoa; 0x1A is Turin."""
        if self.cpuid_fam_id is None:
            return None
        if self.cpuid_fam_id == 0x1A:
            return "Turin"
        if self.cpuid_fam_id == 0x19:
            return "Milan" if (self.cpuid_mod_id or 0) < 0x10 else "Genoa"
        return None


def parse_report(data: bytes) -> SnpReport:
    if len(data) < REPORT_SIZE:
        raise EvidenceParseError(f"SEV-SNP report is {len(data)} bytes; needs {REPORT_SIZE}", check="parse")
    d = bytes(data[:REPORT_SIZE])
    version, guest_svn, policy = struct.unpack_from("<IIQ", d, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceParseError("unsupported SEV-SNP report version", check="parse", got=version, expected="2..5")
    vmpl, sig_algo, current_tcb, platform_info, flags = struct.unpack_from("<IIQQI", d, 0x30)
    has_cpuid = version >= 3
    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=d[0x10:0x20],
        image_id=d[0x20:0x30],
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        flags=flags,
        report_data=d[0x50:0x90],
        measurement=d[0x90:0xC0],
        host_data=d[0xC0:0xE0],
        id_key_digest=d[0xE0:0x110],
        author_key_digest=d[0x110:0x140],
        report_id=d[0x140:0x160],
        report_id_ma=d[0x160:0x180],
        reported_tcb=struct.unpack_from("<Q", d, 0x180)[0],
        cpuid_fam_id=d[0x188] if has_cpuid else None,
        cpuid_mod_id=d[0x189] if has_cpuid else None,
        cpuid_step=d[0x18A] if has_cpuid else None,
        chip_id=d[0x1A0:0x1E0],
        committed_tcb=struct.unpack_from("<Q", d, 0x1E0)[0],
        launch_tcb=struct.unpack_from("<Q", d, 0x1F0)[0],
        signature_r=int.from_bytes(d[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(d[0x2E8:0x330], "little"),
        signed=d[:SIGNED_SIZE],
    )


# ------------------------------------------------------------------ certificates


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
        raise EvidenceParseError(f"a certificate could not be parsed: {exc}", check="certificates") from exc
    for c in certs:
        if isinstance(c.public_key(), ec.EllipticCurvePublicKey):
            end = c
        elif c.issuer == c.subject:
            root = c
        else:
            mid = c
    if end is None:
        raise CollateralError("no VCEK or VLEK certificate among those given", check="certificates")
    return SnpCerts(end, mid, root)


def parse_cert_table(table: bytes) -> list[bytes]:
    """The GHCB certificate table: (GUID, offset, length) entries, ended by an all-zero entry."""
    out: list[bytes] = []
    pos = 0
    while pos + 24 <= len(table):
        guid = uuid.UUID(bytes_le=bytes(table[pos : pos + 16]))
        offset, length = struct.unpack_from("<II", table, pos + 16)
        if guid.int == 0:
            break
        if offset + length > len(table):
            raise EvidenceParseError("certificate table entry points past the table", check="certificates")
        if guid in (GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK):
            out.append(bytes(table[offset : offset + length]))
        pos += 24
    return out


def _spki_sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(
        cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).digest()


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError(f"{what}: issuer key is not RSA", check="chain")
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
        raise SignatureError(f"{what}: signature does not verify", check="chain") from exc
    if cert.issuer != issuer.subject:
        raise SignatureError(f"{what}: issuer name does not match", check="chain")


def _check_time(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CollateralError(
            f"{what} certificate is not valid at {now.isoformat()}",
            check="certificate-time",
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
        raise EvidenceParseError("VCEK TCB extension is not a DER INTEGER", check="certificates")
    return int.from_bytes(raw[2:], "big")


def cert_product(cert: x509.Certificate) -> str | None:
    raw = _ext_raw(cert, OID_PRODUCT)
    if raw is None or len(raw) < 2:
        return None
    return raw[2:].decode("ascii", "replace").split("-")[0]


def verify_report(
    report: SnpReport,
    certs: SnpCerts,
    *,
    crl: x509.CertificateRevocationList | None = None,
    now: dt.datetime | None = None,
    unsafe_ark_spki_sha256: Sequence[bytes] = (),
) -> VerifiedAttestation:
    now = now or dt.datetime.now(dt.UTC)
    end = certs.endorsement
    vlek = report.signing_key == KEY_VLEK
    if report.signing_key not in (KEY_VCEK, KEY_VLEK):
        raise SignatureError(
            "report is signed by no VCEK or VLEK key",
            check="signing-key",
            got=report.signing_key,
            expected="0 (VCEK) or 1 (VLEK)",
        )
    kind = "VLEK" if vlek else "VCEK"
    if ("VLEK" in _cn(end)) != vlek:
        raise SignatureError(
            f"report says it is signed by the {kind}, but the certificate is {_cn(end)!r}", check="signing-key"
        )
    verify_cert_chain(certs, crl=crl, now=now, unsafe_ark_spki_sha256=unsafe_ark_spki_sha256)
    # Step 5: the report signature.
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise SignatureError(
            "unsupported signature algorithm",
            check="signature",
            got=report.signature_algo,
            expected=SIG_ALGO_ECDSA_P384_SHA384,
        )
    key = end.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SignatureError(f"the {kind} key is not ECDSA P-384", check="signature")
    try:
        key.verify(
            encode_dss_signature(report.signature_r, report.signature_s), report.signed, ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature as exc:
        raise SignatureError(f"report signature does not verify with the {kind}", check="signature") from exc
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
        raise SignatureError(f"REPORTED_TCB.{name} differs from the {kind}'s", check="tcb", got=got, expected=want)
    if not vlek:
        hwid = _ext_raw(end, OID_HWID)
        if hwid is not None:
            hw = hwid[2:] if hwid[:1] == b"\x04" and len(hwid) == hwid[1] + 2 else hwid
            if report.chip_id[: len(hw)] != hw:
                raise SignatureError(
                    "CHIP_ID differs from the VCEK's hwID", check="chip-id", got=report.chip_id[: len(hw)], expected=hw
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


def verify_cert_chain(
    certs: SnpCerts,
    *,
    crl: x509.CertificateRevocationList | None = None,
    now: dt.datetime | None = None,
    unsafe_ark_spki_sha256: Sequence[bytes] = (),
) -> None:
    """Steps 1-4: VCEK/VLEK -> ASK/ASVK -> a pinned ARK, validity at ``now``, revocation."""
    now = now or dt.datetime.now(dt.UTC)
    end, mid, root = certs.endorsement, certs.intermediate, certs.root
    kind = "VLEK" if "VLEK" in _cn(end) else "VCEK"
    # Steps 1-2: the chain must end at a pinned ARK.
    if mid is None or root is None:
        raise CollateralError(f"the {kind} chain needs its ASK/ASVK and ARK certificates", check="certificates")
    root_pin = _spki_sha256(root)
    pinned = set(PINNED_ARK_SPKI_SHA256.values()) | set(unsafe_ark_spki_sha256)
    if root_pin not in pinned:
        raise SignatureError(
            "the ARK is not a pinned AMD root key",
            check="root",
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
            raise SignatureError("the CRL is not signed by the ARK", check="crl")
        if crl.next_update_utc is None:
            raise CollateralError("the CRL has no next update: it cannot be known to be current", check="crl-time")
        if not crl.last_update_utc <= now <= crl.next_update_utc:
            raise CollateralError(
                "the CRL is not current",
                check="crl-time",
                got=now.isoformat(),
                expected=f"{crl.last_update_utc.isoformat()}..{crl.next_update_utc.isoformat()}",
            )
        for cert, what in ((mid, "ASK/ASVK"), (end, kind)):
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise CollateralError(f"the {what} certificate is revoked", check="revocation")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise EvidenceParseError(f"collateral {what} is not base64", check="certificates") from exc


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
            "no VCEK/VLEK certificates: give them with --certs or from the server", check="certificates"
        )
    return sort_certs(blobs)
