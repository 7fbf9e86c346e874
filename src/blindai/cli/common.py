"""What several commands share: connection flags, trust options, sizes, reading files, printing claims."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..tees import TEES


def size(text: str) -> int:
    """A byte size such as ``512m``, ``2G``, ``64KiB`` or ``1000``."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = -1
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use a number with an optional k, m or g (e.g. 512m)")
    return int(value)


def _add_connect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", help="server host name or address (ports go in --attested-port/--unattested-port)")
    p.add_argument("--attested-port", type=int, default=50051, help="the server's TLS port (models, inference)")
    p.add_argument("--unattested-port", type=int, default=50052, help="the server's evidence port (plain HTTP)")
    p.add_argument("--policy", help="policy TOML file (required unless --simulation)")
    p.add_argument("--simulation", action="store_true", help="accept a SIMULATION server (no protection)")
    p.add_argument(
        "--unsafe-trust-root",
        action="append",
        metavar="PEM",
        help="also trust this root certificate file (test PKIs only: never in production; repeatable)",
    )
    p.add_argument(
        "--collateral-url",
        help="fetch collateral yourself from this PCCS / Intel PCS (SGX, TDX) or AMD KDS (SEV-SNP CRL) "
        "and ignore what the host serves",
    )


def _check_host(host: str) -> None:
    head, sep, tail = host.rpartition(":")
    if sep and tail.isdigit() and head and ":" not in head.strip("[]"):
        raise _CliError(
            f"host {host!r} includes a port: give the host alone ({head}) and the ports with "
            "--attested-port and --unattested-port"
        )


def _trust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    _check_host(args.host)
    roots = [_read(path, "--unsafe-trust-root") for path in args.unsafe_trust_root or []]
    return {
        "unattested_port": args.unattested_port,
        "policy": args.policy,
        "simulation": args.simulation,
        "unsafe_trust_roots": roots,
        "collateral_url": args.collateral_url,
    }


def _connect(args: argparse.Namespace) -> Any:
    from ..client.connect import connect

    return connect(args.host, attested_port=args.attested_port, **_trust_kwargs(args))


_CliError = ConfigurationError  # an ordinary mistake on the command line: one line, exit 2


def _claims_json(claims: Any) -> dict[str, Any]:
    keys = TEES[claims.tee].shown
    return {
        "tee": claims.tee,
        "tcb_status": claims.tcb_status,
        "advisory_ids": list(claims.advisory_ids),
        "debug": claims.debug,
        "measurements": {k: claims.measurements[k] for k in keys if k in claims.measurements},
        "report_data": claims.report_data.hex(),
    }


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _emit_claims(claims: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_claims_json(claims)))
        return
    _print_claims(claims)


def _print_claims(claims: Any) -> None:
    print(claims)
    print(f"{'report_data:':15} {claims.report_data.hex()}")


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
