"""RA-TLS certificates: evidence carried inside an X.509 certificate.

Two carriers are understood:
- TCG DICE tagged evidence (extension OID 2.23.133.5.4.9, the interoperable RA-TLS
  format): CBOR tag 60000 wrapping ``[quote, claims]`` where ``claims`` is a CBOR map
  ``{"pubkey-hash": [1, SHA-256(SubjectPublicKeyInfo DER)]}`` (1 = sha-256; the array is
  itself CBOR-encoded in a byte string by the producers seen in the wild) and the
  quote's report_data[0:32] is SHA-256 of the claims bytes;
- Gramine's legacy extension (OID 1.2.840.113741.1337.6): the raw quote, whose
  report_data[0:32] is SHA-256(SubjectPublicKeyInfo DER).

Some producers write certificates that strict X.509 parsers refuse (for example
``ecdsa-with-SHA256`` with NULL parameters), so the few fields needed here are read
with a minimal DER walker rather than a full X.509 parser.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ..errors import BindingError, Check, EvidenceParseError
from .dcap_abi import DcapQuote, parse_quote

__all__ = ["OID_DICE_TAGGED_EVIDENCE", "OID_GRAMINE_LEGACY", "RaTlsEvidence", "check_ratls_binding", "extract"]

OID_DICE_TAGGED_EVIDENCE = "2.23.133.5.4.9"
OID_GRAMINE_LEGACY = "1.2.840.113741.1337.6"
CBOR_TAG_DICE = 60000
HASH_ALG_SHA256 = 1


def _read(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER element at ``pos``: (tag, start of value, end of value)."""
    if pos + 2 > len(data):
        raise EvidenceParseError("certificate DER truncated", check=Check.PARSE)
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise EvidenceParseError("certificate DER has a bad length", check=Check.PARSE)
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise EvidenceParseError("certificate DER element runs past the end", check=Check.PARSE)
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = _read(data, pos)
        out.append((tag, pos, vs, ve))
        pos = ve
    return out


def _oid_text(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40]
    value = 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


@dataclass(frozen=True, slots=True)
class RaTlsEvidence:
    spki_der: bytes
    extensions: dict[str, bytes]

    @property
    def kind(self) -> str:
        if OID_DICE_TAGGED_EVIDENCE in self.extensions:
            return "dice"
        if OID_GRAMINE_LEGACY in self.extensions:
            return "gramine-legacy"
        return "none"


def extract(cert_der: bytes) -> RaTlsEvidence:
    """Read the SubjectPublicKeyInfo and the extensions of a certificate (DER)."""
    try:
        return _extract(cert_der)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, EvidenceParseError):
            raise
        raise EvidenceParseError(f"certificate DER is malformed ({type(exc).__name__})", check=Check.PARSE) from exc


def _extract(cert_der: bytes) -> RaTlsEvidence:
    tag, cs, ce = _read(cert_der, 0)
    if tag != 0x30:
        raise EvidenceParseError("not a DER certificate", check=Check.PARSE)
    _, _, tbs_vs, tbs_ve = _children(cert_der, cs, ce)[0]
    fields = _children(cert_der, tbs_vs, tbs_ve)
    offset = 1 if fields and fields[0][0] == 0xA0 else 0  # explicit [0] version
    if len(fields) < offset + 6:
        raise EvidenceParseError("certificate has too few TBS fields", check=Check.PARSE)
    _, spki_start, _, spki_end = fields[offset + 5]
    extensions: dict[str, bytes] = {}
    for tag, _, vs, _ in fields[offset + 6 :]:
        if tag != 0xA3:
            continue
        _, seq_vs, seq_ve = _read(cert_der, vs)
        for _, _, evs, eve in _children(cert_der, seq_vs, seq_ve):
            parts = _children(cert_der, evs, eve)
            raw_oid = cert_der[parts[0][2] : parts[0][3]]
            if raw_oid[:1] == b"\x06" and len(raw_oid) > 2 and raw_oid[1] == len(raw_oid) - 2:
                raw_oid = raw_oid[2:]  # Gramine's legacy extension double-encodes its OID
            oid = _oid_text(raw_oid)
            value = parts[-1]  # OCTET STRING (after the optional critical flag)
            extensions[oid] = cert_der[value[2] : value[3]]
    return RaTlsEvidence(cert_der[spki_start:spki_end], extensions)


def _pem_to_der(pem: bytes) -> bytes:
    import base64

    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    return base64.b64decode(body)


def check_ratls_binding(cert: bytes, kind: str | None = None) -> DcapQuote:
    """Extract the quote and check it binds the certificate's public key; return the parsed quote.

    This checks the binding only: the quote itself must then be verified (with collateral)
    and validated against a policy like any other quote.
    """
    import cbor2

    try:
        der = _pem_to_der(cert) if cert.lstrip().startswith(b"-----BEGIN") else cert
    except ValueError as exc:
        raise EvidenceParseError("certificate PEM is not base64", check=Check.PARSE) from exc
    ev = extract(der)
    spki_hash = hashlib.sha256(ev.spki_der).digest()
    kind = kind or ev.kind
    if kind == "dice" and OID_DICE_TAGGED_EVIDENCE in ev.extensions:
        try:
            tagged = cbor2.loads(ev.extensions[OID_DICE_TAGGED_EVIDENCE])
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise EvidenceParseError("DICE tagged evidence is not CBOR", check=Check.PARSE) from exc
        if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != CBOR_TAG_DICE:
            raise EvidenceParseError("DICE evidence is not CBOR tag 60000", check=Check.PARSE)
        value = tagged.value
        if not isinstance(value, list | tuple) or len(value) != 2 or not all(isinstance(x, bytes) for x in value):
            raise EvidenceParseError("DICE evidence must be [quote, claims] byte strings", check=Check.PARSE)
        raw_quote, claims_bytes = value
        try:
            claims = cbor2.loads(claims_bytes)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise EvidenceParseError("DICE claims are not CBOR", check=Check.PARSE) from exc
        pk = claims.get("pubkey-hash") if isinstance(claims, dict) else None
        if isinstance(pk, bytes):  # producers wrap the [alg, hash] array in a CBOR byte string
            try:
                pk = cbor2.loads(pk)
            except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
                raise EvidenceParseError("pubkey-hash is not CBOR", check=Check.PARSE) from exc
        if not (isinstance(pk, list) and len(pk) == 2 and pk[0] == HASH_ALG_SHA256 and isinstance(pk[1], bytes)):
            raise EvidenceParseError("claims lack a sha-256 pubkey-hash", check=Check.PARSE)
        if not hmac.compare_digest(pk[1], spki_hash):
            raise BindingError(
                "pubkey-hash is not the certificate's key", check=Check.RATLS_BINDING, got=pk[1], expected=spki_hash
            )
        quote = parse_quote(raw_quote)
        want = hashlib.sha256(claims_bytes).digest()
    elif kind == "gramine-legacy" and OID_GRAMINE_LEGACY in ev.extensions:
        quote = parse_quote(ev.extensions[OID_GRAMINE_LEGACY])
        want = spki_hash
    else:
        raise EvidenceParseError("certificate carries no RA-TLS evidence", check=Check.PARSE)
    if not hmac.compare_digest(quote.body.report_data[:32], want):
        raise BindingError(
            "quote report_data does not bind the RA-TLS claims",
            check=Check.RATLS_BINDING,
            got=quote.body.report_data[:32],
            expected=want,
        )
    return quote
