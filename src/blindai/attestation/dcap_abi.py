"""Intel DCAP quotes v3 (SGX), v4 and v5 (SGX or TDX): parse and serialise, nothing else.

Layouts: Intel SGX ECDSA Quote Library API (quote v3, "Quote Format" and "ECDSA Signature
Data Structure"), Intel TDX DCAP Quoting Library API (quote v4 and v5, "TD Quote Body",
"TD Quote Body Descriptor" for v5), and the SDK's ``sgx_report_body_t``.

Why a pair: the verifier only ever sees fields these parsers produced, and the test fakes
build quotes with `serialise_quote` instead of re-typing offsets, so the two cannot drift
(``parse_quote(serialise_quote(q)) == q`` and ``serialise_quote(parse_quote(b)) == b`` for
the signed part ``b``, both tested). Parsing goes strictly by the length fields: bytes after
the signature data (padding, junk) are ignored and never reach the verifier. Bytes the spec
reserves must be zero: a quote that uses them is not one this code understands.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._wire import pack_exact, require_zero
from ._wire import parse_error as _bad

__all__ = [
    "DcapQuote",
    "EcdsaSignatureData",
    "QeCertificationData",
    "SgxReportBody",
    "TdReportBody",
    "parse_quote",
    "parse_sgx_report",
    "parse_signature_data",
    "parse_td_report",
    "serialise_quote",
    "serialise_sgx_report",
    "serialise_signature_data",
    "serialise_td_report",
]

# Quote header (48 bytes): version, attestation key type, TEE type (reserved in v3, must be 0),
# QE SVN, PCE SVN (reserved in the TDX spec, carried as is), QE vendor ID, user data.
_HEADER = struct.Struct("<HHIHH16s20s")
HEADER_SIZE = _HEADER.size  # 48
# v5 only: the body descriptor (body type u16, body size u32) between header and body.
_BODY_DESCRIPTOR = struct.Struct("<HI")
BODY_DESCRIPTOR_SIZE = _BODY_DESCRIPTOR.size  # 6
# sgx_report_body_t: cpu_svn, misc_select, reserved1[12], isv_ext_prod_id, attributes, mr_enclave,
# reserved2[32], mr_signer, reserved3[32], config_id, isv_prod_id, isv_svn, config_svn,
# reserved4[42], isv_family_id, report_data.
_SGX_REPORT = struct.Struct("<16sI12s16s16s32s32s32s32s64sHHH42s16s64s")
SGX_REPORT_SIZE = _SGX_REPORT.size  # 384
# TD quote body 1.0: tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes, td_attributes, xfam,
# mr_td, mr_config_id, mr_owner, mr_owner_config, rtmr0..3, report_data; 1.5 adds tee_tcb_svn2
# and mr_service_td.
_TD10_REPORT = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")
_TD15_EXTRA = struct.Struct("<16s48s")
TD10_REPORT_SIZE = _TD10_REPORT.size  # 584
TD15_REPORT_SIZE = TD10_REPORT_SIZE + _TD15_EXTRA.size  # 648
_U32 = struct.Struct("<I")  # the signature data length after the body
SIGNATURE_LENGTH_SIZE = _U32.size  # 4
_CERT_HEADER = struct.Struct("<HI")  # certification data type, size
CERT_HEADER_SIZE = _CERT_HEADER.size  # 6
_U16 = struct.Struct("<H")  # the QE authentication data size
ECDSA_P256_SIGNATURE_SIZE = 64  # r || s, big-endian 32 bytes each
ECDSA_P256_KEY_SIZE = 64  # x || y of the attestation key
_RAW_SIGNATURE = struct.Struct(f"<{ECDSA_P256_SIGNATURE_SIZE}s")
_SIGNATURE_AND_KEY = struct.Struct(f"<{ECDSA_P256_SIGNATURE_SIZE}s{ECDSA_P256_KEY_SIZE}s")

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
ATT_KEY_ECDSA_P384 = 3
QUOTE_VERSIONS = (3, 4, 5)
BODY_SGX, BODY_TD10, BODY_TD15 = 1, 2, 3
BODY_SIZES = {BODY_SGX: SGX_REPORT_SIZE, BODY_TD10: TD10_REPORT_SIZE, BODY_TD15: TD15_REPORT_SIZE}
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
SGX_FLAG_DEBUG = 0x02
TD_ATTR_DEBUG = 0x01
MAX_SIGNATURE_DATA = 1 << 20  # a sanity bound far above any real quote (a few KiB)


# ------------------------------------------------------------------ report bodies


@dataclass(frozen=True, slots=True)
class SgxReportBody:
    """An enclave report (the SGX quote body and the QE report); reserved fields are not kept: they are zero."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
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


def parse_sgx_report(b: bytes) -> SgxReportBody:
    if len(b) != SGX_REPORT_SIZE:
        raise _bad(f"an SGX report is {SGX_REPORT_SIZE} bytes, not {len(b)}")
    (cpu_svn, misc, r1, ext_prod, attrs, mr_enclave, r2, mr_signer, r3, config_id, prod, svn, csvn, r4, family, rd) = (
        _SGX_REPORT.unpack(b)
    )
    for raw, name in ((r1, "reserved1"), (r2, "reserved2"), (r3, "reserved3"), (r4, "reserved4")):
        require_zero(raw, f"SGX report {name}")
    return SgxReportBody(cpu_svn, misc, ext_prod, attrs, mr_enclave, mr_signer, config_id, prod, svn, csvn, family, rd)


def serialise_sgx_report(r: SgxReportBody) -> bytes:
    z = bytes
    return pack_exact(
        _SGX_REPORT,
        r.cpu_svn, r.misc_select, z(12), r.isv_ext_prod_id, r.attributes, r.mr_enclave, z(32), r.mr_signer, z(32),
        r.config_id, r.isv_prod_id, r.isv_svn, r.config_svn, z(42), r.isv_family_id, r.report_data,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class TdReportBody:
    """A TD quote body: 1.0 (584 bytes) or, with ``tee_tcb_svn2`` and ``mr_service_td``, 1.5 (648)."""

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


def parse_td_report(b: bytes) -> TdReportBody:
    if len(b) not in (TD10_REPORT_SIZE, TD15_REPORT_SIZE):
        raise _bad(f"a TD report is {TD10_REPORT_SIZE} or {TD15_REPORT_SIZE} bytes, not {len(b)}")
    (tcb_svn, mr_seam, mr_signer_seam, seam_attrs, td_attrs, xfam, mr_td, config_id, owner, owner_config,
     rtmr0, rtmr1, rtmr2, rtmr3, report_data) = _TD10_REPORT.unpack_from(b, 0)  # fmt: skip
    svn2, service = _TD15_EXTRA.unpack_from(b, TD10_REPORT_SIZE) if len(b) == TD15_REPORT_SIZE else (None, None)
    return TdReportBody(
        tcb_svn, mr_seam, mr_signer_seam, seam_attrs, td_attrs, xfam, mr_td, config_id, owner, owner_config,
        (rtmr0, rtmr1, rtmr2, rtmr3), report_data, svn2, service,
    )  # fmt: skip


def serialise_td_report(r: TdReportBody) -> bytes:
    out = pack_exact(
        _TD10_REPORT,
        r.tee_tcb_svn, r.mr_seam, r.mr_signer_seam, r.seam_attributes, r.td_attributes, r.xfam, r.mr_td,
        r.mr_config_id, r.mr_owner, r.mr_owner_config, *r.rtmrs, r.report_data,
    )  # fmt: skip
    if (r.tee_tcb_svn2 is None) != (r.mr_service_td is None):
        raise ValueError("a TD 1.5 body has both tee_tcb_svn2 and mr_service_td, a 1.0 body neither")
    if r.tee_tcb_svn2 is not None and r.mr_service_td is not None:
        out += pack_exact(_TD15_EXTRA, r.tee_tcb_svn2, r.mr_service_td)
    return out


# ------------------------------------------------------------------ the quote


@dataclass(frozen=True, slots=True)
class DcapQuote:
    """A parsed DCAP quote. ``signature_data`` is kept as bytes (see `parse_signature_data`):
    the collateral verifier reads it itself, and the signed quote is ``raw``."""

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

    @property
    def tee(self) -> str:
        return "tdx" if self.tee_type == TEE_TYPE_TDX else "sgx"

    @property
    def signed_length(self) -> int:
        """Header, (v5) body descriptor, body and the 4-byte signature length: where signature data starts."""
        descriptor = BODY_DESCRIPTOR_SIZE if self.version == 5 else 0
        return HEADER_SIZE + descriptor + BODY_SIZES[self.body_type] + SIGNATURE_LENGTH_SIZE

    @property
    def raw(self) -> bytes:
        """Exactly the quote as signed and sent (no trailing bytes): `serialise_quote` of this record."""
        return serialise_quote(self)


def _body_kind(version: int, tee_type: int, data: bytes) -> tuple[int, int, int]:
    """(body type, body size, where the body starts), checked against the header."""
    if version == 3:
        if tee_type != TEE_TYPE_SGX:
            raise _bad("quote v3 must be SGX (its TEE type field is reserved)", got=hex(tee_type), expected="0x0")
        return BODY_SGX, SGX_REPORT_SIZE, HEADER_SIZE
    if version == 4:
        if tee_type == TEE_TYPE_TDX:
            return BODY_TD10, TD10_REPORT_SIZE, HEADER_SIZE
        if tee_type == TEE_TYPE_SGX:
            return BODY_SGX, SGX_REPORT_SIZE, HEADER_SIZE
        raise _bad("unknown TEE type", got=hex(tee_type), expected="0x0 or 0x81")
    if version == 5:
        if len(data) < HEADER_SIZE + BODY_DESCRIPTOR_SIZE:
            raise _bad("quote v5 truncated in its body descriptor")
        body_type, body_size = _BODY_DESCRIPTOR.unpack_from(data, HEADER_SIZE)
        if (tee_type == TEE_TYPE_SGX) != (body_type == BODY_SGX) or tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
            raise _bad(
                "quote v5 header TEE type and body type disagree",
                got=(hex(tee_type), body_type),
                expected="SGX with body 1, or TDX with body 2 or 3",
            )
        if BODY_SIZES.get(body_type) != body_size:
            raise _bad(
                "quote v5 body type and size disagree",
                got=(body_type, body_size),
                expected="(1, 384), (2, 584) or (3, 648)",
            )
        return body_type, body_size, HEADER_SIZE + BODY_DESCRIPTOR_SIZE
    raise _bad("unsupported quote version", got=version, expected="3, 4 or 5")


def parse_quote(data: bytes) -> DcapQuote:
    """Parse by length fields; bytes after the signature data are ignored."""
    if len(data) < HEADER_SIZE:
        raise _bad(f"quote is {len(data)} bytes, shorter than its {HEADER_SIZE}-byte header")
    version, akt, tee_type, qe_svn, pce_svn, vendor, user = _HEADER.unpack_from(data, 0)
    body_type, body_size, pos = _body_kind(version, tee_type, data)
    if akt != ATT_KEY_ECDSA_P256:
        raise _bad("unsupported attestation key type", got=akt, expected=ATT_KEY_ECDSA_P256)
    if len(data) < pos + body_size + SIGNATURE_LENGTH_SIZE:
        raise _bad(
            f"quote truncated: needs {pos + body_size + SIGNATURE_LENGTH_SIZE} bytes for its body, has {len(data)}"
        )
    body_bytes = bytes(data[pos : pos + body_size])
    pos += body_size
    (sig_len,) = _U32.unpack_from(data, pos)
    pos += SIGNATURE_LENGTH_SIZE
    if sig_len > MAX_SIGNATURE_DATA or len(data) < pos + sig_len:
        raise _bad(f"quote truncated: signature data of {sig_len} bytes, {len(data) - pos} present")
    body = parse_sgx_report(body_bytes) if body_type == BODY_SGX else parse_td_report(body_bytes)
    return DcapQuote(
        version, akt, tee_type, qe_svn, pce_svn, bytes(vendor), bytes(user), body_type, body,
        bytes(data[pos : pos + sig_len]),
    )  # fmt: skip


def serialise_quote(q: DcapQuote) -> bytes:
    """The quote's bytes: header, (v5) body descriptor, body, signature data length and data."""
    body = serialise_sgx_report(q.body) if isinstance(q.body, SgxReportBody) else serialise_td_report(q.body)
    if len(body) != BODY_SIZES[q.body_type]:
        raise ValueError(f"body type {q.body_type} is {BODY_SIZES[q.body_type]} bytes, the body {len(body)}")
    head = pack_exact(_HEADER, q.version, q.att_key_type, q.tee_type, q.qe_svn, q.pce_svn, q.qe_vendor_id, q.user_data)
    if q.version == 5:
        head += _BODY_DESCRIPTOR.pack(q.body_type, len(body))
    return head + body + _U32.pack(len(q.signature_data)) + q.signature_data


# ------------------------------------------------------------------ signature data


@dataclass(frozen=True, slots=True)
class QeCertificationData:
    """QE report certification data: the QE report (binding the attestation key), its signature by
    the PCK, the QE authentication data, and the inner certification data (type 5: the PCK chain)."""

    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes

    @property
    def qe_report_bytes(self) -> bytes:
        """The QE report as the PCK signed it."""
        return serialise_sgx_report(self.qe_report)


@dataclass(frozen=True, slots=True)
class EcdsaSignatureData:
    """ECDSA-P256 quote signature data. v3 carries the QE certification data directly; v4 and v5
    wrap it in certification data of type 6 (``CERT_TYPE_QE_REPORT``)."""

    signature: bytes
    attestation_key: bytes
    qe: QeCertificationData


class _Reader:
    """A cursor over untrusted bytes: every read is bounds-checked and names what was cut."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise _bad(f"quote signature data truncated in {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def cert_header(self) -> tuple[int, int]:
        ctype, csize = _CERT_HEADER.unpack(self.take(CERT_HEADER_SIZE, "the certification data header"))
        return int(ctype), int(csize)


def _parse_qe_cert_data(r: _Reader) -> QeCertificationData:
    report = parse_sgx_report(r.take(SGX_REPORT_SIZE, "the QE report"))
    sig = r.take(ECDSA_P256_SIGNATURE_SIZE, "the QE report signature")
    (auth_len,) = _U16.unpack(r.take(_U16.size, "the QE auth data size"))
    auth = r.take(auth_len, "the QE auth data")
    ctype, csize = r.cert_header()
    return QeCertificationData(report, sig, auth, ctype, r.take(csize, "the certification data"))


def _serialise_qe_cert_data(qe: QeCertificationData) -> bytes:
    return (
        qe.qe_report_bytes
        + pack_exact(_RAW_SIGNATURE, qe.qe_report_signature)
        + _U16.pack(len(qe.qe_auth_data))
        + qe.qe_auth_data
        + _CERT_HEADER.pack(qe.cert_type, len(qe.cert_data))
        + qe.cert_data
    )


def parse_signature_data(quote: DcapQuote) -> EcdsaSignatureData:
    """The quote's signature data, by the layout of its version (bytes after it are ignored)."""
    r = _Reader(quote.signature_data)
    sig = r.take(ECDSA_P256_SIGNATURE_SIZE, "the quote signature")
    key = r.take(ECDSA_P256_KEY_SIZE, "the attestation key")
    if quote.version == 3:
        return EcdsaSignatureData(sig, key, _parse_qe_cert_data(r))
    ctype, csize = r.cert_header()
    if ctype != CERT_TYPE_QE_REPORT:
        raise _bad("quote v4/v5 must carry QE report certification data", got=ctype, expected=CERT_TYPE_QE_REPORT)
    return EcdsaSignatureData(sig, key, _parse_qe_cert_data(_Reader(r.take(csize, "the QE report certification data"))))


def serialise_signature_data(sd: EcdsaSignatureData, version: int) -> bytes:
    """Signature data for a quote of ``version`` (3: QE certification data inline; 4, 5: wrapped in type 6)."""
    qe = _serialise_qe_cert_data(sd.qe)
    if version != 3:
        qe = _CERT_HEADER.pack(CERT_TYPE_QE_REPORT, len(qe)) + qe
    return pack_exact(_SIGNATURE_AND_KEY, sd.signature, sd.attestation_key) + qe
