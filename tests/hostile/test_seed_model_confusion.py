"""The seed client never runs its user's data on a model someone else uploaded.

Before: ``run_model`` without an upload on the same client ran the server's newest model,
so another tenant's later upload received the victim's input. The "attacker" here is a
second client of the same server (another tenant) whose model records every input it is
given by returning it as its output.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import blindai
from blindai.client import BlindAiClient
from blindai.testing import LocalServer
from tests import onnx_models


def _echo_model() -> onnx.ModelProto:
    """The attacker's model: returns its input (a stand-in for one that exfiltrates it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "echo", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


_OPEN: list[BlindAiClient] = []


@pytest.fixture()
def srv() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s
        while _OPEN:
            _OPEN.pop().close()


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blindai.SimulationModeWarning)
        yield


def _client(srv: LocalServer) -> BlindAiClient:
    c = BlindAiClient()
    c.connect_server("127.0.0.1", simulation=True, untrusted_port=srv.unattested_port, attested_port=srv.attested_port)
    _OPEN.append(c)
    return c


def _as_user(home: Path) -> None:
    os.environ["XDG_CONFIG_HOME"] = str(home)


def test_a_later_upload_by_someone_else_never_gets_the_users_data(srv: LocalServer, tmp_path: Path) -> None:
    secret = np.arange(16, dtype=np.float32)
    _as_user(tmp_path / "victim")
    victim = _client(srv)
    mine = victim.upload_model(onnx_models.mlp(), shape=(1, 16))
    _as_user(tmp_path / "attacker")
    attacker = _client(srv)
    evil = attacker.upload_model(_echo_model(), shape=(1, 16))
    _as_user(tmp_path / "victim")
    # Same client: its own model.
    out = victim.run_model(secret.tolist())
    assert out.model_id == mine.model_id and len(out.output) == 4
    # The tutorial's second script: a new client of the same user on the same machine.
    again = _client(srv)
    out2 = again.run_model(secret.tolist())
    assert out2.model_id == mine.model_id != evil.model_id
    assert out2.output == out.output


def test_a_client_with_no_upload_refuses_on_a_shared_server(srv: LocalServer, tmp_path: Path) -> None:
    _as_user(tmp_path / "a")
    _client(srv).upload_model(onnx_models.mlp(), shape=(1, 16))
    _as_user(tmp_path / "b")
    _client(srv).upload_model(_echo_model(), shape=(1, 16))
    _as_user(tmp_path / "newcomer")
    with pytest.raises(blindai.InvalidInputError, match="model_id="):
        _client(srv).run_model(np.ones(16, np.float32).tolist())


def test_a_single_model_server_runs_its_only_model(srv: LocalServer, tmp_path: Path) -> None:
    _as_user(tmp_path / "owner")
    up = _client(srv).upload_model(onnx_models.mlp(), shape=(1, 16))
    _as_user(tmp_path / "reader")
    assert _client(srv).run_model(np.ones(16, np.float32).tolist()).model_id == up.model_id


def test_the_remembered_model_is_pinned_by_hash(srv: LocalServer, tmp_path: Path) -> None:
    """A record pointing at an id whose content changed is not trusted: refused, never a fallback."""
    from blindai.client import tokens

    _as_user(tmp_path / "victim")
    victim = _client(srv)
    up = victim.upload_model(onnx_models.mlp(), shape=(1, 16))
    tokens.set_seed_last_upload("127.0.0.1", srv.attested_port, up.model_id, "00" * 32)
    _as_user(tmp_path / "other")
    _client(srv).upload_model(_echo_model(), shape=(1, 16))
    _as_user(tmp_path / "victim")
    with pytest.raises(blindai.ModelNotFoundError, match="model_id="):
        _client(srv).run_model(np.ones(16, np.float32).tolist())
    out = _client(srv).run_model(np.ones(16, np.float32).tolist(), model_id=up.model_id)
    assert out.model_id == up.model_id
