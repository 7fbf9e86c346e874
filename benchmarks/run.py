"""Run the benchmarks and write docs/benchmarks.md (machine, date, command, medians, p90, spread, ratios)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attestation
from common import git_rev, machine

from blindai import __version__

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    repeat = 30 if args.quick else 200
    lines = [
        "# Benchmarks",
        "",
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- blindai {__version__} (git {git_rev()})",
        f"- command: `make bench` (`python benchmarks/run.py{' --quick' if args.quick else ''}`)",
        "",
        "## Attestation verification",
        "",
        "| what | median ms | p90 ms | spread (IQR/median) | target |",
        "|---|---:|---:|---:|---|",
    ]
    for stats, target in bench_attestation.run(repeat):
        row = f"| {stats.name} | {stats.median:.3f} | {stats.p90:.3f} | {stats.spread:.2f} | {target} |"
        lines.append(row)
        print(row)
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
