"""FAKE AMD SEV-SNP PKI for tests: ARK -> ASK -> VCEK shaped like AMD's, and reports signed like the PSP's.

Trusted by BlindAI only through an ``unsafe_`` option. RSA keys are 2048-bit (AMD's are
4096) to keep the tests fast; algorithms, extensions and layouts are AMD's.
"""

from __future__ import annotations

import datetime as dt
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from blindai.attestation import sev_snp

_OID = "1.3.6.1.4.1.3704.1."


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


class FakeAmdPki:
    """``product``: "Milan" (report v2, Milan TCB layout) or "Turin" (report v3 with CPUID, FMC in the TCB).
    ``vlek``: sign with a VLEK (VLEK -> ASVK -> ARK) instead of a VCEK."""

    def __init__(
        self,
        tcb: tuple[int, int, int, int] = (3, 0, 8, 115),
        chip_id: bytes = b"\x5c" * 64,
        now: dt.datetime | None = None,
        product: str = "Milan",
        vlek: bool = False,
        fmc: int = 1,
    ) -> None:
        self.now = now or dt.datetime.now(dt.UTC)
        self.tcb, self.chip_id, self.product, self.vlek, self.fmc = tcb, chip_id, product, vlek, fmc
        self.ark_key = rsa.generate_private_key(65537, 2048)
        self.ask_key = rsa.generate_private_key(65537, 2048)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark, ask = f"ARK-{product}", (f"SEV-VLEK-{product}" if vlek else f"SEV-{product}")
        self.ark = self._cert(ark, self.ark_key.public_key(), ark, self.ark_key, ca=True)
        self.ask = self._cert(ask, self.ask_key.public_key(), ark, self.ark_key, ca=True)
        bl, tee, snp, ucode = tcb
        name = b"Milan-B0" if product == "Milan" else b"Turin"
        exts = [
            (_OID + "1", _der_int(0)),
            (_OID + "2", bytes([0x16, len(name)]) + name),
            (_OID + "3.1", _der_int(bl)),
            (_OID + "3.2", _der_int(tee)),
            (_OID + "3.3", _der_int(snp)),
            (_OID + "3.8", _der_int(ucode)),
        ]
        if product == "Turin":
            exts.append((_OID + "3.9", _der_int(fmc)))
        exts.append((_OID + "4", chip_id[:8] if product == "Turin" else chip_id))
        self.vcek = self._cert(
            "SEV-VLEK" if vlek else "SEV-VCEK",
            self.vcek_key.public_key(),
            ask,
            self.ask_key,
            ca=False,
            exts=[] if vlek else exts,
        )

    def _tcb_bytes(self) -> bytes:
        bl, tee, snp, ucode = self.tcb
        if self.product == "Turin":
            return bytes([self.fmc, bl, tee, snp, 0, 0, 0, ucode])
        return bytes([bl, tee, 0, 0, 0, 0, snp, ucode])

    def _cert(
        self,
        cn: str,
        public: object,
        issuer: str,
        key: rsa.RSAPrivateKey,
        *,
        ca: bool,
        exts: list[tuple[str, bytes]] = (),
    ) -> x509.Certificate:  # type: ignore[assignment]
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(issuer))
            .public_key(public)
            .serial_number(x509.random_serial_number())  # type: ignore[arg-type]
            .not_valid_before(self.now - dt.timedelta(days=30))
            .not_valid_after(self.now + dt.timedelta(days=3650))
        )
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        for oid, raw in exts:
            b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), raw), critical=False)
        return b.sign(key, hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))

    @property
    def ark_pem(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.PEM)

    def crl(
        self, *, revoked: tuple[x509.Certificate, ...] = (), validity: dt.timedelta = dt.timedelta(days=7)
    ) -> bytes:
        """A CRL signed by the ARK, DER, like KDS serves at /vcek/v1/{product}/crl."""
        b = x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
        b = b.last_update(self.now - dt.timedelta(days=1)).next_update(self.now + validity)
        for cert in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(self.now).build()
            )
        crl = b.sign(self.ark_key, hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))
        return crl.public_bytes(serialization.Encoding.DER)

    def cert_blobs(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in (self.vcek, self.ask, self.ark))

    def cert_table(self) -> bytes:
        """The GHCB certificate table the kernel returns in configfs-tsm's auxblob."""
        entries = [(sev_snp.GUID_VCEK, self.vcek), (sev_snp.GUID_ASK, self.ask), (sev_snp.GUID_ARK, self.ark)]
        blobs = [c.public_bytes(serialization.Encoding.DER) for _, c in entries]
        header_len = 24 * (len(entries) + 1)
        table, data, offset = bytearray(), bytearray(), header_len
        for (guid, _), blob in zip(entries, blobs, strict=True):
            table += guid.bytes_le + struct.pack("<II", offset, len(blob))
            data += blob
            offset += len(blob)
        return bytes(table + bytes(24) + data)

    def report(
        self,
        *,
        report_data: bytes,
        measurement: bytes,
        policy: int = 0x30000,
        guest_svn: int = 0,
        host_data: bytes = bytes(32),
    ) -> bytes:
        tcb = self._tcb_bytes()
        r = bytearray(sev_snp.REPORT_SIZE)
        struct.pack_into("<IIQ", r, 0, 3 if self.product == "Turin" else 2, guest_svn, policy)
        struct.pack_into("<II", r, 0x30, 0, sev_snp.SIG_ALGO_ECDSA_P384_SHA384)
        struct.pack_into("<I", r, 0x48, (sev_snp.KEY_VLEK if self.vlek else sev_snp.KEY_VCEK) << 2)
        if self.product == "Turin":
            r[0x188:0x18B] = bytes([0x1A, 0x02, 0x01])  # CPUID family, model, stepping
        r[0x38:0x40] = tcb
        r[0x50:0x90] = report_data.ljust(64, b"\0")
        r[0x90:0xC0] = measurement
        r[0xC0:0xE0] = host_data
        r[0x180:0x188] = tcb
        r[0x1A0:0x1E0] = self.chip_id
        r[0x1E0:0x1E8] = tcb
        r[0x1F0:0x1F8] = tcb
        rr, ss = decode_dss_signature(self.vcek_key.sign(bytes(r[: sev_snp.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
        r[0x2A0:0x2E8] = rr.to_bytes(72, "little")
        r[0x2E8:0x330] = ss.to_bytes(72, "little")
        return bytes(r)
