"""Tensor codec: round trips (property-based) and refusals of malformed tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from blindai.protocol import DATATYPES, TensorError, decode_request, decode_response, encode_request, encode_response
from blindai.protocol.tensors import decode_binary, decode_json_data, encode_binary, encode_json_data

NUMERIC = [n for n in DATATYPES if n != "BYTES"]


def arrays_of(datatype: str) -> st.SearchStrategy[np.ndarray]:
    dtype = DATATYPES[datatype]
    elements = None
    if dtype.kind == "f":
        elements = st.floats(allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5), elements=elements)


bytes_arrays = hnp.arrays(
    np.dtype(object),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
    elements=st.binary(max_size=20),
)


@pytest.mark.parametrize("datatype", NUMERIC)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_binary_round_trip(datatype: str, data: st.DataObject) -> None:
    arr = data.draw(arrays_of(datatype))
    blob = encode_binary(arr)
    back = decode_binary(datatype, arr.shape, bytes(blob), "t")
    assert back.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("datatype", NUMERIC)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_json_round_trip(datatype: str, data: st.DataObject) -> None:
    arr = data.draw(arrays_of(datatype))
    wire = json.loads(json.dumps(encode_json_data(arr)))
    back = decode_json_data(datatype, arr.shape, wire, "t")
    np.testing.assert_array_equal(back, arr)


@settings(max_examples=60, deadline=None)
@given(arr=bytes_arrays)
def test_bytes_round_trip_binary(arr: np.ndarray) -> None:
    back = decode_binary("BYTES", arr.shape, bytes(encode_binary(arr)), "t")
    assert back.shape == arr.shape
    assert list(back.reshape(-1)) == list(arr.reshape(-1))


@settings(max_examples=60, deadline=None)
@given(
    inputs=st.dictionaries(st.text(min_size=1, max_size=8), arrays_of("FP32"), min_size=1, max_size=3),
    binary=st.booleans(),
)
def test_request_round_trip(inputs: dict[str, np.ndarray], binary: bool) -> None:
    chunks, head = encode_request(inputs, binary=binary, outputs=["o"], binary_output=binary)
    req = decode_request(b"".join(bytes(c) for c in chunks), head)
    assert set(req.inputs) == set(inputs)
    for k, v in inputs.items():
        np.testing.assert_array_equal(req.inputs[k], v)
    assert req.binary_output is binary
    assert req.outputs is not None and req.outputs[0].name == "o"


def test_response_round_trip_mixed() -> None:
    outs = {
        "a": np.arange(6, dtype=np.int64).reshape(2, 3),
        "b": np.array([True, False]),
        "c": np.array([b"x", b"yz"], dtype=object),
    }
    chunks, head = encode_response("m", outs, {"a": True, "b": False, "c": True})
    back = decode_response(b"".join(bytes(c) for c in chunks), head)
    np.testing.assert_array_equal(back["a"], outs["a"])
    np.testing.assert_array_equal(back["b"], outs["b"])
    assert list(back["c"]) == [b"x", b"yz"]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [2], b"\0" * 7, "needs 8 bytes"),
        ("FP32", [-1], b"", "non-negative"),
        ("INT8", [1 << 20, 1 << 20], b"", "more than"),
        ("NOPE", [1], b"\0", "unknown datatype"),
        ("BYTES", [2], b"\x05\0\0\0ab", "runs past"),
        ("BYTES", [1], b"\x01\0", "truncated"),
    ],
)
def test_binary_refusals(datatype: str, shape: list[int], data: bytes, message: str) -> None:
    from blindai.protocol.tensors import check_shape

    with pytest.raises(TensorError, match=message):
        decode_binary(datatype, check_shape(shape, "t"), data, "t")


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1.5, 2], "integers"),
        ("INT8", [300, 1], "does not fit"),
        ("FP32", ["a", 1], "numbers"),
        ("BOOL", [1, 0], "true/false"),
        ("FP32", [1.0], "needs 2 elements"),
    ],
)
def test_json_refusals(datatype: str, data: list[object], message: str) -> None:
    with pytest.raises(TensorError, match=message):
        decode_json_data(datatype, (2,), data, "t")


def test_nested_json_data_is_accepted() -> None:
    arr = decode_json_data("INT64", (2, 2), [[1, 2], [3, 4]], "t")
    np.testing.assert_array_equal(arr, [[1, 2], [3, 4]])


ONE_X = b'{"name":"x","shape":[1],"datatype":"FP32","data":[1]}'
BIN_HEAD = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}'


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "at least one"),
        (BIN_HEAD, len(BIN_HEAD) + 1, "beyond"),
        (BIN_HEAD, len(BIN_HEAD), "runs past"),
        (BIN_HEAD, -1, "beyond"),
        (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}', None, "neither"),
        (b'{"inputs":[' + ONE_X + b"," + ONE_X + b"]}", None, "twice"),
    ],
)
def test_request_refusals(body: bytes, header: int | None, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        decode_request(body, header)


def test_trailing_binary_bytes_refused() -> None:
    chunks, head = encode_request({"x": np.ones(2, np.float32)})
    with pytest.raises(TensorError, match="follow the last tensor"):
        decode_request(b"".join(bytes(c) for c in chunks) + b"junk", head)


# ---------------------------------------------------------------- exact casts to the declared type


def test_exact_casts_follow_the_declared_datatype() -> None:
    from blindai.protocol.tensors import cast_exact

    assert cast_exact("x", np.ones((1, 4)), "FP32").dtype == np.float32
    assert cast_exact("x", np.asarray([[1, 2, 3]]), "FP32").dtype == np.float32
    assert cast_exact("x", np.asarray([2**24]), "FP32").dtype == np.float32
    assert cast_exact("x", np.asarray([0.5, -2.25]), "FP32").tolist() == [0.5, -2.25]
    assert cast_exact("x", np.asarray([1, 2]), "INT32").dtype == np.int32
    assert cast_exact("x", np.asarray([True]), "BOOL").dtype == np.bool_
    for bad, dtype in (
        (np.asarray([0.1]), "FP32"),  # 0.1 is not a float32
        (np.asarray([2**24 + 1]), "FP32"),
        (np.asarray([1.0]), "INT64"),  # floats never become integers
        (np.asarray([2**40]), "INT32"),
        (np.asarray([1]), "BOOL"),
    ):
        with pytest.raises(TensorError, match=r"x\.astype\(np\."):
            cast_exact("x", bad, dtype)
