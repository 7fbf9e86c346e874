"""numpy <-> Open Inference Protocol (KServe V2) tensors, JSON and binary.

Shared by the client and the server so both sides agree byte for byte. Decoders
never trust declared sizes: a shape is checked against the bytes actually present
before anything is allocated, so a tiny request cannot ask for a huge array.
Binary tensors are decoded as zero-copy views (``np.frombuffer``) of the body.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ProtocolError

__all__ = [
    "DATATYPES",
    "MAX_ELEMENTS",
    "TensorError",
    "TensorLimitError",
    "cast_exact",
    "check_shape",
    "datatype_of",
    "decode_binary",
    "decode_json_data",
    "encode_binary",
    "encode_json_data",
    "numpy_dtype",
]

# OIP datatype name -> numpy dtype (little-endian, as the binary extension requires).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}

MAX_RANK = 32
# No tensor may claim more elements than this, whatever its body says (2**31).
MAX_ELEMENTS = 1 << 31
_LEN = struct.Struct("<I")


class TensorError(ProtocolError):
    """A tensor is malformed; the message names the tensor and the problem."""


class TensorLimitError(TensorError):
    """A request is well-formed but larger than a decoding limit allows (HTTP 413, not 400)."""


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise TensorError(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The OIP datatype for an array; strings and bytes objects map to BYTES."""
    dt = array.dtype
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise TensorError(f"numpy dtype {dt} has no Open Inference Protocol datatype")
    return name


def check_shape(shape: object, name: str) -> tuple[int, ...]:
    """A shape must be a list of non-negative ints of bounded rank and element count."""
    if not isinstance(shape, list | tuple):
        raise TensorError(f"tensor {name!r}: shape must be a list of integers")
    if len(shape) > MAX_RANK:
        raise TensorError(f"tensor {name!r}: rank {len(shape)} exceeds the limit of {MAX_RANK}")
    dims: list[int] = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise TensorError(f"tensor {name!r}: shape {list(shape)} must hold non-negative integers")
        dims.append(d)
    if math.prod(dims) > MAX_ELEMENTS:
        raise TensorError(f"tensor {name!r}: shape {dims} has more than {MAX_ELEMENTS} elements")
    return tuple(dims)


# ---------------------------------------------------------------- binary extension


def encode_binary(array: npt.NDArray[Any]) -> bytes | memoryview:
    """Raw little-endian, row-major bytes; BYTES elements are 4-byte-length prefixed."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        out = bytearray()
        for item in array.reshape(-1):
            raw = _as_bytes(item)
            out += _LEN.pack(len(raw))
            out += raw
        return bytes(out)
    target = DATATYPES[datatype]
    arr = np.ascontiguousarray(array, dtype=target)
    if arr.size == 0:
        return b""
    return arr.reshape(-1).view(np.uint8).data


def decode_binary(datatype: str, shape: Sequence[int], data: bytes | memoryview, name: str) -> npt.NDArray[Any]:
    dtype = numpy_dtype(datatype)
    count = math.prod(shape)
    if datatype == "BYTES":
        items: list[bytes] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if pos + 4 > len(view):
                raise TensorError(f"tensor {name!r}: truncated BYTES length prefix")
            (n,) = _LEN.unpack_from(view, pos)
            pos += 4
            if pos + n > len(view):
                raise TensorError(f"tensor {name!r}: BYTES element of {n} bytes runs past the data")
            items.append(bytes(view[pos : pos + n]))
            pos += n
            if len(items) > count:
                break
        if len(items) != count:
            raise TensorError(f"tensor {name!r}: shape {list(shape)} needs {count} BYTES elements, got {len(items)}")
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise TensorError(f"tensor {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------- JSON


def encode_json_data(array: npt.NDArray[Any]) -> list[Any]:
    """Flat row-major list; FP16 as numbers, BYTES as UTF-8 strings."""
    if datatype_of(array) == "BYTES":
        return [_as_bytes(x).decode("utf-8", errors="surrogateescape") for x in array.reshape(-1)]
    flat: list[Any] = array.reshape(-1).tolist()
    return flat


def decode_json_data(datatype: str, shape: Sequence[int], data: object, name: str) -> npt.NDArray[Any]:
    dtype = numpy_dtype(datatype)
    count = math.prod(shape)
    if not isinstance(data, list):
        raise TensorError(f"tensor {name!r}: 'data' must be a list")
    flat = _flatten(data, name)
    if len(flat) != count:
        raise TensorError(f"tensor {name!r}: shape {list(shape)} needs {count} elements, got {len(flat)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        try:
            out[:] = [x.encode("utf-8", errors="surrogateescape") if isinstance(x, str) else bytes(x) for x in flat]
        except (TypeError, ValueError) as exc:
            raise TensorError(f"tensor {name!r}: BYTES elements must be strings") from exc
        return out.reshape(shape)
    for x in flat:
        if datatype == "BOOL":
            if not isinstance(x, bool):
                raise TensorError(f"tensor {name!r}: BOOL data must be true/false, got {x!r}")
        elif isinstance(x, bool) or not isinstance(x, int | float):
            raise TensorError(f"tensor {name!r}: {datatype} data must be numbers, got {type(x).__name__}")
        elif dtype.kind in "iu" and not (isinstance(x, int) or float(x).is_integer()):
            raise TensorError(f"tensor {name!r}: {datatype} data must be integers, got {x!r}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            arr = np.array(flat, dtype=dtype)
    except (OverflowError, FloatingPointError, ValueError) as exc:
        raise TensorError(f"tensor {name!r}: a value does not fit {datatype}") from exc
    return arr.reshape(shape)


def _flatten(data: list[Any], name: str) -> list[Any]:
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                if len(stack) > MAX_RANK:
                    raise TensorError(f"tensor {name!r}: data nested deeper than {MAX_RANK}")
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, np.bytes_ | bytearray | memoryview):
        return bytes(item)
    raise TensorError(f"BYTES elements must be bytes or str, got {type(item).__name__}")


def cast_exact(name: str, array: npt.NDArray[Any], datatype: str) -> npt.NDArray[Any]:
    """``array`` as the model's declared ``datatype`` when no value changes, else a TensorError
    that names the ``astype`` to use.

    Python lists and ``np.ones(...)`` arrive as int64/float64; a model usually wants FP32.
    Integers become floats when every value is exactly representable (|v| <= 2**24 for FP32,
    2**53 for FP64), float64 becomes float32 when every value survives the round trip, and
    integers narrow to other integer types within range. Floats never silently become
    integers and nothing becomes BOOL.
    """
    if datatype == "BYTES" or datatype not in DATATYPES:
        return array
    target = DATATYPES[datatype]
    src = array.dtype
    if src == target:
        return array
    ok = False
    if src.kind in "iub" and target.kind == "f" and src.kind != "b":
        limit = 2 ** (np.finfo(target).nmant + 1)
        ok = array.size == 0 or bool(np.all(np.abs(array.astype(np.float64)) <= limit))
    elif src.kind == "f" and target.kind == "f":
        cast = array.astype(target)
        ok = bool(np.array_equal(cast.astype(src), array, equal_nan=True))
    elif src.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        ok = array.size == 0 or bool(array.min() >= info.min and array.max() <= info.max)
    if ok:
        return array.astype(target)
    raise TensorError(
        f"input {name!r} must be {datatype} ({target.name}), got {src.name} values that would change: "
        f"convert it yourself, e.g. {name}.astype(np.{target.name})"
    )
