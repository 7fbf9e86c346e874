"""Helpers shared by the evidence layouts (`dcap_abi`, `snp_abi`): one way to refuse bytes, one to write them."""

from __future__ import annotations

import re
import struct

from ..errors import Check, EvidenceParseError

__all__ = ["pack_exact", "parse_error", "require_zero"]


def parse_error(message: str, *, got: object | None = None, expected: object | None = None) -> EvidenceParseError:
    """The error every layout raises for bytes it cannot read (check ``parse``)."""
    return EvidenceParseError(message, check=Check.PARSE, got=got, expected=expected)


def require_zero(raw: bytes, what: str) -> None:
    """Reserved bytes must be zero: a record that uses them is not in a layout this code understands."""
    if any(raw):
        raise parse_error(f"{what} is reserved and must be zero", got=raw, expected=bytes(len(raw)))


_ITEM = re.compile(r"(\d*)([xcbB?hHiIlLqQnNefdspP])")


def pack_exact(layout: struct.Struct, *values: object) -> bytes:
    """``layout.pack``, except that a bytes field of the wrong length is an error: struct would pad
    or cut it silently, and a record that does not survive its own round trip must not be written."""
    i = 0
    for count, code in _ITEM.findall(layout.format.lstrip("<>!=@")):
        if code == "s":
            value = values[i]
            if not isinstance(value, bytes | bytearray) or len(value) != int(count or 1):
                size = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
                raise ValueError(f"field {i} of this layout is {int(count or 1)} bytes, got {size}")
            i += 1
        elif code != "x":
            i += int(count or 1)
    return layout.pack(*values)
