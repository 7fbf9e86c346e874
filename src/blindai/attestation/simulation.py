"""Simulation evidence: the same flow as hardware, with no hardware guarantee.

Format (all offsets fixed, little room for ambiguity)::

    0    8   magic  b"BAISIMv1"
    8   64   report_data
    72  48   measurement (SHA-384 of the server's code, for policy pinning in tests)
    120 32   Ed25519 public key made at server start
    152 64   Ed25519 signature over bytes 0..152

The signature only shows the record was not altered after the server made it;
the key is not vouched for by anyone, so a simulation server can lie freely.
That is why clients accept it only with ``simulation=True``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import Check, EvidenceParseError, SignatureError
from .evidence import SimulatedEvidence, VerifiedAttestation

__all__ = ["MAGIC", "SIZE", "SimulationSigner", "code_measurement", "parse", "verify"]

MAGIC = b"BAISIMv1"
_RD, _MEAS, _PK, _SIG = 8, 72, 120, 152
SIZE = 216


class SimulationSigner:
    """Holds the per-process signing key; lives only in server memory."""

    def __init__(self, measurement: bytes) -> None:
        if len(measurement) != 48:
            raise ValueError("measurement must be 48 bytes")
        self._key = Ed25519PrivateKey.generate()
        self._public = self._key.public_key().public_bytes_raw()
        self.measurement = measurement

    def sign(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        body = MAGIC + report_data + self.measurement + self._public
        return body + self._key.sign(body)


def code_measurement() -> bytes:
    """SHA-384 over the package's Python sources, so a policy can pin a build."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha384()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.digest()


def parse(data: bytes) -> SimulatedEvidence:
    if len(data) < SIZE:
        raise EvidenceParseError(f"simulation evidence is {len(data)} bytes; needs {SIZE}", check=Check.PARSE)
    if data[:8] != MAGIC:
        raise EvidenceParseError("not simulation evidence (bad magic)", check=Check.PARSE, got=data[:8], expected=MAGIC)
    return SimulatedEvidence(
        report_data=bytes(data[_RD:_MEAS]),
        measurement=bytes(data[_MEAS:_PK]),
        public_key=bytes(data[_PK:_SIG]),
        signature=bytes(data[_SIG:SIZE]),
        signed=bytes(data[:_SIG]),
    )


def verify(ev: SimulatedEvidence) -> VerifiedAttestation:
    try:
        Ed25519PublicKey.from_public_bytes(ev.public_key).verify(ev.signature, ev.signed)
    except InvalidSignature as exc:
        raise SignatureError("simulation evidence signature does not verify", check=Check.SIGNATURE) from exc
    return VerifiedAttestation(
        tee="simulation",
        measurements={"measurement": ev.measurement.hex()},
        debug=True,
        report_data=ev.report_data,
        tcb_status=None,
    )
