"""Model metadata: one encode/decode pair for both sides; a hostile description is refused by field.

Before this pair, the client read the server's JSON with bare indexing: a missing field was a
``KeyError``, a model id of ``../x`` became a path segment of the next request, and a digest of
any text was compared with the caller's pin.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import blindai
from blindai.client.connection import _answer
from blindai.protocol.models import (
    ModelInfo,
    ModelInfoError,
    TensorInfo,
    decode_model_list,
    decode_upload_answer,
    encode_model_list,
    encode_upload_answer,
)

INFO = ModelInfo(
    model_id="0123abcd" * 4,
    name="resnet",
    sha256="ab" * 32,
    size=1234,
    created_at="2026-11-27T00:00:00Z",
    inputs=(TensorInfo("x", "FP32", (-1, 3, 224, 224)), TensorInfo("mask", "BOOL", (-1,))),
    outputs=(TensorInfo("y", "FP32", (-1, 1000)),),
    hints={"legacy": True},
)


def test_round_trips() -> None:
    assert ModelInfo.from_json(INFO.to_json()) == INFO
    assert decode_upload_answer(encode_upload_answer(INFO, "tok")) == (INFO, "tok")
    assert decode_model_list(encode_model_list([INFO, INFO])) == [INFO, INFO]
    minimal = {"model_id": INFO.model_id, "sha256": INFO.sha256}  # older servers omit the rest
    assert ModelInfo.from_json(minimal) == ModelInfo(INFO.model_id, "", INFO.sha256, 0, "", (), ())


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    doc = INFO.to_json()
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (["model_id"], KeyError, "no 'model_id'"),
        (["model_id"], "../../v1/models/victim", "model_id"),
        (["model_id"], "", "model_id"),
        (["model_id"], 7, "'model_id' is int"),
        (["sha256"], "zz" * 32, "sha256"),
        (["sha256"], "ab", "sha256"),
        (["size"], -1, "negative"),
        (["size"], True, "'size' is bool"),
        (["name"], ["x"], "'name' is list"),
        (["inputs"], {"x": 1}, "'inputs' is dict"),
        (["inputs", 0], "x", "tensor description is str"),
        (["inputs", 0, "shape"], [1, "3"], "shape"),
        (["inputs", 0, "shape"], [-2], "shape"),
        (["inputs", 0, "datatype"], "FLOAT", "datatype"),
        (["outputs", 0, "name"], None, "'name' is NoneType"),
        (["hints"], [], "'hints' is list"),
    ],
)
def test_hostile_descriptions_are_refused_by_field(path: list[Any], value: Any, needle: str) -> None:
    with pytest.raises(ModelInfoError, match=needle):
        ModelInfo.from_json(_with(path, value))


def test_upload_answer_needs_a_token_and_lists_need_models() -> None:
    with pytest.raises(ModelInfoError, match="owner_token"):
        decode_upload_answer(INFO.to_json())
    with pytest.raises(ModelInfoError, match="owner_token"):
        decode_upload_answer({**INFO.to_json(), "owner_token": ""})
    with pytest.raises(ModelInfoError, match="'models'"):
        decode_model_list({"model": []})
    with pytest.raises(ModelInfoError, match="not an object"):
        decode_model_list([INFO.to_json()])


def test_the_client_raises_a_typed_error_for_a_malformed_answer() -> None:
    """What a hostile or broken server gets the SDK to raise: BlindAIError naming the route, never KeyError."""
    request = httpx.Request("GET", "https://127.0.0.1/v1/models")
    for body in (b"not json", b'{"models": [{"model_id": "../x", "sha256": "00"}]}', b"{}"):
        with pytest.raises(blindai.BlindAIError, match=r"GET /v1/models is malformed"):
            _answer(decode_model_list, httpx.Response(200, content=body, request=request))


def test_error_bodies_are_one_pair_and_the_reader_trusts_nothing() -> None:
    """A hostile server's error answer cannot flood the caller or drive its terminal."""
    import json

    from blindai.client.connection import raise_for_status
    from blindai.protocol.error_body import MAX_MESSAGE, decode_error, encode_error

    assert decode_error(json.dumps(encode_error("no model 'x'")).encode(), "f") == "no model 'x'"
    assert decode_error(b"", "Not Found") == "Not Found"
    assert decode_error(b"<html>oops</html>", "f") == "<html>oops</html>"
    escapes = json.dumps(encode_error("\x1b]0;pwned\x07\x1b[2Jgone\u202e")).encode()
    assert decode_error(escapes, "f") == "?]0;pwned??[2Jgone?"
    huge = decode_error(json.dumps(encode_error("A" * 10_000_000)).encode(), "f")
    assert len(huge) == MAX_MESSAGE + 3 and huge.endswith("...")
    request = httpx.Request("DELETE", "https://127.0.0.1/v1/models/x")
    with pytest.raises(blindai.PermissionDeniedError) as err:
        raise_for_status(httpx.Response(403, content=b"\x1b[31m" + b"B" * 5_000_000, request=request))
    assert err.value.status == 403 and "\x1b" not in err.value.message and len(err.value.message) <= MAX_MESSAGE + 3


def test_a_local_refusal_says_no_server_was_involved() -> None:
    err = blindai.InvalidInputError("model takes 2 inputs ['a', 'b']: pass a dict or a list")
    assert err.status is None and str(err).startswith("refused before sending: ")
    assert str(blindai.InvalidInputError("bad", status=400)) == "server error 400: bad"


def test_the_json_bound_of_string_outputs_holds_for_any_text() -> None:
    """The bound refuses JSON outputs before they are encoded; it must never be below the encoding."""
    import json

    import numpy as np

    from blindai.protocol.infer import json_bytes_bound
    from blindai.protocol.tensors import encode_json_data

    for text in ("plain", "\U0001f600" * 100, 'é中\x00\x1f"\\', b"\xff\xfe raw".decode("latin-1")):
        for array in (np.array([text] * 3, dtype=object), np.array([text.encode("utf-8", "surrogatepass")] * 2)):
            assert json_bytes_bound(array) >= len(json.dumps(encode_json_data(array))), text
