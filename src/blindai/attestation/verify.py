"""Client side: turn a server's ``/attestation`` answer into verified, bound claims.

Order, always: gate on simulation -> parse -> verify (signatures, chains,
collateral, time) -> check the binding of the TLS key and nonce -> validate the
policy. Nothing is sent to the attested port unless all of it passed.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ..errors import AttestationError, SimulationModeWarning, SimulationRefusedError
from . import simulation
from .binding import check_binding, load_certificate
from .evidence import VerifiedAttestation
from .policy import Policy, validate

__all__ = ["TrustOptions", "register_verifier", "verify_evidence", "verify_server_attestation"]


@dataclass(frozen=True, slots=True)
class TrustOptions:
    """Injected time and trust anchors (never global); ``unsafe_`` roots are for test PKIs."""

    now: dt.datetime | None = None
    unsafe_trust_roots: tuple[bytes, ...] = ()
    # Network access for collateral is opt-in: a PCCS URL, or Intel PCS's. None: never fetch.
    collateral_url: str | None = None


Verifier = Callable[[bytes, Mapping[str, Any] | None, TrustOptions], VerifiedAttestation]
_VERIFIERS: dict[str, Verifier] = {
    "simulation": lambda ev, _col, _opts: simulation.verify(simulation.parse(ev)),
}


def register_verifier(tee: str, verifier: Verifier) -> None:
    _VERIFIERS[tee] = verifier


def verify_evidence(
    tee: str, evidence: bytes, collateral: Mapping[str, Any] | None, options: TrustOptions | None = None
) -> VerifiedAttestation:
    _load_hardware_verifiers()
    verifier = _VERIFIERS.get(tee)
    if verifier is None:
        raise AttestationError(f"unknown TEE kind {tee!r}", check="tee", got=tee, expected=sorted(_VERIFIERS))
    return verifier(evidence, collateral, options or TrustOptions())


def _load_hardware_verifiers() -> None:
    # Imported lazily: they pull dcap-qvl, which a simulation-only client never needs.
    if "sgx" not in _VERIFIERS:
        from . import hardware  # noqa: F401  (registers sgx, tdx, sev-snp)


def verify_server_attestation(
    *,
    tee: str,
    evidence: bytes,
    collateral: Mapping[str, Any] | None,
    certificate_pem: str,
    nonce: bytes,
    policy: Policy | None,
    simulation_ok: bool,
    options: TrustOptions | None = None,
) -> tuple[VerifiedAttestation, x509.Certificate]:
    if tee == "simulation" and not simulation_ok:
        raise SimulationRefusedError(
            "the server runs in SIMULATION mode: no TEE protects your data. "
            "Pass simulation=True only for development and tests",
            check="simulation",
        )
    if tee != "simulation" and simulation_ok:
        raise SimulationRefusedError(
            f"simulation=True only accepts simulation evidence, but the server offers {tee!r}: "
            "connect without simulation=True and give a policy",
            check="simulation",
        )
    if tee != "simulation" and policy is None:
        raise AttestationError(
            f"a policy is required to trust {tee!r} evidence (which measurement do you expect?); "
            "write one with `blindai attest show HOST --write-policy policy.toml`",
            check="policy",
        )
    verified = verify_evidence(tee, evidence, collateral, options)
    cert = load_certificate(certificate_pem)
    check_binding(verified.report_data, cert, nonce)
    if policy is not None and (tee != "simulation" or policy.for_tee("simulation") is not None):
        validate(verified, policy)
    if verified.simulation:
        warnings.warn(
            "connected to a BlindAI server in SIMULATION mode: no hardware protects the data you send",
            SimulationModeWarning,
            stacklevel=3,
        )
    return verified, cert
