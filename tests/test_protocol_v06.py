"""BlindAI 0.6 messages as one pair, and one datum-type table for the server and the seed client."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

from blindai import ModelDatumType
from blindai.protocol import v06
from blindai.protocol.tensors import TensorError, TensorLimitError
from blindai.server.http.errors import status_of


def test_outputs_written_are_inputs_read() -> None:
    arrays = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([True, False]),
        "c": np.array([[-1, 2]], dtype=np.int16),
    }
    msg = v06.load_message(v06.encode_run_outputs(arrays))
    back = v06.parse_run_inputs({"inputs": msg["outputs"]}, [])
    assert list(back) == list(arrays)
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype and np.array_equal(back[name], arr)


def test_one_datum_table() -> None:
    """The seed's enum numbers the same datatypes the server decodes, and every code round-trips."""
    assert [m.value for m in ModelDatumType] == list(range(len(v06.DATUM_TYPES)))
    for code, _name in enumerate(v06.DATUM_TYPES):
        dtype = {"FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_}.get(_name) or np.dtype(_name.lower())
        assert v06.datum_type(np.dtype(dtype)) == code
    with pytest.raises(v06.V06OutputError, match="float16"):
        v06.datum_type(np.dtype(np.float16))


def test_refusals_are_protocol_errors_with_their_status() -> None:
    with pytest.raises(v06.V06Error, match="CBOR map") as err:
        v06.load_message(cbor2.dumps([1, 2]))
    assert status_of(err.value) == 400
    with pytest.raises(v06.V06LimitError) as limit:
        v06.check_item_count(cbor2.dumps({"inputs": list(range(20_000))}))
    assert status_of(limit.value) == 413
    with pytest.raises(v06.V06Error, match="datum_type"):
        v06.parse_run_inputs({"inputs": [{"info": {"fact": [1], "datum_type": 11}, "bytes_data": b"x"}]}, [])
    with pytest.raises(v06.V06LimitError):
        v06.read_upload(cbor2.dumps({"model": bytes(100)}), 10)
    assert status_of(v06.V06OutputError("x")) == 422
    assert status_of(TensorLimitError("x")) == 413 and status_of(TensorError("x")) == 400
