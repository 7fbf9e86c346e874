"""Short load (the soak's short form), and where secrets may and may not go."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from blindai.server import tls
from tests import onnx_models
from tests.conftest import ROOT, sim_connect


def test_short_load_has_no_errors_and_flat_memory() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from load import run_load

    result = run_load(clients=4, seconds=6)
    assert result["errors"] == []
    lat = result["latency"]
    assert isinstance(lat, dict) and len(lat["run"]) > 200
    rss = [m for t, m in result["rss"] if t > 2]  # type: ignore[union-attr]
    assert max(rss) < 1.5 * min(rss), rss


class RecordingContext:
    """Stands in for ssl.SSLContext, to see what the key loader hands to OpenSSL."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    def load_cert_chain(self, certfile: str, keyfile: str | None = None, password: bytes | None = None) -> None:
        self.seen.append((certfile, Path(certfile).read_bytes()))


def test_tls_private_key_lives_in_memory_only(monkeypatch: pytest.MonkeyPatch) -> None:
    ident = tls.make_identity()
    ctx = RecordingContext()
    tls._load_key_in_memory(ctx, ident.certificate_pem.encode(), ident._key)  # type: ignore[arg-type]
    ((path, data),) = ctx.seen
    assert path.startswith("/proc/self/fd/")  # an anonymous memory file, on no disk
    assert b"PRIVATE KEY" in data
    # Without memfd_create: only an encrypted PEM ever touches a file, deleted at once.
    monkeypatch.delattr(tls.os, "memfd_create")
    ctx = RecordingContext()
    tls._load_key_in_memory(ctx, ident.certificate_pem.encode(), ident._key)  # type: ignore[arg-type]
    ((path, data),) = ctx.seen
    assert b"ENCRYPTED PRIVATE KEY" in data and b"BEGIN PRIVATE KEY" not in data
    assert not Path(path).exists()
    assert "PRIVATE" not in repr(ident)


def test_owner_tokens_never_reach_the_disk(tmp_path: Path) -> None:
    from blindai.testing import LocalServer

    store = tmp_path / "store"
    with LocalServer("--model-store", str(store)) as srv, sim_connect(srv) as conn:
        info = conn.upload_model(onnx_models.mlp(seed=51))
        token = conn.owner_token(info.model_id)
        assert token
        for p in store.rglob("*"):
            if p.is_file():
                assert token.encode() not in p.read_bytes(), p
        assert token not in srv.log()
