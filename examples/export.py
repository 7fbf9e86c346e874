"""One way to turn a torch module into ONNX bytes, used by the demo, examples, tests and benchmarks.

Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra
package and handles the transformers models used here. Needs ``blindai[examples]``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["OPSET", "export_onnx", "quiet_transformers"]

OPSET = 17


def quiet_transformers() -> None:
    """Offline and silent: no hub look-ups, no progress bars in our output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def export_onnx(
    module: Any,
    args: tuple[Any, ...],
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    path: Path | None = None,
) -> bytes:
    """Export ``module`` in eval mode; returns the model bytes (and writes ``path`` atomically if given)."""
    import torch

    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buf,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes or {},
            opset_version=OPSET,
            dynamo=False,
        )
    data = buf.getvalue()
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data
