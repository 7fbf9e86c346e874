"""Run the benchmarks and write docs/benchmarks.md (machine, date, versions, medians, p90, spread, ratios).

make bench                                   # everything (builds MiniLM, ResNet-50, wav2vec2-base ONNX once, cached)
python benchmarks/run.py --quick             # a smoke run: prints its tables, writes nothing
python benchmarks/run.py --quick --out F.md  # ... and writes them to F.md

A --quick run never replaces the committed docs/benchmarks.md: its numbers come from fewer
repetitions and smaller models, and would pass for the real results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attestation
import bench_inference as bi
import onnxruntime as ort
from common import cpu_model, git_rev, machine

from blindai import __version__
from blindai.testing import LocalServer

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def ok(flag: bool) -> str:
    return "met" if flag else "**not met**"


def destination(quick: bool, out: Path | None) -> Path | None:
    """Where the Markdown goes: docs/benchmarks.md for a full run, nowhere for --quick unless --out says."""
    if out is None:
        return None if quick else DOC
    if quick and out.resolve() == DOC.resolve():
        raise ValueError(f"--quick results never replace the committed {DOC.name}: pass another --out")
    return out


def expected_on_16_cores(out: Callable[..., None], loop_us: float) -> None:
    """Said where the 16-core targets could not be measured: that they were not, and what the design
    should give there, from this run's serial part and the reasons in performance.md."""
    per_core = 1e6 / loop_us
    out("## 16 cores: not measured on this machine")
    out()
    out(
        f"This machine has {os.cpu_count()} cores, so the 16-core targets were not measured by this run (`make bench` "
        "on a 16-core machine writes its own table, labelled with that machine). Expected there, with the reasons "
        "in [performance.md](performance.md#expected-figures-on-16-cores):"
    )
    out()
    out("| target (16 cores) | expected | why |")
    out("|---|---|---|")
    out(
        f"| tiny MLP >= 10,000 req/s, 64 clients | about {round(0.75 * 1.5 * per_core, -2):,.0f}-"
        f"{round(2 * per_core, -2):,.0f} req/s "
        f"| the main process's loop is the serial part: {loop_us:.0f} us per request in this run, so {per_core:,.0f} "
        "req/s of one core here; cores 1.5-2x faster there, less what 64 clients and 8 workers take |"
    )
    out(
        "| MiniLM >= 0.9x raw, 16 clients | 0.75-0.9x | 16 narrow runs at once (the issue's patched server gave "
        "0.65-0.77x with one HTTP loop); requests take the workers' fast path |"
    )
    out(
        "| latency MiniLM, ResNet-50 <= 1.10x; wav2vec2 <= 1.05x; tiny <= +1.0 ms | about 1.15-1.2x, 1.15-1.2x "
        "(**not expected to be met**), 1.08x; +0.6-0.9 ms | a lone request runs on the all-cores session; what "
        "remains is about 1 ms of TLS, HTTP, the codec and the hop to the main process on each call, more than "
        "10% of a 9-11 ms run |"
    )
    out(
        "| upload to ready <= 1.5x | 1.6-1.9x: **not expected to be met** | receive, vetting and the session run "
        "one after another: building the session while the body arrives would run onnxruntime on an unvetted model |"
    )
    out("| peak memory <= 2.5x the model | 2.3-2.5x | does not depend on the core count |")
    out()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, small models only; writes no file")
    parser.add_argument(
        "--out", type=Path, help="write the Markdown here (default: docs/benchmarks.md; none for --quick)"
    )
    args = parser.parse_args()
    q = args.quick
    try:
        target = destination(q, args.out)
    except ValueError as exc:
        parser.error(str(exc))
    lines = [
        "# Benchmarks",
        "",
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- versions: blindai {__version__} (git {git_rev()}), onnxruntime {ort.__version__}, "
        f"Python {platform.python_version()}",
        f"- cores: {os.cpu_count()}; CPU: {cpu_model()}",
        f"- command: `make bench` (`python benchmarks/run.py{' --quick' if q else ''}`)",
        "- method: raw = `InferenceSession.run` in-process with the server's session settings; secure = the whole "
        "BlindAI path (SDK, attested TLS on loopback, server, onnxruntime, back), batch 1, warm connections. "
        "Latency: raw and secure alternate in blocks of calls with idle gaps between blocks (never call by "
        "call: a raw session's spinning threads would steal the server's cores). Throughput: raw first, in a "
        "phase of its own with no server running (best of a sweep of intra-op threads x callers), then the "
        "server with 1, 4, 16 and 64 SDK client *processes*. Client processes and server share the cores.",
        *([f"- note: {os.environ['BENCH_NOTE']}"] if os.environ.get("BENCH_NOTE") else []),
        "",
    ]

    def out(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    models = bi.build_models(q)
    secs = 2.0 if q else 5.0
    tp_models = {"all-MiniLM-L6-v2, seq 128": "MiniLM", "tiny MLP (64-128-8)": "tiny MLP"}
    # Raw throughput first, alone on the machine: no server process exists yet.
    raw_tp = {name: bi.raw_best(models[name][0], models[name][1], 1.5 if q else 3.0) for name in tp_models}
    clients = (1, 4, 16) if q else (1, 4, 16, 64)
    with LocalServer(log_level="WARNING") as srv:
        out("## Latency (ms)")
        out()
        out(
            "| model | raw median | raw p90 | secure median | secure p90 | spread raw / secure | ratio | added ms "
            "| target |"
        )
        out("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        targets = {
            "tiny": ("<= +1.0 ms", lambda r: r["delta_ms"] <= 1.0),
            "MiniLM": ("<= 1.10x", lambda r: r["ratio"] <= 1.10),
            "ResNet": ("<= 1.10x", lambda r: r["ratio"] <= 1.10),
            "wav2vec2": ("<= 1.05x", lambda r: r["ratio"] <= 1.05),
        }
        for r in bi.latency(models, srv, q):
            key = next(k for k in targets if k in r["model"])
            text, check = targets[key]
            raw, sec = r["raw"], r["secure"]
            out(
                f"| {r['model']} | {raw.median:.2f} | {raw.p90:.2f} | {sec.median:.2f} | {sec.p90:.2f} | "
                f"{raw.spread:.2f} / {sec.spread:.2f} | {r['ratio']:.3f} | {r['delta_ms']:+.2f} | "
                f"{text}: {ok(check(r))} |"
            )
        out()
        out("## Throughput (requests/s), default server settings")
        out()
        out("| model | contender | req/s | vs raw best | target |")
        out("|---|---|---:|---:|---|")
        for name, short in tp_models.items():
            best, how = raw_tp[name]
            out(f"| {short} | raw best ({how}) | {best:.1f} | 1.00 | |")
            tp = bi.throughput(models[name][0], models[name][1], srv, secs, clients)
            for n in clients:
                rate = tp[f"secure x{n}"]
                goal = ""
                if short == "MiniLM" and n == 16:
                    goal = f">= 0.9x: {ok(rate / best >= 0.9)}"
                if short == "tiny MLP" and n == 64:
                    goal = f">= 10,000 req/s (16 cores): {ok(rate >= 10000)}"
                out(f"| {short} | secure, {n} client processes | {rate:.1f} | {rate / best:.2f} | {goal} |")
        out()
        out("## Connect (evidence, verification, TLS handshake), simulation, loopback")
        out()
        c = bi.connect_time(srv, 20 if q else 50)
        out(
            f"median {c.median:.1f} ms, p90 {c.p90:.1f} ms, spread {c.spread:.2f}; "
            f"target <= 30 ms: {ok(c.median <= 30)}"
        )
        out()
        out("## Upload: BlindAI 0.6 CBOR wire format vs native, same server (MiniLM, 86 MiB)")
        out()
        v = bi.v06_vs_native(models["all-MiniLM-L6-v2, seq 128"][0], srv)
        for k, s in v.items():
            out(f"- {k}: median {s.median:.0f} ms")
        out(f"- ratio 0.6 / native: {v['0.6 CBOR upload'].median / v['native upload'].median:.1f}x")
    out()
    out("## Scheduling and batching choices, MiniLM with 16 client processes (requests/s)")
    out()
    out("| server flags | req/s | vs raw best |")
    out("|---|---:|---:|")
    mini = models["all-MiniLM-L6-v2, seq 128"]
    best = raw_tp["all-MiniLM-L6-v2, seq 128"][0]
    for flags in (("--model-concurrency", "1"), (), ("--batch-window-ms", "2"), ("--batch-window-ms", "5")):
        with LocalServer(*flags, log_level="WARNING") as srv:
            rate = bi.throughput(mini[0], mini[1], srv, secs, (16,))["secure x16"]
        out(f"| {' '.join(flags) or '(defaults)'} | {rate:.1f} | {rate / best:.2f} |")
    out()
    out("## Front workers, tiny MLP with 16 client processes")
    out()
    out(
        "The main process's CPU per request is the serial part of a server with front workers: "
        "one core of it serves at most 1e6 / (its loop's us per request) requests per second."
    )
    out()
    out("| server flags | req/s | main process CPU us/request | its event loop us/request |")
    out("|---|---:|---:|---:|")
    tiny = models["tiny MLP (64-128-8)"]
    fronts = {}
    for flags in (("--workers", "1"), ("--workers", "2")):
        with LocalServer(*flags, log_level="WARNING") as srv:
            f = fronts[flags[1]] = bi.front_rate(tiny[0], tiny[1], srv, 16, secs)
        out(f"| {' '.join(flags)} | {f['rate']:.1f} | {f['main_us']:.0f} | {f['loop_us']:.0f} |")
    out()
    if (os.cpu_count() or 1) < 16:
        expected_on_16_cores(out, fronts["2"]["loop_us"])
    big = models.get("wav2vec2-base, 1 s 16 kHz", models["all-MiniLM-L6-v2, seq 128"])[0]
    u = bi.upload(big, 2 if q else 3)
    out(f"## Upload to ready: {big.name} ({u['size_mb']:.0f} MiB)")
    out()
    ratio = u["secure"].median / u["raw"].median
    out(
        f"- `upload_model(path)` until ready: median {u['secure'].median:.0f} ms; plain `InferenceSession(path)`: "
        f"median {u['raw'].median:.0f} ms; ratio {ratio:.2f} (target <= 1.5x: {ok(ratio <= 1.5)})"
    )
    peak_ratio = u["peak_mb"] / u["size_mb"]
    out(
        f"- peak server memory {u['peak_mb']:.0f} MB = {peak_ratio:.2f}x the model, idle process included "
        f"(idle {u['base_mb']:.0f} MB); target <= 2.5x: {ok(peak_ratio <= 2.5)}. Counted as RSS plus the "
        "in-memory model file (tmpfs or memfd, counted once) sampled every 2 ms, "
        f"or VmHWM ({u['hwm_mb']:.0f} MB) if higher"
    )
    out(
        f"- serving it afterwards: {u['served_mb']:.0f} MB; a process that only makes `InferenceSession(path)` "
        f"peaks at {u['raw_peak_mb']:.0f} MB ({u['raw_peak_mb'] / u['size_mb']:.2f}x)"
    )
    out()
    out("## Server memory")
    out()
    m = bi.memory((), 2000 if q else 10000)
    out(f"- idle RSS {m['idle']:.0f} MB (target <= 150 MB: {ok(m['idle'] <= 150)})")
    out(
        f"- RSS after 1,000 warm-up requests {m['warm']:.0f} MB, "
        f"after {2000 if q else 10000:,} more {m['after']:.0f} MB: "
        f"growth {100 * m['growth']:.1f}% (target <= 5%: {ok(m['growth'] <= 0.05)})"
    )
    out()
    out("## Attestation verification")
    out()
    out("| what | median ms | p90 ms | spread | target |")
    out("|---|---:|---:|---:|---|")
    for stats, goal in bench_attestation.run(50 if q else 200):
        out(f"| {stats.name} | {stats.median:.3f} | {stats.p90:.3f} | {stats.spread:.2f} | {goal} |")
    out()
    out("Where the remaining overhead goes, and what would close the gaps: [performance.md](performance.md).")
    if target is None:
        print("(--quick: nothing written; docs/benchmarks.md keeps the full run's results)")
        return 0
    target.write_text("\n".join(lines) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
