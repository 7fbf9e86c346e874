"""The torch-free MiniLM graph (blindai.minilm) computes what the PyTorch export of the same weights computes.

The demo used to export all-MiniLM-L6-v2 with torch; it now writes the ONNX graph from the
safetensors weights with onnx and numpy. The PyTorch route is kept here only as the
reference: both graphs run in real onnxruntime on the same tokens, and must agree on every
embedding and on the demo's ranking.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blindai.demo import DEFAULT_QUERY, NOTES, MiniLM, export_minilm, minilm_dir
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SENTENCES = [
    *NOTES,
    DEFAULT_QUERY,
    "x",
    "Unicode: café, naïve, 東京, emoji 🙂 and a tab\there.",
    "A long sentence that is cut at the demo's maximum length. " * 20,
]


def torch_export(path: Path) -> Path:
    """The demo's former route: transformers' BertModel + sentence-transformers' pooling, exported by torch."""
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs blindai[examples] (make test has it)")
    transformers = pytest.importorskip("transformers", reason="the PyTorch reference needs blindai[examples]")
    from examples.export import export_onnx, quiet_transformers

    quiet_transformers()
    bert = transformers.AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True)

    class Embedder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    ids = torch.ones((1, 8), dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    export_onnx(
        Embedder(),
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        input_names=names,
        output_names=["embedding"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in names} | {"embedding": {0: "batch"}},
        path=path,
    )
    return path


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    import onnxruntime as ort

    tmp = tmp_path_factory.mktemp("minilm")
    ours = export_minilm(tmp / "numpy.onnx")
    ref = torch_export(tmp / "torch.onnx")
    return ort.InferenceSession(str(ours)), ort.InferenceSession(str(ref))


def test_same_embeddings_as_the_pytorch_export(sessions: tuple[Any, Any]) -> None:
    ours, ref = sessions
    # One padded batch (masking matters) and each sentence alone (no padding at all).
    batches = [SENTENCES, *[[s] for s in SENTENCES]]
    tok = MiniLM()
    for batch in batches:
        feed = tok.encode(batch)
        a, b = ours.run(None, feed)[0], ref.run(None, feed)[0]
        assert a.shape == b.shape == (len(batch), 384) and a.dtype == np.float32
        assert float(np.abs(a - b).max()) < 1e-4, batch
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert float(cosine.min()) > 0.99999, batch
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_same_demo_ranking(sessions: tuple[Any, Any]) -> None:
    tok = MiniLM()
    notes, query = tok.encode(NOTES), tok.encode([DEFAULT_QUERY])
    order = []
    for sess in sessions:
        scores = sess.run(None, notes)[0] @ sess.run(None, query)[0][0]
        order.append(list(np.argsort(-scores)))
    assert order[0] == order[1]
    assert "chest pain" in NOTES[order[0][0]]


def test_graph_declares_the_demo_interface(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(export_minilm(tmp_path / "m.onnx")))
    onnx.checker.check_model(model, full_check=True)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert dims == {
        "input_ids": ["batch", "seq"],
        "attention_mask": ["batch", "seq"],
        "token_type_ids": ["batch", "seq"],
        "embedding": ["batch", 384],
    }
    assert {n.domain for n in model.graph.node} == {""}  # standard ops only: the server's vetting accepts it


def test_demo_runs_without_torch_or_transformers(tmp_path: Path) -> None:
    # Imports of torch and transformers fail in this process, as on a machine without them.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['transformers'] = None\n"
        "sys.modules['sentence_transformers'] = None\n"
        "from blindai.cli import main\n"
        "sys.exit(main(['demo']))\n"
    )
    env = {**os.environ, "BLINDAI_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    first = next(line for line in out.stdout.splitlines() if line.strip().startswith("1."))
    assert "chest pain" in first
    assert list(tmp_path.glob("all-MiniLM-L6-v2-meanpool-v*.onnx"))  # built into the cache, no torch
