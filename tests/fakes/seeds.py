"""Valid inputs for every parser, built from the FAKE PKIs (no recorded evidence is committed).

Used as mutation seeds by the property tests and as the initial corpus of the atheris harness.
"""

from __future__ import annotations

import json
import os

import cbor2


def valid_inputs() -> dict[str, bytes]:
    """Valid inputs to mutate: fake-PKI quotes, a simulation record, a sealed file, real vectors when present."""
    import datetime as dt

    from blindai.attestation import simulation
    from blindai.server import sealing
    from tests import onnx_models
    from tests.fakes.amd_pki import FakeAmdPki
    from tests.fakes.intel_pki import FakeIntelPki

    pki = FakeIntelPki(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    seeds = {
        "sgx": pki.sgx_quote(mrenclave=b"a" * 32, mrsigner=b"b" * 32, report_data=b"r"),
        "tdx": pki.tdx_quote(mrtd=b"m" * 48, report_data=b"r"),
        "snp": FakeAmdPki().report(report_data=b"r", measurement=b"m" * 48),
        "sim": simulation.SimulationSigner(b"\0" * 48).sign(bytes(64)),
        "onnx": onnx_models.mlp(in_dim=8, hidden=16, out_dim=2).SerializeToString(),
        "sealed": sealing.seal(sealing.SealingKey(os.urandom(16), source="t"), "id1", {"a": 1}, b"x" * 100),
        "v06": cbor2.dumps(
            {
                "model_id": "m",
                "inputs": [{"info": {"fact": [2], "datum_type": 0, "node_name": "x"}, "bytes_data": b"\0" * 8}],
            }
        ),
        "oip": json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}).encode(),
    }
    from tests.conftest import vectors_dir

    vectors = vectors_dir()
    if vectors is not None:
        seeds["phala_tdx"] = (vectors / "tdx" / "phala_tdx_quote.bin").read_bytes()
        seeds["ratls"] = (vectors / "ra-tls" / "gramine-cert.pem").read_bytes()
    return seeds
