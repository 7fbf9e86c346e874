"""The attested channel against a network attacker, on every client surface and every TEE path.

The attacker (tests/fakes/attacker.py, a FAKE) owns the evidence port and the attested port:
it rewrites evidence answers and, at a moment it picks, swaps the real server's TLS for its
own. Servers run for real: simulation, and ``--tee sgx|tdx|sev-snp`` over FAKE devices with
FAKE vendor PKIs. Each test asserts what the attacker got (``plaintext == b""``: not one
decrypted application byte) and that the client failed with a typed error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blindai
from blindai.client import BlindAiClient
from blindai.server.tls import make_identity
from tests import onnx_models
from tests.fakes.attacker import (
    ChannelAttacker,
    EvidenceAttacker,
    Plan,
    append_cert,
    fetch_doc,
    prepend_cert,
    replace_cert,
    replay,
    swap_from,
)
from tests.fakes.worlds import TEES, World, start_world

ATTACKER = make_identity(["127.0.0.1", "localhost", "blindai-srv"])
MOMENTS = {
    # connect()'s own first connection is terminated
    "first": Plan(terminate_from=0),
    # the first connection is relayed, then the "server" closes it; the next one is terminated
    "after-server-close": Plan(terminate_from=1, after_first_response=True),
    # the first connection is relayed and dropped after an idle pause (a load balancer's timeout)
    "after-idle": Plan(terminate_from=1, idle_close_s=0.3),
}
MID_UPLOAD = Plan(terminate_from=1, cut_after_bytes=150_000)


@pytest.fixture(scope="module", params=TEES)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(request.param, tmp_path_factory.mktemp(request.param))
    yield w
    w.stop()


@pytest.fixture(autouse=True)
def _quiet_simulation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blindai.SimulationModeWarning)
        yield


class Attack:
    def __init__(self, w: World, plan: Plan, rewrite: Callable[..., Any] | None = None) -> None:
        self.evidence = EvidenceAttacker(w.server.unattested_port, rewrite)
        self.channel = ChannelAttacker(w.server.attested_port, plan, ATTACKER)
        self.world = w

    def kwargs(self) -> dict[str, Any]:
        return self.world.connect_kwargs(attested_port=self.channel.port, unattested_port=self.evidence.port)

    def close(self) -> None:
        self.evidence.close()
        self.channel.close()

    def __enter__(self) -> Attack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def wait_for_reconnect(self, plan: Plan) -> None:
        if plan.terminate_from:
            self.channel.wait_cut()


def _big_model() -> bytes:
    """About 1 MB of weights, so that an upload spans many TLS records."""
    return onnx_models.mlp(hidden=4096).SerializeToString()


# ---------------------------------------------------------------- SDK connection


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_sdk_connection_never_talks_to_the_attacker(world: World, moment: str) -> None:
    plan = MOMENTS[moment]
    with Attack(world, plan) as attack:
        if plan.terminate_from == 0:
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                blindai.connect("127.0.0.1", **attack.kwargs())
        else:
            conn = blindai.connect("127.0.0.1", **attack.kwargs())
            attack.wait_for_reconnect(plan)
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                conn.upload_model(onnx_models.mlp())
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                conn.run_model("any-model", {"x": np.ones((1, 16), np.float32)})
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                conn.list_models()
            conn.close()
        assert attack.channel.terminate_attempts >= 1, "the attack never took place"
        assert bytes(attack.channel.plaintext) == b""


def test_sdk_mid_upload_cut_then_terminated(world: World) -> None:
    with Attack(world, MID_UPLOAD) as attack:
        conn = blindai.connect("127.0.0.1", **attack.kwargs())
        with pytest.raises(blindai.TransportError):
            conn.upload_model(_big_model())
        with pytest.raises(blindai.BindingError, match="tls-pin"):
            conn.upload_model(onnx_models.mlp())
        conn.close()
        assert attack.channel.terminate_attempts >= 1, "the attack never took place"
        assert bytes(attack.channel.plaintext) == b""


def test_control_an_honest_relay_that_reconnects_works(world: World) -> None:
    """The same moments with an attacker that only relays: the client reconnects and succeeds,
    so the refusals above come from the pin, not from the harness."""
    plan = Plan(terminate_from=None, after_first_response=True)
    with Attack(world, plan) as attack:
        conn = blindai.connect("127.0.0.1", **attack.kwargs())
        attack.channel.wait_cut()
        info = conn.upload_model(onnx_models.mlp())
        assert conn.run_model(info.model_id, np.ones((1, 16), np.float32)).output.shape == (1, 4)
        conn.delete_model(info.model_id)
        conn.close()
        assert attack.channel.connections >= 2


# ---------------------------------------------------------------- the evidence answer


def _other_server_doc(w: World, tmp: Path) -> tuple[World, Callable[..., Any]]:
    other = start_world(w.tee, tmp, pki=w.pki)  # another genuine machine of the same vendor
    return other, swap_from(other.server.unattested_port)


@pytest.mark.parametrize("rewrite", ["append", "prepend", "replace", "swap", "replay"])
def test_rewritten_evidence_is_refused_and_nothing_is_sent(world: World, rewrite: str, tmp_path: Path) -> None:
    other: World | None = None
    if rewrite == "swap":
        other, fn = _other_server_doc(world, tmp_path / "other")
    elif rewrite == "replay":
        fn = replay(fetch_doc(world.server.unattested_port, "/attestation?nonce=" + "aa" * 32))
    else:
        fn = {"append": append_cert, "prepend": prepend_cert, "replace": replace_cert}[rewrite](
            ATTACKER.certificate_pem
        )
    expected: dict[str, tuple[type[Exception], str]] = {
        "append": (blindai.EvidenceParseError, "exactly one certificate"),
        "prepend": (blindai.EvidenceParseError, "exactly one certificate"),
        "replace": (blindai.BindingError, "binding"),
        "swap": (blindai.BindingError, "tls-pin"),
        "replay": (blindai.BindingError, "binding"),
    }
    # The strongest channel attack: relay connect()'s first connection, terminate every later one.
    plan = Plan(terminate_from=1, after_first_response=True)
    try:
        with Attack(world, plan, fn) as attack:
            exc_type, match = expected[rewrite]
            with pytest.raises(exc_type, match=match):
                conn = blindai.connect("127.0.0.1", **attack.kwargs())
                with suppress(blindai.BlindAIError):
                    attack.channel.wait_cut(timeout=2)
                    conn.upload_model(onnx_models.mlp())
            assert bytes(attack.channel.plaintext) == b""
            assert attack.evidence.requests >= 1
    finally:
        if other is not None:
            other.stop()


# ---------------------------------------------------------------- replicas, seed client, CLI


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_connect_replicas_never_talks_to_the_attacker(world: World, moment: str) -> None:
    plan = MOMENTS[moment]
    with Attack(world, plan) as attack:
        kw = attack.kwargs()
        endpoint = blindai.Endpoint("127.0.0.1", kw.pop("attested_port"), kw.pop("unattested_port"))
        if plan.terminate_from == 0:
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                blindai.connect_replicas([endpoint], **kw)
        else:
            replicas = blindai.connect_replicas([endpoint], **kw)
            attack.wait_for_reconnect(plan)
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                replicas.upload_model(onnx_models.mlp())
            replicas.close()
        assert attack.channel.terminate_attempts >= 1, "the attack never took place"
        assert bytes(attack.channel.plaintext) == b""


def test_connect_replicas_refuses_a_replica_with_malformed_evidence(world: World) -> None:
    """One replica's evidence is garbage: it is left out with a typed reason; the others serve."""

    def garbage(doc: dict[str, Any], _path: str) -> dict[str, Any]:
        return {**doc, "evidence": "AAAA"}

    with Attack(world, Plan(terminate_from=None), garbage) as bad:
        kw = world.connect_kwargs()
        good = blindai.Endpoint("127.0.0.1", kw.pop("attested_port"), kw.pop("unattested_port"))
        evil = blindai.Endpoint("127.0.0.1", bad.channel.port, bad.evidence.port)
        replicas = blindai.connect_replicas([good, evil], **kw)
        assert list(replicas.connections) == [good]
        assert isinstance(replicas.refused[evil], blindai.AttestationError)
        replicas.close()


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_seed_client_never_talks_to_the_attacker(world: World, moment: str) -> None:
    plan = MOMENTS[moment]
    with Attack(world, plan) as attack:
        kw = attack.kwargs()
        client = BlindAiClient()
        extra = {} if world.simulation else {"unsafe_trust_roots": kw["unsafe_trust_roots"]}

        def connect() -> None:
            client.connect_server(
                "127.0.0.1",
                policy=kw.get("policy"),
                simulation=world.simulation,
                untrusted_port=kw["unattested_port"],
                attested_port=kw["attested_port"],
                **extra,
            )

        if plan.terminate_from == 0:
            with pytest.raises(blindai.BindingError):
                connect()
        else:
            connect()
            attack.wait_for_reconnect(plan)
            with pytest.raises(blindai.BindingError, match="tls-pin"):
                client.upload_model(onnx_models.mlp(), shape=(1, 16))
            client.close_connection()
        assert attack.channel.terminate_attempts >= 1, "the attack never took place"
        assert bytes(attack.channel.plaintext) == b""


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_models.mlp().SerializeToString())
    return path


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "blindai", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("moment", ["first", "after-server-close"])
@pytest.mark.parametrize("command", ["upload", "models", "run", "delete"])
def test_cli_never_talks_to_the_attacker(
    world: World, command: str, moment: str, model_file: Path, tmp_path: Path
) -> None:
    """Each CLI command is one process: its first connection is terminated, or relayed and then
    closed by the "server" so that the command's own request needs a new, terminated one. (An
    idle pause cannot happen inside one command.)"""
    with Attack(world, MOMENTS[moment]) as attack:
        kw = attack.kwargs()
        flags = world.cli_args(tmp_path / "policy.toml")
        flags[flags.index("--attested-port") + 1] = str(kw["attested_port"])
        flags[flags.index("--unattested-port") + 1] = str(kw["unattested_port"])
        x = tmp_path / "x.npy"
        np.save(x, np.ones((1, 16), np.float32))
        argv = {
            "upload": ["upload", "127.0.0.1", str(model_file)],
            "models": ["models", "127.0.0.1"],
            "run": ["run", "127.0.0.1", "some-model", "--input", f"x={x}"],
            "delete": ["delete", "127.0.0.1", "some-model", "--owner-token", "t" * 64],
        }[command]
        # The first connection is cut right after its answer; should the CLI win that race and send
        # its request on it anyway, the request fails in transit (no attack happened): try again.
        for _ in range(3):
            proc = _cli(*argv, *flags, home=tmp_path / "home")
            if attack.channel.terminate_attempts:
                break
        assert bytes(attack.channel.plaintext) == b"", proc.stderr
        assert attack.channel.terminate_attempts >= 1, "the attack never took place"
        assert proc.returncode == 1, proc.stderr
        assert "tls-pin" in proc.stderr and "Traceback" not in proc.stderr
