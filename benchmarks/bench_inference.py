"""Secure path vs raw onnxruntime, in one run, interleaved: latency, throughput, upload, connect, memory.

The raw side is `InferenceSession.run` in this process with the server's session settings
(all optimisations, intra-op threads = all cores, inter-op 1). The secure side is the full
BlindAI path: SDK -> attested TLS -> server -> onnxruntime -> back, on loopback.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Stats, interleaved, timeit
from tests import onnx_models

import blindai
from blindai.demo import cache_dir, export_minilm
from blindai.local import LocalServer


def session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 0
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.force_spinning_stop", "1")  # as the server does
    return so


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_models(quick: bool) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    import torch

    from blindai.export import export_onnx
    from blindai.zoo import RESNET50, export_wav2vec2, resnet_classifier, wav2vec2_argmax

    out: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}
    mlp = cache_dir() / "bench-mlp.onnx"
    import onnx

    onnx.save_model(onnx_models.mlp(in_dim=64, hidden=128, out_dim=8), mlp)
    out["tiny MLP (64-128-8)"] = (mlp, {"x": np.ones((1, 64), np.float32)})
    ids = np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64)
    out["all-MiniLM-L6-v2, seq 128"] = (
        export_minilm(),
        {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)},
    )
    if not quick:
        rn = cache_dir() / "bench-resnet50.onnx"
        if not rn.exists():
            export_onnx(
                resnet_classifier(**RESNET50),
                (torch.zeros(1, 3, 224, 224),),  # type: ignore[arg-type]
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "b"}, "logits": {0: "b"}},
                path=rn,
            )
        out["ResNet-50, 224x224"] = (
            rn,
            {"pixel_values": np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)},
        )
        wv = cache_dir() / "bench-wav2vec2-base.onnx"
        if not wv.exists():
            export_wav2vec2(wav2vec2_argmax(None)[0], wv, samples=16000)
        out["wav2vec2-base, 1 s 16 kHz"] = (
            wv,
            {"input_values": np.random.default_rng(2).standard_normal((1, 16000)).astype(np.float32)},
        )
    return out


def connect(srv: LocalServer) -> blindai.Connection:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs())


def latency(
    models: dict[str, tuple[Path, dict[str, np.ndarray]]], srv: LocalServer, quick: bool
) -> list[dict[str, Any]]:
    rows = []
    conn = connect(srv)
    for name, (path, feed) in models.items():
        sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        info = conn.upload_model(path)
        heavy = path.stat().st_size > 50 << 20
        repeat = (10 if quick else 30) if heavy else (50 if quick else 300)
        res = interleaved(
            {
                "raw": lambda s=sess, f=feed: s.run(None, f),
                "secure": lambda i=info.model_id, f=feed: conn.run_model(i, f),
            },
            repeat=repeat,
        )
        raw, sec = res["raw"], res["secure"]
        rows.append(
            {
                "model": name,
                "raw": raw,
                "secure": sec,
                "ratio": sec.median / raw.median,
                "delta_ms": sec.median - raw.median,
            }
        )
        conn.delete_model(info.model_id)
    conn.close()
    return rows


def throughput(path: Path, feed: dict[str, np.ndarray], srv: LocalServer, seconds: float) -> dict[str, float]:
    """Requests per second: raw (best of 1 and 2 threads in-process) vs 4 and 16 concurrent SDK clients."""
    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])

    def count(fn: Any, threads: int) -> float:
        done = [0] * threads
        stop = time.monotonic() + seconds

        def loop(i: int) -> None:
            while time.monotonic() < stop:
                fn(i)
                done[i] += 1

        ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(done) / seconds

    raw = max(count(lambda _i: sess.run(None, feed), n) for n in (1, 2))
    out = {"raw": raw}
    owner = connect(srv)
    info = owner.upload_model(path)
    for n in (4, 16):
        conns = [connect(srv) for _ in range(n)]
        out[f"secure x{n}"] = count(lambda i, c=conns: c[i].run_model(info.model_id, feed), n)
        for c in conns:
            c.close()
    owner.delete_model(info.model_id)
    owner.close()
    return out


def upload(path: Path, rounds: int) -> dict[str, Any]:
    """upload_model(path) until ready vs InferenceSession(path); peak server RSS on a fresh server."""
    size_mb = path.stat().st_size / 2**20
    raw = timeit(
        lambda: ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"]), rounds, warmup=1
    )
    secure, peaks = [], []
    for _ in range(rounds):
        with LocalServer(log_level="WARNING") as srv:
            assert srv.proc is not None
            conn = connect(srv)
            base = status_mb(srv.proc.pid, "VmRSS")
            t = time.perf_counter()
            conn.upload_model(path)
            secure.append((time.perf_counter() - t) * 1e3)
            peaks.append(status_mb(srv.proc.pid, "VmHWM"))
            conn.close()
    return {
        "size_mb": size_mb,
        "raw": Stats("raw", raw),
        "secure": Stats("secure", secure),
        "peak_mb": max(peaks),
        "base_mb": base,
    }


def v06_vs_native(path: Path, srv: LocalServer) -> dict[str, Stats]:
    import cbor2

    conn = connect(srv)
    data = path.read_bytes()

    def v06() -> None:
        body = cbor2.dumps(
            {"model": list(data), "length": len(data), "model_name": "m", "optimize": True, "client_info": {}}
        )
        reply = cbor2.loads(conn._request("POST", "/upload", content=body).content)
        conn._request("POST", "/delete", content=cbor2.dumps({"model_id": reply["model_id"]}))

    def native() -> None:
        conn.delete_model(conn.upload_model(data).model_id)

    res = interleaved({"0.6 CBOR upload": v06, "native upload": native}, repeat=3, warmup=1)
    conn.close()
    return res


def connect_time(srv: LocalServer, repeat: int) -> Stats:
    return Stats("connect", timeit(lambda: connect(srv).close(), repeat))


def memory(srv_args: tuple[str, ...], requests: int) -> dict[str, float]:
    with LocalServer(*srv_args, log_level="WARNING") as srv:
        assert srv.proc is not None
        time.sleep(1.0)
        idle = status_mb(srv.proc.pid, "VmRSS")
        conn = connect(srv)
        info = conn.upload_model(onnx_models.mlp(in_dim=64, hidden=128, out_dim=8))
        x = np.ones((1, 64), np.float32)
        for _ in range(1000):
            conn.run_model(info.model_id, x)
        warm = status_mb(srv.proc.pid, "VmRSS")
        for _ in range(requests):
            conn.run_model(info.model_id, x)
        after = status_mb(srv.proc.pid, "VmRSS")
        conn.close()
    return {"idle": idle, "warm": warm, "after": after, "growth": (after - warm) / warm}


def median(xs: list[float]) -> float:
    return statistics.median(xs)
