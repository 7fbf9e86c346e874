"""Verification cost of one recorded quote/report with its collateral (target: < 10 ms)."""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from pathlib import Path

from common import Stats, timeit

from blindai.attestation.snp_verify import verify_snp_evidence
from blindai.attestation.verify import TrustOptions, detect_tee, verify_evidence

VECTORS = Path(os.environ.get("BLINDAI_TEST_VECTORS") or Path(__file__).resolve().parents[2] / "shared" / "vectors")


def run(repeat: int = 200) -> list[tuple[Stats, str]]:
    if not VECTORS.is_dir():
        print(f"skipping attestation benchmarks: no vectors at {VECTORS}")
        return []
    out = []
    for name, when in (
        ("sgx/phala_sgx_quote.bin", "2025-07-01T00:00:00+00:00"),
        ("tdx/phala_tdx_quote.bin", "2025-07-01T00:00:00+00:00"),
    ):
        quote = (VECTORS / name).read_bytes()
        col = json.loads((VECTORS / name.replace(".bin", ".collateral.json")).read_text())
        tee = detect_tee(quote)
        opts = TrustOptions(now=dt.datetime.fromisoformat(when))
        out.append(
            (
                Stats(
                    f"verify {tee} quote + collateral (parse, dcap-qvl, claims)",
                    timeit(lambda q=quote, c=col, t=tee, o=opts: verify_evidence(t, q, c, o), repeat),
                ),
                "< 10 ms",
            )
        )
    snp = VECTORS / "sev-snp"
    report = (snp / "virtee_milan_report.bin").read_bytes()
    certs = ((snp / "virtee_milan_vcek.der").read_bytes(), (snp / "virtee_cert_chain_milan.pem").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.append(
            (
                Stats(
                    "verify sev-snp report + VCEK/ASK/ARK chain",
                    timeit(lambda: verify_snp_evidence(report, None, TrustOptions(), certs), repeat),
                ),
                "-",
            )
        )
    return out
