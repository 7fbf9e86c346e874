"""AMD SEV-SNP wire layouts: the attestation report, TCB_VERSION, the certificate table. Parse and serialise.

References: AMD SEV-SNP Firmware ABI Specification (table "ATTESTATION_REPORT Structure",
0x4A0 bytes, versions 2 to 5; "TCB_VERSION Structure", whose layout differs between Milan /
Genoa and Turin) and the GHCB specification (the certificate table of the extended guest
request, which the kernel returns as configfs-tsm's ``auxblob``).

Why a pair: the verifier only sees fields `parse_report` produced, and the test fakes build
reports with `serialise_report`, so the layout is written once. Round trips are tested both
ways. Bytes the spec reserves must be zero; bytes after the report's 0x4A0 are ignored.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import Check, EvidenceParseError
from ._wire import pack_exact, require_zero
from ._wire import parse_error as _bad

__all__ = [
    "CertTableEntry",
    "SnpReport",
    "TcbVersion",
    "parse_cert_table",
    "parse_cert_table_entries",
    "parse_report",
    "serialise_cert_table",
    "serialise_report",
]

# ATTESTATION_REPORT, field by field (offsets in the comments are the spec's).
_REPORT = struct.Struct(
    "<"
    "I"  # 0x000 VERSION
    "I"  # 0x004 GUEST_SVN
    "Q"  # 0x008 POLICY
    "16s"  # 0x010 FAMILY_ID
    "16s"  # 0x020 IMAGE_ID
    "I"  # 0x030 VMPL
    "I"  # 0x034 SIGNATURE_ALGO
    "Q"  # 0x038 CURRENT_TCB
    "Q"  # 0x040 PLATFORM_INFO
    "I"  # 0x048 flags: AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY
    "4s"  # 0x04C reserved
    "64s"  # 0x050 REPORT_DATA
    "48s"  # 0x090 MEASUREMENT
    "32s"  # 0x0C0 HOST_DATA
    "48s"  # 0x0E0 ID_KEY_DIGEST
    "48s"  # 0x110 AUTHOR_KEY_DIGEST
    "32s"  # 0x140 REPORT_ID
    "32s"  # 0x160 REPORT_ID_MA
    "Q"  # 0x180 REPORTED_TCB
    "3s"  # 0x188 CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (version 3 and later; reserved before)
    "21s"  # 0x18B reserved
    "64s"  # 0x1A0 CHIP_ID
    "Q"  # 0x1E0 COMMITTED_TCB
    "BBB"  # 0x1E8 CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR
    "1s"  # 0x1EB reserved
    "BBB"  # 0x1EC COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR
    "1s"  # 0x1EF reserved
    "Q"  # 0x1F0 LAUNCH_TCB
    "16s"  # 0x1F8 LAUNCH_MIT_VECTOR, CURRENT_MIT_VECTOR (version 4 and later; reserved before)
    "152s"  # 0x208 reserved
    "72s"  # 0x2A0 SIGNATURE.R (little-endian)
    "72s"  # 0x2E8 SIGNATURE.S (little-endian)
    "368s"  # 0x330 SIGNATURE reserved
)
REPORT_SIZE = _REPORT.size  # 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000..0x29F
SIGNATURE_COMPONENT_SIZE = 72
SUPPORTED_VERSIONS = range(2, 6)
FIRST_VERSION_WITH_CPUID = 3
# The ABI spec names LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR for version 5, but Turin firmware
# emitting version 4 reports has been seen to fill them: from 4 on they are data, never refused.
FIRST_VERSION_WITH_MIT_VECTORS = 4
POLICY_DEBUG_BIT = 1 << 19
SIG_ALGO_ECDSA_P384_SHA384 = 1
KEY_VCEK, KEY_VLEK = 0, 1
SIGNING_KEY_SHIFT, SIGNING_KEY_MASK = 2, 0x7
_U64 = struct.Struct("<Q")

# GHCB certificate table: entries of (GUID, offset, length), offsets from the table's start,
# ended by an all-zero entry; the certificates follow.
_CERT_ENTRY = struct.Struct("<16sII")
CERT_ENTRY_SIZE = _CERT_ENTRY.size  # 24
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CERT_GUIDS = (GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK)


# ------------------------------------------------------------------ TCB_VERSION


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A TCB_VERSION. Milan and Genoa: BL, TEE, reserved x4, SNP, UCODE; Turin: FMC, BL, TEE, SNP,
    reserved x3, UCODE (one byte each, from the least significant)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, turin: bool) -> TcbVersion:
        b = _U64.pack(raw)
        if turin:
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def encode(self) -> int:
        """The 64-bit value; the Turin layout when ``fmc`` is set, Milan/Genoa's otherwise."""
        if self.fmc is not None:
            b = bytes([self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        else:
            b = bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])
        return int(_U64.unpack(b)[0])

    def as_dict(self) -> dict[str, int]:
        d = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            d["fmc"] = self.fmc
        return d


# ------------------------------------------------------------------ ATTESTATION_REPORT


@dataclass(frozen=True, slots=True)
class SnpReport:
    """An ATTESTATION_REPORT. Fields a version does not have are None (CPUID before v3, the
    mitigation vectors before v4); reserved bytes are not kept: they are zero."""

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
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG_BIT)

    @property
    def signing_key(self) -> int:
        return (self.flags >> SIGNING_KEY_SHIFT) & SIGNING_KEY_MASK

    @property
    def signed(self) -> bytes:
        """The bytes the signature covers (0x000..0x29F)."""
        return serialise_report(self)[:SIGNED_SIZE]

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
    """Parse the first 0x4A0 bytes; the rest is ignored."""
    if len(data) < REPORT_SIZE:
        raise _bad(f"SEV-SNP report is {len(data)} bytes; needs {REPORT_SIZE}")
    (version, guest_svn, policy, family_id, image_id, vmpl, sig_algo, current_tcb, platform_info, flags, rsv0,
     report_data, measurement, host_data, id_key_digest, author_key_digest, report_id, report_id_ma, reported_tcb,
     cpuid, rsv1, chip_id, committed_tcb, cur_build, cur_minor, cur_major, rsv2, com_build, com_minor, com_major,
     rsv3, launch_tcb, mit, rsv4, sig_r, sig_s, rsv5) = _REPORT.unpack_from(data, 0)  # fmt: skip
    if version not in SUPPORTED_VERSIONS:
        raise _bad("unsupported SEV-SNP report version", got=version, expected="2..5")
    has_cpuid = version >= FIRST_VERSION_WITH_CPUID
    has_mit = version >= FIRST_VERSION_WITH_MIT_VECTORS
    reserved = [(rsv0, "0x04C"), (rsv1, "0x18B"), (rsv2, "0x1EB"), (rsv3, "0x1EF"), (rsv4, "0x208"), (rsv5, "0x330")]
    reserved += [] if has_cpuid else [(cpuid, "0x188 (CPUID, before version 3)")]
    reserved += [] if has_mit else [(mit, "0x1F8 (mitigation vectors, before version 4)")]
    for raw, where in reserved:
        require_zero(raw, f"SEV-SNP report bytes at {where}")
    launch_mit, current_mit = struct.unpack("<QQ", mit)
    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=family_id,
        image_id=image_id,
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        flags=flags,
        report_data=report_data,
        measurement=measurement,
        host_data=host_data,
        id_key_digest=id_key_digest,
        author_key_digest=author_key_digest,
        report_id=report_id,
        report_id_ma=report_id_ma,
        reported_tcb=reported_tcb,
        cpuid_fam_id=cpuid[0] if has_cpuid else None,
        cpuid_mod_id=cpuid[1] if has_cpuid else None,
        cpuid_step=cpuid[2] if has_cpuid else None,
        chip_id=chip_id,
        committed_tcb=committed_tcb,
        current_build=cur_build,
        current_minor=cur_minor,
        current_major=cur_major,
        committed_build=com_build,
        committed_minor=com_minor,
        committed_major=com_major,
        launch_tcb=launch_tcb,
        launch_mit_vector=launch_mit if has_mit else None,
        current_mit_vector=current_mit if has_mit else None,
        signature_r=int.from_bytes(sig_r, "little"),
        signature_s=int.from_bytes(sig_s, "little"),
    )


def serialise_report(r: SnpReport) -> bytes:
    """The 0x4A0-byte report; fields a version lacks (None) are written as zero."""
    cpuid = bytes([r.cpuid_fam_id or 0, r.cpuid_mod_id or 0, r.cpuid_step or 0])
    mit = struct.pack("<QQ", r.launch_mit_vector or 0, r.current_mit_vector or 0)
    z = bytes
    return pack_exact(
        _REPORT,
        r.version, r.guest_svn, r.policy, r.family_id, r.image_id, r.vmpl, r.signature_algo, r.current_tcb,
        r.platform_info, r.flags, z(4), r.report_data, r.measurement, r.host_data, r.id_key_digest,
        r.author_key_digest, r.report_id, r.report_id_ma, r.reported_tcb, cpuid, z(21), r.chip_id, r.committed_tcb,
        r.current_build, r.current_minor, r.current_major, z(1), r.committed_build, r.committed_minor,
        r.committed_major, z(1), r.launch_tcb, mit, z(152),
        r.signature_r.to_bytes(SIGNATURE_COMPONENT_SIZE, "little"),
        r.signature_s.to_bytes(SIGNATURE_COMPONENT_SIZE, "little"), z(368),
    )  # fmt: skip


# ------------------------------------------------------------------ certificate table


@dataclass(frozen=True, slots=True)
class CertTableEntry:
    guid: uuid.UUID
    data: bytes


def parse_cert_table_entries(table: bytes) -> tuple[CertTableEntry, ...]:
    """Every entry up to the all-zero one (or the end of the buffer, which may be page-padded)."""
    out: list[CertTableEntry] = []
    pos = 0
    while pos + CERT_ENTRY_SIZE <= len(table):
        raw_guid, offset, length = _CERT_ENTRY.unpack_from(table, pos)
        guid = uuid.UUID(bytes_le=bytes(raw_guid))
        if guid.int == 0:
            break
        if offset + length > len(table):
            raise EvidenceParseError("certificate table entry points past the table", check=Check.CERTIFICATES)
        out.append(CertTableEntry(guid, bytes(table[offset : offset + length])))
        pos += CERT_ENTRY_SIZE
    return tuple(out)


def serialise_cert_table(entries: tuple[CertTableEntry, ...] | list[CertTableEntry]) -> bytes:
    """The entries, the all-zero terminator, then each certificate in entry order, unpadded."""
    offset = CERT_ENTRY_SIZE * (len(entries) + 1)
    head, body = bytearray(), bytearray()
    for e in entries:
        head += pack_exact(_CERT_ENTRY, e.guid.bytes_le, offset, len(e.data))
        body += e.data
        offset += len(e.data)
    return bytes(head + bytes(CERT_ENTRY_SIZE) + body)


def parse_cert_table(table: bytes) -> list[bytes]:
    """The VCEK/VLEK/ASK/ARK certificates of a table (entries of other GUIDs are skipped)."""
    return [e.data for e in parse_cert_table_entries(table) if e.guid in CERT_GUIDS]
