"""onnxruntime sessions and the checks every input passes before reaching them.

Knows nothing of HTTP. Inputs are checked against the model's declared inputs
(names, datatypes, rank, fixed dimensions, byte size) so onnxruntime only ever
sees well-formed tensors; runs happen on a thread pool (onnxruntime releases the
GIL) and a timer can terminate a run that takes too long.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ..errors import InvalidInputError, ServerError
from ..protocol.tensors import DATATYPES

__all__ = ["InferenceEngine", "LoadedModel", "TensorSpec", "limit_inference_memory", "ort_datatype"]

log = logging.getLogger("blindai.inference")

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
        raise InvalidInputError(f"model uses type {ort_type}, which BlindAI cannot serve", status=422) from None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, ort_datatype(arg.type), shape)


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


class LoadedModel:
    """One onnxruntime session and the declared signature of its model."""

    def __init__(self, model_bytes: bytes, *, intra_op_threads: int = 0) -> None:
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
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=opts, providers=_providers())
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise InvalidInputError(f"onnxruntime cannot load this model: {_short(exc)}", status=422) from exc
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self._input_by_name = {s.name: s for s in self.inputs}
        # One run at a time per model: each run already uses every core (intra-op threads),
        # so concurrent runs of one model would only oversubscribe them. Other models still
        # run in parallel. Created lazily, in the event loop that awaits it.
        self._turn: asyncio.Semaphore | None = None
        self._output_names = [s.name for s in self.outputs]

    def check_inputs(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Every declared input present, nothing unknown, datatype, rank and fixed dims match."""
        missing = [n for n in self._input_by_name if n not in inputs]
        unknown = [n for n in inputs if n not in self._input_by_name]
        if missing or unknown:
            problems = ([f"unknown input(s) {unknown}"] if unknown else []) + (
                [f"missing input(s) {missing}"] if missing else []
            )
            raise InvalidInputError(f"{'; '.join(problems)}; the model takes {list(self._input_by_name)}", status=400)
        feed: dict[str, npt.NDArray[Any]] = {}
        for name, spec in self._input_by_name.items():
            arr = inputs[name]
            got = "BYTES" if arr.dtype.kind in "OSU" else _datatype_name(arr.dtype)
            if got != spec.datatype:
                raise InvalidInputError(f"input {name!r} must be {spec.datatype}, got {got}", status=400)
            if arr.ndim != len(spec.shape):
                raise InvalidInputError(
                    f"input {name!r} must have rank {len(spec.shape)} (shape {_shape_text(spec.shape)}), "
                    f"got shape {list(arr.shape)}",
                    status=400,
                )
            for axis, (want, have) in enumerate(zip(spec.shape, arr.shape, strict=True)):
                if want >= 0 and want != have:
                    raise InvalidInputError(
                        f"input {name!r} dimension {axis} must be {want} (shape {_shape_text(spec.shape)}), "
                        f"got shape {list(arr.shape)}",
                        status=400,
                    )
            if spec.datatype == "BYTES":
                arr = _as_strings(name, arr)
            feed[name] = arr
        return feed

    def turn(self) -> asyncio.Semaphore:
        if self._turn is None:
            self._turn = asyncio.Semaphore(1)
        return self._turn

    def output_names(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            return self._output_names
        unknown = [n for n in requested if n not in self._output_names]
        if unknown:
            raise InvalidInputError(f"unknown output(s) {unknown}; the model gives {self._output_names}", status=400)
        return requested

    def run(
        self, feed: dict[str, npt.NDArray[Any]], names: list[str], run_options: ort.RunOptions | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        values = self.session.run(names, feed, run_options)
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
                raise InvalidInputError(f"input {name!r}: element {i} is not UTF-8 text", status=400) from None
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
        total += len(item) if isinstance(item, str | bytes | bytearray) else 64
    return total


def _datatype_name(dtype: np.dtype[Any]) -> str:
    for name, dt in DATATYPES.items():
        if name != "BYTES" and dt == dtype.newbyteorder("<"):
            return name
    return str(dtype)


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


class InferenceEngine:
    """Runs models off the event loop, bounded in concurrency, time and output size."""

    def __init__(self, *, workers: int | None = None, timeout_s: float = 60.0, max_output_bytes: int = 1 << 30) -> None:
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="blindai-infer")

    async def infer(
        self, model: LoadedModel, inputs: Mapping[str, npt.NDArray[Any]], requested: list[str] | None
    ) -> dict[str, npt.NDArray[Any]]:
        # Checking converts string inputs element by element: a worker thread does it, not the loop.
        feed = await asyncio.to_thread(model.check_inputs, inputs)
        names = model.output_names(requested)
        options = ort.RunOptions()
        loop = asyncio.get_running_loop()
        async with model.turn():
            # Setting `terminate` from the loop thread makes onnxruntime abort the run at its
            # next check, freeing the worker; the clock starts when the run does, not in the queue.
            timer = loop.call_later(self.timeout_s, setattr, options, "terminate", True)
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._pool, model.run, feed, names, options)
            except Exception as exc:
                if options.terminate:
                    raise ServerError(f"inference exceeded the {self.timeout_s:g} s time limit", status=504) from exc
                if isinstance(exc, MemoryError) or any(m in str(exc) for m in _OUT_OF_MEMORY):
                    raise ServerError(
                        f"inference needs more memory than the server's limit ({_MEMORY_LIMIT} bytes)", status=507
                    ) from exc
                raise InvalidInputError(f"onnxruntime rejected the inputs: {_short(exc)}", status=422) from exc
            finally:
                timer.cancel()
        total = await asyncio.to_thread(lambda: sum(output_bytes(a) for a in outputs.values()))
        if total > self.max_output_bytes:
            raise ServerError(f"outputs of {total} bytes exceed the limit of {self.max_output_bytes}", status=507)
        log.debug("inference done in %.2f ms", (time.perf_counter() - start) * 1e3)
        return outputs

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
