"""`blindai attest verify`: every option reaches the TEE that uses it; an option that does not apply is refused.

In-process (``cli.main``) with the FAKE Intel and AMD PKIs, so no vectors and no subprocess are needed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from blindai import cli
from blindai.attestation import dcap_verify, simulation, snp_verify
from tests.fakes.amd_pki import FakeAmdPki
from tests.fakes.intel_pki import FakeIntelPki

NOW = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)
AT = "2030-01-15T12:00:00Z"


@pytest.fixture(scope="module")
def intel() -> FakeIntelPki:
    return FakeIntelPki(NOW)


@pytest.fixture(scope="module")
def amd() -> FakeAmdPki:
    return FakeAmdPki(now=NOW)


@pytest.fixture
def files(tmp_path: Path, intel: FakeIntelPki, amd: FakeAmdPki) -> dict[str, str]:
    out = {
        "sgx": intel.sgx_quote(mrenclave=b"\x01" * 32, mrsigner=b"\x02" * 32, report_data=b"rd"),
        "tdx": intel.tdx_quote(mrtd=b"\x03" * 48, report_data=b"rd"),
        "snp": amd.report(report_data=b"rd", measurement=b"\x04" * 48),
        "sim": simulation.SimulationSigner(b"\x05" * 48).sign(b"rd".ljust(64, b"\0")),
        "intel.json": json.dumps(intel.collateral()).encode(),
        "intel-root.pem": intel.root_pem,
        "ark.pem": amd.ark_pem,
        "crl.der": amd.crl(),
        "revoking.der": amd.crl(revoked=(amd.vcek,)),
    }
    for i, blob in enumerate(amd.cert_blobs()):
        out[f"cert{i}.der"] = blob
    paths = {}
    for name, data in out.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["attest", "verify", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def snp_certs(f: dict[str, str]) -> list[str]:
    return ["--certs", f["cert0.der"], f["cert1.der"], f["cert2.der"]]


# ------------------------------------------------------------------ every option reaches its TEE


def test_sgx_takes_collateral_test_root_and_time(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    rc, out, err = run(
        capsys, files["sgx"], "--collateral", files["intel.json"], "--unsafe-trust-root", files["intel-root.pem"],
        "--at", AT, "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["measurements"]["mrenclave"] == "01" * 32
    # without the test root, the fake chain is refused at the pinned Intel root
    rc, _, err = run(capsys, files["sgx"], "--collateral", files["intel.json"], "--at", AT)
    assert rc == 1 and err.startswith("error: root:"), err


def test_pccs_url_reaches_the_intel_fetch(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], intel: FakeIntelPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def fetch(url: str, quote: bytes) -> dict[str, Any]:
        asked.append(url)
        return intel.collateral(tee="tdx")

    monkeypatch.setattr(dcap_verify, "fetch_collateral", fetch)
    rc, out, err = run(
        capsys, files["tdx"], "--pccs-url", "https://pccs.example", "--unsafe-trust-root", files["intel-root.pem"],
        "--at", AT, "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert asked == ["https://pccs.example"] and json.loads(out)["tee"] == "tdx"


def test_snp_takes_certs_crl_test_root_and_time(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    base = [files["snp"], *snp_certs(files), "--unsafe-trust-root", files["ark.pem"], "--at", AT]
    rc, out, err = run(capsys, *base, "--crl", files["crl.der"], "--json")
    assert rc == 0, err
    assert json.loads(out)["measurements"]["measurement"] == "04" * 48
    rc, _, err = run(capsys, *base, "--crl", files["revoking.der"])  # the CRL really is read
    assert rc == 1 and err.startswith("error: revocation:"), err
    rc, _, err = run(capsys, *base[:-2], "--at", "2041-01-01T00:00:00Z", "--crl", files["crl.der"])  # and the time
    assert rc == 1 and ("crl-time" in err or "certificate-time" in err), err


def test_kds_url_reaches_the_amd_crl_fetch(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], amd: FakeAmdPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blindai.attestation.collateral import load_crl

    asked: list[tuple[str, str, bool]] = []

    def fetch(url: str, product: str, vlek: bool) -> Any:
        asked.append((url, product, vlek))
        return load_crl(amd.crl(revoked=(amd.vcek,)))

    monkeypatch.setattr(snp_verify, "fetch_snp_crl", fetch)
    rc, _, err = run(
        capsys, files["snp"], *snp_certs(files), "--unsafe-trust-root", files["ark.pem"], "--at", AT,
        "--kds-url", "https://kds.example",
    )  # fmt: skip
    assert asked == [("https://kds.example", "Milan", False)]
    assert rc == 1 and err.startswith("error: revocation:"), err


# ------------------------------------------------------------------ options that do not apply are refused


@pytest.mark.parametrize(
    ("evidence", "extra", "flag"),
    [
        ("sgx", ["--certs", "cert0.der"], "--certs"),
        ("tdx", ["--certs", "cert0.der"], "--certs"),
        ("sgx", ["--crl", "crl.der"], "--crl"),
        ("tdx", ["--crl", "crl.der"], "--crl"),
        ("sgx", ["--kds-url", "https://kds.example"], "--kds-url"),
        ("tdx", ["--kds-url", "https://kds.example"], "--kds-url"),
        ("snp", ["--pccs-url", "https://pccs.example"], "--pccs-url"),
        ("sim", ["--collateral", "intel.json"], "--collateral"),
        ("sim", ["--pccs-url", "https://pccs.example"], "--pccs-url"),
        ("sim", ["--certs", "cert0.der"], "--certs"),
        ("sim", ["--crl", "crl.der"], "--crl"),
        ("sim", ["--kds-url", "https://kds.example"], "--kds-url"),
        ("sim", ["--unsafe-trust-root", "ark.pem"], "--unsafe-trust-root"),
        ("sim", ["--at", AT], "--at"),
    ],
)
def test_an_option_that_does_not_apply_is_refused(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], evidence: str, extra: list[str], flag: str
) -> None:
    args = [files.get(a, a) for a in extra]
    rc, out, err = run(capsys, files[evidence], *args)
    assert rc == 2 and out == "", err
    assert err.startswith(f"error: {flag} does not apply to ") and len(err.strip().splitlines()) == 1, err
    assert set(cli.ATTEST_VERIFY_OPTIONS) >= {flag}


@pytest.mark.parametrize(
    ("evidence", "extra"),
    [
        ("sgx", ["--collateral", "intel.json", "--pccs-url", "https://pccs.example"]),
        ("snp", ["--crl", "crl.der", "--kds-url", "https://kds.example"]),
    ],
)
def test_two_sources_for_the_same_collateral_are_refused(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], evidence: str, extra: list[str]
) -> None:
    rc, _, err = run(capsys, files[evidence], *[files.get(a, a) for a in extra])
    assert rc == 2 and "not both" in err, err


def test_every_refusable_option_is_a_flag_of_attest_verify() -> None:
    parser = cli.build_parser()
    for flag in cli.ATTEST_VERIFY_OPTIONS:
        args = parser.parse_args(["attest", "verify", "evidence.bin", flag, "value"])
        assert getattr(args, flag[2:].replace("-", "_"))


def test_simulation_still_verifies_without_options(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    rc, out, err = run(capsys, files["sim"], "--json")
    assert rc == 0, err
    assert json.loads(out)["tee"] == "simulation"
