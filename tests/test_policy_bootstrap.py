"""Onboarding a server (attest -> first policy -> connect) and policies that bind what matters.

Servers are real (``blindai serve --tee sgx|tdx|sev-snp`` over FAKE devices, FAKE vendor
PKIs trusted only through the ``unsafe_`` options, and simulation); so is the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import blindai
from blindai.attestation import PolicyLoadError, TeePolicy, load_policy
from tests import onnx_models
from tests.fakes.worlds import MRENCLAVE, MRSIGNER, RTMRS, SNP_MEASUREMENT, World, start_world


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "blindai", *args], capture_output=True, text=True, env=env, timeout=90)


@pytest.fixture(scope="module")
def sgx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world("sgx", tmp_path_factory.mktemp("sgx"))
    yield w
    w.stop()


def _ports(w: World) -> list[str]:
    return ["--attested-port", str(w.server.attested_port), "--unattested-port", str(w.server.unattested_port)]


# ---------------------------------------------------------------- bootstrap from a live server


def test_cli_onboards_a_fake_sgx_server(sgx: World, tmp_path: Path) -> None:
    """The documented first steps: attest show --write-policy, then upload with that policy."""
    assert sgx.root_file is not None
    policy, model = tmp_path / "p.toml", tmp_path / "m.onnx"
    model.write_bytes(onnx_models.mlp().SerializeToString())
    root = ["--unsafe-trust-root", str(sgx.root_file)]
    shown = _cli("attest", "show", "127.0.0.1", *_ports(sgx), *root, "--write-policy", str(policy), home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert MRENCLAVE.hex() in shown.stdout and "tls_key_sha256" in shown.stdout
    text = policy.read_text()
    assert MRENCLAVE.hex() in text and MRSIGNER.hex() in text and "min_isv_svn = 1" in text
    up = _cli("upload", "127.0.0.1", str(model), *_ports(sgx), "--policy", str(policy), *root, home=tmp_path)
    assert up.returncode == 0, up.stderr
    assert '"model_id"' in up.stdout


def test_cli_writes_nothing_when_verification_fails(sgx: World, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    proc = _cli("attest", "show", "127.0.0.1", *_ports(sgx), "--write-policy", str(policy), home=tmp_path)
    assert proc.returncode == 1 and "root" in proc.stderr and "Traceback" not in proc.stderr
    assert not policy.exists()


def test_written_policy_refuses_another_measurement(sgx: World, tmp_path: Path) -> None:
    """The policy written from one server is refused by a server running other code, naming the field."""
    att = blindai.attest("127.0.0.1", **_attest_kwargs(sgx))
    policy = blindai.Policy.from_attestation(att)
    other = start_world("sgx", tmp_path / "other", mrenclave=b"\x11" * 32, pki=sgx.pki)
    try:
        with pytest.raises(blindai.PolicyError, match="mrenclave"):
            blindai.connect("127.0.0.1", **other.connect_kwargs(policy=policy))
        assert sgx.root_file is not None
        path = tmp_path / "p.toml"
        path.write_text(policy.to_toml())
        model = tmp_path / "m.onnx"
        model.write_bytes(onnx_models.mlp().SerializeToString())
        proc = _cli(
            "upload", "127.0.0.1", str(model), *_ports(other), "--policy", str(path),
            "--unsafe-trust-root", str(sgx.root_file), home=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 1 and "mrenclave" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        other.stop()


def _attest_kwargs(w: World) -> dict[str, object]:
    kw = w.connect_kwargs()
    kw.pop("attested_port")
    kw.pop("policy", None)
    return kw


@pytest.mark.parametrize("tee", ["sgx", "tdx", "sev-snp"])
def test_python_bootstrap_attest_policy_connect(tee: str, tmp_path: Path, sgx: World) -> None:
    w = sgx if tee == "sgx" else start_world(tee, tmp_path)
    try:
        att = blindai.attest("127.0.0.1", **_attest_kwargs(w))
        assert att.tee == tee and att.tls_key_sha256 is not None and len(att.tls_key_sha256) == 32
        policy = blindai.Policy.from_attestation(att)
        assert load_policy(policy.to_toml()) == policy  # the TOML says exactly what the object does
        with blindai.connect("127.0.0.1", **w.connect_kwargs(policy=policy)) as conn:
            assert conn.attestation.tls_key_sha256 == att.tls_key_sha256
            info = conn.upload_model(onnx_models.mlp())
            assert conn.run_model(info.model_id, np.ones((1, 16), np.float32)).output.shape == (1, 4)
            conn.delete_model(info.model_id)
    finally:
        if w is not sgx:
            w.stop()


def test_simulation_policy_is_usable_and_messages_speak_each_language(tmp_path: Path) -> None:
    w = start_world("simulation", tmp_path)
    try:
        policy, model = tmp_path / "p.toml", tmp_path / "m.onnx"
        model.write_bytes(onnx_models.mlp().SerializeToString())
        bare = _cli("attest", "show", "127.0.0.1", *_ports(w), "--write-policy", str(policy), home=tmp_path)
        assert bare.returncode == 1 and "--simulation" in bare.stderr and "simulation=True" not in bare.stderr
        assert not policy.exists()
        with pytest.raises(blindai.SimulationRefusedError, match=r"simulation=True"):
            blindai.attest("127.0.0.1", unattested_port=w.server.unattested_port)
        shown = _cli(
            "attest", "show", "127.0.0.1", *_ports(w), "--simulation", "--write-policy", str(policy), home=tmp_path
        )
        assert shown.returncode == 0, shown.stderr
        assert policy.read_text().startswith("# DANGER") and "\n[simulation]\n" in policy.read_text()
        up = _cli("upload", "127.0.0.1", str(model), *_ports(w), "--policy", str(policy), home=tmp_path)
        assert up.returncode == 0, up.stderr
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            blindai.connect("127.0.0.1", policy=policy, **w.server.connect_kwargs()).close()
        assert any(issubclass(c.category, blindai.SimulationModeWarning) for c in caught)
        # A [simulation] policy pins the server's code: another measurement is refused.
        other = load_policy(f'[simulation]\nmeasurement = ["{"00" * 48}"]\n')
        with pytest.raises(blindai.PolicyError, match="measurement"):
            blindai.connect("127.0.0.1", policy=other, **w.server.connect_kwargs())
    finally:
        w.stop()


# ---------------------------------------------------------------- safe by default


def test_tdx_policy_without_rtmrs_is_refused_with_the_way_out() -> None:
    with pytest.raises(PolicyLoadError, match=r"rtmr0, rtmr1, rtmr2, rtmr3.*unpinned_rtmrs"):
        load_policy(f'[tdx]\nmrtd = ["{"7d" * 48}"]\n')
    pins = "".join(f'rtmr{i} = ["{r.hex()}"]\n' for i, r in enumerate(RTMRS[:3]))
    with pytest.raises(PolicyLoadError, match=r"does not pin rtmr3"):
        load_policy(f'[tdx]\nmrtd = ["{"7d" * 48}"]\n{pins}')
    p = load_policy(f'[tdx]\nmrtd = ["{"7d" * 48}"]\n{pins}unpinned_rtmrs = [3]\n')
    assert p.sections["tdx"].unpinned_rtmrs == (3,)
    with pytest.raises(PolicyLoadError, match="both pinned"):
        load_policy(f'[tdx]\nmrtd = ["{"7d" * 48}"]\n{pins}rtmr3 = ["{"00" * 48}"]\nunpinned_rtmrs = [3]\n')


def test_tdx_rtmr_and_attribute_pins_are_enforced(tmp_path: Path) -> None:
    w = start_world("tdx", tmp_path)
    try:
        pins = "".join(f'rtmr{i} = ["{r.hex()}"]\n' for i, r in enumerate(RTMRS))
        wrong_app = pins.replace(RTMRS[3].hex(), "00" * 48)
        with pytest.raises(blindai.PolicyError, match="rtmr3"):
            blindai.connect("127.0.0.1", **w.connect_kwargs(policy=f'[tdx]\nmrtd = ["{"7d" * 48}"]\n{wrong_app}'))
        with pytest.raises(blindai.PolicyError, match="xfam"):
            blindai.connect(
                "127.0.0.1", **w.connect_kwargs(policy=f'[tdx]\nmrtd = ["{"7d" * 48}"]\n{pins}xfam = ["{"00" * 8}"]\n')
            )
        free = pins.replace(f'rtmr3 = ["{RTMRS[3].hex()}"]\n', "") + "unpinned_rtmrs = [3]\n"
        blindai.connect("127.0.0.1", **w.connect_kwargs(policy=f'[tdx]\nmrtd = ["{"7d" * 48}"]\n{free}')).close()
    finally:
        w.stop()


def test_sgx_mrsigner_needs_product_and_minimum_version() -> None:
    with pytest.raises(PolicyLoadError, match=r"isv_prod_id and min_isv_svn"):
        load_policy(f'[sgx]\nmrsigner = "{MRSIGNER.hex()}"\n')
    with pytest.raises(PolicyLoadError, match=r"isv_prod_id and min_isv_svn"):
        load_policy(f'[sgx]\nmrsigner = "{MRSIGNER.hex()}"\nisv_prod_id = 0\n')
    load_policy(f'[sgx]\nmrsigner = "{MRSIGNER.hex()}"\nisv_prod_id = 0\nmin_isv_svn = 1\n')


def test_policies_built_in_code_obey_the_same_rules() -> None:
    with pytest.raises(PolicyLoadError, match="pins no measurement"):
        blindai.Policy({"sgx": TeePolicy()})
    with pytest.raises(PolicyLoadError, match="isv_prod_id and min_isv_svn"):
        blindai.Policy({"sgx": TeePolicy(measurements={"mrsigner": (MRSIGNER.hex(),)})})
    with pytest.raises(PolicyLoadError, match="does not pin rtmr0"):
        blindai.Policy({"tdx": TeePolicy(measurements={"mrtd": ("7d" * 48,)})})
    with pytest.raises(PolicyLoadError, match="48 bytes"):
        blindai.Policy({"sev-snp": TeePolicy(measurements={"measurement": ("ab",)})})
    with pytest.raises(PolicyLoadError, match="no section"):
        blindai.Policy({})


def test_snp_without_a_current_crl_is_refused_unless_the_policy_opts_out(tmp_path: Path) -> None:
    """A server that serves no CRL: refused by default (connect and attest), accepted with require_crl = false."""
    from blindai.testing import LocalServer
    from tests.fakes.amd_pki import FakeAmdPki
    from tests.fakes.devices import FakeTsm
    from tests.fakes.worlds import snp_policy

    pki = FakeAmdPki()
    tsm = FakeTsm(
        tmp_path / "tsm",
        "sev_guest",
        lambda rd: (pki.report(report_data=rd, measurement=SNP_MEASUREMENT), pki.cert_table()),
    )
    server = LocalServer("--tee", "sev-snp", "--tsm-dir", str(tsm.root), simulation=False).start()
    kw = {**server.connect_kwargs(), "unsafe_trust_roots": [pki.ark_pem]}
    try:
        with pytest.raises(blindai.PolicyError, match=r"crl .*require_crl = false"):
            blindai.connect("127.0.0.1", policy=snp_policy(), **kw)
        with pytest.raises(blindai.CollateralError, match="require_crl = false"):
            blindai.attest("127.0.0.1", unattested_port=server.unattested_port, unsafe_trust_roots=[pki.ark_pem])
        blindai.connect("127.0.0.1", policy=snp_policy() + "require_crl = false\n", **kw).close()
    finally:
        server.stop()
        tsm.stop()


def test_snp_revoked_vcek_and_stale_crl_are_refused(tmp_path: Path) -> None:
    w = start_world("sev-snp", tmp_path)
    try:
        crl = tmp_path / "vcek.crl"
        crl.write_bytes(w.pki.crl(revoked=(w.pki.vcek,)))
        with pytest.raises(blindai.CollateralError, match="revoked"):
            blindai.connect("127.0.0.1", **w.connect_kwargs())
        import datetime as dt

        crl.write_bytes(w.pki.crl())
        with pytest.raises(blindai.CollateralError, match="crl-time"):
            blindai.connect("127.0.0.1", **w.connect_kwargs(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=30)))
    finally:
        w.stop()


def test_snp_policy_pins_vmpl_guest_policy_and_tcb(tmp_path: Path) -> None:
    w = start_world("sev-snp", tmp_path)
    try:
        att = blindai.attest("127.0.0.1", **_attest_kwargs(w))
        text = blindai.Policy.from_attestation(att).to_toml()
        assert "min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }" in text
        assert "vmpl = 0" in text and f"guest_policy = {0x30000}" in text and "require_crl = true" in text
        base = f'[sev-snp]\nmeasurement = ["{SNP_MEASUREMENT.hex()}"]\n'
        with pytest.raises(blindai.PolicyError, match="vmpl"):
            blindai.connect("127.0.0.1", **w.connect_kwargs(policy=base + "vmpl = 1\n"))
        with pytest.raises(blindai.PolicyError, match="guest_policy"):
            blindai.connect("127.0.0.1", **w.connect_kwargs(policy=base + "guest_policy = 1\n"))
    finally:
        w.stop()


def test_client_collateral_source_wins_over_the_hosts(sgx: World) -> None:
    """With collateral_url the client fetches its own collateral: a dead URL fails even though the
    host served good collateral (the host's is not silently used instead)."""
    with pytest.raises(blindai.CollateralError, match="collateral-fetch"):
        blindai.connect("127.0.0.1", **sgx.connect_kwargs(collateral_url="http://127.0.0.1:9"))
