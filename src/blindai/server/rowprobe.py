"""A second, independent check before a model is batched: its rows run together must equal its rows run alone.

``rowwise.rows_mixed`` proves row independence from the graph; four red-team rounds each found
places where that analysis misread an operator, and every model they built mixed rows on any
input. This probe runs the loaded session on three random rows at once and on each alone and
compares: a model the analysis wrongly proved is caught unless its mixing also depends on the
values sent (an analysis error *and* a trigger hidden from random inputs). It is defence in
depth, never a proof: only the analysis lets a model be batched, and only this probe's
agreement keeps it batched. It runs once per model, in the background after loading (batching
starts when it passes), under a time limit, with the server's memory cap on onnxruntime.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..protocol.models import TensorInfo
from ..protocol.tensors import DATATYPES

__all__ = ["PROBE_ROWS", "PROBE_TIMEOUT_S", "rows_differ"]

PROBE_ROWS = 3
PROBE_TIMEOUT_S = 10.0
_FREE_SIZES = (8, 128, 2048)  # sizes tried for the dimensions a model leaves free, other than the batch


def rows_differ(session: Any, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> str | None:
    """None if each of ``PROBE_ROWS`` rows (zeros, then random) gives the same outputs alone as in one batch."""
    import onnxruntime as ort

    rng = np.random.default_rng()
    names = [spec.name for spec in outputs]
    options = ort.RunOptions()
    options.log_severity_level = 4  # a size the model refuses is tried, not reported
    timer = threading.Timer(PROBE_TIMEOUT_S, setattr, (options, "terminate", True))
    timer.start()
    try:
        # Free dimensions (a sequence, a signal) get the first size the model accepts: convolutions
        # need a long enough signal, position tables a short enough sequence.
        for size in _FREE_SIZES:
            feed = {spec.name: _rows(spec, rng, size) for spec in inputs}
            try:
                together = session.run(names, feed, options)
            except Exception:  # onnxruntime raises several unrelated types
                if options.terminate:
                    return "the rows probe ran out of time"
                continue
            break
        else:
            return "the rows probe found no input size the model runs"
        alone = [session.run(names, {k: v[i : i + 1] for k, v in feed.items()}, options) for i in range(PROBE_ROWS)]
    except Exception as exc:  # a model that cannot run the probe is not batched
        return f"the rows probe did not run ({type(exc).__name__})"
    finally:
        timer.cancel()
    for name, whole, parts in zip(names, together, zip(*alone, strict=True), strict=True):
        whole = np.asarray(whole)
        if whole.ndim == 0 or whole.shape[0] != PROBE_ROWS:
            return f"rows probe: output {name!r} has {whole.shape[:1]} rows for {PROBE_ROWS} input rows"
        for i, part in enumerate(parts):
            if not _same(whole[i : i + 1], np.asarray(part), exact=i == 0):
                return f"rows probe: output {name!r}, row {i} differs run alone and run with other rows"
    return None


def _rows(spec: TensorInfo, rng: np.random.Generator, free: int) -> npt.NDArray[Any]:
    """Random rows, the first all zeros (empty strings): compared exactly, it shows even a tiny
    share of the other rows, which a tolerance for kernels' summing order would hide."""
    shape = (PROBE_ROWS, *(d if d >= 0 else free for d in spec.shape[1:]))
    if spec.datatype == "BYTES":
        rows = rng.choice(np.array(["a", "b", "c"], dtype=object), size=shape)
        rows[0] = ""
        return rows
    dtype = DATATYPES[spec.datatype]
    # Small indices for integers: valid for embeddings, masks, token types.
    rows = rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)
    rows = rows.astype(dtype)
    rows[0] = 0
    return rows


def _same(a: npt.NDArray[Any], b: npt.NDArray[Any], *, exact: bool) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and not exact:
        # Kernels may sum in another order for another batch size: a tolerance for that, far below
        # what one row's share of another would add.
        return bool(np.allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
