"""Inputs that once crashed a parser (found by the property tests / atheris); each must now fail cleanly."""

from __future__ import annotations

import pytest
from fuzz.targets import TARGETS

from blindai.attestation import ratls
from blindai.errors import EvidenceParseError
from tests.conftest import ROOT

CRASHERS = [
    # ratls.extract indexed an empty child list on a two-byte "certificate" (IndexError).
    ("ratls_cert", b"\x00\x00"),
    ("ratls_cert", b"\x30\x00"),
    ("ratls_cert", b"\x30\x02\x30\x00"),
    ("ratls_cert", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
]


@pytest.mark.parametrize(("target", "data"), CRASHERS)
def test_former_crashers(target: str, data: bytes) -> None:
    TARGETS[target](data)


def test_ratls_malformed_der_is_a_parse_error() -> None:
    with pytest.raises(EvidenceParseError):
        ratls.extract(b"\x00\x00")


# Every crash the fuzzer found and kept (make fuzz writes them to fuzz/crashes/TARGET/).
KEPT = sorted((p.parent.name, p) for p in (ROOT / "fuzz" / "crashes").glob("*/*") if p.is_file())


@pytest.mark.parametrize(("target", "path"), KEPT, ids=[f"{t}-{p.name}" for t, p in KEPT])
def test_kept_crashes(target: str, path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    TARGETS[target](path.read_bytes())
