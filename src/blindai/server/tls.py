"""The attested TLS identity: a key pair born in (TEE) memory and its certificate.

The private key never touches a disk in clear: Python's ``ssl`` only loads keys
from paths, so the PEM goes into an anonymous memory file (``memfd_create``),
or, where that is missing, into a temporary file encrypted under a random
passphrase that exists only in memory, unlinked as soon as it is loaded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_SERVER_NAME", "TlsIdentity", "make_identity"]

DEFAULT_SERVER_NAME = "blindai-srv"
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    certificate: x509.Certificate
    certificate_pem: str
    spki_sha256: bytes
    _key: ec.EllipticCurvePrivateKey = field(repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        _load_key_in_memory(ctx, self.certificate_pem.encode(), self._key)
        return ctx


def make_identity(names: list[str] | None = None) -> TlsIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    all_names = [DEFAULT_SERVER_NAME, *[n for n in (names or []) if n != DEFAULT_SERVER_NAME]]
    sans: list[x509.GeneralName] = []
    for n in all_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_SERVER_NAME)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TlsIdentity(cert, pem, hashlib.sha256(spki).digest(), key)


def _load_key_in_memory(ctx: ssl.SSLContext, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> None:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create("blindai-tls", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                pem = key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                os.write(fd, cert_pem + pem)
                ctx.load_cert_chain(f"/proc/self/fd/{fd}")
                return
            finally:
                os.close(fd)
    password = secrets.token_bytes(32)
    enc = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.NamedTemporaryFile(prefix="blindai-tls-", suffix=".pem") as tmp:
        tmp.write(cert_pem + enc)
        tmp.flush()
        ctx.load_cert_chain(tmp.name, password=password)
