"""``blindai attest show`` and ``blindai attest verify``.

Each ``attest verify`` option applies to the TEEs that use it; any other is refused, never ignored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import (
    _CliError,
    _emit_claims,
    _read,
    _trust_kwargs,
)

# Which `attest verify` options each evidence kind uses: any other is refused, never ignored.
# --pccs-url is Intel's collateral service and --kds-url AMD's (for the VCEK/VLEK CRL); both set
# TrustOptions.collateral_url, so each is refused for the TEE whose service it is not.
ATTEST_VERIFY_OPTIONS: dict[str, tuple[str, ...]] = {
    "--collateral": ("sgx", "tdx", "sev-snp"),
    "--pccs-url": ("sgx", "tdx"),
    "--certs": ("sev-snp",),
    "--crl": ("sev-snp",),
    "--kds-url": ("sev-snp",),
    "--unsafe-trust-root": ("sgx", "tdx", "sev-snp"),
    "--at": ("sgx", "tdx", "sev-snp"),
}


def cmd_attest_show(args: argparse.Namespace) -> int:
    """Verify a live server's evidence (no policy needed) and optionally write a first policy.

    Nothing is written unless every check passed: evidence, collateral, CRLs, the pinned
    vendor root, the binding of the TLS key and the nonce (and ``--policy`` when given)."""
    from ..attestation.policy import Policy
    from ..client.connect import attest

    claims = attest(args.host, **_trust_kwargs(args))
    policy_text = Policy.from_attestation(claims).to_toml() if args.write_policy else None
    _emit_claims(claims, args.json)
    if args.write_policy and policy_text is not None:
        try:
            Path(args.write_policy).write_text(policy_text)
        except OSError as exc:
            raise _CliError(f"cannot write the policy to {args.write_policy}: {exc.strerror or exc}") from exc
        if not args.json:
            print(f"policy pinning these claims written to {args.write_policy}")
            if claims.simulation:
                print("note: a [simulation] policy accepts a SIMULATION server: no hardware protects it")
    return 0


_EXCLUSIVE = (("--collateral", "--pccs-url"), ("--crl", "--kds-url"))


def _refuse_options(args: argparse.Namespace, tee: str) -> None:
    """One line naming an option that this evidence kind does not use (or two that conflict)."""

    def given(flag: str) -> bool:
        return bool(getattr(args, flag[2:].replace("-", "_")))

    for flag, tees in ATTEST_VERIFY_OPTIONS.items():
        if given(flag) and tee not in tees:
            raise _CliError(f"{flag} does not apply to {tee} evidence (it is for {', '.join(tees)})")
    for a, b in _EXCLUSIVE:
        if given(a) and given(b):
            raise _CliError(f"give {a} or {b}, not both: the verification would use only one of them")


def cmd_attest_verify(args: argparse.Namespace) -> int:
    """Verify recorded evidence offline; every option goes to the TEE that uses it (see ATTEST_VERIFY_OPTIONS)."""
    import datetime as dt

    from ..attestation.policy import load_policy, validate
    from ..attestation.verify import TrustOptions, detect_tee, verify_evidence
    from ..errors import BindingError, Check

    evidence = _read(args.evidence, "evidence file")
    tee = detect_tee(evidence)
    _refuse_options(args, tee)
    collateral = None
    if args.collateral:
        try:
            collateral = json.loads(_read(args.collateral, "collateral file"))
        except (ValueError, RecursionError) as exc:
            raise _CliError(f"--collateral {args.collateral} is not JSON: {exc}") from exc
        if not isinstance(collateral, dict):
            raise _CliError(f"--collateral {args.collateral} must hold a JSON object")
    try:
        now = dt.datetime.fromisoformat(args.at.replace("Z", "+00:00")) if args.at else None
    except ValueError as exc:
        raise _CliError(f"--at {args.at!r} is not an ISO 8601 time (e.g. 2025-06-20T00:00:00Z)") from exc
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    options = TrustOptions(
        now=now,
        unsafe_trust_roots=tuple(_read(r, "--unsafe-trust-root") for r in args.unsafe_trust_root or []),
        collateral_url=args.pccs_url or args.kds_url,
    )
    claims = verify_evidence(
        tee,
        evidence,
        collateral,
        options,
        snp_certs=tuple(_read(c, "certificate file") for c in args.certs or []),
        snp_crl=_read(args.crl, "CRL file") if args.crl else None,
    )
    if args.report_data is not None:
        try:
            want = bytes.fromhex(args.report_data).ljust(64, b"\0")
        except ValueError as exc:
            raise _CliError("--report-data must be hex") from exc
        if claims.report_data != want:
            raise BindingError("report_data differs", check=Check.REPORT_DATA, got=claims.report_data, expected=want)
    if args.policy:
        validate(claims, load_policy(Path(args.policy)))
    _emit_claims(claims, args.json)
    return 0
