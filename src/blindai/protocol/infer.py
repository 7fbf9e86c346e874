"""Open Inference Protocol inference requests and responses, JSON and binary.

The binary tensor data extension puts a JSON header first (its length in the
``Inference-Header-Content-Length`` HTTP header) and then the raw tensors in the
order the header lists them, each with ``parameters.binary_data_size``. Both the
client and the server use these functions, so what one encodes the other decodes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .tensors import (
    TensorError,
    TensorLimitError,
    _as_bytes,
    check_shape,
    datatype_of,
    decode_binary,
    decode_json_data,
    encode_binary,
    encode_json_data,
)

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "RequestedOutput",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
Chunks = list[bytes | memoryview]
Reserve = Callable[[int], None]

# What decoding may allocate, reserved (through ``reserve``) BEFORE it is allocated, so that a
# server can count it against its memory budget and refuse a request that would not fit:
# - json.loads builds up to ~29 bytes of Python objects per byte of JSON (a list of empty
#   lists, ``[[],[],...]``, measured), so 32 per byte;
# - each BYTES element becomes a bytes object with its slots in a list and an array, then the
#   str onnxruntime takes and onnxruntime's own copy: 160 bytes of overhead per element, and
#   its contents three times.
JSON_COST = 32
BYTES_ELEMENT_COST = 160


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class InferRequest:
    inputs: dict[str, npt.NDArray[Any]]
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _entry(name: str, array: npt.NDArray[Any], binary: bool, blobs: Chunks) -> dict[str, Any]:
    """One tensor's header entry; in binary mode its bytes are appended to ``blobs``."""
    entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array)}
    if binary:
        blob = encode_binary(array)
        entry["parameters"] = {"binary_data_size": len(blob) if isinstance(blob, bytes) else blob.nbytes}
        blobs.append(blob)
    else:
        entry["data"] = encode_json_data(array)
    return entry


def encode_request(
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    binary: bool = True,
    outputs: list[str] | None = None,
    binary_output: bool = True,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[Chunks, int | None]:
    """Returns body chunks and the JSON header length (None for pure JSON)."""
    header_inputs: list[dict[str, Any]] = []
    blobs: Chunks = []
    for name, array in inputs.items():
        header_inputs.append(_entry(name, array, binary, blobs))
    params: dict[str, Any] = dict(parameters or {})
    params["binary_data_output"] = binary_output
    header: dict[str, Any] = {"inputs": header_inputs, "parameters": params}
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary_output}} for n in outputs]
    head = json.dumps(header, separators=(",", ":")).encode()
    return [head, *blobs], (len(head) if binary else None)


def _split(
    body: bytes | memoryview,
    header_length: int | None,
    max_json_bytes: int | None = None,
    reserve: Reserve | None = None,
) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(body)
    if header_length is None:
        head, rest = view, view[len(view) :]
    else:
        if header_length < 0 or header_length > len(view):
            raise TensorError(f"{HEADER_LENGTH} {header_length} is beyond the body of {len(view)} bytes")
        head, rest = view[:header_length], view[header_length:]
    if max_json_bytes is not None and len(head) > max_json_bytes:
        # Parsing JSON holds the interpreter for its whole length, so it is bounded outright.
        raise TensorLimitError(
            f"the JSON part of this request is {len(head)} bytes, over the limit of {max_json_bytes}: "
            f"send large tensors with the binary tensor extension ({HEADER_LENGTH})"
        )
    if reserve is not None:
        reserve(len(head) * JSON_COST)
    try:
        obj = json.loads(bytes(head))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorError(f"request body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # an integer of more digits than Python converts (4,300): a 500 before
        raise TensorError(f"request JSON holds a number it cannot read: {exc}") from None
    except RecursionError:
        raise TensorError(
            "request JSON is nested too deeply (tensor data nests at most one level per dimension)"
        ) from None
    if not isinstance(obj, dict):
        raise TensorError("request body must be a JSON object")
    return obj, rest


def _tensors(
    entries: object, rest: memoryview, what: str, reserve: Reserve | None = None, json_bytes: int = 0
) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(entries, list):
        raise TensorError(f"'{what}' must be a list of tensors")
    out: dict[str, npt.NDArray[Any]] = {}
    pos = 0
    for entry in entries:
        if not isinstance(entry, dict):
            raise TensorError(f"each of '{what}' must be an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise TensorError(f"each of '{what}' needs a 'name' string")
        if name in out:
            raise TensorError(f"tensor {name!r} appears twice")
        datatype = entry.get("datatype")
        if not isinstance(datatype, str):
            raise TensorError(f"tensor {name!r} needs a 'datatype' string")
        shape = check_shape(entry.get("shape"), name)
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise TensorError(f"tensor {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise TensorError(f"tensor {name!r}: binary_data_size must be a non-negative integer")
            if pos + size > len(rest):
                raise TensorError(
                    f"tensor {name!r}: binary_data_size {size} runs past the {len(rest) - pos} bytes left in the body"
                )
            if reserve is not None:
                count = math.prod(shape)
                reserve(
                    size + (3 * size + min(count, size // 4 + 1) * BYTES_ELEMENT_COST if datatype == "BYTES" else 0)
                )
            out[name] = decode_binary(datatype, shape, rest[pos : pos + size], name)
            pos += size
        elif "data" in entry:
            if reserve is not None:  # no more elements than the JSON had bytes, whatever the shape says
                count = min(math.prod(shape), json_bytes)
                reserve(count * (BYTES_ELEMENT_COST if datatype == "BYTES" else 8))
            out[name] = decode_json_data(datatype, shape, entry["data"], name)
        else:
            raise TensorError(f"tensor {name!r} has neither 'data' nor 'binary_data_size'")
    if pos != len(rest):
        raise TensorError(f"{len(rest) - pos} bytes of binary data follow the last tensor")
    return out


def decode_request(
    body: bytes | memoryview,
    header_length: int | None,
    *,
    max_json_bytes: int | None = None,
    reserve: Reserve | None = None,
) -> InferRequest:
    """Decode an inference request; with ``reserve``, every large allocation is announced first.

    ``max_json_bytes`` bounds the JSON part (TensorLimitError beyond it); ``reserve(n)`` is
    called with an upper bound of what the next step allocates and may raise to refuse it.
    """
    obj, rest = _split(body, header_length, max_json_bytes, reserve)
    inputs = _tensors(obj.get("inputs"), rest, "inputs", reserve, len(body) - len(rest))
    if not inputs:
        raise TensorError("'inputs' must list at least one tensor")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise TensorError("'parameters' must be an object")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise TensorError("binary_data_output must be true or false")
    outputs: list[RequestedOutput] | None = None
    if "outputs" in obj:
        raw = obj["outputs"]
        if not isinstance(raw, list):
            raise TensorError("'outputs' must be a list")
        outputs = []
        for o in raw:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise TensorError("each requested output needs a 'name' string")
            op = o.get("parameters") or {}
            b = op.get("binary_data") if isinstance(op, dict) else None
            if b is not None and not isinstance(b, bool):
                raise TensorError(f"output {o['name']!r}: binary_data must be true or false")
            outputs.append(RequestedOutput(o["name"], b))
    rid = obj.get("id")
    return InferRequest(inputs, outputs, binary_output, rid if isinstance(rid, str) else None, params)


# Longest JSON text of one element, with its comma: "-1.2345678901234567e-308," and the like.
_JSON_ELEMENT_BYTES = {"b": 6, "i": 21, "u": 21, "f": 25, "c": 60}


def json_bytes_bound(array: npt.NDArray[Any]) -> int:
    """At most the bytes ``encode_json_data(array)`` writes, known before it allocates them."""
    if array.dtype.kind in "OSU":
        # Strings go out as their UTF-8 decoded, every character \u-escaped at worst: 6 characters per
        # UTF-8 byte bounds them all (a 4-byte character is a 12-character surrogate pair), plus
        # quotes and comma. Counted on the same bytes the encoder writes (_as_bytes).
        return sum(6 * len(_as_bytes(v)) + 3 for v in array.reshape(-1)) + 2
    per = _JSON_ELEMENT_BYTES.get(array.dtype.kind, 25)
    if array.dtype.kind in "iu":
        per = min(per, 3 * array.dtype.itemsize + 2)  # int8: "-128," ... int64: 20 digits and a sign
    return array.size * per + 2


def json_response_bound(outputs: Mapping[str, npt.NDArray[Any]], binary: Mapping[str, bool]) -> int:
    """Upper bound of the JSON text of the outputs sent as JSON (not ``binary``)."""
    return sum(json_bytes_bound(np.asarray(a)) for n, a in outputs.items() if not binary.get(n, False))


def encode_response(
    model_name: str,
    outputs: Mapping[str, npt.NDArray[Any]],
    binary: Mapping[str, bool],
    *,
    request_id: str | None = None,
    model_version: str = "1",
) -> tuple[Chunks, int | None]:
    """The response's body chunks and its JSON header length (None when it is all JSON).

    Binary outputs go out as views of the arrays (no copy); a server bounds the JSON ones with
    ``json_response_bound`` first, as Python's JSON of a float array is ~40x its size in memory.
    """
    entries: list[dict[str, Any]] = []
    blobs: Chunks = []
    for name, array in outputs.items():
        entries.append(_entry(name, np.asarray(array), binary.get(name, False), blobs))
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        header["id"] = request_id
    head = json.dumps(header, separators=(",", ":")).encode()
    return [head, *blobs], (len(head) if blobs else None)


def decode_response(body: bytes, header_length: int | None) -> dict[str, npt.NDArray[Any]]:
    obj, rest = _split(body, header_length)
    return _tensors(obj.get("outputs"), rest, "outputs")
