"""What a newcomer meets on the command line: ordinary mistakes give one line, exit 2, no traceback.

Each case runs the real ``python -m blindai`` in a subprocess; the live cases use a real
simulation server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from blindai.testing import LocalServer
from tests import onnx_models


def cli(*args: str, home: Path | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"XDG_CONFIG_HOME": str(home)} if home else {})}
    return subprocess.run(
        [sys.executable, "-m", "blindai", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def srv() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def ports(srv: LocalServer) -> list[str]:
    return ["--attested-port", str(srv.attested_port), "--unattested-port", str(srv.unattested_port)]


def test_port_in_use_names_the_port_and_the_flag() -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        proc = cli("serve", "--simulation", "--attested-port", str(port), "--unattested-port", "0", timeout=60)
    finally:
        busy.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "--attested-port" in errors[0], proc.stderr


def test_missing_model_file(tmp_path: Path) -> None:
    assert_one_line(cli("upload", "127.0.0.1", str(tmp_path / "nope.onnx"), "--simulation"), "nope.onnx")


def test_missing_input_file(tmp_path: Path) -> None:
    proc = cli("run", "127.0.0.1", "some-id", "--input", f"x={tmp_path / 'x.npy'}", "--simulation")
    assert_one_line(proc, "x.npy")


def test_host_with_a_port(tmp_path: Path) -> None:
    assert_one_line(cli("models", "127.0.0.1:50051", "--simulation"), "--attested-port", "127.0.0.1")


def test_mistyped_policy_path() -> None:
    assert_one_line(cli("models", "127.0.0.1", "--policy", "polciy.toml"), "polciy.toml", "No such file")


def test_unknown_log_level() -> None:
    assert_one_line(cli("--log-level", "loud", "models", "127.0.0.1", "--simulation"), "LOUD", "INFO", "--help")


def test_bad_size() -> None:
    assert_one_line(cli("serve", "--simulation", "--max-model-bytes", "10X"), "'10X' is not a size")


def test_every_flag_has_help_and_its_default() -> None:
    out = cli("serve", "--help").stdout
    options = out[out.index("options:") :]
    for flag in ("--attested-port", "--unattested-port", "--tee", "--max-models", "--max-model-bytes"):
        block = options[options.index(f"  {flag}") :].split("\n  -", 1)[0]
        assert "default:" in block, block
    assert "default:" in cli("models", "--help").stdout


def test_every_argument_of_every_command_has_help() -> None:
    import argparse

    from blindai.cli import build_parser

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help and action.dest != "help":
                missing.append(f"{path} {action.option_strings or action.dest}")

    walk(build_parser(), "blindai")
    assert missing == []


def test_expired_recorded_evidence_names_dates_and_suggests_at(vectors: Path) -> None:
    proc = cli(
        "attest", "verify", str(vectors / "sgx/phala_sgx_quote.bin"),
        "--collateral", str(vectors / "sgx/phala_sgx_quote.collateral.json"),
    )  # fmt: skip
    assert_one_line(proc, "collateral-time", "2025-06-19", "2025-07-19", "--at", code=1)
    assert "CrlExpired" not in proc.stderr


def test_live_commands_read_well(srv: LocalServer, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_models.mlp(hidden=512).SerializeToString())
    home = tmp_path / "home"
    up = cli("upload", "127.0.0.1", str(model), *ports(srv), "--simulation", "--progress", home=home)
    assert up.returncode == 0, up.stderr
    notice = [line for line in up.stderr.splitlines() if "SIMULATION" in line]
    assert len(notice) == 1 and notice[0].startswith("warning: SIMULATION") and ".py:" not in up.stderr
    assert up.stderr.index("SIMULATION") < up.stderr.index("upload:")  # the bar after attestation
    listed = cli("models", "127.0.0.1", *ports(srv), "--simulation", home=home)
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["MODEL", "ID", "NAME", "SIZE", "CREATED", "SHA256"]
    assert "KiB" in row
    x = tmp_path / "x.json"
    x.write_text("[[" + ",".join(["1"] * 16) + "]]")  # plain JSON numbers for an FP32 model
    model_id = row.split()[0]
    ran = cli("run", "127.0.0.1", model_id, "--input", f"x={x}", *ports(srv), "--simulation", home=home)
    assert ran.returncode == 0, ran.stderr
    assert np.asarray(__import__("json").loads(ran.stdout)["y"]).shape == (1, 4)


def test_server_logs_each_line_once(srv: LocalServer) -> None:
    log = srv.log()
    assert log.count("Started server process") <= 1 and log.count("serving: attested") == 1, log


def test_cli_reference_page_is_generated_from_the_parser() -> None:
    from blindai.cli import reference_markdown
    from tests.conftest import ROOT

    assert (ROOT / "docs" / "cli-reference.md").read_text() == reference_markdown(), (
        "docs/cli-reference.md is stale: regenerate it with\n"
        "  .venv/bin/python -c \"from blindai.cli import reference_markdown; print(reference_markdown(), end='')\""
        " > docs/cli-reference.md"
    )
