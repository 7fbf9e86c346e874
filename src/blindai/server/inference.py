"""onnxruntime sessions and the checks every input passes before reaching them.

Knows nothing of HTTP. Inputs are checked against the model's declared inputs
(names, datatypes, rank, fixed dimensions, byte size) so onnxruntime only ever
sees well-formed tensors; runs happen on a thread pool (onnxruntime releases the
GIL) and a timer can terminate a run that takes too long.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ..protocol.models import TensorInfo
from ..protocol.tensors import DATATYPES
from .errors import CapacityExceeded, DeadlineExceeded, InputRejected, InvalidRequest, Unavailable, UnsupportedModel
from .modelfile import ModelFile, empty_folder
from .onnxsplit import LOCATION
from .rowprobe import rows_differ

__all__ = ["InferenceEngine", "LoadedModel", "limit_inference_memory", "machine_cores", "ort_datatype", "run_slots"]

log = logging.getLogger("blindai.inference")
# Belt and braces for an embedding that started onnxruntime before importing the server (whose
# package turns telemetry off before onnxruntime starts): no session or model events at least.
ort.disable_telemetry_events()

_ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def ort_datatype(ort_type: str) -> str:
    try:
        return _ORT_TO_OIP[ort_type]
    except KeyError:
        raise UnsupportedModel(f"model uses type {ort_type}, which BlindAI cannot serve") from None


def _spec(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorInfo(arg.name, ort_datatype(arg.type), shape)


_MEMORY_LIMIT: int | None = None


def limit_inference_memory(max_bytes: int) -> None:
    """Give every session one shared CPU arena bounded at ``max_bytes``.

    A model whose allocations follow its input (ConstantOfShape, Expand, Tile, ...) then
    fails that one request with an error instead of exhausting the TEE's memory. Weights
    and activations of all models count against the same budget. Once per process.
    """
    global _MEMORY_LIMIT
    if _MEMORY_LIMIT is not None:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg({"max_mem": max_bytes, "arena_extend_strategy": 1}))
    _MEMORY_LIMIT = max_bytes
    # onnxruntime's own error lines can quote sizes derived from inputs: keep them out of the logs.
    ort.set_default_logger_severity(4)


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if _MEMORY_LIMIT is not None:
        opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Threads spin during a run (fast parallel sections) but stop as soon as it returns, so
    # they do not take the cores the event loop and TLS need between runs (performance.md).
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    # Bytes are read as ONNX, never as onnxruntime's own format (which it would detect first):
    # what vetting parsed is what runs.
    opts.add_session_config_entry("session.load_model_format", "ONNX")
    return opts


_WEIGHTS_FOLDER = "session.model_external_initializers_file_folder_path"


# onnxruntime folds constant subgraphs when it loads a model and keeps the results outside the
# arena; folding stays on (without it MiniLM ran 1.5x slower: attention fusions need it), and
# what it will hold is counted before loading instead (models.loaded_size).
def _load_session(
    model: ModelFile | bytes, intra_op_threads: int, skeleton: bytes | None = None
) -> ort.InferenceSession:
    """A session of the model; with a skeleton (onnxsplit), of the skeleton, its moved weights read
    from the model's bytes: mapped from its file where it is a tmpfs file (`ModelFile.weights_folder`:
    the upload's pages become the session's weights), else given to onnxruntime as an in-memory
    external-data file, which it copies while the session is built."""
    opts = _session_options(intra_op_threads)
    # Every external-data location resolves inside this folder: the upload's own (its one file is the
    # upload), else an empty one. Vetting lets no other location through; were it to miss one, it
    # could name nothing (never a file of the working directory, where onnxruntime would look).
    folder = model.weights_folder() if isinstance(model, ModelFile) and skeleton is not None else None
    opts.add_session_config_entry(_WEIGHTS_FOLDER, folder or empty_folder())
    if skeleton is not None:
        with contextlib.ExitStack() as stack:
            if folder is None:
                weights = stack.enter_context(
                    model.view() if isinstance(model, ModelFile) else contextlib.nullcontext(memoryview(model))
                )
                opts.add_external_initializers_from_files_in_memory([LOCATION], [weights], [len(weights)])
            session = ort.InferenceSession(skeleton, sess_options=opts, providers=_providers())
    else:
        source: str | bytes | None = model if isinstance(model, bytes) else (model.path or model.data)
        if source is None:
            raise ValueError("the model file is closed")
        session = ort.InferenceSession(source, sess_options=opts, providers=_providers())
    # onnxruntime keeps a bytes argument (and the options, which point into the weights given above)
    # for the session's life, only to rebuild it on an execution-provider fallback this server never
    # asks for: the model would be held twice while served, and a rebuild would read freed memory.
    session.disable_fallback()
    session._model_bytes = None
    return session


def machine_cores() -> int:
    """Cores this process may use (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_slots(concurrency: int, intra_op_threads: int) -> int:
    """Runs of one model at once: ``concurrency``, or (0) one per core of a lone run. Above 1,
    the model gets a second (narrow) session, which the store counts."""
    if concurrency > 0:
        return concurrency
    return intra_op_threads if intra_op_threads > 0 else machine_cores()


class LoadedModel:
    """A model's onnxruntime sessions, its declared signature and its run scheduler.

    Two sessions of one model, both from the same model file (or bytes): a *wide* one whose runs use every
    core (intra-op threads = cores), for a lone request, and a *narrow* one (intra-op 1) that
    up to ``concurrency`` runs share at once when requests queue. onnxruntime fixes the
    thread count per session, so this is how one model moves between "one request, all
    cores" and "many requests, one core each" (performance.md). The narrow session costs
    about the model's size again in memory; it is built only when concurrency > 1, and in
    the background after the wide one, so upload-to-ready does not wait for it. With a
    ``skeleton`` (`vetting.VettedModel`), both load the skeleton, reading its moved weights
    from ``model``.
    """

    def __init__(
        self,
        model: ModelFile | bytes,
        *,
        skeleton: bytes | None = None,
        intra_op_threads: int = 0,
        concurrency: int = 0,
        narrow_now: bool = False,
        rows_mixed: str | None = "not analysed",
    ) -> None:
        self.cores = intra_op_threads if intra_op_threads > 0 else machine_cores()
        self.concurrency = run_slots(concurrency, intra_op_threads)
        try:
            self.session = _load_session(model, self.cores, skeleton)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise UnsupportedModel(f"onnxruntime cannot load this model: {_short(exc)}") from exc
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self._input_by_name = {s.name: s for s in self.inputs}
        self._output_names = [s.name for s in self.outputs]
        # Batched with other callers' requests only when its rows provably stay apart (rowwise.py:
        # the graph is its owner's choice) and every input and output shares the batch dimension.
        self.rows_mixed = rows_mixed
        self.batchable = False  # until the rows probe agrees with the analysis (rowprobe.py), in the background
        # Runs of this model only: a model's runs never wait for a thread another model holds.
        self.pool = concurrent.futures.ThreadPoolExecutor(self.concurrency + 1, thread_name_prefix="blindai-run")
        self._rows_probe: concurrent.futures.Future[None] | None = None
        if rows_mixed is None and _batch_dim_shared(self.session):
            self._rows_probe = self.pool.submit(self._probe_rows)
        self.narrow: ort.InferenceSession | None = None
        self._narrow_ready: concurrent.futures.Future[None] | None = None
        self._sched: _Scheduler | None = None
        if self.concurrency > 1:
            # On a descriptor of its own: the caller closes its file once this returns.
            own = model.dup() if isinstance(model, ModelFile) else model
            # The skeleton is held only until then: kept, it would be one more uncounted copy of a
            # model whose bulk is in its graph (Constant nodes).
            if narrow_now:
                self._build_narrow(own, skeleton)
            else:
                self._narrow_ready = self.pool.submit(self._build_narrow, own, skeleton)

    def _probe_rows(self) -> None:
        why = rows_differ(self.session, self.inputs, self.outputs)
        if why is not None:
            self.rows_mixed = why
            log.warning("a model the graph analysis found batchable failed the rows probe, not batched: %s", why)
        self.batchable = why is None

    def wait_rows_probe(self) -> bool:
        """Until the rows probe has run (if it runs); whether requests may share a batch."""
        if self._rows_probe is not None:
            self._rows_probe.result()
        return self.batchable

    def _build_narrow(self, model: ModelFile | bytes, skeleton: bytes | None) -> None:
        try:
            self.narrow = _load_session(model, 1, skeleton)
        except Exception as exc:  # the wide session loaded: serve with it alone
            log.error("the concurrent (1-thread) session did not load, serving one run at a time: %s", _short(exc))
        finally:
            if isinstance(model, ModelFile):
                model.close()

    def wait_narrow(self) -> bool:
        """Until the concurrent session is built (or failed); whether concurrent runs are possible."""
        if self._narrow_ready is not None:
            self._narrow_ready.result()
        return self.narrow is not None

    def scheduler(self) -> _Scheduler:
        if self._sched is None:
            self._sched = _Scheduler(self)
        return self._sched

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def check_inputs(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Every declared input present, nothing unknown, datatype, rank and fixed dims match."""
        missing = [n for n in self._input_by_name if n not in inputs]
        unknown = [n for n in inputs if n not in self._input_by_name]
        if missing or unknown:
            problems = ([f"unknown input(s) {unknown}"] if unknown else []) + (
                [f"missing input(s) {missing}"] if missing else []
            )
            raise InvalidRequest(f"{'; '.join(problems)}; the model takes {list(self._input_by_name)}")
        feed: dict[str, npt.NDArray[Any]] = {}
        for name, spec in self._input_by_name.items():
            arr = inputs[name]
            got = "BYTES" if arr.dtype.kind in "OSU" else _datatype_name(arr.dtype)
            if got != spec.datatype:
                raise InvalidRequest(f"input {name!r} must be {spec.datatype}, got {got}")
            if arr.ndim != len(spec.shape):
                raise InvalidRequest(
                    f"input {name!r} must have rank {len(spec.shape)} (shape {_shape_text(spec.shape)}), "
                    f"got shape {list(arr.shape)}"
                )
            for axis, (want, have) in enumerate(zip(spec.shape, arr.shape, strict=True)):
                if want >= 0 and want != have:
                    raise InvalidRequest(
                        f"input {name!r} dimension {axis} must be {want} (shape {_shape_text(spec.shape)}), "
                        f"got shape {list(arr.shape)}"
                    )
            if spec.datatype == "BYTES":
                arr = _as_strings(name, arr)
            feed[name] = arr
        return feed

    def output_names(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            return self._output_names
        unknown = [n for n in requested if n not in self._output_names]
        if unknown:
            raise InvalidRequest(f"unknown output(s) {unknown}; the model gives {self._output_names}")
        return requested

    def run(
        self,
        feed: dict[str, npt.NDArray[Any]],
        names: list[str],
        run_options: ort.RunOptions | None = None,
        *,
        wide: bool = True,
    ) -> dict[str, npt.NDArray[Any]]:
        session = self.session if wide or self.narrow is None else self.narrow
        values = session.run(names, feed, run_options)
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def _as_strings(name: str, arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """onnxruntime's string tensors take Python str; BYTES arrive as bytes (UTF-8 on the wire)."""
    out = np.empty(arr.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(arr.reshape(-1)):
        if isinstance(item, bytes | bytearray):
            try:
                flat[i] = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"input {name!r}: element {i} is not UTF-8 text") from None
        else:
            flat[i] = str(item)
    return out


# What one string element costs beyond its text: the Python object and its array slot, and
# onnxruntime's std::string (its contents live outside the capped arena).
STRING_OVERHEAD = 64


def output_bytes(arr: npt.NDArray[Any]) -> int:
    """Memory an output holds, strings included (an object array's nbytes counts only pointers)."""
    if arr.dtype != object:
        return int(arr.nbytes)
    total = arr.size * STRING_OVERHEAD
    for item in arr.reshape(-1):
        if isinstance(item, str):
            # Characters are not bytes: up to 4 each in UTF-8 (the wire) and in Python's own storage.
            total += len(item) if item.isascii() else 4 * len(item)
        else:
            total += len(item) if isinstance(item, bytes | bytearray) else 64
    return total


def string_bytes(outputs: Mapping[str, npt.NDArray[Any]]) -> int:
    """What the string outputs among ``outputs`` hold as Python objects (``output_bytes``); their
    encoding for the wire takes about as much again. Walks every element: off the event loop."""
    return sum(output_bytes(a) for a in outputs.values() if a.dtype == object)


def _datatype_name(dtype: np.dtype[Any]) -> str:
    name = _DATATYPE_NAMES.get(dtype)
    if name is not None:
        return name
    for name, dt in DATATYPES.items():
        if name != "BYTES" and dt == dtype.newbyteorder("<"):
            _DATATYPE_NAMES[dtype] = name  # at most one entry per byte order of each datatype
            return name
    return str(dtype)


# Every request's inputs are checked against their model's datatypes: found once per dtype, not
# by walking the table each time.
_DATATYPE_NAMES: dict[np.dtype[Any], str] = {}


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _providers() -> list[str]:
    available = ort.get_available_providers()
    wanted = os.environ.get("BLINDAI_ORT_PROVIDERS")
    if wanted:
        return [p for p in wanted.split(",") if p in available] or ["CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


# How onnxruntime says an allocation was refused (arena limit, size overflow, allocator failure).
_OUT_OF_MEMORY = ("Available memory of", "size overflowed", "bad_alloc", "Failed to allocate")


def _batch_dim_shared(session: ort.InferenceSession) -> bool:
    """Whether the first dimension of every input and every output is one and the same symbol.

    Only then is it a batch dimension that requests can be stacked along and outputs split
    back on; a model declaring an output whose first dimension is fixed, unnamed or another
    symbol (a pooled vector, a per-batch scalar) is never batched.
    """
    dims = [a.shape[0] if a.shape else None for a in [*session.get_inputs(), *session.get_outputs()]]
    return bool(dims) and isinstance(dims[0], str) and bool(dims[0]) and all(d == dims[0] for d in dims)


class _Scheduler:
    """Which session the next run of one model uses, and how many run at once.

    A request that finds the model idle runs on the wide session (every core, lowest
    latency). Requests that queue run on the narrow session, up to ``concurrency`` at
    once, one core each, never alongside a wide run: runs x threads stays within the cores.
    Lives in the event loop (no lock): acquire and release happen there.
    """

    def __init__(self, model: LoadedModel) -> None:
        # Weak: the model holds its scheduler, and a cycle would keep a deleted model's sessions (and
        # the upload pages they map) until the cycle collector happened to run.
        self._model = weakref.ref(model)
        self.concurrency = model.concurrency
        self.wide = 0
        self.narrow = 0
        self.waiters: collections.deque[asyncio.Future[bool]] = collections.deque()

    def _has_narrow(self) -> bool:
        model = self._model()
        return model is not None and model.narrow is not None

    def _narrow_free(self) -> bool:
        return self._has_narrow() and self.wide == 0 and self.narrow < self.concurrency

    def _take(self, wide: bool) -> bool:
        if wide:
            self.wide += 1
        else:
            self.narrow += 1
        return wide

    async def acquire(self) -> bool:
        """A run slot; True for the wide session, False for the narrow one. Release it after."""
        if not self.waiters:
            if self.wide == 0 and self.narrow == 0:
                return self._take(True)
            if self._narrow_free():
                return self._take(False)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())
            elif fut in self.waiters:
                self.waiters.remove(fut)
            raise

    def release(self, wide: bool) -> None:
        if wide:
            self.wide -= 1
        else:
            self.narrow -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self.waiters:
            fut = self.waiters[0]
            if fut.done():
                self.waiters.popleft()
                continue
            idle = self.wide == 0 and self.narrow == 0
            if idle and (len(self.waiters) == 1 or not self._has_narrow()):
                grant = True
            elif self._narrow_free():
                grant = False
            else:
                return
            self.waiters.popleft()
            fut.set_result(self._take(grant))


@dataclass
class _Batch:
    names: list[str]
    members: list[tuple[dict[str, npt.NDArray[Any]], int, asyncio.Future[dict[str, npt.NDArray[Any]]]]]
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


def _rows(feed: Mapping[str, npt.NDArray[Any]]) -> int | None:
    """The rows of a request whose inputs all agree on their first dimension, else None."""
    counts = {a.shape[0] for a in feed.values() if a.ndim >= 1}
    return counts.pop() if len(counts) == 1 and all(a.ndim >= 1 for a in feed.values()) else None


def _join(members: list[dict[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
    return {n: np.concatenate([m[n] for m in members], axis=0) for n in members[0]}


def _split(outputs: dict[str, npt.NDArray[Any]], sizes: list[int]) -> list[dict[str, npt.NDArray[Any]]]:
    total = sum(sizes)
    for n, a in outputs.items():
        if a.ndim == 0 or a.shape[0] != total:
            raise ValueError(f"output {n!r} has {a.shape[:1]} rows for a batch of {total}")
    parts: list[dict[str, npt.NDArray[Any]]] = []
    start = 0
    for size in sizes:
        # A copy: a caller's reply must hold its own rows only, not a view of everyone's.
        parts.append({n: a[start : start + size].copy() for n, a in outputs.items()})
        start += size
    return parts


class InferenceEngine:
    """Runs models off the event loop, bounded in concurrency, time and output size.

    Each model schedules its own runs (``_Scheduler``) on its own threads, so a request to one
    model never waits on another model's runs. With ``batch_window_ms`` > 0, requests to a
    model whose first dimension is a shared batch dimension that arrive within the window
    run as one batch and are split back.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 60.0,
        max_output_bytes: int = 1 << 30,
        batch_window_ms: float = 0.0,
        max_batch_rows: int = 64,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self.batch_window_s = max(0.0, batch_window_ms) / 1e3
        self.max_batch_rows = max_batch_rows
        self._open: dict[tuple[int, Any], _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def infer(
        self, model: LoadedModel, inputs: Mapping[str, npt.NDArray[Any]], requested: list[str] | None
    ) -> dict[str, npt.NDArray[Any]]:
        # Checking converts string inputs element by element: a worker thread does it, not the loop.
        # Numeric inputs cost a few comparisons each: checked here, without a hop to a thread.
        if any(a.dtype.kind in "OSU" for a in inputs.values()):
            feed = await asyncio.to_thread(model.check_inputs, inputs)
        else:
            feed = model.check_inputs(inputs)
        names = model.output_names(requested)
        start = time.perf_counter()
        rows = _rows(feed) if self.batch_window_s > 0 and model.batchable else None
        if rows is not None and 0 < rows <= self.max_batch_rows:
            outputs = await self._batched(model, feed, names, rows)
        else:
            outputs = await self._run(model, feed, names)
        if any(a.dtype == object for a in outputs.values()):  # strings: every element is looked at
            total = await asyncio.to_thread(lambda: sum(output_bytes(a) for a in outputs.values()))
        else:
            total = sum(int(a.nbytes) for a in outputs.values())
        if total > self.max_output_bytes:
            raise CapacityExceeded(f"outputs of {total} bytes exceed the limit of {self.max_output_bytes}")
        log.debug("inference done in %.2f ms", (time.perf_counter() - start) * 1e3)
        return outputs

    async def _run(
        self, model: LoadedModel, feed: dict[str, npt.NDArray[Any]], names: list[str]
    ) -> dict[str, npt.NDArray[Any]]:
        sched = model.scheduler()
        wide = await sched.acquire()
        loop = asyncio.get_running_loop()
        options = ort.RunOptions()
        done: asyncio.Future[dict[str, npt.NDArray[Any]]] = loop.create_future()

        def finish(job: concurrent.futures.Future[dict[str, npt.NDArray[Any]]]) -> None:
            # On the loop: the slot is given back when the run really ends (even if this request was
            # cancelled meanwhile), and the result delivered, in one wake-up of the loop.
            sched.release(wide)
            if done.cancelled() or job.cancelled():
                return
            exc = job.exception()
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(job.result())

        try:
            job = model.pool.submit(model.run, feed, names, options, wide=wide)
        except RuntimeError:
            sched.release(wide)
            raise Unavailable("the model is being replaced or deleted; retry") from None
        job.add_done_callback(lambda j: loop.call_soon_threadsafe(finish, j))
        done.add_done_callback(lambda f: job.cancel() if f.cancelled() else None)  # a queued run is dropped
        # Setting `terminate` from the loop thread makes onnxruntime abort the run at its
        # next check, freeing the thread; the clock starts when the run does, not in the queue.
        timer = loop.call_later(self.timeout_s, setattr, options, "terminate", True)
        try:
            return await done
        except Exception as exc:
            if options.terminate:
                raise DeadlineExceeded(f"inference exceeded the {self.timeout_s:g} s time limit") from exc
            if isinstance(exc, MemoryError) or any(m in str(exc) for m in _OUT_OF_MEMORY):
                raise CapacityExceeded(
                    f"inference needs more memory than the server's limit ({_MEMORY_LIMIT} bytes)"
                ) from exc
            raise InputRejected(f"onnxruntime rejected the inputs: {_short(exc)}") from exc
        finally:
            timer.cancel()

    async def _batched(
        self, model: LoadedModel, feed: dict[str, npt.NDArray[Any]], names: list[str], rows: int
    ) -> dict[str, npt.NDArray[Any]]:
        """Join (or open) the model's batch for requests of this exact signature, and wait for its rows."""
        loop = asyncio.get_running_loop()
        # Same model, same requested outputs, same dtypes and same dims after the first: nothing else mixes.
        key = (id(model), (tuple(names), tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feed.items()))))
        batch = self._open.get(key)
        if batch is not None and batch.rows + rows > self.max_batch_rows:
            self._flush(model, key, batch)
            batch = None
        if batch is None:
            batch = _Batch(names, [])
            self._open[key] = batch
            batch.timer = loop.call_later(self.batch_window_s, self._flush, model, key, batch)
        fut: asyncio.Future[dict[str, npt.NDArray[Any]]] = loop.create_future()
        batch.members.append((feed, rows, fut))
        batch.rows += rows
        if batch.rows >= self.max_batch_rows:
            self._flush(model, key, batch)
        return await fut

    def _flush(self, model: LoadedModel, key: tuple[int, Any], batch: _Batch) -> None:
        if self._open.get(key) is not batch:
            return
        del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._run_batch(model, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, model: LoadedModel, batch: _Batch) -> None:
        members = batch.members
        if len(members) > 1:
            try:
                joined = await asyncio.to_thread(_join, [m[0] for m in members])
                outputs = await self._run(model, joined, batch.names)
                del joined
                parts = await asyncio.to_thread(_split, outputs, [m[1] for m in members])
            except Exception:
                # One caller's rows may be what failed the batch: each runs alone and gets its own answer.
                log.debug("a batch of %d requests failed; running them one by one", len(members))
            else:
                for (_feed, _rows_n, fut), part in zip(members, parts, strict=True):
                    if not fut.done():
                        fut.set_result(part)
                return
        await asyncio.gather(*(self._solo(model, feed, batch.names, fut) for feed, _n, fut in members))

    async def _solo(
        self,
        model: LoadedModel,
        feed: dict[str, npt.NDArray[Any]],
        names: list[str],
        fut: asyncio.Future[dict[str, npt.NDArray[Any]]],
    ) -> None:
        try:
            result = await self._run(model, feed, names)
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(result)

    def close(self) -> None:
        for batch in self._open.values():
            if batch.timer is not None:
                batch.timer.cancel()
        self._open.clear()
