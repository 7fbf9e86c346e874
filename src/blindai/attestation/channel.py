"""The pinned TLS channel: trust exactly the attested certificate, and check its key at every handshake.

Python's ``ssl`` has no per-certificate callback, so the check lives in the socket
classes the context creates: after *every* handshake, before the first application
byte is written, the peer's SubjectPublicKeyInfo must hash to the attested pin. The
trust store holds only the attested certificate as well, so OpenSSL refuses any other
chain first; the pin is the second lock, and it covers reconnections of a connection
pool, not just the first connection.
"""

from __future__ import annotations

import hmac
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .binding import spki_sha256

__all__ = ["PinMismatch", "is_pin_failure", "pinned_context"]


class PinMismatch(ssl.SSLCertVerificationError):
    """The peer's key is not the attested one (raised inside the handshake, so nothing was sent)."""


def _check_peer(ctx: ssl.SSLContext, der: bytes | None) -> None:
    pin = getattr(ctx, "blindai_pin", None)
    if not isinstance(pin, bytes):  # a context made by pinned_context always has one
        raise PinMismatch("no attested key to compare the peer's key with")
    if der is None:
        raise PinMismatch("the attested port presented no certificate")
    got = spki_sha256(x509.load_der_x509_certificate(der))
    if not hmac.compare_digest(got, pin):
        raise PinMismatch(f"the attested port's key {got.hex()} is not the attested key {pin.hex()}")


class _PinnedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check_peer(self.context, self.getpeercert(binary_form=True))


class _PinnedObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _check_peer(self.context, self.getpeercert(binary_form=True))


def pinned_context(cert: x509.Certificate) -> ssl.SSLContext:
    """A client context that completes a handshake only with the holder of ``cert``'s key.

    Host names are not checked: the trust store holds one certificate and the key is
    pinned, which is stronger than any name. Usable by any client that takes an
    ``ssl.SSLContext`` built on the standard library's sockets (httpx, requests adapters,
    urllib); clients with their own TLS stack still get the one-certificate trust store.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.DER))
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sslsocket_class = _PinnedSocket
    ctx.sslobject_class = _PinnedObject
    ctx.blindai_pin = spki_sha256(cert)  # type: ignore[attr-defined]
    return ctx


def is_pin_failure(exc: BaseException) -> bool:
    """Whether a transport error was the channel refusing a key (pin or trust store), anywhere in its causes."""
    seen: set[int] = set()
    cur: Any = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
