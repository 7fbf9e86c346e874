"""``blindai store check`` and ``blindai store recover``: the sealed model store, offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..tees import SIMULATION, is_simulation
from .common import (
    _CliError,
)


def _store_key(args: argparse.Namespace) -> Any:
    """The store's sealing key, read (never created): the simulation key file, or the SGX TEE's key."""
    from ..server import sealing

    folder = Path(args.dir)
    key_file = Path(args.sealing_key_file) if args.sealing_key_file else folder / sealing.SIMULATION_KEY_NAME
    tee = args.tee or (SIMULATION if key_file.exists() else "sgx")
    if is_simulation(tee):
        try:
            return sealing.sealing_key_for(tee, None, folder, key_file, create=False)
        except (OSError, ValueError) as exc:
            raise _CliError(
                f"cannot use {key_file} as the store's key: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    from ..server.providers import detect_provider

    kwargs: dict[str, Any] = {"gramine_dir": Path(args.gramine_dir)} if args.gramine_dir else {}
    provider = detect_provider(tee, **kwargs)
    return sealing.sealing_key_for(provider.tee, provider.sealing_key(), folder)


def cmd_store_check(args: argparse.Namespace) -> int:
    from ..server.sealing import check_store

    report = check_store(Path(args.dir), _store_key(args))
    print(f"manifest: {report.manifest}")
    for model_id in report.listed_ok:
        print(f"listed, loads:        {model_id}")
    for model_id, why in report.listed_bad.items():
        print(f"listed, not loadable: {model_id}: {why}")
    for name, what in report.unlisted.items():
        print(f"NOT listed:           {name}: {what}")
    for name in report.temporaries:
        print(f"unfinished write:     {name} (removed or finished at start)")
    if not report.clean:
        print(f"to recover: blindai store recover {args.dir} [--adopt ID ... | --adopt-all]")
    return 0 if report.clean else 1


def cmd_store_recover(args: argparse.Namespace) -> int:
    from ..server.sealing import recover_store

    for line in recover_store(Path(args.dir), _store_key(args), adopt=set(args.adopt or []), adopt_all=args.adopt_all):
        print(line)
    return 0
