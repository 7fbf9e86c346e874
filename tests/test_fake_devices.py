"""The FAKE device folders answer every read exactly once, even back to back.

A fake that answers a read with nothing makes a hostile-evidence test fail for the wrong
reason (CI saw an empty quote where the test expected the good replica to pass).
"""

from __future__ import annotations

from pathlib import Path

from blindai.server.providers import GramineSgxProvider, TsmProvider
from tests.fakes.devices import FakeGramine, FakeTsm


def test_fake_gramine_answers_each_back_to_back_quote_read(tmp_path: Path) -> None:
    fake = FakeGramine(tmp_path / "attestation", lambda rd: b"QUOTE" + rd)
    provider = GramineSgxProvider(tmp_path / "attestation")
    got: list[bytes] = []

    try:
        for i in range(1000):  # back to back: the next open comes while the last reader closes
            got.append(provider.get_evidence(i.to_bytes(64, "big")).evidence)
    finally:
        fake.stop()
    assert got == [b"QUOTE" + i.to_bytes(64, "big") for i in range(1000)]


def test_fake_tsm_answers_each_back_to_back_report_read(tmp_path: Path) -> None:
    root = tmp_path / "tsm"
    fake = FakeTsm(root, "tdx_guest", lambda inblob: (b"REPORT" + inblob, b""))
    provider = TsmProvider(root)
    got: list[bytes] = []

    try:
        for i in range(50):
            got.append(provider.get_evidence(i.to_bytes(64, "big")).evidence)
    finally:
        fake.stop()
    assert got == [b"REPORT" + i.to_bytes(64, "big") for i in range(50)]
