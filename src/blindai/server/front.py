"""Front workers: TLS of the attested port terminated in forked processes (``--workers N``).

Knows nothing of HTTP. With N > 1 the main process makes the TLS key (in memory, never
written out) and N listening sockets on the attested port (``SO_REUSEPORT``: the kernel
spreads connections over them), then forks one worker per socket before it loads any model.
A worker accepts, does the TLS handshake with the inherited key (so every worker presents the
one key the evidence binds) and copies the decrypted bytes both ways to the main process over
a Unix socket in a private folder. The main process keeps the only model store, schedulers
and onnxruntime sessions, and serves HTTP on that Unix socket: an upload through any worker
is runnable through every other at once. Under Gramine each worker is a new enclave; see
docs/performance.md for what that costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys

from .tls import TlsIdentity

__all__ = ["default_workers", "listen_shared", "start_workers", "stop_workers"]

log = logging.getLogger("blindai.front")

CHUNK = 1 << 18


def default_workers(cores: int) -> int:
    """One below 8 cores (the front is not the bottleneck there); above, a worker per 4 cores, at most 8."""
    return 1 if cores < 8 else min(8, cores // 4)


def listen_shared(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port; the first picks the port when it is 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, socks[0].getsockname()[1] if socks else port))
        sock.listen(2048)
        socks.append(sock)
    return socks


def start_workers(socks: list[socket.socket], identity: TlsIdentity, backend: str) -> list[int]:
    """Fork one worker per socket; the caller closes its copies of ``socks`` afterwards."""
    parent = os.getpid()
    pids = []
    for i, sock in enumerate(socks):
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the caller's code
            code = 0
            try:
                for j, other in enumerate(socks):
                    if j != i:
                        other.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C stops the main process, which stops us
                asyncio.run(_worker(sock, identity.ssl_context(), backend, parent))
            except BaseException:
                log.exception("front worker %d stopped", os.getpid())
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    return pids


def stop_workers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


async def _worker(sock: socket.socket, ctx: ssl.SSLContext, backend: str, parent: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        log.debug("front worker %d: connection from port %s", os.getpid(), peer[1] if peer else "?")
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(backend)
        except OSError:
            writer.close()
            return
        # Either side ending ends the connection: HTTP/1.1 clients do not half-close.
        await asyncio.wait(
            [asyncio.create_task(_pipe(reader, up_writer)), asyncio.create_task(_pipe(up_reader, writer))],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for w in (up_writer, writer):
            w.close()

    sock.setblocking(False)
    server = await asyncio.start_server(handle, sock=sock, ssl=ctx, ssl_handshake_timeout=30, limit=CHUNK)
    log.info("front worker %d serving the attested port", os.getpid())
    async with server:
        while os.getppid() == parent:  # the main process is gone: so is the backend
            await asyncio.sleep(1.0)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
