"""``blindai upload``, ``run``, ``delete`` and ``models``: the SDK over an attested connection."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..client.tokens import forget_token, load_tokens, save_token
from .common import (
    _CliError,
    _connect,
    human_size,
)


def cmd_upload(args: argparse.Namespace) -> int:
    try:
        total = Path(args.model).stat().st_size
    except OSError as exc:
        raise _CliError(f"cannot read model file {args.model}: {exc.strerror or exc}") from exc
    bar: Any = None

    def progress(sent: int, _total: int) -> None:
        if bar is not None:
            bar.update(sent - bar.n)

    with _connect(args) as conn:
        # The bar starts once the server is attested, so that its messages come first.
        if (not args.quiet and sys.stderr.isatty()) or args.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc="upload", file=sys.stderr)
        info = conn.upload_model(
            args.model,
            name=args.name,
            progress=progress,
            upload_token=args.upload_token or os.environ.get("BLINDAI_UPLOAD_TOKEN"),
        )
        token = conn.owner_token(info.model_id)
    if bar is not None:
        bar.close()
    path = save_token(info.model_id, token) if token else None
    print(json.dumps({"model_id": info.model_id, "sha256": info.sha256, "name": info.name}))
    if path is not None:
        print(f"owner token saved to {path}", file=sys.stderr)
    return 0


def _load_inputs(specs: list[str]) -> dict[str, Any]:
    import numpy as np

    inputs: dict[str, Any] = {}
    if not specs:
        raise _CliError("give at least one input: --input NAME=FILE (.npy, .npz or .json)")
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise _CliError(f"--input takes NAME=FILE, got {spec!r}")
        try:
            if file.endswith(".npz"):
                with np.load(file) as z:
                    inputs.update({k: z[k] for k in z.files})
            elif file.endswith(".json"):
                # Plain numbers: the SDK casts them to the model's declared types when exact.
                inputs[name] = np.asarray(json.loads(Path(file).read_text()))
            else:
                inputs[name] = np.load(file, allow_pickle=False)
        except OSError as exc:
            raise _CliError(f"cannot read input {name} from {file}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise _CliError(f"input {name}: {file} is not a valid .npy/.npz/.json array: {exc}") from exc
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    inputs = _load_inputs(args.input)
    with _connect(args) as conn:
        result = conn.run_model(args.model_id, inputs, model_sha256=args.model_sha256)
    if args.output:
        np.savez(args.output, **result.outputs) if args.output.endswith(".npz") else np.save(args.output, result.output)
        print(f"outputs written to {args.output}")
    else:
        print(json.dumps({k: v.tolist() for k, v in result.outputs.items()}))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    token = args.owner_token or load_tokens().get(args.model_id)
    with _connect(args) as conn:
        conn.delete_model(args.model_id, owner_token=token)
    forget_token(args.model_id)
    print(f"deleted {args.model_id}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        models = conn.list_models(owner_tokens=list(load_tokens().values()))  # the server lists only yours
    if not models:
        print("no models (the server lists yours, from the owner tokens saved here, and public ones)")
        return 0
    rows = [(m.model_id, m.name or "-", human_size(m.size), m.created_at[:19] or "-", m.sha256[:16]) for m in models]
    header = ("MODEL ID", "NAME", "SIZE", "CREATED", "SHA256")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0
