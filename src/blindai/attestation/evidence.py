"""Typed, frozen evidence records and the verified claims they yield.

Records are produced by parsers only; ``verify_*`` functions accept only records,
and policy validation accepts only `VerifiedAttestation`, which only
verification builds. That ordering is the point of the types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..tees import is_simulation

__all__ = ["SimulatedEvidence", "TeeKind", "VerifiedAttestation"]

TeeKind = Literal["simulation", "sgx", "tdx", "sev-snp"]


@dataclass(frozen=True, slots=True)
class SimulatedEvidence:
    """Simulation evidence: a self-signed record that proves nothing about hardware."""

    report_data: bytes
    measurement: bytes
    public_key: bytes
    signature: bytes
    signed: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class VerifiedAttestation:
    """Claims of evidence whose signatures, chains and collateral all verified.

    ``measurements`` maps a TEE-specific name (``mrenclave``, ``mrtd``,
    ``measurement``, ...) to lowercase hex. ``svns`` holds the numeric claims
    (security versions, product ids, SNP ``vmpl`` and ``guest_policy``).
    ``crl_checked``: revocation lists were verified with the evidence.
    ``tls_key_sha256``: SHA-256 of the TLS public key (SPKI) the evidence binds,
    set once the binding was checked. ``simulation`` is True only for the no-TEE
    mode, whose claims are not backed by any hardware.
    """

    tee: TeeKind
    measurements: dict[str, str]
    debug: bool
    report_data: bytes
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    svns: dict[str, int] = field(default_factory=dict)
    crl_checked: bool = False
    tls_key_sha256: bytes | None = None

    @property
    def simulation(self) -> bool:
        """True when the server runs in simulation mode: no hardware guarantee at all."""
        return is_simulation(self.tee)

    def to_json(self) -> dict[str, object]:
        """The claims as JSON-ready values (bytes as hex), for logs and ``blindai attest --json``."""
        return {
            "tee": self.tee,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "debug": self.debug,
            "measurements": dict(self.measurements),
            "report_data": self.report_data.hex(),
            "svns": dict(self.svns),
            "crl_checked": self.crl_checked,
            "tls_key_sha256": self.tls_key_sha256.hex() if self.tls_key_sha256 is not None else None,
        }

    def __str__(self) -> str:
        label = " (SIMULATION: no hardware protects this server)" if self.simulation else ""
        lines = [f"tee:            {self.tee}{label}"]
        lines += [f"{k + ':':15} {v}" for k, v in self.measurements.items()]
        lines += [f"{k + ':':15} {v}" for k, v in self.svns.items()]
        lines.append(f"debug:          {self.debug}")
        if self.tcb_status is not None:
            lines.append(f"tcb_status:     {self.tcb_status}")
        if self.advisory_ids:
            lines.append(f"advisories:     {', '.join(self.advisory_ids)}")
        if not self.simulation:
            lines.append(f"crl_checked:    {self.crl_checked}")
        if self.tls_key_sha256 is not None:
            lines.append(f"tls_key_sha256: {self.tls_key_sha256.hex()}")
        return "\n".join(lines)
