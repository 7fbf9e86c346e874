"""`blindai serve --tee sev-snp|tdx` over a FAKE configfs-tsm folder, end to end.

The FAKE AMD and Intel PKIs are trusted only through ``unsafe_trust_roots``; everything
else (dcap-qvl, SNP chain and signature checks, policy, binding, pinned TLS) is production.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import blindai
from blindai.attestation import TrustOptions, dcap_abi, dcap_verify, report_data_for
from blindai.attestation.binding import load_certificate, spki_sha256
from blindai.testing import LocalServer
from tests import onnx_models
from tests.fakes.amd_pki import FakeAmdPki
from tests.fakes.devices import FakeTsm
from tests.fakes.intel_pki import FakeIntelPki

MEASUREMENT = bytes.fromhex("ab" * 48)
ZERO_RTMRS = "".join(f'rtmr{i} = ["{"00" * 48}"]\n' for i in range(4))  # the FAKE TD's RTMRs


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeAmdPki, LocalServer, FakeTsm]]:
    pki = FakeAmdPki()
    tsm = FakeTsm(
        tmp_path_factory.mktemp("tsm") / "report",
        "sev_guest",
        lambda inblob: (pki.report(report_data=inblob, measurement=MEASUREMENT), pki.cert_table()),
    )
    crl = tmp_path_factory.mktemp("crl") / "vcek.crl"
    crl.write_bytes(pki.crl())
    server = LocalServer(
        "--tee", "sev-snp", "--tsm-dir", str(tsm.root), "--snp-crl-file", str(crl), simulation=False
    ).start()
    yield pki, server, tsm
    server.stop()
    tsm.stop()


def connect(pki: FakeAmdPki, server: LocalServer, policy: str | None = None) -> blindai.Connection:
    return blindai.connect(
        "127.0.0.1",
        attested_port=server.attested_port,
        unattested_port=server.unattested_port,
        policy=policy or f'[sev-snp]\nmeasurement = ["{MEASUREMENT.hex()}"]\nmin_tcb = {{ snp = 8 }}\n',
        unsafe_trust_roots=[pki.ark_pem],
    )


def test_snp_end_to_end(snp: tuple[FakeAmdPki, LocalServer, FakeTsm]) -> None:
    pki, server, _ = snp
    with connect(pki, server) as conn:
        assert conn.attestation.tee == "sev-snp"
        assert conn.attestation.svns["tcb.snp"] == 8
        info = conn.upload_model(onnx_models.mlp())
        assert conn.run_model(info.model_id, np.ones((1, 16), np.float32)).output.shape == (1, 4)


def test_snp_negatives(snp: tuple[FakeAmdPki, LocalServer, FakeTsm]) -> None:
    pki, server, _ = snp
    with pytest.raises(blindai.PolicyError, match="measurement"):
        connect(pki, server, f'[sev-snp]\nmeasurement = ["{"00" * 48}"]\n')
    with pytest.raises(blindai.PolicyError, match=r"tcb\.snp"):
        connect(pki, server, f'[sev-snp]\nmeasurement = ["{MEASUREMENT.hex()}"]\nmin_tcb = {{ snp = 9 }}\n')
    with pytest.raises(blindai.SignatureError, match="pinned AMD root"):
        blindai.connect(
            "127.0.0.1",
            attested_port=server.attested_port,
            unattested_port=server.unattested_port,
            policy=f'[sev-snp]\nmeasurement = ["{MEASUREMENT.hex()}"]\n',
        )


def test_tdx_server_evidence_path(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    pki = FakeIntelPki(now)
    tsm = FakeTsm(
        tmp_path / "report", "tdx_guest", lambda inblob: (pki.tdx_quote(mrtd=b"\x7d" * 48, report_data=inblob), b"")
    )
    collateral = tmp_path / "collateral.json"
    collateral.write_text(json.dumps(pki.collateral(tee="tdx")))
    server = LocalServer(
        "--tee", "tdx", "--tsm-dir", str(tsm.root), "--collateral-file", str(collateral), simulation=False
    ).start()
    try:
        doc = httpx.get(f"http://127.0.0.1:{server.unattested_port}/attestation", params={"nonce": "0a0b"}).json()
        assert doc["tee"] == "tdx"
        quote = dcap_abi.parse_quote(base64.b64decode(doc["evidence"]))
        cert = load_certificate(doc["certificate"])
        assert quote.tee == "tdx" and quote.version == 4
        assert quote.body.report_data == report_data_for(spki_sha256(cert), bytes.fromhex("0a0b"))
        dcap_verify.verify_quote_signatures(quote, TrustOptions(unsafe_trust_roots=(pki.root_pem,)))
        # and the whole client path, dcap-qvl included
        with blindai.connect(
            "127.0.0.1",
            attested_port=server.attested_port,
            unattested_port=server.unattested_port,
            policy=f'[tdx]\nmrtd = ["{"7d" * 48}"]\n{ZERO_RTMRS}',
            unsafe_trust_roots=[pki.root_pem],
        ) as conn:
            assert (conn.attestation.tee, conn.attestation.tcb_status) == ("tdx", "UpToDate")
            info = conn.upload_model(onnx_models.mlp())
            assert conn.run_model(info.model_id, np.ones((3, 16), np.float32)).output.shape == (3, 4)
        with pytest.raises(blindai.PolicyError, match="mrtd"):
            blindai.connect(
                "127.0.0.1",
                attested_port=server.attested_port,
                unattested_port=server.unattested_port,
                policy=f'[tdx]\nmrtd = ["{"00" * 48}"]\n{ZERO_RTMRS}',
                unsafe_trust_roots=[pki.root_pem],
            )
    finally:
        server.stop()
        tsm.stop()
