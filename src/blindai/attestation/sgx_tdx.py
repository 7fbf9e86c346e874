"""Intel DCAP quotes: SGX v3, TDX v4 and v5. Parse here; verify with dcap-qvl.

Layout references: Intel SGX ECDSA Quote Library API (quote v3) and Intel TDX
DCAP Quoting Library API (quote v4 and v5). Parsing goes strictly by the length
fields; whatever follows the signature data (padding, junk) is ignored and never
reaches the verifier. dcap-qvl then checks the signatures, the PCK chain to the
Intel root, the CRLs, TCB Info and QE Identity and their validity at an
injected time, and derives the TCB status and advisories.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import CollateralError, EvidenceParseError, PolicyError, SignatureError
from .evidence import VerifiedAttestation

__all__ = [
    "INTEL_SGX_ROOT_SPKI_SHA256",
    "DcapQuote",
    "SgxReportBody",
    "TdReportBody",
    "parse_quote",
    "verify_quote",
]

# SHA-256 of the Intel SGX Root CA's SubjectPublicKeyInfo: the key is pinned, not the
# certificate bytes (Intel reissued the certificate with the same key).
INTEL_SGX_ROOT_SPKI_SHA256 = bytes.fromhex("a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e")

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
BODY_SGX, BODY_TD10, BODY_TD15 = 1, 2, 3
SGX_FLAG_DEBUG = 0x02
TD_ATTR_DEBUG = 0x01
MAX_SIGNATURE_DATA = 1 << 20

_HEADER = struct.Struct("<HHIHH16s20s")


@dataclass(frozen=True, slots=True)
class SgxReportBody:
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.attributes[:8], "little") & SGX_FLAG_DEBUG)


@dataclass(frozen=True, slots=True)
class TdReportBody:
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTR_DEBUG)


@dataclass(frozen=True, slots=True)
class DcapQuote:
    """A parsed DCAP quote. ``raw`` is exactly the signed quote, without trailing bytes."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int
    body: SgxReportBody | TdReportBody
    signature_data: bytes
    raw: bytes

    @property
    def tee(self) -> str:
        return "tdx" if self.tee_type == TEE_TYPE_TDX else "sgx"

    @property
    def signed_length(self) -> int:
        return len(self.raw) - len(self.signature_data)


def _parse_sgx_body(b: bytes) -> SgxReportBody:
    isv_prod_id, isv_svn, config_svn = struct.unpack_from("<HHH", b, 256)
    return SgxReportBody(
        cpu_svn=b[0:16],
        misc_select=int.from_bytes(b[16:20], "little"),
        attributes=b[48:64],
        mr_enclave=b[64:96],
        mr_signer=b[128:160],
        config_id=b[192:256],
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        config_svn=config_svn,
        isv_family_id=b[304:320],
        report_data=b[320:384],
    )


def _parse_td_body(b: bytes) -> TdReportBody:
    o = 16 + 48 + 48 + 8 + 8 + 8  # through xfam
    mr = [b[o + 48 * i : o + 48 * (i + 1)] for i in range(8)]  # mr_td .. rtmr3
    rd = b[o + 384 : o + 448]
    extra = len(b) == TD15_REPORT_SIZE
    return TdReportBody(
        tee_tcb_svn=b[0:16],
        mr_seam=b[16:64],
        mr_signer_seam=b[64:112],
        seam_attributes=b[112:120],
        td_attributes=b[120:128],
        xfam=b[128:136],
        mr_td=mr[0],
        mr_config_id=mr[1],
        mr_owner=mr[2],
        mr_owner_config=mr[3],
        rtmrs=(mr[4], mr[5], mr[6], mr[7]),
        report_data=rd,
        tee_tcb_svn2=b[584:600] if extra else None,
        mr_service_td=b[600:648] if extra else None,
    )


def parse_quote(data: bytes) -> DcapQuote:
    """Parse by length fields; bytes after the signature data are ignored."""
    if len(data) < HEADER_SIZE:
        raise EvidenceParseError(
            f"quote is {len(data)} bytes, shorter than its {HEADER_SIZE}-byte header", check="parse"
        )
    version, akt, tee_type, qe_svn, pce_svn, vendor, user = _HEADER.unpack_from(data, 0)
    pos = HEADER_SIZE
    if version == 3:
        if tee_type != TEE_TYPE_SGX:
            raise EvidenceParseError("quote v3 must be SGX", check="parse", got=hex(tee_type), expected="0x0")
        body_type, body_size = BODY_SGX, SGX_REPORT_SIZE
    elif version == 4:
        if tee_type == TEE_TYPE_TDX:
            body_type, body_size = BODY_TD10, TD10_REPORT_SIZE
        elif tee_type == TEE_TYPE_SGX:
            body_type, body_size = BODY_SGX, SGX_REPORT_SIZE
        else:
            raise EvidenceParseError("unknown TEE type", check="parse", got=hex(tee_type), expected="0x0 or 0x81")
    elif version == 5:
        if len(data) < pos + 6:
            raise EvidenceParseError("quote v5 truncated in its body descriptor", check="parse")
        body_type, body_size = struct.unpack_from("<HI", data, pos)
        pos += 6
        want = {BODY_SGX: SGX_REPORT_SIZE, BODY_TD10: TD10_REPORT_SIZE, BODY_TD15: TD15_REPORT_SIZE}.get(body_type)
        if (tee_type == TEE_TYPE_SGX) != (body_type == BODY_SGX) or tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
            raise EvidenceParseError(
                "quote v5 header TEE type and body type disagree",
                check="parse",
                got=(hex(tee_type), body_type),
                expected="SGX with body 1, or TDX with body 2 or 3",
            )
        if want is None or want != body_size:
            raise EvidenceParseError(
                "quote v5 body type and size disagree",
                check="parse",
                got=(body_type, body_size),
                expected="(1, 384), (2, 584) or (3, 648)",
            )
    else:
        raise EvidenceParseError("unsupported quote version", check="parse", got=version, expected="3, 4 or 5")
    if akt != ATT_KEY_ECDSA_P256:
        raise EvidenceParseError("unsupported attestation key type", check="parse", got=akt, expected=2)
    if len(data) < pos + body_size + 4:
        raise EvidenceParseError(
            f"quote truncated: needs {pos + body_size + 4} bytes for its body, has {len(data)}", check="parse"
        )
    body_bytes = bytes(data[pos : pos + body_size])
    pos += body_size
    (sig_len,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if sig_len > MAX_SIGNATURE_DATA or len(data) < pos + sig_len:
        raise EvidenceParseError(
            f"quote truncated: signature data of {sig_len} bytes, {len(data) - pos} present", check="parse"
        )
    body: SgxReportBody | TdReportBody = (
        _parse_sgx_body(body_bytes) if body_type == BODY_SGX else _parse_td_body(body_bytes)
    )
    return DcapQuote(
        version=version,
        att_key_type=akt,
        tee_type=tee_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=vendor,
        user_data=user,
        body_type=body_type,
        body=body,
        signature_data=bytes(data[pos : pos + sig_len]),
        raw=bytes(data[: pos + sig_len]),
    )


def claims_of(quote: DcapQuote, tcb_status: str | None, advisories: tuple[str, ...]) -> VerifiedAttestation:
    body = quote.body
    if isinstance(body, SgxReportBody):
        return VerifiedAttestation(
            tee="sgx",
            measurements={"mrenclave": body.mr_enclave.hex(), "mrsigner": body.mr_signer.hex()},
            debug=body.debug,
            report_data=body.report_data,
            tcb_status=tcb_status,
            advisory_ids=advisories,
            svns={"isv_svn": body.isv_svn, "isv_prod_id": body.isv_prod_id},
            crl_checked=True,  # dcap-qvl checks the PCK and root CRLs of the collateral
        )
    meas = {"mrtd": body.mr_td.hex(), "mrconfigid": body.mr_config_id.hex(), "mrowner": body.mr_owner.hex()}
    meas.update({f"rtmr{i}": r.hex() for i, r in enumerate(body.rtmrs)})
    meas.update({"xfam": body.xfam.hex(), "td_attributes": body.td_attributes.hex()})
    return VerifiedAttestation(
        tee="tdx",
        measurements=meas,
        debug=body.debug,
        report_data=body.report_data,
        tcb_status=tcb_status,
        advisory_ids=advisories,
        crl_checked=True,
    )


# ------------------------------------------------------------------ verification


def _collateral(collateral: Mapping[str, Any]) -> Any:
    import dcap_qvl

    try:
        return dcap_qvl.QuoteCollateralV3.from_json(json.dumps(dict(collateral)))
    except (ValueError, TypeError) as exc:
        raise CollateralError(f"collateral is not in the QuoteCollateralV3 layout: {exc}", check="collateral") from exc


def _chain_root_spki(chain_pem: str) -> bytes | None:
    certs = x509.load_pem_x509_certificates(chain_pem.encode()) if chain_pem else []
    if not certs:
        return None
    root = certs[-1]
    spki = root.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def _translate(message: str) -> Exception:
    low = message.lower()
    if "debug" in low:
        # dcap-qvl refuses debug enclaves and debug TDs outright, whatever the policy says.
        return PolicyError([("debug", True, False)])
    if any(k in low for k in ("expired", "not yet valid", "notyetvalid", "in the future", "next_update")):
        return CollateralError(
            f"collateral expired or not yet valid at the verification time ({message})", check="collateral-time"
        )
    if "revoked" in low:
        return CollateralError(f"a certificate is revoked ({message})", check="revocation")
    if "tcb level" in low or ("tcb" in low and "match" in low):
        return CollateralError(f"the platform's TCB matches no level in TCB Info ({message})", check="tcb")
    if "fmspc" in low or ("mismatch" in low and "collateral" in low):
        return CollateralError(f"collateral does not belong to this quote ({message})", check="collateral")
    return SignatureError(f"quote verification failed ({message})", check="signature")


def collateral_window(collateral: Mapping[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    """When Intel collateral is valid: the latest issue date to the earliest next update of TCB Info
    and QE Identity (the CRLs usually span longer)."""
    starts, ends = [], []
    for key in ("tcb_info", "qe_identity"):
        try:
            body = json.loads(str(collateral[key]))
            starts.append(dt.datetime.fromisoformat(body["issueDate"].replace("Z", "+00:00")))
            ends.append(dt.datetime.fromisoformat(body["nextUpdate"].replace("Z", "+00:00")))
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
    return (max(starts), min(ends)) if starts and ends else None


def _expired(collateral: Mapping[str, Any], now_secs: int) -> CollateralError:
    at = dt.datetime.fromtimestamp(now_secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    window = collateral_window(collateral)
    span = (
        f"it is valid from {window[0].strftime('%Y-%m-%dT%H:%M:%SZ')} to {window[1].strftime('%Y-%m-%dT%H:%M:%SZ')}"
        if window
        else "its validity dates could not be read"
    )
    message = f"the collateral is expired or not yet valid at {at}: {span}"
    return CollateralError(
        f"{message}; the server must serve current collateral (PCCS), or verify recorded evidence with now=",
        check="collateral-time",
        cli_message=f"{message}; for recorded evidence, verify at a time inside that window with --at",
    )


def verify_quote(
    quote: DcapQuote,
    collateral: Mapping[str, Any] | None,
    *,
    now: dt.datetime | None = None,
    unsafe_root_ca_der: bytes | None = None,
) -> VerifiedAttestation:
    """Step 1: collateral present. Step 2: chains end at the pinned Intel root key (or an
    explicit test root). Step 3: dcap-qvl verifies signatures, chains, CRLs, TCB Info,
    QE Identity at ``now`` and derives the TCB status. Step 4: claims from the parsed body."""
    import dcap_qvl

    if collateral is None:
        raise CollateralError(
            "no collateral for this quote: get it from the server, a file or a PCCS", check="collateral"
        )
    col = _collateral(collateral)
    if unsafe_root_ca_der is None:
        for name in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
            root = _chain_root_spki(str(collateral.get(name, "")))
            if root is not None and root != INTEL_SGX_ROOT_SPKI_SHA256:
                raise SignatureError(
                    f"{name} does not end at the Intel SGX root key",
                    check="root",
                    got=root,
                    expected=INTEL_SGX_ROOT_SPKI_SHA256,
                )
    now_secs = int((now or dt.datetime.now(dt.UTC)).timestamp()) if now is not None else int(time.time())
    try:
        if unsafe_root_ca_der is None:
            report = dcap_qvl.verify(quote.raw, col, now_secs)
        else:
            report = dcap_qvl.verify_with_root_ca(quote.raw, col, unsafe_root_ca_der, now_secs)
    except (ValueError, RuntimeError) as exc:
        error = _translate(str(exc))
        if isinstance(error, CollateralError) and error.check == "collateral-time":
            error = _expired(collateral, now_secs)
        raise error from exc
    return claims_of(quote, str(report.status), tuple(str(a) for a in report.advisory_ids))


# ------------------------------------------------------------------ signatures inside the quote

CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6


@dataclass(frozen=True, slots=True)
class QeCertificationData:
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes

    @property
    def qe_body(self) -> SgxReportBody:
        return _parse_sgx_body(self.qe_report)


@dataclass(frozen=True, slots=True)
class EcdsaSignatureData:
    signature: bytes
    attestation_key: bytes
    qe: QeCertificationData


def _take(data: bytes, pos: int, n: int, what: str) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise EvidenceParseError(f"quote signature data truncated in {what}", check="parse")
    return data[pos : pos + n], pos + n


def _parse_qe_cert_data(d: bytes, pos: int) -> QeCertificationData:
    report, pos = _take(d, pos, SGX_REPORT_SIZE, "the QE report")
    sig, pos = _take(d, pos, 64, "the QE report signature")
    raw, pos = _take(d, pos, 2, "the QE auth data size")
    auth, pos = _take(d, pos, int.from_bytes(raw, "little"), "the QE auth data")
    head, pos = _take(d, pos, 6, "the certification data header")
    ctype, csize = struct.unpack("<HI", head)
    cdata, pos = _take(d, pos, csize, "the certification data")
    return QeCertificationData(report, sig, auth, ctype, cdata)


def parse_signature_data(quote: DcapQuote) -> EcdsaSignatureData:
    d = quote.signature_data
    sig, pos = _take(d, 0, 64, "the quote signature")
    key, pos = _take(d, pos, 64, "the attestation key")
    if quote.version == 3:
        return EcdsaSignatureData(sig, key, _parse_qe_cert_data(d, pos))
    head, pos = _take(d, pos, 6, "the certification data header")
    ctype, csize = struct.unpack("<HI", head)
    if ctype != CERT_TYPE_QE_REPORT:
        raise EvidenceParseError(
            "quote v4/v5 must carry QE report certification data",
            check="parse",
            got=ctype,
            expected=CERT_TYPE_QE_REPORT,
        )
    inner, _ = _take(d, pos, csize, "the QE report certification data")
    return EcdsaSignatureData(sig, key, _parse_qe_cert_data(inner, 0))


def _p256(raw_xy: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_xy)


def _check_raw_sig(key: Any, sig: bytes, data: bytes, what: str) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError(f"{what} does not verify", check="signature") from exc


def verify_quote_signatures(
    quote: DcapQuote, *, root_spki_sha256: tuple[bytes, ...] = (INTEL_SGX_ROOT_SPKI_SHA256,)
) -> list[x509.Certificate]:
    """Check what a quote proves on its own, without collateral (no CRLs, no TCB status):
    1. the attestation key signs header and body; 2. the QE report binds that key
    (report_data = SHA-256(key || QE auth data) || zeros); 3. the PCK certificate
    (certification data type 5) signs the QE report; 4. the PCK chain ends at a pinned
    root key. Returns the PCK chain, leaf first."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    sd = parse_signature_data(quote)
    _check_raw_sig(_p256(sd.attestation_key), sd.signature, quote.raw[: quote.signed_length - 4], "quote signature")
    expected = hashlib.sha256(sd.attestation_key + sd.qe.qe_auth_data).digest() + bytes(32)
    got = sd.qe.qe_body.report_data
    if got != expected:
        raise SignatureError(
            "the QE report does not bind the attestation key", check="qe-report-data", got=got, expected=expected
        )
    if sd.qe.cert_type != CERT_TYPE_PCK_CHAIN:
        raise EvidenceParseError(
            "the quote carries no PCK certificate chain",
            check="parse",
            got=sd.qe.cert_type,
            expected=CERT_TYPE_PCK_CHAIN,
        )
    try:
        chain = x509.load_pem_x509_certificates(sd.qe.cert_data.rstrip(b"\0"))
    except ValueError as exc:
        raise EvidenceParseError("the PCK certificate chain does not parse", check="parse") from exc
    _check_raw_sig(chain[0].public_key(), sd.qe.qe_report_signature, sd.qe.qe_report, "QE report signature")
    for cert, issuer in zip(chain, chain[1:] + chain[-1:], strict=True):
        key = issuer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
            raise SignatureError("PCK chain uses an unexpected key type", check="chain")
        try:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        except InvalidSignature as exc:
            raise SignatureError(f"{_subject(cert)} is not signed by {_subject(issuer)}", check="chain") from exc
    root = (
        chain[-1].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if hashlib.sha256(root).digest() not in root_spki_sha256:
        raise SignatureError(
            "the PCK chain does not end at the Intel SGX root key",
            check="root",
            got=hashlib.sha256(root).digest(),
            expected=root_spki_sha256[0],
        )
    return chain


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()
