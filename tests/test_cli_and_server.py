"""The command line, the server's lifecycle, and what never appears in logs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import blindai
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import ROOT


def blindai_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blindai", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    out = blindai_cli("--version")
    assert out.returncode == 0 and blindai.__version__ in out.stdout


def test_serve_refuses_without_a_tee(tmp_path: Path) -> None:
    out = blindai_cli(
        "serve",
        "--gramine-dir",
        str(tmp_path / "no-gramine"),
        "--tsm-dir",
        str(tmp_path / "no-tsm"),
        "--attested-port",
        "0",
        "--unattested-port",
        "0",
        timeout=60,
    )
    assert out.returncode == 2
    assert "Refusing to start without a TEE" in out.stderr
    assert "blindai serve --simulation" in out.stderr


@pytest.mark.parametrize("tee", ["sgx", "tdx", "sev-snp"])
def test_serve_refuses_a_named_tee_that_is_absent(tmp_path: Path, tee: str) -> None:
    out = blindai_cli(
        "serve",
        "--tee",
        tee,
        "--gramine-dir",
        str(tmp_path),
        "--tsm-dir",
        str(tmp_path / "x"),
        "--attested-port",
        "0",
        "--unattested-port",
        "0",
        timeout=60,
    )
    assert out.returncode == 2 and "--simulation" in out.stderr


def test_sigterm_stops_cleanly() -> None:
    srv = LocalServer().start()
    code = srv.stop()
    assert code == 0
    log = srv.log()
    assert "SIMULATION MODE" in log and "stopped" in log


def test_logs_hold_no_tensor_data_tokens_or_model_bytes() -> None:
    with LocalServer(log_level="DEBUG") as srv:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn = blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs())
        model = onnx_models.mlp(seed=11)
        info = conn.upload_model(model)
        token = conn.owner_token(info.model_id)
        secret = np.full((1, 16), 1234.5678, np.float32)
        conn.run_model(info.model_id, secret)
        with pytest.raises(blindai.InvalidInputError):
            conn.run_model(info.model_id, np.full((1, 15), 1234.5678, np.float32))
        conn.delete_model(info.model_id)
        conn.close()
        log = srv.log()
    assert info.model_id in log  # the log is really there and really used
    assert token is not None and token not in log
    assert "1234.5" not in log
    weights = onnx.numpy_helper.to_array(model.graph.initializer[0]).reshape(-1)[:4]
    assert not any(f"{w:.4f}" in log for w in weights)
    assert "PRIVATE KEY" not in log


def test_client_install_is_light() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.split(">")[0].split("=")[0].strip() in {"onnxruntime", "torch", "onnx"} for d in deps)
    code = (
        "import sys, blindai, blindai.client, blindai.attestation; "
        "bad = [m for m in ('onnxruntime', 'torch', 'onnx', 'transformers', 'starlette') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_flow(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    model = tmp_path / "mlp.onnx"
    onnx.save_model(onnx_models.mlp(seed=4), model)
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with LocalServer() as srv:
        common = [
            "127.0.0.1",
            "--simulation",
            "--attested-port",
            str(srv.attested_port),
            "--unattested-port",
            str(srv.unattested_port),
        ]
        shown = blindai_cli("attest", "show", *common, "--json", "--write-policy", str(tmp_path / "p.toml"), env=env)
        assert shown.returncode == 0, shown.stderr
        claims = json.loads(shown.stdout)
        assert claims["tee"] == "simulation" and len(claims["report_data"]) == 128
        assert "[simulation]" in (tmp_path / "p.toml").read_text()

        up = blindai_cli("upload", *common, str(model), "--progress", env=env)
        assert "upload" in up.stderr and "100%" in up.stderr  # the progress bar
        assert up.returncode == 0, up.stderr
        model_id = json.loads(up.stdout)["model_id"]
        token_file = tmp_path / "config" / "blindai" / "owner-tokens.json"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert model_id in json.loads(token_file.read_text())

        listed = blindai_cli("models", *common, env=env)
        assert model_id in listed.stdout

        ran = blindai_cli(
            "run", *common, model_id, "--input", f"x={tmp_path / 'x.npy'}", "--output", str(tmp_path / "y.npy"), env=env
        )
        assert ran.returncode == 0, ran.stderr
        import onnxruntime as ort

        expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5)

        bad = blindai_cli(
            "run", *common, model_id, "--input", f"x={tmp_path / 'x.npy'}", "--model-sha256", "00" * 32, env=env
        )
        assert bad.returncode == 1 and "pinned" in bad.stderr

        gone = blindai_cli("delete", *common, model_id, env=env)
        assert gone.returncode == 0, gone.stderr
        assert model_id not in json.loads(token_file.read_text())

        refused = blindai_cli(
            "models",
            *common[:1],
            "--attested-port",
            str(srv.attested_port),
            "--unattested-port",
            str(srv.unattested_port),
            env=env,
        )
        assert refused.returncode == 1 and "SIMULATION" in refused.stderr


@pytest.mark.parametrize("command", ["serve", "upload", "run", "delete", "models", "demo"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    out = blindai_cli(command, "--help")
    assert out.returncode == 0 and "example:" in out.stdout
