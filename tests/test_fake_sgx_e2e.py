"""End to end with the SGX provider over a FAKE /dev/attestation and a FAKE Intel-shaped PKI.

The client trusts the fake root only through ``unsafe_trust_roots`` and verifies
at the PKI's fixed time; everything else is the production path (dcap-qvl, policy,
binding, pinned TLS). Every negative must be refused before any model is sent.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import blindai
from blindai.testing import LocalServer
from tests import onnx_models
from tests.fakes.devices import FakeGramine
from tests.fakes.intel_pki import FakeIntelPki

NOW = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)
MRENCLAVE = bytes.fromhex("c0ffee" * 10 + "c0de")
MRSIGNER = bytes.fromhex("5a" * 32)


@dataclass
class SgxWorld:
    pki: FakeIntelPki
    server: LocalServer
    gramine: FakeGramine
    collateral_file: Path

    def connect(self, **kw: object) -> blindai.Connection:
        args: dict[str, object] = {
            "policy": policy(),
            "now": NOW,
            "unsafe_trust_roots": [self.pki.root_pem],
            "attested_port": self.server.attested_port,
            "unattested_port": self.server.unattested_port,
        }
        args.update(kw)
        return blindai.connect("127.0.0.1", **args)  # type: ignore[arg-type]


def policy(mrenclave: bytes = MRENCLAVE, extra: str = "") -> str:
    signer = f'mrsigner = "{MRSIGNER.hex()}"\nisv_prod_id = 0\nmin_isv_svn = 1\n'
    return f'[sgx]\nmrenclave = ["{mrenclave.hex()}"]\n{signer}{extra}'


def start_world(
    tmp: Path,
    *,
    debug: bool = False,
    bind: bool = True,
    revoke: bool = False,
    pki: FakeIntelPki | None = None,
    mrenclave: bytes = MRENCLAVE,
) -> SgxWorld:
    pki = pki or FakeIntelPki(NOW)

    def make_quote(user_report_data: bytes) -> bytes:
        rd = user_report_data if bind else bytes(64)
        return pki.sgx_quote(mrenclave=mrenclave, mrsigner=MRSIGNER, report_data=rd, debug=debug)

    gramine = FakeGramine(tmp / "dev-attestation", make_quote)
    collateral = tmp / "collateral.json"
    collateral.write_text(json.dumps(pki.collateral(revoke_pck=revoke)))
    server = LocalServer(
        "--tee", "sgx", "--gramine-dir", str(gramine.root), "--collateral-file", str(collateral), simulation=False
    ).start()
    return SgxWorld(pki, server, gramine, collateral)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SgxWorld]:
    w = start_world(tmp_path_factory.mktemp("sgx"))
    yield w
    w.server.stop()
    w.gramine.stop()


def _models(w: SgxWorld) -> list[blindai.ModelInfo]:
    with w.connect() as c:
        return c.list_models()


def test_attest_pin_and_run(world: SgxWorld) -> None:
    with world.connect() as conn:
        a = conn.attestation
        assert (a.tee, a.tcb_status, a.debug) == ("sgx", "UpToDate", False)
        assert a.measurements["mrenclave"] == MRENCLAVE.hex()
        info = conn.upload_model(onnx_models.mlp())
        x = np.ones((2, 16), np.float32)
        assert conn.run_model(info.model_id, x, model_sha256=info.sha256).output.shape == (2, 4)
        conn.delete_model(info.model_id)
    assert world.gramine.server.served >= 1


def test_health_reports_sgx(world: SgxWorld) -> None:
    import httpx

    assert httpx.get(f"http://127.0.0.1:{world.server.unattested_port}/health").json()["tee"] == "sgx"


def test_wrong_root_is_refused(world: SgxWorld) -> None:
    with pytest.raises(blindai.SignatureError, match="root"):
        world.connect(unsafe_trust_roots=[])
    other = FakeIntelPki(NOW)
    with pytest.raises(blindai.AttestationError):
        world.connect(unsafe_trust_roots=[other.root_pem])


def test_expired_and_not_yet_valid_collateral_is_refused(world: SgxWorld) -> None:
    with pytest.raises(blindai.CollateralError, match="collateral-time"):
        world.connect(now=NOW + dt.timedelta(days=45))
    with pytest.raises(blindai.CollateralError, match="collateral-time"):
        world.connect(now=NOW - dt.timedelta(days=3))


def test_wrong_measurement_is_refused(world: SgxWorld) -> None:
    with pytest.raises(blindai.PolicyError, match="mrenclave"):
        world.connect(policy=policy(bytes(32)))


def test_policy_is_required_and_simulation_flag_refused(world: SgxWorld) -> None:
    with pytest.raises(blindai.AttestationError, match="policy is required"):
        world.connect(policy=None)
    with pytest.raises(blindai.SimulationRefusedError):
        world.connect(simulation=True)


def test_tcb_status_outside_policy_is_refused(world: SgxWorld) -> None:
    with pytest.raises(blindai.PolicyError, match="tcb_status"):
        world.connect(policy=policy(extra='accepted_tcb_status = ["SWHardeningNeeded"]\n'))


def test_stale_nonce_is_refused(world: SgxWorld) -> None:
    """A replayed answer: evidence made for an earlier nonce, served for a new one."""
    from tests.fakes.attacker import EvidenceAttacker, fetch_doc, replay

    old = fetch_doc(world.server.unattested_port, "/attestation?nonce=" + "aa" * 32)
    rewriter = EvidenceAttacker(world.server.unattested_port, replay(old))
    try:
        with pytest.raises(blindai.BindingError, match="binding"):
            world.connect(unattested_port=rewriter.port)
    finally:
        rewriter.close()


def test_negatives_sent_nothing(world: SgxWorld) -> None:
    assert _models(world) == []


@pytest.mark.parametrize("case", ["debug", "unbound", "revoked"])
def test_bad_servers_are_refused(tmp_path: Path, case: str) -> None:
    w = start_world(tmp_path, debug=case == "debug", bind=case != "unbound", revoke=case == "revoked")
    try:
        expected = {
            "debug": (blindai.PolicyError, "debug"),
            "unbound": (blindai.BindingError, "binding"),
            "revoked": (blindai.CollateralError, "revocation"),
        }[case]
        with pytest.raises(expected[0], match=expected[1]):
            w.connect()
        if case == "debug":  # dcap-qvl refuses debug enclaves whatever the policy allows
            with pytest.raises(blindai.PolicyError, match="debug"):
                w.connect(policy=policy(extra="allow_debug = true\n"))
    finally:
        w.server.stop()
        w.gramine.stop()
