"""FAKE AMD SEV-SNP PKI for tests: ARK -> ASK -> VCEK shaped like AMD's, and reports signed like the PSP's.

Trusted by BlindAI only through an ``unsafe_`` option. RSA keys are 2048-bit (AMD's are
4096) to keep the tests fast; algorithms, extensions and layouts are AMD's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from blindai.attestation import snp_abi
from blindai.attestation.snp_abi import CertTableEntry, SnpReport, TcbVersion

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

    def _tcb_version(self) -> int:
        bl, tee, snp, ucode = self.tcb
        fmc = self.fmc if self.product == "Turin" else None  # Turin's TCB_VERSION layout has an FMC byte
        return TcbVersion(bootloader=bl, tee=tee, snp=snp, microcode=ucode, fmc=fmc).encode()

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
        entries = [(snp_abi.GUID_VCEK, self.vcek), (snp_abi.GUID_ASK, self.ask), (snp_abi.GUID_ARK, self.ark)]
        return snp_abi.serialise_cert_table(
            [CertTableEntry(guid, c.public_bytes(serialization.Encoding.DER)) for guid, c in entries]
        )

    def report(
        self,
        *,
        report_data: bytes,
        measurement: bytes,
        policy: int = 0x30000,
        guest_svn: int = 0,
        host_data: bytes = bytes(32),
    ) -> bytes:
        """A report as the PSP signs it: v2 (Milan) or v3 with CPUID (Turin), built and serialised by
        BlindAI's own `snp_abi`, then signed with the VCEK (or VLEK) over its first 0x2A0 bytes."""
        tcb = self._tcb_version()
        turin = self.product == "Turin"
        unsigned = SnpReport(
            version=3 if turin else 2,
            guest_svn=guest_svn,
            policy=policy,
            family_id=bytes(16),
            image_id=bytes(16),
            vmpl=0,
            signature_algo=snp_abi.SIG_ALGO_ECDSA_P384_SHA384,
            current_tcb=tcb,
            platform_info=0,
            flags=(snp_abi.KEY_VLEK if self.vlek else snp_abi.KEY_VCEK) << snp_abi.SIGNING_KEY_SHIFT,
            report_data=report_data.ljust(64, b"\0"),
            measurement=measurement,
            host_data=host_data,
            id_key_digest=bytes(48),
            author_key_digest=bytes(48),
            report_id=bytes(32),
            report_id_ma=bytes(32),
            reported_tcb=tcb,
            cpuid_fam_id=0x1A if turin else None,  # Turin: family 0x1A, model 0x02, stepping 0x01
            cpuid_mod_id=0x02 if turin else None,
            cpuid_step=0x01 if turin else None,
            chip_id=self.chip_id,
            committed_tcb=tcb,
            current_build=0,
            current_minor=0,
            current_major=0,
            committed_build=0,
            committed_minor=0,
            committed_major=0,
            launch_tcb=tcb,
            launch_mit_vector=None,
            current_mit_vector=None,
            signature_r=0,
            signature_s=0,
        )
        r, s = decode_dss_signature(self.vcek_key.sign(unsigned.signed, ec.ECDSA(hashes.SHA384())))
        return snp_abi.serialise_report(dataclasses.replace(unsigned, signature_r=r, signature_s=s))
