"""A/B two commits on this machine: secure latency and upload-to-ready, alternating, same box.

    python benchmarks/ab.py fb46118            # that commit against HEAD, 3 rounds
    python benchmarks/ab.py OLD NEW --rounds 5

Run-to-run noise on a shared machine is larger than most changes (a ratio in benchmarks.md
moves by 0.1-0.3 between runs), so a change is judged by running both sides in turns within
minutes: each side is a clean clone of its commit, run by this interpreter with the clone's
``src`` first on the path (dependencies from the current environment), each round a fresh
server. Models come from the benchmark cache (``make bench`` builds them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One side's measurements, run as ``python -c`` inside the side's clone.
PROBE = r"""
import json, os, statistics, sys, time, warnings
from pathlib import Path
import numpy as np
import blindai
from blindai.demo import cache_dir
from blindai.testing import LocalServer
from tests import onnx_models

def timed(fn, n, gap=0.0):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        time.sleep(gap)
    return statistics.median(ts) * 1e3

cache = cache_dir()
out = {}
with LocalServer(log_level="WARNING") as srv:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conn = blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs())
    tiny = conn.upload_model(onnx_models.mlp(in_dim=64, hidden=128, out_dim=8))
    x = np.ones((1, 64), np.float32)
    timed(lambda: conn.run_model(tiny.model_id, x), 200)
    out["tiny MLP, 2,000 calls (ms)"] = timed(lambda: conn.run_model(tiny.model_id, x), 2000)
    rng = np.random.default_rng(0)
    for label, name, shape, n in (
        ("MiniLM seq 128, 150 calls (ms)", "all-MiniLM-L6-v2-meanpool-v1.onnx", None, 150),
        ("ResNet-50, 40 calls (ms)", "bench-resnet50.onnx", (1, 3, 224, 224), 40),
        ("wav2vec2-base, 25 calls (ms)", "bench-wav2vec2-base.onnx", (1, 16000), 25),
    ):
        path = cache / name
        if not path.exists():
            continue
        m = conn.upload_model(path)
        if shape is None:
            feeds = {i.name: np.ones((1, 128), np.int64) for i in m.inputs}
        else:
            feeds = {m.inputs[0].name: rng.standard_normal(shape).astype(np.float32)}
        timed(lambda: conn.run_model(m.model_id, feeds), 5)
        out[label] = timed(lambda: conn.run_model(m.model_id, feeds), n, gap=0.02)
        conn.delete_model(m.model_id)
    big = cache / "bench-wav2vec2-base.onnx"
    if big.exists():
        def upload():
            conn.delete_model(conn.upload_model(big).model_id)
        out["upload wav2vec2-base until ready, 3 (ms)"] = timed(upload, 3)
    conn.close()
print(json.dumps(out))
"""


def clone(rev: str, into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", rev], check=True)
    return into


def probe(tree: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True, text=True, check=True, timeout=900
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the commit to compare against")
    parser.add_argument("new", nargs="?", default="HEAD", help="the commit measured (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3, help="turns per side (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="blindai-ab-") as tmp:
        sides = {args.old: clone(args.old, Path(tmp) / "a"), args.new: clone(args.new, Path(tmp) / "b")}
        runs: dict[str, list[dict[str, float]]] = {rev: [] for rev in sides}
        for r in range(args.rounds):
            for rev, tree in sides.items():
                runs[rev].append(probe(tree))
                print(f"round {r + 1} {rev}: {json.dumps(runs[rev][-1])}", flush=True)
    print(f"\n| measure (median of runs; each run's median) | {args.old} | {args.new} |\n|---|---|---|")
    for key in runs[args.old][0]:
        cells = []
        for rev in sides:
            values = [run[key] for run in runs[rev] if key in run]
            cells.append(f"{statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")
        print(f"| {key} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
