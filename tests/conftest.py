"""Shared fixtures: a real server on free loopback ports, ONNX models built in the tests, vectors."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test processes load models with onnxruntime too: none of them may phone home (server/__init__.py).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import blindai
from blindai.testing import LocalServer

ROOT = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path | None:
    path = Path(os.environ.get("BLINDAI_TEST_VECTORS") or ROOT.parent / "shared" / "vectors")
    return path if path.is_dir() else None


@pytest.fixture(scope="session", autouse=True)
def _private_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Owner tokens and the seed client's records go to a folder of this test run, not the user's."""
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    yield
    if old is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = old


@pytest.fixture(scope="session")
def vectors() -> Path:
    path = vectors_dir()
    if path is None:
        pytest.skip(
            "recorded evidence not found: set BLINDAI_TEST_VECTORS or place it at ../shared/vectors "
            "(what it is and where it comes from: docs/test-vectors.md)"
        )
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


def sim_connect(srv: LocalServer, **kwargs: object) -> blindai.Connection:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blindai.SimulationModeWarning)
        return blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture()
def conn(server: LocalServer) -> Iterator[blindai.Connection]:
    c = sim_connect(server)
    yield c
    c.close()


# Modules whose tests measure time or memory under load (latency bounds, VmHWM, deadlines,
# kill -9 timing, the bounded fuzz run): under `make test`'s two workers they share one worker
# group, so no two of them load the machine at once.
MEASURED = {
    "test_connection_attacks.py",
    "test_faults.py",
    "test_live_server.py",
    "test_load_and_secrets.py",
    "test_resource_attacks.py",
    "test_tenants_and_v06.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in MEASURED:
            item.add_marker(pytest.mark.xdist_group("measured"))


def memory_usable(kind: str) -> bool:
    """Whether this system can hold uploads in ``kind`` (modelfile.MEMORY_KINDS) for a simulation server."""
    from blindai.server.modelfile import model_memory

    try:
        return model_memory("simulation", kind) == kind
    except ValueError:
        return False
