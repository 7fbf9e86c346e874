"""Attestation: parse -> verify -> validate, the binding rule, the pinned channel (pure; the
server's evidence providers are in ``blindai.server.providers``)."""

from .binding import DOMAIN, check_binding, report_data_for, spki_sha256
from .evidence import VerifiedAttestation
from .policy import Policy, PolicyLoadError, TeePolicy, load_policy, policy_from_attestation, validate
from .trust import TrustOptions
from .verify import verify_evidence, verify_server_attestation

__all__ = [
    "DOMAIN",
    "Policy",
    "PolicyLoadError",
    "TeePolicy",
    "TrustOptions",
    "VerifiedAttestation",
    "check_binding",
    "load_policy",
    "policy_from_attestation",
    "report_data_for",
    "spki_sha256",
    "validate",
    "verify_evidence",
    "verify_server_attestation",
]
