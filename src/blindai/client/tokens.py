"""What a user keeps between runs: owner tokens, and the seed client's last upload per server.

Owner tokens are credentials: the file is created 0600 in a 0700 folder and replaced
atomically. The seed client's record lets the tutorial's second script (a new
``BlindAiClient`` on the same machine) run the model its user uploaded, and only that one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._files import atomic_write

__all__ = ["config_dir", "forget_token", "load_tokens", "save_token", "seed_last_upload", "set_seed_last_upload"]


def config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "blindai"


def _read(name: str) -> dict[str, Any]:
    try:
        data = json.loads((config_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(name: str, data: dict[str, Any]) -> Path:
    path = config_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(data, indent=2).encode(), mode=0o600)  # credentials: owner-only
    return path


def load_tokens() -> dict[str, str]:
    """Owner tokens saved at upload, by model id."""
    return {str(k): str(v) for k, v in _read("owner-tokens.json").items()}


def save_token(model_id: str, token: str) -> Path:
    return _write("owner-tokens.json", {**load_tokens(), model_id: token})


def forget_token(model_id: str) -> None:
    tokens = load_tokens()
    if tokens.pop(model_id, None) is not None:
        _write("owner-tokens.json", tokens)


def _server_key(host: str, attested_port: int) -> str:
    return f"{host}:{attested_port}"


def seed_last_upload(host: str, attested_port: int) -> dict[str, str] | None:
    """``{"model_id", "sha256"}`` of the seed client's last upload to that server, if any."""
    rec = _read("seed-last-upload.json").get(_server_key(host, attested_port))
    if isinstance(rec, dict) and isinstance(rec.get("model_id"), str) and isinstance(rec.get("sha256"), str):
        return {"model_id": rec["model_id"], "sha256": rec["sha256"]}
    return None


def set_seed_last_upload(host: str, attested_port: int, model_id: str, sha256: str) -> None:
    data = _read("seed-last-upload.json")
    data[_server_key(host, attested_port)] = {"model_id": model_id, "sha256": sha256}
    _write("seed-last-upload.json", data)
