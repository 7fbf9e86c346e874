"""Timing helpers shared by the benchmarks: runs in alternating blocks, medians, p90 and spread."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Stats:
    name: str
    samples_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90(self) -> float:
        s = sorted(self.samples_ms)
        return s[min(len(s) - 1, int(0.9 * len(s)))]

    @property
    def spread(self) -> float:
        """Interquartile range over the median: how noisy the measurement was."""
        q = statistics.quantiles(self.samples_ms, n=4)
        return (q[2] - q[0]) / self.median if self.median else 0.0


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 3) -> dict[str, Stats]:
    """Alternate the contenders call by call, so drift in the machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[k].append((time.perf_counter() - t) * 1e3)
    return {k: Stats(k, v) for k, v in samples.items()}


def blocks(
    fns: dict[str, Callable[[], object]], rounds: int, per_block: int, gap_s: float = 0.3, warmup: int = 3
) -> dict[str, Stats]:
    """Each contender runs ``per_block`` calls in a row, then the machine idles, then the next.

    Call-by-call interleaving misleads on many cores: a raw session's spinning threads steal
    the cores of the server's next run. Blocks with idle gaps between them let each side start
    from a quiet machine; alternating the order each round spreads drift over both.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            time.sleep(gap_s)
            fn = fns[k]
            for _ in range(per_block):
                t = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t) * 1e3)
    return {k: Stats(k, v) for k, v in samples.items()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
