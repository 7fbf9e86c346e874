"""Property tests: every parser, fed arbitrary or mutated bytes, fails only with its own typed error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindai.fuzz_targets import TARGETS

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(TARGETS))
@SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes(name: str, data: bytes) -> None:
    TARGETS[name](data)


def _seeds() -> dict[str, bytes]:
    """Valid inputs to mutate: fake-PKI quotes, a simulation record, a sealed file, real vectors when present."""
    import datetime as dt

    from blindai.attestation import simulation
    from blindai.server import sealing
    from tests.fakes.amd_pki import FakeAmdPki
    from tests.fakes.intel_pki import FakeIntelPki

    pki = FakeIntelPki(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    seeds = {
        "sgx": pki.sgx_quote(mrenclave=b"a" * 32, mrsigner=b"b" * 32, report_data=b"r"),
        "tdx": pki.tdx_quote(mrtd=b"m" * 48, report_data=b"r"),
        "snp": FakeAmdPki().report(report_data=b"r", measurement=b"m" * 48),
        "sim": simulation.SimulationSigner(b"\0" * 48).sign(bytes(64)),
        "sealed": sealing.seal(sealing.SealingKey(os.urandom(16), source="t"), "id1", {"a": 1}, b"x" * 100),
        "v06": cbor2.dumps(
            {
                "model_id": "m",
                "inputs": [{"info": {"fact": [2], "datum_type": 0, "node_name": "x"}, "bytes_data": b"\0" * 8}],
            }
        ),
        "oip": json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}).encode(),
    }
    vectors = Path(os.environ.get("BLINDAI_TEST_VECTORS") or Path(__file__).resolve().parents[3] / "shared" / "vectors")
    if vectors.is_dir():
        seeds["phala_tdx"] = (vectors / "tdx" / "phala_tdx_quote.bin").read_bytes()
        seeds["ratls"] = (vectors / "ra-tls" / "gramine-cert.pem").read_bytes()
    return seeds


SEEDS = _seeds()
PAIRS = [
    ("dcap_quote", "sgx"),
    ("dcap_quote", "tdx"),
    ("snp_report", "snp"),
    ("simulation", "sim"),
    ("sealed_file", "sealed"),
    ("v06_cbor", "v06"),
    ("oip_request", "oip"),
    ("detect", "tdx"),
]
PAIRS += [("dcap_quote", "phala_tdx"), ("ratls_cert", "ratls")] if "ratls" in SEEDS else []


@pytest.mark.parametrize(("target", "seed"), PAIRS, ids=[f"{t}-{s}" for t, s in PAIRS])
@SETTINGS
@given(data=st.data())
def test_mutated_valid_inputs(target: str, seed: str, data: st.DataObject) -> None:
    buf = bytearray(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        elif buf:
            buf[i] = data.draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
    TARGETS[target](bytes(buf))


@SETTINGS
@given(
    obj=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "name",
                        "shape",
                        "datatype",
                        "data",
                        "parameters",
                        "inputs",
                        "outputs",
                        "binary_data_size",
                        "binary_data_output",
                        "id",
                    ]
                ),
                c,
                max_size=5,
            )
        ),
        max_leaves=30,
    )
)
def test_oip_json_of_any_shape(obj: object) -> None:
    TARGETS["oip_json"](json.dumps(obj).encode())


def test_deeply_nested_inputs_are_refused_not_crashing() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    TARGETS["oip_json"](deep)
    TARGETS["v06_cbor"](b"\x81" * 5000 + b"\x00")
