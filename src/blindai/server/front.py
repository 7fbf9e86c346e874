"""Front workers: the attested port served by forked processes (``--workers N``).

With N > 1 the main process makes the TLS key (in memory, never written out) and N listening
sockets on the attested port (``SO_REUSEPORT``: the kernel spreads connections over them),
then forks one worker per socket before it loads any model. A worker accepts, does the TLS
handshake with the inherited key (so every worker presents the one key the evidence binds),
then serves small inference requests itself up to the model run (``http/fast_worker.py``:
HTTP and the tensor codec in the worker, the decoded tensors to the main process in frames
over a socketpair made before the fork), and copies every other connection's decrypted bytes
both ways to the main process's HTTP server on a Unix socket in a private folder. The main
process keeps the only model store, schedulers and onnxruntime sessions: an upload through
any worker is runnable through every other at once. Under Gramine each worker is a new
enclave; see docs/performance.md for what that costs.
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

from .http.fast_worker import CHUNK, Channel, FastSettings, linger, serve_connection
from .http.serving import run_loop
from .tls import TlsIdentity

__all__ = ["default_workers", "listen_shared", "start_workers", "stop_workers"]

log = logging.getLogger("blindai.front")

LINGER_S = 2.0


def default_workers(cores: int) -> int:
    """One below 8 cores (there the workers' extra hop costs more than they spread); above, a worker
    per 2 cores, at most 8: small requests cost a worker several times what they cost the main
    process (TLS, HTTP and the codec against a lookup and a run), so it takes several to keep it busy."""
    return 1 if cores < 8 else min(8, cores // 2)


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
    socks: list[socket.socket], identity: TlsIdentity, backend: str, settings: FastSettings
) -> tuple[list[int], list[socket.socket]]:
    """Fork one worker per socket: their pids, and the main process's end of each one's frame
    channel (``http/fast_main.py`` serves them). The caller closes its copies of ``socks``."""
    parent = os.getpid()
    pids: list[int] = []
    channels: list[socket.socket] = []
    for i, sock in enumerate(socks):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the caller's code
            code = 0
            try:
                mine.close()
                for other in channels:
                    other.close()
                for j, other in enumerate(socks):
                    if j != i:
                        other.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C stops the main process, which stops us
                run_loop(_worker(sock, identity.ssl_context(), backend, parent, theirs, settings))
            except BaseException:
                log.exception("front worker %d stopped", os.getpid())
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        pids.append(pid)
        channels.append(mine)
    return pids, channels


def stop_workers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


async def _worker(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    backend: str,
    parent: int,
    channel_sock: socket.socket,
    settings: FastSettings,
) -> None:
    loop = asyncio.get_running_loop()
    ch_reader, ch_writer = await asyncio.open_unix_connection(sock=channel_sock)
    channel = Channel(ch_reader, ch_writer, settings.max_result_bytes)
    channel_task = asyncio.create_task(channel.run())
    open_connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if open_connections[0] >= settings.max_connections:
            writer.transport.abort()  # as the main process's server refuses past --max-connections
            return
        open_connections[0] += 1
        raw = writer.get_extra_info("socket")
        if raw is not None:  # a response's head and body leave as separate TLS records: no Nagle wait between
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        port = peer[1] if peer else "?"
        log.debug("front worker %d: connection from port %s", os.getpid(), port)

        async def pipe(first: bytes) -> None:
            log.debug("front worker %d: connection from port %s passed to the main process", os.getpid(), port)
            await _pipe(loop, reader, writer, backend, first, settings.body.idle_timeout_s)

        try:
            await serve_connection(reader, writer, settings, channel, pipe)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            open_connections[0] -= 1
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that stopped reading: nothing waits for it to take the rest
            else:
                writer.close()

    sock.setblocking(False)
    server = await asyncio.start_server(
        handle,
        sock=sock,
        ssl=ctx,
        ssl_handshake_timeout=settings.connection.handshake_timeout_s,
        ssl_shutdown_timeout=settings.connection.handshake_timeout_s,
        limit=CHUNK,
    )
    log.info("front worker %d serving the attested port", os.getpid())
    async with server:
        while os.getppid() == parent and not channel_task.done():  # the main process is gone: so is the backend
            await asyncio.sleep(1.0)


async def _pipe(
    loop: asyncio.AbstractEventLoop,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    backend: str,
    first: bytes,
    send_timeout_s: float,
) -> None:
    """The rest of a connection, from ``first`` on, copied both ways to the main process's HTTP server.

    A client that takes nothing of an answer for ``send_timeout_s`` is cut off, as the main
    process cuts off its own clients: else the answer would wait in this worker, and the main
    process's unsent rest of it in its socket to this worker, for as long as the client stays."""
    # A plain socket towards the main process, not a stream: a failed write (the main process
    # closed after an early answer) must not discard the answer still waiting to be read.
    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    up.setblocking(False)
    try:
        await loop.sock_connect(up, backend)
    except OSError:
        up.close()
        return
    to_main = asyncio.create_task(_to_main(loop, reader, up, first))
    to_client = asyncio.create_task(_to_client(loop, up, writer, send_timeout_s))
    try:
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
            await linger(reader, LINGER_S)
    finally:
        to_main.cancel()
        to_client.cancel()
        up.close()


async def _to_main(
    loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader, up: socket.socket, first: bytes
) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        if first:
            await loop.sock_sendall(up, first)
        while data := await reader.read(CHUNK):
            await loop.sock_sendall(up, data)


async def _to_client(
    loop: asyncio.AbstractEventLoop, up: socket.socket, writer: asyncio.StreamWriter, send_timeout_s: float
) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await loop.sock_recv(up, CHUNK):
            writer.write(data)
            try:
                async with asyncio.timeout(send_timeout_s):
                    await writer.drain()
            except TimeoutError:
                writer.transport.abort()
                return
