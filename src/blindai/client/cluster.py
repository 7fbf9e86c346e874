"""Several replicas, each attested on its own.

Behind a load balancer every replica has its own TLS key in its own TEE, so a client
must attest each endpoint and pin each key separately: `connect_replicas` does
that, keeps the replicas that passed, and records why the others were refused.
``upload_model`` fans out so every replica holds the model; ``run_model`` spreads calls
over the replicas (round robin), each call going to a replica that was attested.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import BlindAIError
from .connect import connect
from .connection import Connection, ModelInfo, RunResult

__all__ = ["Endpoint", "ReplicaSet", "connect_replicas"]


@dataclass(frozen=True)
class Endpoint:
    """One replica's address; each is attested on its own.

    Attributes:
        host: host name or address.
        attested_port: the TLS port whose key the evidence binds.
        unattested_port: the plain port serving only public evidence.
    """

    host: str
    attested_port: int = 50051
    unattested_port: int = 50052

    def __str__(self) -> str:
        return f"{self.host}:{self.attested_port}"


@dataclass
class ReplicaSet:
    """Attested connections to the replicas that passed; ``refused`` says why the others did not."""

    connections: dict[Endpoint, Connection]
    refused: dict[Endpoint, BlindAIError] = field(default_factory=dict)
    _cycle: Iterator[Endpoint] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # model_id per replica, for each model uploaded through this set (keyed by the first replica's id)
    _ids: dict[str, dict[Endpoint, str]] = field(default_factory=dict, init=False, repr=False)

    def _next(self) -> Endpoint:
        with self._lock:
            if self._cycle is None:
                self._cycle = itertools.cycle(list(self.connections))
            return next(self._cycle)

    def upload_model(self, model: Any, *, name: str | None = None) -> dict[Endpoint, ModelInfo]:
        """Upload to every attested replica (in parallel); all must succeed, or the error is raised."""
        data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
        with ThreadPoolExecutor(max(1, len(self.connections))) as pool:
            futures = {ep: pool.submit(c.upload_model, data, name=name) for ep, c in self.connections.items()}
            infos = {ep: f.result() for ep, f in futures.items()}
        hashes = {i.sha256 for i in infos.values()}
        if len(hashes) != 1:
            raise BlindAIError(f"replicas disagree on the model's sha256: {sorted(hashes)}")
        key = next(iter(infos.values())).model_id
        self._ids[key] = {ep: i.model_id for ep, i in infos.items()}
        return infos

    def run_model(self, model_id: str, inputs: Any, **kwargs: Any) -> tuple[Endpoint, RunResult]:
        """Run on the next replica; ``model_id`` is the id returned by the first replica."""
        ep = self._next()
        ids = self._ids.get(model_id, {})
        return ep, self.connections[ep].run_model(ids.get(ep, model_id), inputs, **kwargs)

    def delete_model(self, model_id: str) -> None:
        """Delete the model from every replica, with the owner tokens each upload returned."""
        ids = self._ids.pop(model_id, {})
        for ep, conn in self.connections.items():
            conn.delete_model(ids.get(ep, model_id))

    def close(self) -> None:
        """Close every replica's connection; models stay on the replicas."""
        for c in self.connections.values():
            c.close()

    def __enter__(self) -> ReplicaSet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect_replicas(
    endpoints: Sequence[Endpoint | tuple[str, int, int] | str], *, require: int = 1, **connect_kwargs: Any
) -> ReplicaSet:
    """Attest every endpoint independently (same policy, own nonce, own pinned key).

    Replicas that fail attestation or cannot be reached are left out and listed in
    ``refused``; if fewer than ``require`` pass, the first refusal is raised.

    Args:
        endpoints: `Endpoint`s, ``(host, attested_port, unattested_port)`` tuples, or host
            names (default ports).
        require: how many replicas must pass for the set to be returned.
        **connect_kwargs: passed to `connect` for each replica (``policy``, ``simulation``...).
    """
    eps = [e if isinstance(e, Endpoint) else (Endpoint(e) if isinstance(e, str) else Endpoint(*e)) for e in endpoints]

    def one(ep: Endpoint) -> Connection:
        return connect(ep.host, attested_port=ep.attested_port, unattested_port=ep.unattested_port, **connect_kwargs)

    good: dict[Endpoint, Connection] = {}
    refused: dict[Endpoint, BlindAIError] = {}
    with ThreadPoolExecutor(max(1, len(eps))) as pool:
        for ep, fut in [(ep, pool.submit(one, ep)) for ep in eps]:
            try:
                good[ep] = fut.result()
            except BlindAIError as exc:  # attestation, transport, or a server error: this replica only
                refused[ep] = exc
            except Exception as exc:  # never abort the set (nor leak the others' connections) for one replica
                refused[ep] = BlindAIError(f"{ep}: unexpected failure: {type(exc).__name__}: {exc}")
    if len(good) < require:
        for c in good.values():
            c.close()
        first = next(iter(refused.values()), None)
        if first is not None:
            raise first
        raise BlindAIError("no replica to connect to")
    return ReplicaSet(good, refused)
