"""What a connect spends: no CA bundle is loaded for the plain-HTTP evidence fetch.

httpx builds a default TLS context for every client unless given one, loading the whole CA
bundle (20-40 ms here), which was most of a connect (54 ms median in a profile, 9 ms
without). The evidence URL is plain HTTP, so the fetch gets a context that trusts no root:
never used, and failing closed if it were.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from blindai.testing import LocalServer
from tests.conftest import sim_connect


def test_a_connect_loads_no_ca_bundle(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[dict[str, Any]] = []
    real = ssl.SSLContext.load_verify_locations

    def recorded(self: ssl.SSLContext, cafile: Any = None, capath: Any = None, cadata: Any = None) -> None:
        loads.append({"cafile": cafile, "capath": capath, "cadata": cadata is not None})
        real(self, cafile, capath, cadata)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", recorded)
    with sim_connect(server) as conn:
        conn.list_models()
    assert loads, "the pinned context loads the attested certificate"
    assert all(x["cafile"] is None and x["capath"] is None and x["cadata"] for x in loads), loads


def test_the_evidence_fetch_context_trusts_no_root(server: LocalServer) -> None:
    from blindai.client.connect import _no_tls

    with httpx.Client(verify=_no_tls(), trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(f"https://127.0.0.1:{server.attested_port}/v2/health/live")
