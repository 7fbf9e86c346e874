"""The server's shape: the core raises domain errors and knows no HTTP; one table maps them.

A core module that names a status or a header, imports starlette or uvicorn, or raises the
client's ``ServerError`` tree would tie the store and engine to one wire again; a domain
error with no row in the table would answer 500 instead of the refusal it is.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import blindai
from blindai.server import errors as core_errors
from blindai.server.http.errors import STATUS, status_of

SERVER = Path(blindai.__file__).parent / "server"
CORE = sorted(p for p in SERVER.glob("*.py"))
HEADER = re.compile(r"\b(Authorization|Content-Length|Content-Type|Bearer|Connection: close)\b")
CLIENT_TREE = {
    "ServerError",
    "InvalidInputError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "ModelHashMismatchError",
}


def test_every_domain_error_has_a_status_row() -> None:
    for name in core_errors.__all__:
        cls = getattr(core_errors, name)
        if cls is core_errors.CoreError:
            continue
        status = status_of(cls("x"))
        assert 400 <= status < 600 and status != 500, f"{name} has no row in server/http/errors.py"
    assert len(set(STATUS)) == len(STATUS)


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_knows_no_http(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            for n in names:
                assert not n.startswith(("starlette", "uvicorn", "httptools")), f"{path.name} imports {n}"
                assert n not in CLIENT_TREE, f"{path.name} imports the client's {n}: raise a server.errors class"
        if isinstance(node, ast.keyword):
            assert node.arg not in ("status", "status_code"), f"{path.name}:{node.value.lineno} passes {node.arg}="
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            doc_only = node.value.count("\n") > 1  # docstrings may say what the module does not do
            assert doc_only or not HEADER.search(node.value), (
                f"{path.name}:{node.lineno} names a header: {node.value!r}"
            )


def test_the_edge_adds_what_the_core_cannot_say() -> None:
    """The token hint names the header at the edge; the core's message does not."""
    from blindai.server.http.errors import _message

    err = core_errors.Unauthenticated("this server requires an upload token")
    assert status_of(err) == 401
    assert _message(err) == "this server requires an upload token; send it as Authorization: Bearer <token>"
    assert status_of(core_errors.InputRejected("x")) == 422 and status_of(core_errors.CapacityExceeded("x")) == 507


@pytest.mark.parametrize("path", sorted((SERVER.parent / "protocol").glob("*.py")), ids=lambda p: p.name)
def test_protocol_module_has_no_transport_and_no_side(path: Path) -> None:
    """Wire formats are pairs both sides import: no server, client, HTTP library or status in them."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            assert not module.startswith(("..server", "..client", "starlette", "httpx", "uvicorn")), (
                f"protocol/{path.name} imports {module}"
            )
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in ("starlette", "httpx", "uvicorn"), f"{path.name}: {alias.name}"
        if isinstance(node, ast.keyword):
            assert node.arg not in ("status", "status_code"), f"protocol/{path.name} passes {node.arg}="


def test_the_tee_table_drives_provider_detection_and_sealing(tmp_path: Path) -> None:
    """One row per TEE: where its evidence comes from and how models are sealed follow the row."""
    from blindai.server import providers, sealing
    from blindai.tees import TEES, is_simulation

    assert {s.provider for s in TEES.values()} <= {"simulation", "gramine", "configfs-tsm"}
    assert {s.sealing for s in TEES.values()} <= {"host-key-file", "tee-key", "none"}
    assert [t for t in TEES if is_simulation(t)] == ["simulation"] and not is_simulation("unknown")
    for tee, spec in TEES.items():
        if spec.sealing == "none":
            with pytest.raises(sealing.NoSealingKeyError, match="offers none"):
                sealing.sealing_key_for(tee, b"k" * 32, tmp_path)
        elif spec.sealing == "tee-key":
            assert sealing.sealing_key_for(tee, b"k" * 32, tmp_path).source == f"{tee} TEE sealing key"
            with pytest.raises(sealing.NoSealingKeyError):
                sealing.sealing_key_for(tee, None, tmp_path)
        else:
            assert "INSECURE" in sealing.sealing_key_for(tee, None, tmp_path).source
    assert providers.detect_provider("simulation").tee == "simulation"
    with pytest.raises(providers.NoTeeError, match="unknown TEE 'tpm'"):
        providers.detect_provider("tpm")
    with pytest.raises(providers.NoTeeError, match="no sgx TEE found"):
        providers.detect_provider("sgx", gramine_dir=tmp_path / "none")
