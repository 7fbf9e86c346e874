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
LINGER_S = 2.0


def default_workers(cores: int) -> int:
    """One below 8 cores (the front is not the bottleneck there); above, a worker per 4 cores, at most 8."""
    return 1 if cores < 8 else min(8, cores // 4)


def listen_shared(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port; the first picks the port when it is 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, socks[0].getsockname()[1] if len(socks) > 1 else port))
            sock.listen(2048)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def start_workers(
    socks: list[socket.socket], identity: TlsIdentity, backend: str, handshake_timeout_s: float = 10.0
) -> list[int]:
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
                asyncio.run(_worker(sock, identity.ssl_context(), backend, parent, handshake_timeout_s))
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


async def _worker(
    sock: socket.socket, ctx: ssl.SSLContext, backend: str, parent: int, handshake_timeout_s: float
) -> None:
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        log.debug("front worker %d: connection from port %s", os.getpid(), peer[1] if peer else "?")
        # A plain socket towards the main process, not a stream: a failed write (the main process
        # closed after an early answer) must not discard the answer still waiting to be read.
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.setblocking(False)
        try:
            await loop.sock_connect(up, backend)
        except OSError:
            up.close()
            writer.close()
            return
        to_main = asyncio.create_task(_to_main(loop, reader, up))
        to_client = asyncio.create_task(_to_client(loop, up, writer))
        # Either side ending ends the connection: HTTP/1.1 clients do not half-close.
        await asyncio.wait([to_main, to_client], return_when=asyncio.FIRST_COMPLETED)
        if not to_client.done() and not reader.at_eof():
            # Writing to the main process failed while the client is still there: the main process
            # closed, possibly right after answering (an early error while the body still arrives).
            # Let that answer through.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(to_client), LINGER_S)
        to_main.cancel()
        if to_client.done() and not reader.at_eof():
            # Closing with the client's bytes unread would make the kernel reset the connection, and
            # the client could lose the answer: read and drop what still comes, for a moment, as the
            # main process would have (a lingering close).
            with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, TimeoutError):
                await asyncio.wait_for(_discard(reader), LINGER_S)
        to_client.cancel()
        up.close()
        writer.close()

    sock.setblocking(False)
    server = await asyncio.start_server(
        handle,
        sock=sock,
        ssl=ctx,
        ssl_handshake_timeout=handshake_timeout_s,
        ssl_shutdown_timeout=handshake_timeout_s,
        limit=CHUNK,
    )
    log.info("front worker %d serving the attested port", os.getpid())
    async with server:
        while os.getppid() == parent:  # the main process is gone: so is the backend
            await asyncio.sleep(1.0)


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(CHUNK):
        pass


async def _to_main(loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader, up: socket.socket) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await reader.read(CHUNK):
            await loop.sock_sendall(up, data)


async def _to_client(loop: asyncio.AbstractEventLoop, up: socket.socket, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await loop.sock_recv(up, CHUNK):
            writer.write(data)
            await writer.drain()
