"""Process lifecycle: pick the evidence provider, make the TLS identity, serve both ports.

The attested server runs on the main event loop; the unattested (evidence, /health) server
runs on its own loop in its own thread, so nothing the attested port does on its loop
(TLS, bodies, handlers) can delay it; heavy work also leaves the attested loop for worker
threads, and work that holds the interpreter is bounded (docs/reliability.md). SIGTERM/SIGINT stop both cleanly
(in-flight requests finish, then the process exits 0). Ports may be 0: the
bound ports are then written to ``--ready-file`` as JSON, so tests and the demo
never race for a free port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigurationError
from ..tees import is_simulation
from . import frames
from .front import default_workers, listen_shared, start_workers, stop_workers
from .http.app import ServerState
from .http.bodies import BodyLimits, MemoryBudget
from .http.connections import ConnectionLimits, default_max_connections, raise_open_file_limit
from .http.fast_main import serve_channel
from .http.fast_worker import MAX_BODY, FastSettings
from .http.serving import http_servers, run_loop, serve_in_own_loop
from .inference import InferenceEngine, limit_inference_memory, machine_cores
from .modelfile import TMPFS_ROOT, model_memory, sweep_stale
from .providers import (
    EvidenceProvider,
    FileCollateral,
    FileSnpCrl,
    KdsSnpCrl,
    NoTeeError,
    PccsCollateral,
    detect_provider,
)
from .sealing import NoSealingKeyError, SealedDirectory, StoreError, sealing_key_for
from .store import ModelStore, StoreLimits, hash_token
from .tls import TlsIdentity, make_identity

__all__ = ["ServerConfig", "run_server", "serve"]

log = logging.getLogger("blindai.server")

SIMULATION_BANNER = "\n".join(
    [
        "",
        "  ##################################################################",
        "  #  BlindAI is running in SIMULATION MODE.                        #",
        "  #  There is NO trusted execution environment: the host, its      #",
        "  #  operator and anyone with access to this machine can read the  #",
        "  #  models and the data sent here. Use it for development only.   #",
        "  ##################################################################",
    ]
)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    attested_port: int = 50051
    unattested_port: int = 50052
    tee: str = "auto"
    tls_names: list[str] = field(default_factory=list)
    ready_file: Path | None = None
    limits: StoreLimits = field(default_factory=StoreLimits)
    max_request_bytes: int = 256 << 20
    inference_workers: int | None = None  # legacy name of limits.model_concurrency (used when that is 0)
    batch_window_ms: float = 0.0
    workers: int = 0  # front worker processes for the attested port; 0: from the core count (front.py)
    max_batch_rows: int = 64
    inference_timeout_s: float = 60.0
    max_output_bytes: int = 1 << 30
    gramine_dir: Path | None = None
    tsm_dir: Path | None = None
    pccs_url: str | None = None
    collateral_file: Path | None = None
    snp_crl_file: Path | None = None
    snp_crl_url: str | None = None
    metrics_port: int | None = None  # None: no metrics listener
    metrics_host: str = "127.0.0.1"
    model_store: Path | None = None
    sealing_key_file: Path | None = None
    upload_tokens_file: Path | None = None
    max_inference_memory: int | None = None
    model_memory: str = "auto"  # modelfile.MEMORY_KINDS, or auto: the best this TEE and system allow
    v06_routes: bool = True
    body_limits: BodyLimits | None = None  # None, or max_inflight_bytes 0: the in-flight budget sized to the machine
    connection_limits: ConnectionLimits = dataclasses.field(default_factory=ConnectionLimits)


def _cannot_listen(host: str, port: int, exc: OSError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        + (" (another process uses it)" if exc.errno == errno.EADDRINUSE else "")
        + ": choose other ports with --attested-port/--unattested-port (0 picks a free one)"
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _cannot_listen(host, port, exc) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def make_provider(config: ServerConfig) -> EvidenceProvider:
    kwargs: dict[str, Any] = {}
    if config.collateral_file is not None:
        kwargs["collateral"] = FileCollateral(config.collateral_file)
    elif config.pccs_url is not None:
        kwargs["collateral"] = PccsCollateral(config.pccs_url)
    if config.snp_crl_file is not None:
        kwargs["snp_crl"] = FileSnpCrl(config.snp_crl_file)
    elif config.snp_crl_url is not None:
        kwargs["snp_crl"] = KdsSnpCrl(config.snp_crl_url)
    if config.gramine_dir is not None:
        kwargs["gramine_dir"] = config.gramine_dir
    if config.tsm_dir is not None:
        kwargs["tsm_dir"] = config.tsm_dir
    return detect_provider(config.tee, **kwargs)


def default_inference_memory() -> int:
    """Half of the machine's (or TEE's) memory, shared by every model's weights and activations."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError):
        return 8 << 30


def default_inflight_bytes(limits: StoreLimits) -> int:
    """A quarter of the memory, and never less than one largest model upload plus some room."""
    return max(default_inference_memory() // 2, limits.max_model_bytes + (64 << 20))


def _body_limits(config: ServerConfig) -> BodyLimits:
    """The configured body limits, an in-flight budget of 0 (or none given) sized to the machine."""
    limits = config.body_limits or BodyLimits(max_inflight_bytes=0)
    if limits.max_inflight_bytes:
        return limits
    return dataclasses.replace(limits, max_inflight_bytes=default_inflight_bytes(config.limits))


def load_upload_tokens(path: Path) -> frozenset[str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    tokens = [ln for ln in lines if ln and not ln.startswith("#")]
    if not tokens:
        raise ValueError(f"{path} holds no upload token")
    return frozenset(hash_token(t) for t in tokens)


_HELD = {
    "tmpfs": f"in unnamed files on the {TMPFS_ROOT} tmpfs (onnxruntime maps their weights)",
    "memfd": "in sealed memfds (onnxruntime copies their weights)",
    "bytes": "as bytes (onnxruntime copies their weights)",
}


def make_store(config: ServerConfig, provider: EvidenceProvider) -> ModelStore:
    sealed = None
    if config.model_store is not None:
        config.model_store.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = sealing_key_for(provider.tee, provider.sealing_key(), config.model_store, config.sealing_key_file)
        if is_simulation(provider.tee):
            log.warning(
                "model store %s is sealed with %s: the host can read these models", config.model_store, key.source
            )
        sealed = SealedDirectory(config.model_store, key)
    tokens = load_upload_tokens(config.upload_tokens_file) if config.upload_tokens_file else None
    if config.inference_workers and not config.limits.model_concurrency:
        config.limits = dataclasses.replace(config.limits, model_concurrency=config.inference_workers)
    try:
        memory = model_memory(provider.tee, config.model_memory)
    except ValueError as exc:
        raise ConfigurationError(f"--model-memory: {exc}") from None
    if stale := sweep_stale(starting=True):
        log.warning(
            "removed %d folder(s) left by a server that died (a model named in %s, or empty)",
            stale,
            TMPFS_ROOT,
        )
    log.info("models held %s", _HELD[memory])
    store = ModelStore(config.limits, sealed=sealed, upload_token_hashes=tokens, memory=memory)
    store.load_sealed()
    return store


@dataclass
class _Front:
    """Forked front workers terminate TLS on the attested port; this process serves HTTP on ``backend``."""

    backend: socket.socket
    port: int
    pids: list[int]
    folder: str
    channels: list[socket.socket]  # the main process's end of each worker's frame channel
    budget: MemoryBudget  # the in-flight budget, shared with the workers
    lost: int | None = None  # a worker that exited while serving: the server stops (run_server returns 1)

    async def watch(self, stop: Callable[[], None]) -> None:
        """Stop the server when a worker exits. Its share of the port would be gone for good (a
        forked replacement would copy a process that now runs threads and holds models), so the
        server stops, loudly, for its supervisor to start it again whole."""
        while self.lost is None:
            await asyncio.sleep(0.5)
            for pid in self.pids:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 0
                if done:
                    self.lost = pid
                    log.error(
                        "front worker %d exited (wait status %d): stopping the server, to be restarted whole",
                        pid,
                        status,
                    )
                    stop()
                    return


def _connection_limits(config: ServerConfig) -> ConnectionLimits:
    """The configured connection limits, a connection cap of 0 sized to the open-file limit."""
    limits = config.connection_limits
    if limits.max_connections:
        return limits
    return dataclasses.replace(limits, max_connections=default_max_connections(raise_open_file_limit()))


def _start_front(config: ServerConfig, identity: TlsIdentity, tee: str) -> _Front | None:
    # Under Gramine each worker is an enclave of its own, and memory mapped shared between
    # enclaves is not shared (or is host memory): the in-flight budget would be counted per
    # process. So one process there unless asked for, and then said plainly.
    workers = config.workers or (1 if tee == "sgx" else default_workers(machine_cores()))
    if workers <= 1:
        return None
    if tee == "sgx":
        log.warning(
            "--workers %d under SGX: each worker is an enclave of its own, and the in-flight budget "
            "(--max-inflight-bytes) is counted per process, not for the server as a whole",
            workers,
        )
    folder = tempfile.mkdtemp(prefix="blindai-front-")  # mode 0700: only this user reaches the socket
    path = os.path.join(folder, "attested.sock")
    backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend.bind(path)
    backend.listen(2048)
    backend.setblocking(False)
    try:
        shared = listen_shared(config.host, config.attested_port, workers)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        backend.close()
        raise _cannot_listen(config.host, config.attested_port, exc) from exc
    port = shared[0].getsockname()[1]
    body = _body_limits(config)
    budget = MemoryBudget(body.max_inflight_bytes, shared=True)
    limits = _connection_limits(config)
    settings = FastSettings(
        connection=limits,
        body=body,
        budget=budget,
        max_connections=max(1, -(-limits.max_connections // workers)),  # --max-connections in all
        max_body=min(MAX_BODY, config.max_request_bytes),
        max_result_bytes=frames.max_result(config.max_output_bytes),
    )
    pids, channels = start_workers(shared, identity, path, settings)
    for sock in shared:  # a listening copy nobody accepts on would still get its share of connections
        sock.close()
    log.info("attested port %d served by %d front worker processes: %s", port, workers, pids)
    return _Front(backend, port, pids, folder, channels, budget)


def _stop_front(front: _Front | None) -> None:
    if front is None:
        return
    stop_workers(front.pids)
    for channel in front.channels:
        channel.close()
    front.backend.close()
    shutil.rmtree(front.folder, ignore_errors=True)


async def serve(
    config: ServerConfig,
    provider: EvidenceProvider,
    store: ModelStore,
    identity: TlsIdentity | None = None,
    front: _Front | None = None,
) -> None:
    identity = identity or make_identity(config.tls_names)
    state = ServerState(
        provider=provider,
        identity=identity,
        store=store,
        engine=InferenceEngine(
            timeout_s=config.inference_timeout_s,
            max_output_bytes=config.max_output_bytes,
            batch_window_ms=config.batch_window_ms,
            max_batch_rows=config.max_batch_rows,
        ),
        max_request_bytes=config.max_request_bytes,
        v06=config.v06_routes,
        body_limits=_body_limits(config),
        inflight=front.budget if front is not None else None,
    )
    attested_sock = front.backend if front is not None else _listen(config.host, config.attested_port)
    unattested_sock = _listen(config.host, config.unattested_port)
    limits = _connection_limits(config)
    metrics = None
    if config.metrics_port is not None:
        from .http.metrics import Metrics

        metrics = Metrics()
    attested, unattested = http_servers(
        state,
        limits,
        tls=None if front is not None else identity,  # with a front, TLS ends in the workers
        metrics=metrics,
        models=store.count,
    )
    metrics_port = None if metrics is None else metrics.serve(config.metrics_host, config.metrics_port or 0)
    loop = asyncio.get_running_loop()
    channels: list[asyncio.Task[None]] = []

    def stop() -> None:
        log.info("stopping")
        attested.should_exit = unattested.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    evidence_thread = threading.Thread(
        target=serve_in_own_loop, args=(unattested, unattested_sock), name="blindai-evidence", daemon=True
    )
    evidence_thread.start()
    try:
        tasks = [
            asyncio.create_task(attested.serve(sockets=[attested_sock])),
            asyncio.create_task(asyncio.to_thread(evidence_thread.join)),
        ]
        channels += [
            asyncio.create_task(serve_channel(sock, state, metrics)) for sock in (front.channels if front else [])
        ]
        if front is not None:
            channels.append(asyncio.create_task(front.watch(stop)))
        while not (attested.started and unattested.started):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        ports: dict[str, Any] = {
            "attested_port": front.port if front is not None else attested_sock.getsockname()[1],
            "workers": front.pids if front is not None else [],
            "unattested_port": unattested_sock.getsockname()[1],
            "host": config.host,
            "tee": provider.tee,
            "pid": os.getpid(),
            "version": __version__,
            "metrics_port": metrics_port,
        }
        log.info(
            "BlindAI %s serving: attested (TLS) %s:%d, unattested (evidence) %s:%d, tee=%s",
            __version__,
            config.host,
            ports["attested_port"],
            config.host,
            ports["unattested_port"],
            provider.tee,
        )
        if metrics_port is not None:
            log.info("metrics (Prometheus) on http://%s:%d/metrics", config.metrics_host, metrics_port)
        if config.ready_file is not None:
            tmp = config.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ports))
            tmp.replace(config.ready_file)
        await asyncio.gather(*tasks)
    finally:
        attested.should_exit = unattested.should_exit = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for task in channels:
            task.cancel()
        state.engine.close()
        log.info("stopped")


def forbid_core_dumps() -> bool:
    """No core file, however the process dies: it would hold every tenant's model and inputs in
    clear, written where the host can read it (a confidential VM's disk, or a crash handler's
    pipe). ``RLIMIT_CORE`` 0 stops core files; ``PR_SET_DUMPABLE`` 0 also stops piped dumps
    (systemd-coredump) and other processes of the same user reading this one's memory.
    Returns whether both took effect (Linux)."""
    import ctypes
    import resource

    ok = True
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        ok = False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_dumpable = 4
        ok = libc.prctl(pr_set_dumpable, 0, 0, 0, 0) == 0 and ok
    except (OSError, AttributeError):
        ok = False
    return ok


def bound_malloc() -> None:
    """Make freed request memory go back to the system (glibc only; elsewhere nothing to do).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after
    which request bodies and decoded tensors come from heaps that keep their pages: the
    process would hold, as RSS that no budget counts, the peak of what requests once used.
    A fixed threshold keeps large buffers in their own mappings, returned at free; a trim
    threshold returns freed heap tops; few arenas keep worker threads from each keeping one.
    Not lower: TLS reads 256 KiB buffers, and with a 256 KiB threshold and a 1 MiB trim each
    was a fresh mapping (mmap, page faults, munmap) and receiving 377 MB took 1.6 s instead
    of 0.4 s (benchmarks: upload to ready).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    mallopt(m_mmap_threshold, 4 << 20)
    mallopt(m_trim_threshold, 8 << 20)
    mallopt(m_arena_max, 4)


def run_server(config: ServerConfig) -> int:
    try:
        provider = make_provider(config)
    except NoTeeError as exc:
        log.error(
            "%s. Refusing to start without a TEE. To run anyway, with NO protection, "
            "use `blindai serve --simulation` (development only).",
            exc,
        )
        return 2
    if is_simulation(provider.tee):
        log.warning(SIMULATION_BANNER)
    elif not forbid_core_dumps():  # in simulation the host reads everything anyway
        log.warning("core dumps could not be disabled: a crash could write models to a disk the host reads")
    # The key, then the front workers, before any model is loaded: a worker inherits the key and
    # nothing else worth having, and (under Gramine) a small address space to copy.
    identity = make_identity(config.tls_names)
    raise_open_file_limit()  # before the front workers fork: they inherit it
    try:
        front = _start_front(config, identity, provider.tee)
    except ConfigurationError as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        bound_malloc()
        limit_inference_memory(config.max_inference_memory or default_inference_memory())
        try:
            store = make_store(config, provider)
        except (NoSealingKeyError, StoreError, ValueError, OSError) as exc:
            log.error("cannot start: %s", exc)
            return 2
        try:
            run_loop(serve(config, provider, store, identity, front))
        except ConfigurationError as exc:
            log.error("cannot start: %s", exc)
            return 2
        return 1 if front is not None and front.lost is not None else 0
    finally:
        _stop_front(front)
