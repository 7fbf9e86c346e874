"""Client side: turn a server's evidence into verified, bound claims.

Order, always: gate on simulation -> parse -> verify (signatures, chains,
collateral, time) -> check the binding of the TLS key and nonce -> validate the
policy. Nothing is sent to the attested port unless all of it passed. Every
failure is an `AttestationError` naming its check: a
malformed input that slips past a parser is caught at this boundary and refused
as ``parse``, never leaked as a foreign exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from cryptography import x509

from ..errors import (
    AttestationError,
    BlindAIError,
    Check,
    CollateralError,
    EvidenceParseError,
    SimulationModeWarning,
    SimulationRefusedError,
)
from ..tees import SIMULATION, TEES, is_simulation
from . import dcap_abi, simulation, snp_abi
from .binding import check_binding, load_certificate, spki_sha256
from .collateral import KDS_URL, load_crl
from .dcap_verify import verify_dcap_evidence
from .evidence import VerifiedAttestation
from .policy import Policy, validate
from .snp_verify import verify_snp_evidence
from .trust import TrustOptions

__all__ = ["TrustOptions", "detect_tee", "verify_evidence", "verify_server_attestation"]

_DCAP_PREFIX = struct.Struct("<HHI")  # version, attestation key type, TEE type
_U32 = struct.Struct("<I")
_SNP_SIG_ALGO_AT = 0x34


def detect_tee(data: bytes) -> str:
    """Tell the evidence kind from its bytes: simulation, sgx, tdx or sev-snp (nothing is verified here)."""
    if data[: len(simulation.MAGIC)] == simulation.MAGIC:
        return "simulation"
    if len(data) >= _DCAP_PREFIX.size:
        version, akt, tee_type = _DCAP_PREFIX.unpack_from(data, 0)
        if (
            version in dcap_abi.QUOTE_VERSIONS
            and akt == dcap_abi.ATT_KEY_ECDSA_P256
            and tee_type in (dcap_abi.TEE_TYPE_SGX, dcap_abi.TEE_TYPE_TDX)
        ):
            return "tdx" if tee_type == dcap_abi.TEE_TYPE_TDX else "sgx"
    if len(data) >= snp_abi.REPORT_SIZE:
        (version,) = _U32.unpack_from(data, 0)
        (algo,) = _U32.unpack_from(data, _SNP_SIG_ALGO_AT)
        if version in snp_abi.SUPPORTED_VERSIONS and algo == snp_abi.SIG_ALGO_ECDSA_P384_SHA384:
            return "sev-snp"
    raise EvidenceParseError("not SGX or TDX quote, SEV-SNP report or simulation evidence", check=Check.DETECT)


@contextlib.contextmanager
def _typed(what: str) -> Iterator[None]:
    """Fail closed and typed: whatever a hostile input makes a parser or library raise becomes an
    EvidenceParseError naming the input (the original is kept as the cause)."""
    try:
        yield
    except BlindAIError:
        raise
    except Exception as exc:  # any foreign failure on untrusted input is a refusal
        raise EvidenceParseError(f"malformed {what} ({type(exc).__name__}: {exc})", check=Check.PARSE) from exc


def verify_evidence(
    tee: str,
    evidence: bytes,
    collateral: Mapping[str, Any] | None,
    options: TrustOptions | None = None,
    *,
    snp_certs: tuple[bytes, ...] = (),
    snp_crl: bytes | None = None,
) -> VerifiedAttestation:
    """Parse and verify evidence of kind ``tee`` (no policy, no binding): the claims it proves.

    ``snp_certs`` and ``snp_crl`` (PEM or DER) give SEV-SNP certificates and the CRL from files;
    they are refused for other TEEs rather than silently ignored."""
    opts = options or TrustOptions()
    spec = TEES.get(tee)
    kind = spec.evidence if spec is not None else None  # the evidence format of the TEE's row
    if kind != "snp" and (snp_certs or snp_crl is not None):
        raise AttestationError(
            f"certificates and CRLs given as files only apply to sev-snp evidence, not {tee}", check=Check.OPTIONS
        )
    with _typed(f"{tee} evidence or collateral"):
        match kind:
            case "simulation":
                return simulation.verify(simulation.parse(evidence))
            case "dcap":
                return verify_dcap_evidence(tee, evidence, collateral, opts)
            case "snp":
                crl = load_crl(snp_crl) if snp_crl is not None else None
                return verify_snp_evidence(evidence, collateral, opts, snp_certs, crl)
            case _:
                raise AttestationError(
                    f"unknown TEE kind {tee!r}", check=Check.TEE, got=tee, expected="simulation, sgx, tdx or sev-snp"
                )


def _simulation_gate(tee: str, simulation_ok: bool, policy: Policy | None) -> None:
    sim_policy = policy is not None and policy.for_tee(SIMULATION) is not None
    if is_simulation(tee) and not (simulation_ok or sim_policy):
        raise SimulationRefusedError(
            "the server runs in SIMULATION mode: no TEE protects your data. "
            "Pass simulation=True only for development and tests",
            check=Check.SIMULATION,
            cli_message="the server runs in SIMULATION mode: no TEE protects your data. "
            "Pass --simulation only for development and tests",
        )
    if not is_simulation(tee) and simulation_ok:
        raise SimulationRefusedError(
            f"simulation=True only accepts simulation evidence, but the server offers {tee!r}: "
            "connect without simulation=True and give a policy",
            check=Check.SIMULATION,
            cli_message=f"--simulation only accepts simulation evidence, but the server offers {tee!r}: "
            "drop --simulation and give --policy",
        )


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
    require_policy: bool = True,
) -> tuple[VerifiedAttestation, x509.Certificate]:
    """The whole client-side decision for one ``/attestation`` answer.

    ``require_policy=False`` is for bootstrapping (``blindai.attest``): evidence, collateral,
    binding and nonce are still verified against the pinned vendor roots, and the safe
    defaults that need no expected value (a current SEV-SNP CRL) still apply.
    A policy with a ``[simulation]`` section accepts simulation evidence, like ``simulation=True``.
    """
    _simulation_gate(tee, simulation_ok, policy)
    if not is_simulation(tee) and policy is None and require_policy:
        raise AttestationError(
            f"a policy is required to trust {tee!r} evidence (which measurement do you expect?); build a first one "
            "from the server with blindai.attest(host) and blindai.Policy.from_attestation(...)",
            check=Check.POLICY,
            cli_message=f"a policy is required to trust {tee!r} evidence (which measurement do you expect?); "
            "write one with `blindai attest show HOST --write-policy policy.toml`",
        )
    verified = verify_evidence(tee, evidence, collateral, options)
    with _typed("TLS certificate"):
        cert = load_certificate(certificate_pem)
        check_binding(verified.report_data, cert, nonce)
        verified = dataclasses.replace(verified, tls_key_sha256=spki_sha256(cert))
    if policy is not None and (not verified.simulation or policy.for_tee(SIMULATION) is not None):
        validate(verified, policy)
    elif verified.tee == "sev-snp" and not verified.crl_checked:
        why = "no current VCEK/VLEK CRL came with the SEV-SNP evidence, so revocation was not checked: "
        serve = "have the server serve one (blindai serve --snp-crl-file/--snp-crl-url), "
        raise CollateralError(
            why + serve + "fetch it yourself (collateral_url=KDS), or accept the risk with require_crl = false "
            "in a policy",
            check=Check.CRL,
            cli_message=why + serve + f"fetch it yourself (--collateral-url {KDS_URL}), or accept "
            "the risk with require_crl = false in a --policy",
        )
    if verified.simulation:
        warnings.warn(
            "connected to a BlindAI server in SIMULATION mode: no hardware protects the data you send",
            SimulationModeWarning,
            stacklevel=3,
        )
    return verified, cert
