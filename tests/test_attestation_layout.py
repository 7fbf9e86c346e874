"""The attestation layer's shape: no import loop, check names from one enum, old modules gone."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import blindai
from blindai.errors import CHECKS, AttestationError, Check

PKG = Path(blindai.__file__).parent


def _module_graph() -> dict[str, set[str]]:
    """Module-level imports between blindai's modules (what runs when a module is imported)."""
    files = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        here = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = here[: len(here) - node.level + 1]
                    base = ".".join([*parent, node.module] if node.module else parent)
                else:
                    base = node.module or ""
                subs = {f"{base}.{a.name}" for a in node.names} & files.keys()
                graph[mod] |= subs | ({base} if len(subs) < len(node.names) and base in files else set())
        graph[mod].discard(mod)
    return graph


def test_no_import_loop() -> None:
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import loop: {' -> '.join([*path, m, n])}"
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_one_module_pair_per_tee_and_no_old_names() -> None:
    for name in ("dcap_abi", "dcap_verify", "snp_abi", "snp_verify", "collateral", "trust", "verify"):
        assert importlib.util.find_spec(f"blindai.attestation.{name}") is not None
    for old in ("sgx_tdx", "sev_snp", "hardware"):
        assert importlib.util.find_spec(f"blindai.attestation.{old}") is None


def test_check_names_are_constants() -> None:
    assert list(CHECKS) == [c.value for c in Check] and len(set(CHECKS)) == len(CHECKS)
    err = AttestationError("x", check=Check.COLLATERAL_TIME)
    assert err.check == "collateral-time" and str(err).startswith("collateral-time: ")
    literal = re.compile(r'check="')
    for f in (PKG / "attestation").glob("*.py"):
        assert not literal.search(f.read_text()), f"{f.name} passes a check name as a string: use errors.Check"


def test_one_shape_for_trust_roots(vectors: Path) -> None:
    """A test root is added beside the pinned vendor roots for every TEE, never instead of them:
    real Intel and AMD evidence still verifies with a FAKE root given, and FAKE evidence with it."""
    import datetime as dt
    import json

    from blindai.attestation import TrustOptions, verify_evidence
    from tests.fakes.amd_pki import FakeAmdPki
    from tests.fakes.intel_pki import FakeIntelPki

    now = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)
    intel, amd = FakeIntelPki(now), FakeAmdPki(now=now)
    opts = TrustOptions(now=now, unsafe_trust_roots=(intel.root_pem, amd.ark_pem))
    quote = (vectors / "sgx/phala_sgx_quote.bin").read_bytes()
    collateral = json.loads((vectors / "sgx/phala_sgx_quote.collateral.json").read_text())
    assert verify_evidence("sgx", quote, collateral, opts).tee == "sgx"
    fake_quote = intel.sgx_quote(mrenclave=b"\x01" * 32, mrsigner=b"\x02" * 32, report_data=b"")
    assert verify_evidence("sgx", fake_quote, intel.collateral(), opts).measurements["mrenclave"] == "01" * 32
    snp = vectors / "sev-snp"
    certs = ((snp / "virtee_milan_vcek.der").read_bytes(), (snp / "virtee_cert_chain_milan.pem").read_bytes())
    report = (snp / "virtee_milan_report.bin").read_bytes()
    snp_opts = TrustOptions(unsafe_trust_roots=opts.unsafe_trust_roots)  # the VCEK's own validity: now
    assert verify_evidence("sev-snp", report, None, snp_opts, snp_certs=certs).tee == "sev-snp"
    fake_report = amd.report(report_data=b"", measurement=bytes(48))
    assert verify_evidence("sev-snp", fake_report, None, opts, snp_certs=amd.cert_blobs()).tee == "sev-snp"
