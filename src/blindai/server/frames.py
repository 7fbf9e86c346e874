"""Frames between a front worker and the main process: decoded inference requests and their results.

Knows nothing of HTTP. A front worker (``front.py``) that has parsed and decoded an inference
request sends it here as one frame: who asks (model reference, pins, the tokens it presents),
which outputs, and the input tensors as raw bytes (the OIP binary layout, which np.frombuffer
reads without a copy). The main process answers with the outputs the same way, or with a
status and message. A worker's socket to the main process is one end of a socketpair made
before it was forked: nothing else can connect to it, and it never leaves the TEE.

Every frame is ``<length u32><kind u8><id u32>`` and ``length`` bytes; the payload of a request
or result is ``<meta length u32>``, a JSON object, then the tensors' bytes in the order listed.
The main process trusts a worker no more than it must: every frame is bounded and parsed with
the same checks as a request from the network (a malformed payload fails its request; a frame
of unknown kind or over its bound ends the channel).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt

from ..protocol.tensors import TensorError, check_shape, datatype_of, decode_binary, encode_binary

__all__ = [
    "DELIVERED",
    "ERROR",
    "HEADER",
    "MAX_REQUEST",
    "check_header",
    "max_result",
    "REQUEST",
    "RESULT",
    "FrameError",
    "frame",
    "pack",
    "read_frame",
    "unpack",
]

HEADER = struct.Struct("<IBI")
_META = struct.Struct("<I")

REQUEST = 1  # worker -> main: a decoded inference request
RESULT = 2  # main -> worker: its outputs
ERROR = 3  # main -> worker: {"status": int, "error": str}
DELIVERED = 4  # worker -> main: the client took the response; its memory leaves the budget

_KINDS = frozenset({REQUEST, RESULT, ERROR, DELIVERED})
# A request frame carries what a worker decoded from a head and a body of at most 64 KiB each
# (JSON numbers decode to at most 8 bytes each, strings to their bytes): far below this.
MAX_REQUEST = 16 << 20


def max_result(max_output_bytes: int) -> int:
    """The largest result frame: outputs as the engine counts them (``--max-output-bytes``, strings
    at their UTF-8 size and more) plus their metadata. The main process refuses to send a larger
    one (507 for that request); a worker receiving one would close the channel."""
    return 2 * max_output_bytes + (1 << 20)


_MAX_META = 1 << 20
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call


class FrameError(ValueError):
    """A frame that breaks the format: the channel that carried it is closed."""


def frame(kind: int, rid: int, payload: Sequence[bytes | memoryview] = ()) -> list[bytes | memoryview]:
    """The header and payload pieces of one frame, to be written together."""
    return [HEADER.pack(sum(len(p) for p in payload), kind, rid), *payload]


def pack(meta: dict[str, Any], tensors: Mapping[str, npt.NDArray[Any]]) -> list[bytes | memoryview]:
    """A request or result payload: ``meta`` plus a ``tensors`` list of [name, datatype, shape, bytes]."""
    blobs = []
    entries = []
    for name, a in tensors.items():
        blob = encode_binary(a)
        blobs.append(blob)
        entries.append([name, datatype_of(a), a.shape, len(blob)])
    head = _ENCODER.encode({**meta, "tensors": entries}).encode()
    return [_META.pack(len(head)), head, *blobs]


def unpack(payload: bytes) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """``pack``'s inverse; arrays are views of ``payload`` (numeric) or decoded BYTES elements."""
    view = memoryview(payload)
    if len(view) < _META.size:
        raise FrameError("frame too short for its metadata length")
    (n,) = _META.unpack_from(view)
    if n > min(_MAX_META, len(view) - _META.size):
        raise FrameError("frame metadata runs past the frame")
    try:
        meta = json.loads(bytes(view[_META.size : _META.size + n]))
    except (ValueError, RecursionError):
        raise FrameError("frame metadata is not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), list):
        raise FrameError("frame metadata lists no tensors")
    pos = _META.size + n
    arrays: dict[str, npt.NDArray[Any]] = {}
    for entry in meta.pop("tensors"):
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)):
            raise FrameError("a tensor entry is not [name, datatype, shape, size]")
        name, datatype, shape, size = entry
        if not isinstance(datatype, str) or not isinstance(size, int) or not 0 <= size <= len(view) - pos:
            raise FrameError(f"tensor {name!r}: bad datatype or size")
        if name in arrays:
            raise FrameError(f"tensor {name!r} appears twice")
        try:
            arrays[name] = decode_binary(datatype, check_shape(shape, name), view[pos : pos + size], name)
        except TensorError as exc:
            raise FrameError(str(exc)) from None
        pos += size
    if pos != len(view):
        raise FrameError(f"{len(view) - pos} bytes follow the last tensor")
    return meta, arrays


def check_header(data: bytes | bytearray, pos: int, max_bytes: int) -> tuple[int, int, int]:
    """The payload length, kind and id of the frame whose header starts at ``pos``, checked."""
    length, kind, rid = HEADER.unpack_from(data, pos)
    if kind not in _KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if length > max_bytes:
        raise FrameError(f"a frame of {length} bytes exceeds {max_bytes}")
    return length, kind, rid


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> tuple[int, int, bytes]:
    """The next frame's kind, id and payload; IncompleteReadError at the end of the channel."""
    length, kind, rid = check_header(await reader.readexactly(HEADER.size), 0, max_bytes)
    return kind, rid, await reader.readexactly(length) if length else b""
