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
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attestation
import bench_inference as bi
import onnxruntime as ort
from common import git_rev, machine

from blindai import __version__
from blindai.local import LocalServer

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
        f"- command: `make bench` (`python benchmarks/run.py{' --quick' if q else ''}`)",
        "- method: raw = `InferenceSession.run` in-process with the server's session settings; secure = the whole "
        "BlindAI path (SDK, attested TLS on loopback, server, onnxruntime, back), batch 1, warm connection; "
        "the two are interleaved call by call in one run. Client and server share the machine's cores.",
        "",
    ]

    def out(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    models = bi.build_models(q)
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
            "ResNet": ("<= 1.05x", lambda r: r["ratio"] <= 1.05),
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
        out("## Throughput, all-MiniLM-L6-v2 seq 128 (requests/s)")
        out()
        path, feed = models["all-MiniLM-L6-v2, seq 128"]
        tp = bi.throughput(path, feed, srv, 4 if q else 10)
        out("| contender | req/s | vs raw | target |")
        out("|---|---:|---:|---|")
        out(f"| raw, best of 1 and 2 threads in-process | {tp['raw']:.1f} | 1.00 | |")
        for k in ("secure x4", "secure x16"):
            out(
                f"| {k} concurrent SDK clients | {tp[k]:.1f} | {tp[k] / tp['raw']:.2f} | "
                f">= 0.9x: {ok(tp[k] / tp['raw'] >= 0.9)} |"
            )
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
        f"- peak server RSS (VmHWM) {u['peak_mb']:.0f} MB = {peak_ratio:.2f}x the model (idle {u['base_mb']:.0f} MB); "
        f"target <= 2.5x: {ok(peak_ratio <= 2.5)}"
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
    for stats, target in bench_attestation.run(50 if q else 200):
        out(f"| {stats.name} | {stats.median:.3f} | {stats.p90:.3f} | {stats.spread:.2f} | {target} |")
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
