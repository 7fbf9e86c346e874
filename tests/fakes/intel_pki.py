"""FAKE Intel DCAP PKI for tests: a hierarchy shaped like Intel's, signing SGX quotes the way Intel's does.

Nothing here is trusted by BlindAI unless a test passes its root through an
``unsafe_`` option. It builds: a root CA, a PCK platform CA, a TCB signing
certificate, a PCK leaf with the Intel SGX extension (FMSPC, TCB components,
PCESVN, CPUSVN, PCE-ID, SGX type), CRLs, TCB Info and QE Identity JSON signed
like Intel's, and DCAP quotes v3 (SGX) and v4 (TDX) with a QE report and certification data type 5.
Quotes are built as `dcap_abi` records and serialised by BlindAI's own `dcap_abi`: the fake
signs what the parser reads, and no byte offset is written twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from blindai.attestation import dcap_abi
from blindai.attestation.dcap_abi import DcapQuote, SgxReportBody, TdReportBody

SGX_EXT = "1.2.840.113741.1.13.1"
QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")


# ------------------------------------------------------------------ a little DER


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(v: int) -> bytes:
    b = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return _tlv(0x02, b)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def sgx_extension(
    fmspc: bytes, cpusvn: bytes, pcesvn: int, pceid: bytes = b"\0\0", ppid: bytes = b"\x11" * 16
) -> bytes:
    tcb = [_seq(_oid(f"{SGX_EXT}.2.{i + 1}"), _int(cpusvn[i])) for i in range(16)]
    tcb.append(_seq(_oid(f"{SGX_EXT}.2.17"), _int(pcesvn)))
    tcb.append(_seq(_oid(f"{SGX_EXT}.2.18"), _tlv(0x04, cpusvn)))
    return _seq(
        _seq(_oid(f"{SGX_EXT}.1"), _tlv(0x04, ppid)),
        _seq(_oid(f"{SGX_EXT}.2"), _seq(*tcb)),
        _seq(_oid(f"{SGX_EXT}.3"), _tlv(0x04, pceid)),
        _seq(_oid(f"{SGX_EXT}.4"), _tlv(0x04, fmspc)),
        _seq(_oid(f"{SGX_EXT}.5"), _tlv(0x0A, b"\x00")),
    )


# ------------------------------------------------------------------ the PKI


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeIntelPki:
    """A FAKE Intel-shaped DCAP PKI. ``now`` is the middle of every validity window."""

    now: dt.datetime
    fmspc: bytes = bytes.fromhex("00906ED50000")
    cpusvn: bytes = bytes([5, 5, 2, 4, 1, 128, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    pcesvn: int = 13
    qe_isvsvn: int = 8
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    certs: dict[str, x509.Certificate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in ("root", "pck_ca", "tcb", "pck", "attest"):
            self.keys[role] = ec.generate_private_key(ec.SECP256R1())
        self.certs["root"] = self._cert("Intel SGX Root CA", "root", "root", ca=True)
        self.certs["pck_ca"] = self._cert("Intel SGX PCK Platform CA", "pck_ca", "root", ca=True)
        self.certs["tcb"] = self._cert("Intel SGX TCB Signing", "tcb", "root", ca=False)
        ext = x509.UnrecognizedExtension(
            x509.ObjectIdentifier(SGX_EXT), sgx_extension(self.fmspc, self.cpusvn, self.pcesvn)
        )
        self.certs["pck"] = self._cert("Intel SGX PCK Certificate", "pck", "pck_ca", ca=False, extra=ext)

    def _cert(
        self, cn: str, role: str, issuer: str, *, ca: bool, extra: x509.ExtensionType | None = None
    ) -> x509.Certificate:
        issuer_name = _name("Intel SGX Root CA") if issuer == "root" else self.certs[issuer].subject
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer_name)
            .public_key(self.keys[role].public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=365))
            .not_valid_after(self.now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.keys[role].public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.keys[issuer].public_key()), critical=False
            )
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        if extra is not None:
            b = b.add_extension(extra, critical=False)
        return b.sign(self.keys[issuer], hashes.SHA256())

    @property
    def root_pem(self) -> bytes:
        return self.certs["root"].public_bytes(serialization.Encoding.PEM)

    def _crl(self, issuer: str, revoked: list[int], this: dt.datetime, nxt: dt.datetime) -> bytes:
        b = x509.CertificateRevocationListBuilder().issuer_name(self.certs[issuer].subject)
        b = b.last_update(this).next_update(nxt).add_extension(x509.CRLNumber(1), critical=False)
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.keys[issuer].public_key()), critical=False
        )
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this).build()
            )
        return b.sign(self.keys[issuer], hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    @property
    def root_spki_sha256(self) -> bytes:
        spki = (
            self.certs["root"]
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return hashlib.sha256(spki).digest()

    def collateral(
        self,
        *,
        revoke_pck: bool = False,
        issued: dt.datetime | None = None,
        validity: dt.timedelta = dt.timedelta(days=30),
        tee: str = "sgx",
    ) -> dict[str, str]:
        issued = issued or self.now - dt.timedelta(days=1)
        nxt = issued + validity
        level = {
            "tcb": {"sgxtcbcomponents": [{"svn": b} for b in self.cpusvn], "pcesvn": self.pcesvn},
            "tcbDate": "2024-03-13T00:00:00Z",
            "tcbStatus": "UpToDate",
        }
        info: dict[str, object] = {
            "id": "SGX",
            "version": 3,
            "issueDate": _iso(issued),
            "nextUpdate": _iso(nxt),
            "fmspc": self.fmspc.hex().upper(),
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
        }
        if tee == "tdx":
            zero_module = {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8}
            info["id"] = "TDX"
            info["tdxModule"] = zero_module
            info["tdxModuleIdentities"] = [
                {
                    "id": "TDX_01",
                    **zero_module,
                    "tcbLevels": [{"tcb": {"isvsvn": 0}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"}],
                }
            ]
            level["tcb"]["tdxtcbcomponents"] = [{"svn": b} for b in TEE_TCB_SVN]  # type: ignore[index]
        info["tcbLevels"] = [level]
        tcb_info = json.dumps(info, separators=(",", ":"))
        qe_identity = json.dumps(
            {
                "id": "TD_QE" if tee == "tdx" else "QE",
                "version": 2,
                "issueDate": _iso(issued),
                "nextUpdate": _iso(nxt),
                "tcbEvaluationDataNumber": 17,
                "miscselect": "00000000",
                "miscselectMask": "FFFFFFFF",
                "attributes": "11000000000000000000000000000000",
                "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
                "mrsigner": QE_MRSIGNER.hex().upper(),
                "isvprodid": 2 if tee == "tdx" else 1,
                "tcbLevels": [
                    {"tcb": {"isvsvn": self.qe_isvsvn}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"}
                ],
            },
            separators=(",", ":"),
        )
        revoked = [self.certs["pck"].serial_number] if revoke_pck else []
        return {
            "pck_crl_issuer_chain": _pem(self.certs["pck_ca"], self.certs["root"]),
            "root_ca_crl": self._crl("root", [], issued, nxt).hex(),
            "pck_crl": self._crl("pck_ca", revoked, issued, nxt).hex(),
            "tcb_info_issuer_chain": _pem(self.certs["tcb"], self.certs["root"]),
            "tcb_info": tcb_info,
            "tcb_info_signature": _raw_sig(self.keys["tcb"], tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": _pem(self.certs["tcb"], self.certs["root"]),
            "qe_identity": qe_identity,
            "qe_identity_signature": _raw_sig(self.keys["tcb"], qe_identity.encode()).hex(),
        }

    def _signed_quote(self, unsigned: DcapQuote, qe_prod_id: int) -> bytes:
        """Sign header and body with the attestation key, bind that key in a QE report the PCK signs
        (QE auth data, PCK chain as certification data type 5), and serialise the quote."""
        signed_part = dcap_abi.serialise_quote(unsigned)[: -dcap_abi.SIGNATURE_LENGTH_SIZE]
        attest_key = _raw_pub(self.keys["attest"])
        auth = bytes(range(32))
        qe_report = sgx_report(
            self.cpusvn,
            0x11,
            bytes(32),
            QE_MRSIGNER,
            qe_prod_id,
            self.qe_isvsvn,
            hashlib.sha256(attest_key + auth).digest() + bytes(32),
        )
        chain = _pem(self.certs["pck"], self.certs["pck_ca"], self.certs["root"]).encode() + b"\0"
        qe = dcap_abi.QeCertificationData(
            qe_report=qe_report,
            qe_report_signature=_raw_sig(self.keys["pck"], dcap_abi.serialise_sgx_report(qe_report)),
            qe_auth_data=auth,
            cert_type=dcap_abi.CERT_TYPE_PCK_CHAIN,
            cert_data=chain,
        )
        sig = dcap_abi.EcdsaSignatureData(_raw_sig(self.keys["attest"], signed_part), attest_key, qe)
        sig_data = dcap_abi.serialise_signature_data(sig, unsigned.version)
        return dcap_abi.serialise_quote(dataclasses.replace(unsigned, signature_data=sig_data))

    def _header(self, version: int, tee_type: int, body: SgxReportBody | TdReportBody, qe_svn: int) -> DcapQuote:
        return DcapQuote(
            version=version,
            att_key_type=dcap_abi.ATT_KEY_ECDSA_P256,
            tee_type=tee_type,
            qe_svn=qe_svn,
            pce_svn=self.pcesvn,
            qe_vendor_id=QE_VENDOR_ID,
            user_data=bytes(20),
            body_type=dcap_abi.BODY_SGX if isinstance(body, SgxReportBody) else dcap_abi.BODY_TD10,
            body=body,
            signature_data=b"",
        )

    def sgx_quote(
        self,
        *,
        mrenclave: bytes,
        mrsigner: bytes,
        report_data: bytes,
        debug: bool = False,
        isv_prod_id: int = 0,
        isv_svn: int = 1,
    ) -> bytes:
        """A DCAP quote v3 signed the way Intel's QE signs it."""
        flags = 0x07 if debug else 0x05
        body = sgx_report(self.cpusvn, flags, mrenclave, mrsigner, isv_prod_id, isv_svn, report_data)
        return self._signed_quote(self._header(3, dcap_abi.TEE_TYPE_SGX, body, self.qe_isvsvn), qe_prod_id=1)

    def tdx_quote(
        self, *, mrtd: bytes, report_data: bytes, debug: bool = False, rtmrs: tuple[bytes, ...] = ()
    ) -> bytes:
        """A DCAP quote v4 for a TD (TDREPORT 1.0 body, QE report certification data type 6)."""
        z48 = bytes(48)
        given = (*rtmrs, z48, z48, z48, z48)[:4]
        body = TdReportBody(
            tee_tcb_svn=TEE_TCB_SVN,
            mr_seam=z48,
            mr_signer_seam=z48,
            seam_attributes=bytes(8),
            td_attributes=(0x10000000 | (1 if debug else 0)).to_bytes(8, "little"),
            xfam=(0xE7).to_bytes(8, "little"),
            mr_td=mrtd,
            mr_config_id=z48,
            mr_owner=z48,
            mr_owner_config=z48,
            rtmrs=(given[0], given[1], given[2], given[3]),
            report_data=report_data.ljust(64, b"\0"),
        )
        return self._signed_quote(self._header(4, dcap_abi.TEE_TYPE_TDX, body, 0), qe_prod_id=2)


TEE_TCB_SVN = bytes([5, 0, 2] + [0] * 13)


def sgx_report(
    cpusvn: bytes, flags: int, mrenclave: bytes, mrsigner: bytes, prod_id: int, svn: int, report_data: bytes
) -> SgxReportBody:
    """An enclave report body (the quoted enclave's, or the QE's); fields not given are zero."""
    return SgxReportBody(
        cpu_svn=cpusvn,
        misc_select=0,
        isv_ext_prod_id=bytes(16),
        attributes=flags.to_bytes(8, "little") + (0xE7).to_bytes(8, "little"),  # flags, XFRM
        mr_enclave=mrenclave,
        mr_signer=mrsigner,
        config_id=bytes(64),
        isv_prod_id=prod_id,
        isv_svn=svn,
        config_svn=0,
        isv_family_id=bytes(16),
        report_data=report_data.ljust(64, b"\0"),
    )
