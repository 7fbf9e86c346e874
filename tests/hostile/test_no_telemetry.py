"""Nothing about the server leaves the TEE on onnxruntime's initiative.

onnxruntime 1.29 added telemetry on Linux (Microsoft's 1DS): at start it writes a persistent
device id and an event cache under ``~/.cache/Microsoft``, and uploads process, session and
model events to Microsoft's collector. From inside a TEE that is metadata leaving it by a
channel nobody attested, and a file on a disk the host may read. The observer here is anyone
on that path (the network, the host's disk); what they must get: nothing, not even a file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect


def _written(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_a_serving_server_writes_no_telemetry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with LocalServer(env={"HOME": str(home)}, log_level="WARNING") as srv, sim_connect(srv) as conn:
        info = conn.upload_model(onnx_models.mlp(in_dim=16, hidden=32, out_dim=4))
        for _ in range(20):
            conn.run_model(info.model_id, np.ones((1, 16), np.float32))
    assert not [f for f in _written(home) if "Microsoft" in f], _written(home)


@pytest.mark.parametrize(
    ("module", "preset"),
    [("blindai.server.inference", None), ("blindai.server.runner", None), ("blindai.server.inference", "")],
)
def test_importing_the_server_turns_telemetry_off_before_onnxruntime_starts(
    module: str, preset: str | None, tmp_path: Path
) -> None:
    """An embedding of the server (the tests, a custom launcher) gets the same: the switch is
    set when the server package is imported, before onnxruntime is; an empty value counts as
    unset (onnxruntime would read it as telemetry on)."""
    code = (
        f"import {module}, onnxruntime as ort, numpy as np\n"
        "from tests import onnx_models\n"
        "s = ort.InferenceSession(onnx_models.mlp().SerializeToString(), providers=['CPUExecutionProvider'])\n"
        "s.run(None, {'x': np.ones((1, 16), np.float32)})\n"
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    if preset is not None:
        env["ORT_DISABLE_TELEMETRY"] = preset
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not _written(tmp_path), _written(tmp_path)
