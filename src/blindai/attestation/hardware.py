"""Registers the hardware verifiers (SGX, TDX, SEV-SNP) with the dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import AttestationError
from .evidence import VerifiedAttestation
from .verify import TrustOptions, register_verifier


def _unsupported(tee: str) -> Any:
    def verifier(_ev: bytes, _col: Mapping[str, Any] | None, _opts: TrustOptions) -> VerifiedAttestation:
        raise AttestationError(f"verification of {tee} evidence is not available in this build", check="verify")

    return verifier


for _tee in ("sgx", "tdx", "sev-snp"):
    register_verifier(_tee, _unsupported(_tee))
