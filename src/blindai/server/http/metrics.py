"""Prometheus metrics on a separate, opt-in listener (``blindai serve --metrics-port``).

What is counted is operational only: per port and *route template* (``/v2/models/{ref}/infer``,
never the model id in the path), request counts by status, latencies, requests in progress
(the queue depth), uploads, errors by status, models held, and process memory. Nothing a
tenant sent appears: no model names, ids, hashes, tensor shapes or sizes of individual
requests. The listener is plain HTTP on its own port (127.0.0.1 by default) so that neither
the attested nor the evidence port serves anything new; what it still reveals (traffic
volume and timing per route) is in docs/threat-model.md.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

__all__ = ["Metrics", "MetricsMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_UPLOAD_ROUTES = frozenset({("POST", "/v1/models"), ("PUT", "/v1/models/{ref}"), ("POST", "/upload")})
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """One registry per server (not the global one), so tests and embedders stay independent."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "blindai_requests",
            "Requests answered, by port, route template and status",
            ["port", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "blindai_request_seconds",
            "Time to answer, by port and route template",
            ["port", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "blindai_requests_in_progress",
            "Requests being served (queue depth), by port and route",
            ["port", "route"],
            registry=r,
        )
        self.uploads = Counter(
            "blindai_model_uploads", "Model uploads and replacements, by outcome", ["outcome"], registry=r
        )
        self.errors = Counter("blindai_errors", "Error answers, by status code", ["status"], registry=r)
        self.models = Gauge("blindai_models", "Models held by the server", registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds

    def record(self, port: str, route: str, code: int, elapsed: float) -> None:
        """One answered request (the middleware's, and the front workers' fast path's, in fast.py)."""
        self.requests.labels(port, route, str(code)).inc()
        self.latency.labels(port, route).observe(elapsed)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def serve(self, host: str, port: int) -> int:
        """Start the listener (a daemon thread); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)


class MetricsMiddleware:
    """ASGI middleware: times each HTTP request and labels it with the matched route's template."""

    def __init__(self, app: Any, metrics: Metrics, port: str, models: Callable[[], int] | None = None) -> None:
        self.app, self.metrics, self.port, self.count_models = app, metrics, port, models
        self.routes = list(getattr(app, "routes", []))

    def _template(self, scope: Scope) -> str:
        """The matched route's path template: ``/v2/models/{ref}/infer``, never the id in the URL."""
        from starlette.routing import Match

        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(route.path)
            if match == Match.PARTIAL and partial is None:
                partial = str(route.path)
        return partial or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def watch(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status", 500))
            await send(message)

        route = self._template(scope)
        m = self.metrics
        m.in_progress.labels(self.port, route).inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, watch)
        finally:
            elapsed = time.perf_counter() - start
            m.in_progress.labels(self.port, route).dec()
            code = status["code"]
            m.record(self.port, route, code, elapsed)
            if (scope.get("method"), route) in _UPLOAD_ROUTES:
                m.uploads.labels("accepted" if code < 400 else "refused").inc()
            if self.count_models is not None:
                m.models.set(self.count_models())
