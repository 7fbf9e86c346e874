"""The two uvicorn servers of one BlindAI process, configured in one place.

The runner owns the lifecycle (sockets, signals, the ready file); this module owns how
HTTP is spoken on those sockets: the guarded protocol (head deadline and size, connection
cap), the TLS handshake deadline, keep-alive and shutdown times, no ``Server`` header,
and the optional metrics middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from ..tls import TlsIdentity
from .app import ServerState, attested_app, unattested_app
from .connections import ConnectionLimits, guarded_protocol, handshake_timeout

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["PortServer", "http_servers", "run_loop", "serve_in_own_loop"]

log = logging.getLogger("blindai.server")


class PortServer(uvicorn.Server):
    """uvicorn's server without its own signal handling (the runner stops both ports together),
    and with a TLS handshake deadline (connections.py)."""

    def __init__(self, config: uvicorn.Config, handshake_timeout_s: float = 10.0) -> None:
        super().__init__(config)
        self.handshake_timeout = handshake_timeout_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        with handshake_timeout(asyncio.get_running_loop(), self.handshake_timeout):
            await super().startup(sockets)


def http_servers(
    state: ServerState,
    limits: ConnectionLimits,
    *,
    tls: TlsIdentity | None,
    metrics: Metrics | None = None,
    models: Callable[[], int] = lambda: 0,
) -> tuple[PortServer, PortServer]:
    """The attested server (TLS with ``tls``; plain behind front workers) and the evidence server."""
    # Two uvicorn servers would each announce start and stop; the runner's own lines say it once.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logging.getLogger().level))
    common: dict[str, Any] = {
        "http": guarded_protocol(limits),
        "lifespan": "off",
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": 30,
        "timeout_graceful_shutdown": 10,
        "server_header": False,
        # TLS ends in the TEE, never at a proxy in front: X-Forwarded-* headers mean nothing here
        # (uvicorn would believe them from 127.0.0.1), and the middleware costs every request.
        "proxy_headers": False,
    }
    attested_asgi: Any = attested_app(state)
    unattested_asgi: Any = unattested_app(state)
    if metrics is not None:
        from .metrics import MetricsMiddleware  # prometheus only when asked for

        attested_asgi = MetricsMiddleware(attested_asgi, metrics, "attested", models=models)
        unattested_asgi = MetricsMiddleware(unattested_asgi, metrics, "unattested")
    if tls is not None:
        identity = tls
        common["ssl_context_factory"] = lambda _c, _d: identity.ssl_context()
    attested = PortServer(uvicorn.Config(attested_asgi, **common), limits.handshake_timeout_s)
    common.pop("ssl_context_factory", None)
    unattested = PortServer(uvicorn.Config(unattested_asgi, **common), limits.handshake_timeout_s)
    return attested, unattested


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def serve_in_own_loop(server: uvicorn.Server, sock: socket.socket) -> None:
    """The evidence port's loop: a thread of its own, so the attested loop's work never delays it."""
    try:
        run_loop(server.serve(sockets=[sock]))
    except Exception:
        log.exception("the unattested server stopped")
        raise
