"""Secure path vs raw onnxruntime: latency, throughput, upload, connect, memory.

The raw side is `InferenceSession.run` in this process with the server's session settings
(all optimisations, inter-op 1); for throughput its best over a sweep of intra-op threads x
concurrent callers, in a phase of its own. The secure side is the full BlindAI path: SDK ->
attested TLS -> server -> onnxruntime -> back, on loopback, with 1, 4, 16 and 64 client
*processes* (threads of one process would measure the GIL of the load generator).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # the raw side runs as the server does (server/__init__.py)
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Stats, blocks, interleaved, timeit
from tests import onnx_models

import blindai
from blindai.demo import cache_dir, export_minilm
from blindai.testing import LocalServer, held_memory


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.force_spinning_stop", "1")  # as the server does
    return so


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_mb(pid: int) -> float:
    """What the process holds, memfds included (`blindai.testing.held_memory`), in MiB."""
    return held_memory(pid) / 2**20


class PeakSampler:
    """`memory_mb` of a process every 2 ms, in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, memory_mb(self.pid))
            except OSError:
                return
            time.sleep(0.002)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def raw_load_peak_mb(path: Path) -> float:
    """Peak RSS of a fresh process that only makes ``InferenceSession(path)`` (the raw side's memory)."""
    code = (
        "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def build_models(quick: bool) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    import torch
    from examples.export import export_onnx
    from examples.zoo import RESNET50, export_wav2vec2, resnet_classifier, wav2vec2_argmax

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
        per_block = (5 if quick else 10) if heavy else (25 if quick else 50)
        res = blocks(
            {
                "raw": lambda s=sess, f=feed: s.run(None, f),
                "secure": lambda i=info.model_id, f=feed: conn.run_model(i, f),
            },
            rounds=2 if quick else 6,
            per_block=per_block,
        )
        del sess
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


def _count(fn: Any, callers: int, seconds: float) -> float:
    """Calls per second of ``fn(i)`` from ``callers`` threads of this process."""
    done = [0] * callers
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            fn(i)
            done[i] += 1

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done) / seconds


def raw_best(path: Path, feed: dict[str, np.ndarray], seconds: float) -> tuple[float, str]:
    """Raw onnxruntime's best throughput over intra-op threads x concurrent callers, and which it was."""
    cores = os.cpu_count() or 1
    best, label = 0.0, ""
    for intra in sorted({1, max(1, cores // 4), cores}):
        sess = ort.InferenceSession(str(path), session_options(intra), providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, feed)
        for callers in sorted({1, max(1, cores // intra), cores, 2 * cores}):
            if intra * callers > 4 * cores:
                continue
            rate = _count(lambda _i, s=sess: s.run(None, feed), callers, seconds)
            if rate > best:
                best, label = rate, f"intra-op {intra} x {callers} callers"
        del sess
        time.sleep(0.5)
    return best, label


def _client_process(
    kwargs: dict[str, Any], model_id: str, feed: dict[str, np.ndarray], barrier: Any, seconds: float, out: Any
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conn = blindai.connect("127.0.0.1", simulation=True, **kwargs)
    for _ in range(3):
        conn.run_model(model_id, feed)
    barrier.wait()
    n, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        conn.run_model(model_id, feed)
        n += 1
    out.put(n)
    conn.close()


def secure_rate(srv: LocalServer, model_id: str, feed: dict[str, np.ndarray], processes: int, seconds: float) -> float:
    """Requests per second from ``processes`` SDK client processes, each with its own connection, started together."""
    ctx = multiprocessing.get_context("fork")  # the children only run the SDK; fork spares 64 interpreter starts
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_client_process, args=(srv.connect_kwargs(), model_id, feed, barrier, seconds, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=120 + seconds) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def _cpu_ticks(stat: str) -> int:
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def front_rate(
    path: Path, feed: dict[str, np.ndarray], srv: LocalServer, processes: int, seconds: float
) -> dict[str, float]:
    """Requests/s from ``processes`` clients, and the main process's CPU per request (all its threads,
    and its event loop's thread alone): the serial part of a server with front workers."""
    assert srv.proc is not None
    pid = srv.proc.pid
    owner = connect(srv)
    info = owner.upload_model(path)
    time.sleep(0.5)
    before = _cpu_ticks(f"/proc/{pid}/stat"), _cpu_ticks(f"/proc/{pid}/task/{pid}/stat")
    rate = secure_rate(srv, info.model_id, feed, processes, seconds)
    after = _cpu_ticks(f"/proc/{pid}/stat"), _cpu_ticks(f"/proc/{pid}/task/{pid}/stat")
    owner.delete_model(info.model_id)
    owner.close()
    per = 1e6 / os.sysconf("SC_CLK_TCK") / max(rate * seconds, 1)
    return {"rate": rate, "main_us": (after[0] - before[0]) * per, "loop_us": (after[1] - before[1]) * per}


def throughput(
    path: Path, feed: dict[str, np.ndarray], srv: LocalServer, seconds: float, clients: tuple[int, ...]
) -> dict[str, float]:
    """Secure requests/s with each number of client processes, for a model uploaded to ``srv``."""
    owner = connect(srv)
    info = owner.upload_model(path)
    out = {}
    for n in clients:
        time.sleep(0.5)
        out[f"secure x{n}"] = secure_rate(srv, info.model_id, feed, n, seconds)
    owner.delete_model(info.model_id)
    owner.close()
    return out


def upload(path: Path, rounds: int, server_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """upload_model(path) until ready vs InferenceSession(path); peak server RSS on a fresh server."""
    size_mb = path.stat().st_size / 2**20
    raw = timeit(
        lambda: ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"]), rounds, warmup=1
    )
    secure, peaks, hwms, served = [], [], [], []
    for _ in range(rounds):
        with LocalServer(*server_args, log_level="WARNING") as srv:
            assert srv.proc is not None
            conn = connect(srv)
            base = status_mb(srv.proc.pid, "VmRSS")
            with PeakSampler(srv.proc.pid) as sampler:
                t = time.perf_counter()
                conn.upload_model(path)
                secure.append((time.perf_counter() - t) * 1e3)
                time.sleep(2.0)  # a model small enough for a second (concurrent) session builds it now: count it
            hwms.append(status_mb(srv.proc.pid, "VmHWM"))
            peaks.append(max(sampler.peak, hwms[-1]))
            served.append(memory_mb(srv.proc.pid))
            conn.close()
    return {
        "size_mb": size_mb,
        "raw": Stats("raw", raw),
        "secure": Stats("secure", secure),
        "peak_mb": max(peaks),
        "hwm_mb": max(hwms),
        "served_mb": max(served),
        "raw_peak_mb": raw_load_peak_mb(path),
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
