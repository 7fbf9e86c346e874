"""The documentation builds (mkdocs --strict: no broken links or references) and the README keeps its promises."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]")')
    out_dir = tmp_path_factory.mktemp("site")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-q", "-d", str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out_dir


def test_mkdocs_builds_strict(site: Path) -> None:
    assert (site / "api" / "index.html").read_text().count("connect") > 3


def _public() -> dict[str, object]:
    """Every public object: the package's, the client's and the attestation package's ``__all__``."""
    import blindai.attestation
    import blindai.client

    names: dict[str, object] = {}
    for module in (blindai, blindai.client, blindai.attestation):
        for name in module.__all__:
            if name != "__version__":
                names[f"{module.__name__}.{name}"] = getattr(module, name)
    return names


def _own_doc(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    if dataclasses.is_dataclass(obj) and doc.startswith(f"{getattr(obj, '__name__', '')}("):
        return ""  # the signature dataclasses write when a class has no docstring
    return doc


def test_api_page_renders_every_public_name_with_its_docstring(site: Path) -> None:
    html = (site / "api" / "index.html").read_text()
    for public, obj in _public().items():
        # mkdocstrings anchors each entry at the object's home module; DOMAIN is a constant, named by hand.
        home = (
            "blindai.attestation.binding.DOMAIN" if isinstance(obj, bytes) else f"{obj.__module__}.{obj.__qualname__}"
        )
        assert f'id="{home}"' in html, f"{public} ({home}) is not on docs/api.md"
        if not isinstance(obj, bytes):
            assert _own_doc(obj), f"{public} has no docstring"


def test_public_methods_and_properties_have_docstrings() -> None:
    missing = []
    for public, obj in _public().items():
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, property):
                value = value.fget
            elif isinstance(value, (classmethod, staticmethod)):
                value = value.__func__
            elif not inspect.isfunction(value):
                continue
            if not inspect.getdoc(value):
                missing.append(f"{public}.{attr}")
    assert not missing, missing


def test_api_page_has_no_raw_sphinx_roles_or_private_parameters(site: Path) -> None:
    html = (site / "api" / "index.html").read_text()
    for role in (":func:", ":class:", ":meth:", ":attr:", ":mod:"):
        assert role not in html, role
    assert "_hints" not in html
    assert "upload_token" in html  # the real keyword arguments of upload_model are shown
    assert "_cycle" not in html and "_lock" not in html  # ReplicaSet's private fields are not constructor parameters
    for attribute in ("attestation", "certificate_pem"):  # instance attributes, documented where they are set
        assert f'id="blindai.client.connection.Connection.{attribute}"' in html


def test_readme_gives_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_seed_export_note_holds() -> None:
    """docs/faq.md: the seed's opset 11 export fails with today's torch; opset 17 with dynamo=False works."""
    import io
    import warnings

    torch = pytest.importorskip("torch", reason="needs blindai[examples] (make test has it)")
    from examples.zoo import wav2vec2_argmax

    faq = (ROOT / "docs" / "faq.md").read_text()
    assert "opset_version=11" in faq and "opset_version=17, dynamo=False" in faq
    model, _ = wav2vec2_argmax(None, tiny=True)
    x = torch.zeros(1, 4000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="opset version 11 is not supported"):
            torch.onnx.export(model, x, io.BytesIO(), export_params=True, opset_version=11, dynamo=False)
        torch.onnx.export(model, x, io.BytesIO(), export_params=True, opset_version=17, dynamo=False)


def test_vectors_page_names_every_recording_the_tests_read() -> None:
    page = (ROOT / "docs" / "test-vectors.md").read_text()
    used = set(re.findall(r"([A-Za-z0-9_.-]+\.(?:bin|der))\b", (ROOT / "tests" / "test_vectors.py").read_text()))
    assert used and not {name for name in used if name not in page}
    assert "docs/test-vectors.md" in (ROOT / "tests" / "conftest.py").read_text()  # the skip reason points here
