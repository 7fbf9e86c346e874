"""The evidence layouts are pairs: parse(serialise(x)) == x for any record, and serialise(parse(b)) == b
for the signed part of every recorded quote and report. Reserved bytes are refused, not ignored."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindai.attestation import dcap_abi, snp_abi
from blindai.attestation.dcap_abi import (
    DcapQuote,
    EcdsaSignatureData,
    QeCertificationData,
    SgxReportBody,
    TdReportBody,
)
from blindai.attestation.snp_abi import CertTableEntry, SnpReport, TcbVersion
from blindai.errors import EvidenceParseError

SETTINGS = settings(max_examples=150, deadline=None)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def u(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << bits) - 1)


# ------------------------------------------------------------------ DCAP strategies

sgx_reports = st.builds(
    SgxReportBody,
    cpu_svn=b(16),
    misc_select=u(32),
    isv_ext_prod_id=b(16),
    attributes=b(16),
    mr_enclave=b(32),
    mr_signer=b(32),
    config_id=b(64),
    isv_prod_id=u(16),
    isv_svn=u(16),
    config_svn=u(16),
    isv_family_id=b(16),
    report_data=b(64),
)


@st.composite
def td_reports(draw: st.DrawFn, v15: bool | None = None) -> TdReportBody:
    extra = draw(st.booleans()) if v15 is None else v15
    return TdReportBody(
        tee_tcb_svn=draw(b(16)),
        mr_seam=draw(b(48)),
        mr_signer_seam=draw(b(48)),
        seam_attributes=draw(b(8)),
        td_attributes=draw(b(8)),
        xfam=draw(b(8)),
        mr_td=draw(b(48)),
        mr_config_id=draw(b(48)),
        mr_owner=draw(b(48)),
        mr_owner_config=draw(b(48)),
        rtmrs=(draw(b(48)), draw(b(48)), draw(b(48)), draw(b(48))),
        report_data=draw(b(64)),
        tee_tcb_svn2=draw(b(16)) if extra else None,
        mr_service_td=draw(b(48)) if extra else None,
    )


@st.composite
def quotes(draw: st.DrawFn) -> DcapQuote:
    version = draw(st.sampled_from(dcap_abi.QUOTE_VERSIONS))
    kind = "sgx" if version == 3 else draw(st.sampled_from(["sgx", "tdx"]))
    if kind == "sgx":
        body: SgxReportBody | TdReportBody = draw(sgx_reports)
        tee_type, body_type = dcap_abi.TEE_TYPE_SGX, dcap_abi.BODY_SGX
    else:
        body = draw(td_reports(v15=version == 5 and draw(st.booleans())))
        tee_type = dcap_abi.TEE_TYPE_TDX
        body_type = dcap_abi.BODY_TD15 if body.tee_tcb_svn2 is not None else dcap_abi.BODY_TD10
    return DcapQuote(
        version=version,
        att_key_type=dcap_abi.ATT_KEY_ECDSA_P256,
        tee_type=tee_type,
        qe_svn=draw(u(16)),
        pce_svn=draw(u(16)),
        qe_vendor_id=draw(b(16)),
        user_data=draw(b(20)),
        body_type=body_type,
        body=body,
        signature_data=draw(st.binary(max_size=600)),
    )


signature_data = st.builds(
    EcdsaSignatureData,
    signature=b(64),
    attestation_key=b(64),
    qe=st.builds(
        QeCertificationData,
        qe_report=sgx_reports,
        qe_report_signature=b(64),
        qe_auth_data=st.binary(max_size=64),
        cert_type=u(16),
        cert_data=st.binary(max_size=300),
    ),
)


@SETTINGS
@given(q=quotes())
def test_quote_parse_inverts_serialise(q: DcapQuote) -> None:
    raw = dcap_abi.serialise_quote(q)
    assert dcap_abi.parse_quote(raw) == q
    assert dcap_abi.parse_quote(raw + b"\xa5" * 9) == q  # trailing bytes are ignored
    assert q.raw == raw and q.signed_length == len(raw) - len(q.signature_data)


@SETTINGS
@given(sd=signature_data, version=st.sampled_from(dcap_abi.QUOTE_VERSIONS), q=quotes())
def test_signature_data_parse_inverts_serialise(sd: EcdsaSignatureData, version: int, q: DcapQuote) -> None:
    carrier = dataclasses.replace(q, version=version, signature_data=dcap_abi.serialise_signature_data(sd, version))
    assert dcap_abi.parse_signature_data(carrier) == sd


@SETTINGS
@given(r=td_reports())
def test_td_report_parse_inverts_serialise(r: TdReportBody) -> None:
    assert dcap_abi.parse_td_report(dcap_abi.serialise_td_report(r)) == r


# ------------------------------------------------------------------ SEV-SNP strategies


@st.composite
def snp_reports(draw: st.DrawFn) -> SnpReport:
    version = draw(st.sampled_from(snp_abi.SUPPORTED_VERSIONS))
    cpuid = version >= snp_abi.FIRST_VERSION_WITH_CPUID
    mit = version >= snp_abi.FIRST_VERSION_WITH_MIT_VECTORS
    return SnpReport(
        version=version,
        guest_svn=draw(u(32)),
        policy=draw(u(64)),
        family_id=draw(b(16)),
        image_id=draw(b(16)),
        vmpl=draw(u(32)),
        signature_algo=draw(u(32)),
        current_tcb=draw(u(64)),
        platform_info=draw(u(64)),
        flags=draw(u(32)),
        report_data=draw(b(64)),
        measurement=draw(b(48)),
        host_data=draw(b(32)),
        id_key_digest=draw(b(48)),
        author_key_digest=draw(b(48)),
        report_id=draw(b(32)),
        report_id_ma=draw(b(32)),
        reported_tcb=draw(u(64)),
        cpuid_fam_id=draw(u(8)) if cpuid else None,
        cpuid_mod_id=draw(u(8)) if cpuid else None,
        cpuid_step=draw(u(8)) if cpuid else None,
        chip_id=draw(b(64)),
        committed_tcb=draw(u(64)),
        current_build=draw(u(8)),
        current_minor=draw(u(8)),
        current_major=draw(u(8)),
        committed_build=draw(u(8)),
        committed_minor=draw(u(8)),
        committed_major=draw(u(8)),
        launch_tcb=draw(u(64)),
        launch_mit_vector=draw(u(64)) if mit else None,
        current_mit_vector=draw(u(64)) if mit else None,
        signature_r=draw(u(8 * snp_abi.SIGNATURE_COMPONENT_SIZE)),
        signature_s=draw(u(8 * snp_abi.SIGNATURE_COMPONENT_SIZE)),
    )


@SETTINGS
@given(r=snp_reports())
def test_snp_report_parse_inverts_serialise(r: SnpReport) -> None:
    raw = snp_abi.serialise_report(r)
    assert len(raw) == snp_abi.REPORT_SIZE
    assert snp_abi.parse_report(raw) == r
    assert snp_abi.parse_report(raw + b"\x01" * 7) == r  # bytes after the report are ignored
    assert r.signed == raw[: snp_abi.SIGNED_SIZE]


@SETTINGS
@given(bl=u(8), tee=u(8), snp=u(8), ucode=u(8), fmc=st.none() | u(8))
def test_tcb_version_layouts_invert(bl: int, tee: int, snp: int, ucode: int, fmc: int | None) -> None:
    tcb = TcbVersion(bootloader=bl, tee=tee, snp=snp, microcode=ucode, fmc=fmc)
    assert TcbVersion.decode(tcb.encode(), turin=fmc is not None) == tcb


def test_tcb_version_layouts_are_the_specs() -> None:
    """Milan/Genoa: BL, TEE, 4 reserved, SNP, UCODE; Turin: FMC, BL, TEE, SNP, 3 reserved, UCODE."""
    assert TcbVersion(1, 2, 3, 4).encode().to_bytes(8, "little") == bytes([1, 2, 0, 0, 0, 0, 3, 4])
    assert TcbVersion(1, 2, 3, 4, fmc=5).encode().to_bytes(8, "little") == bytes([5, 1, 2, 3, 0, 0, 0, 4])


cert_entries = st.lists(
    st.builds(CertTableEntry, guid=st.uuids().filter(lambda g: g.int != 0), data=st.binary(max_size=200)), max_size=5
).map(tuple)


@SETTINGS
@given(entries=cert_entries)
def test_cert_table_parse_inverts_serialise(entries: tuple[CertTableEntry, ...]) -> None:
    table = snp_abi.serialise_cert_table(entries)
    assert snp_abi.parse_cert_table_entries(table) == entries
    assert snp_abi.serialise_cert_table(snp_abi.parse_cert_table_entries(table)) == table
    assert snp_abi.parse_cert_table_entries(table + bytes(4096)) == entries  # page padding after it


def test_cert_table_keeps_only_known_certificates() -> None:
    entries = (CertTableEntry(snp_abi.GUID_VCEK, b"vcek"), CertTableEntry(uuid.UUID(int=7), b"other"))
    assert snp_abi.parse_cert_table(snp_abi.serialise_cert_table(entries)) == [b"vcek"]


# ------------------------------------------------------------------ the recorded vectors

QUOTES = [
    "sgx/phala_sgx_quote.bin",
    "sgx/trustee_occlum_debug_quote.bin",
    "tdx/gotdx_spr_quote_no_tcb_match.bin",
    "tdx/phala_tdx_quote.bin",
    "tdx/phala_tdx_v5_quote_no_tcb_match.bin",
    "tdx/trustee_tdx_v4_debug_quote.bin",
    "tdx/trustee_tdx_v4_quote.bin",
    "tdx/trustee_tdx_v5_quote.bin",
    "negative/intel-qvl-sample-test-root/quote.dat",
]


@pytest.mark.parametrize("name", QUOTES)
def test_recorded_quotes_round_trip(vectors: Path, name: str) -> None:
    data = (vectors / name).read_bytes()
    q = dcap_abi.parse_quote(data)
    signed = data[: q.signed_length + len(q.signature_data)]
    assert dcap_abi.serialise_quote(q) == signed  # whatever follows (padding, here up to 70 bytes) is dropped
    assert dcap_abi.parse_quote(signed) == q
    sd = dcap_abi.parse_signature_data(q)
    assert dcap_abi.serialise_signature_data(sd, q.version) == q.signature_data
    assert dcap_abi.parse_sgx_report(sd.qe.qe_report_bytes) == sd.qe.qe_report


@pytest.mark.parametrize("name", ["gosev_milan_report.bin", "virtee_milan_report.bin"])
def test_recorded_snp_reports_round_trip(vectors: Path, name: str) -> None:
    data = (vectors / "sev-snp" / name).read_bytes()
    r = snp_abi.parse_report(data)
    assert snp_abi.serialise_report(r) == data[: snp_abi.REPORT_SIZE]
    assert snp_abi.parse_report(snp_abi.serialise_report(r)) == r


# ------------------------------------------------------------------ reserved bytes


def test_sgx_reserved_bytes_are_refused(vectors: Path) -> None:
    data = bytearray((vectors / "sgx/phala_sgx_quote.bin").read_bytes())
    data[dcap_abi.HEADER_SIZE + 100] ^= 0x01  # inside reserved2, between MRENCLAVE and MRSIGNER
    with pytest.raises(EvidenceParseError, match="reserved2") as info:
        dcap_abi.parse_quote(bytes(data))
    assert info.value.check == "parse"


@pytest.mark.parametrize(
    ("version", "offset"),
    [(2, 0x04C), (2, 0x188), (2, 0x190), (2, 0x1EB), (2, 0x1F8), (3, 0x1F8), (5, 0x208), (5, 0x400)],
)
def test_snp_reserved_bytes_are_refused(version: int, offset: int) -> None:
    from tests.fakes.amd_pki import FakeAmdPki

    r = snp_abi.parse_report(FakeAmdPki().report(report_data=b"", measurement=bytes(48)))
    raw = bytearray(snp_abi.serialise_report(dataclasses.replace(r, version=version)))
    snp_abi.parse_report(bytes(raw))  # zero there is fine
    raw[offset] = 0x01
    with pytest.raises(EvidenceParseError, match="reserved") as info:
        snp_abi.parse_report(bytes(raw))
    assert info.value.check == "parse"


def test_fields_a_version_has_are_not_reserved() -> None:
    """CPUID exists from report v3, the mitigation vectors from v4 (named for v5, filled by Turin v4):
    there they are data, not reserved."""
    from tests.fakes.amd_pki import FakeAmdPki

    r = snp_abi.parse_report(FakeAmdPki().report(report_data=b"", measurement=bytes(48)))
    v5 = dataclasses.replace(
        r, version=5, cpuid_fam_id=0x19, cpuid_mod_id=0x11, cpuid_step=1, launch_mit_vector=3, current_mit_vector=4
    )
    parsed = snp_abi.parse_report(snp_abi.serialise_report(v5))
    assert parsed == v5 and parsed.product == "Genoa"


def test_serialisers_refuse_fields_of_the_wrong_size() -> None:
    """struct would pad or cut them silently; a record must survive its own round trip or not be written."""
    from tests.fakes.amd_pki import FakeAmdPki

    r = snp_abi.parse_report(FakeAmdPki().report(report_data=b"", measurement=bytes(48)))
    with pytest.raises(ValueError, match="48 bytes, got 47"):
        snp_abi.serialise_report(dataclasses.replace(r, measurement=bytes(47)))
    body = dcap_abi.parse_sgx_report(bytes(dcap_abi.SGX_REPORT_SIZE))
    with pytest.raises(ValueError, match="64 bytes, got 5"):
        dcap_abi.serialise_sgx_report(dataclasses.replace(body, report_data=b"short"))
