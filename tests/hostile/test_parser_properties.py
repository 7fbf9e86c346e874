"""Property tests: every parser, fed arbitrary or mutated bytes, fails only with its own typed error."""

from __future__ import annotations

import json

import pytest
from fuzz.targets import TARGETS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.seeds import valid_inputs

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(TARGETS))
@SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes(name: str, data: bytes) -> None:
    TARGETS[name](data)


SEEDS = valid_inputs()
PAIRS = [
    ("dcap_quote", "sgx"),
    ("dcap_quote", "tdx"),
    ("snp_report", "snp"),
    ("simulation", "sim"),
    ("sealed_file", "sealed"),
    ("v06_cbor", "v06"),
    ("oip_request", "oip"),
    ("detect", "tdx"),
    ("onnx_split", "onnx"),
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
