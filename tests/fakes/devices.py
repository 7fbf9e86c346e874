"""FAKE TEE device folders shaped like the real interfaces, served by a thread in the test process.

- ``FakeGramine``: Gramine's ``/dev/attestation`` (``attestation_type``, ``user_report_data``,
  ``quote``, ``keys/_sgx_mrenclave``). ``quote`` is a FIFO: when the server opens it, the
  fake reads ``user_report_data`` and answers with a quote from the FAKE Intel PKI.
- ``FakeTsm``: configfs-tsm ``/sys/kernel/config/tsm/report``. A watcher gives each new
  entry the attribute files (``provider``, ``generation``, ``inblob``, FIFO ``outblob``,
  ``auxblob``) and answers reads of ``outblob`` from ``inblob``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


class _FifoServer:
    """Answers each open of a FIFO with ``respond()`` until stopped.

    Every answer goes out on its own FIFO inode: before the writer closes, a fresh FIFO is
    renamed over the path, so the reader being answered keeps the old inode (and gets EOF
    when the writer closes) while the next reader's open waits on the new one. Polling
    "is the last reader gone?" instead cannot tell the last reader from the next one and,
    under load, answered the next reader with an empty read.
    """

    def __init__(self, fifo: Path, respond: Callable[[], bytes]) -> None:
        self.fifo, self.respond = fifo, respond
        self.served = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                with self.fifo.open("wb") as f:  # blocks until a reader opens it
                    if self._stop:
                        return
                    f.write(self.respond())
                    f.flush()
                    self._renew()
                    self.served += 1
            except (BrokenPipeError, FileNotFoundError):
                continue

    def _renew(self) -> None:
        fresh = self.fifo.with_name(self.fifo.name + ".next")
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()
        os.mkfifo(fresh)
        os.replace(fresh, self.fifo)

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
            time.sleep(0.05)
            os.close(fd)


class FakeGramine:
    def __init__(self, root: Path, make_quote: Callable[[bytes], bytes], sealing_key: bytes = b"\x42" * 16) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "attestation_type").write_text("dcap")
        (root / "user_report_data").write_bytes(bytes(64))
        (root / "keys").mkdir(exist_ok=True)
        (root / "keys" / "_sgx_mrenclave").write_bytes(sealing_key)
        os.mkfifo(root / "quote")
        self.server = _FifoServer(root / "quote", lambda: make_quote((root / "user_report_data").read_bytes()))

    def stop(self) -> None:
        self.server.stop()


class FakeTsm:
    def __init__(self, root: Path, provider: str, make_report: Callable[[bytes], tuple[bytes, bytes]]) -> None:
        """``make_report(inblob) -> (outblob, auxblob)``; provider is ``tdx_guest`` or ``sev_guest``."""
        self.root, self.provider, self.make_report = root, provider, make_report
        root.mkdir(parents=True, exist_ok=True)
        self._servers: dict[Path, _FifoServer] = {}
        self._stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self._stop:
            for entry in self.root.iterdir():
                if entry.is_dir() and entry not in self._servers:
                    self._populate(entry)
            time.sleep(0.002)

    def _populate(self, entry: Path) -> None:
        (entry / "generation").write_text("0\n")
        (entry / "inblob").write_bytes(b"")
        (entry / "auxblob").write_bytes(b"")
        os.mkfifo(entry / "outblob")

        def respond() -> bytes:
            out, aux = self.make_report((entry / "inblob").read_bytes())
            (entry / "auxblob").write_bytes(aux)
            gen = int((entry / "generation").read_text())
            (entry / "generation").write_text(f"{gen + 1}\n")
            return out

        self._servers[entry] = _FifoServer(entry / "outblob", respond)
        (entry / "provider").write_text(self.provider + "\n")  # last: the provider polls for it

    def stop(self) -> None:
        self._stop = True
        for s in self._servers.values():
            s.stop()
