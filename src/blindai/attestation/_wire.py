"""Helpers shared by the evidence layouts (`dcap_abi`, `snp_abi`): one way to refuse bytes."""

from __future__ import annotations

from ..errors import Check, EvidenceParseError

__all__ = ["parse_error", "require_zero"]


def parse_error(message: str, *, got: object | None = None, expected: object | None = None) -> EvidenceParseError:
    """The error every layout raises for bytes it cannot read (check ``parse``)."""
    return EvidenceParseError(message, check=Check.PARSE, got=got, expected=expected)


def require_zero(raw: bytes, what: str) -> None:
    """Reserved bytes must be zero: a record that uses them is not in a layout this code understands."""
    if any(raw):
        raise parse_error(f"{what} is reserved and must be zero", got=raw, expected=bytes(len(raw)))
