"""Test harness: start a BlindAI server as a child process on free loopback ports.

For tests and examples, not for deployments (use ``blindai serve``). Used by
``blindai demo``, the examples, the tests and the benchmarks: the server picks its own
ports (port 0) and reports them through a ready file, so nothing races for a port.
The child is stopped with SIGTERM, like a real deployment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalServer", "held_memory"]


class LocalServer:
    def __init__(
        self,
        *args: str,
        simulation: bool = True,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
        startup_timeout: float = 60.0,
        log_level: str = "INFO",
        attested_port: int = 0,
        unattested_port: int = 0,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="blindai-server-")
        self.ready_file = Path(self._tmp.name) / "ready.json"
        self.log_path = log_file or Path(self._tmp.name) / "server.log"
        self.args = [
            sys.executable,
            "-m",
            "blindai",
            "--log-level",
            log_level,
            "serve",
            "--host",
            host,
            "--attested-port",
            str(attested_port),
            "--unattested-port",
            str(unattested_port),
            "--ready-file",
            str(self.ready_file),
            *(["--simulation"] if simulation else []),
            *args,
        ]
        self.host = host
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.attested_port = 0
        self.unattested_port = 0

    def start(self) -> LocalServer:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start within {self.startup_timeout} s:\n{self.log()}")
            time.sleep(0.02)
        ports = json.loads(self.ready_file.read_text())
        self.ready = ports  # everything the server reported (pid, tee, metrics_port...)
        self.attested_port, self.unattested_port = ports["attested_port"], ports["unattested_port"]
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def connect_kwargs(self) -> dict[str, int]:
        return {"attested_port": self.attested_port, "unattested_port": self.unattested_port}

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        self._tmp.cleanup()


def _in_memory_file(link: str) -> bool:
    return link.startswith(("/memfd:", "/dev/shm/"))


def held_memory(pid: int) -> int:
    """Bytes a process holds: its RSS less its shared-memory pages, plus each in-memory file it has
    open or mapped (memfds and tmpfs files: where a server keeps uploads, and whose pages are the
    weights onnxruntime maps) once, at its allocated size, however many descriptors and mappings
    it has. Pages of such a file the process has not mapped are in no RSS, so VmRSS and VmHWM
    alone miss them; a file mapped twice is in VmRSS twice."""
    status: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssShmem"):
                status[key] = int(value.split()[0]) * 1024
    files: dict[tuple[int, int], int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if _in_memory_file(os.readlink(f"/proc/{pid}/fd/{fd}")):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                files[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        except OSError:
            continue  # closed meanwhile
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not _in_memory_file(parts[5]):
                continue
            try:
                st = os.stat(f"/proc/{pid}/map_files/{parts[0]}")
                files.setdefault((st.st_dev, st.st_ino), st.st_blocks * 512)
            except OSError:  # unmapped meanwhile, or map_files not readable here: count the mapping
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                files[(-1, hash(parts[0]))] = hi - lo
    return status.get("VmRSS", 0) - status.get("RssShmem", 0) + sum(files.values())
