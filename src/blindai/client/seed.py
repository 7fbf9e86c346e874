"""The original BlindAI tutorial API, kept so its code runs unchanged.

``BlindAiClient().connect_server(...)``, ``upload_model(model, shape, dtype,
dtype_out)`` and ``run_model(flat_list)`` map onto :func:`blindai.connect`.
Flat lists are reshaped with the shape given at upload; that shape travels to
the server as a hint, so a new client (the tutorial's second script) can run the
last uploaded model without uploading it again.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelNotFoundError
from .connection import Connection, ModelInfo, connect

__all__ = ["BlindAiClient", "ModelDatumType", "RunModelResponse", "UploadModelResponse"]


class ModelDatumType(IntEnum):
    F32 = 0
    F64 = 1
    I32 = 2
    I64 = 3
    U32 = 4
    U64 = 5
    U8 = 6
    U16 = 7
    I8 = 8
    I16 = 9
    Bool = 10


_OIP = {
    ModelDatumType.F32: "FP32",
    ModelDatumType.F64: "FP64",
    ModelDatumType.I32: "INT32",
    ModelDatumType.I64: "INT64",
    ModelDatumType.U32: "UINT32",
    ModelDatumType.U64: "UINT64",
    ModelDatumType.U8: "UINT8",
    ModelDatumType.U16: "UINT16",
    ModelDatumType.I8: "INT8",
    ModelDatumType.I16: "INT16",
    ModelDatumType.Bool: "BOOL",
}


@dataclass(frozen=True)
class UploadModelResponse:
    model_id: str
    sha256: str


@dataclass(frozen=True)
class RunModelResponse:
    output: list[Any]
    model_id: str


class BlindAiClient:
    """Seed-compatible client; new code should prefer :func:`blindai.connect`."""

    def __init__(self, debug_mode: bool = False) -> None:
        self.debug_mode = debug_mode
        self._conn: Connection | None = None
        self._model: ModelInfo | None = None

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("call connect_server() first")
        return self._conn

    def connect_server(
        self,
        addr: str,
        server_name: str = "blindai-srv",
        policy: str | os.PathLike[str] | None = None,
        certificate: str | os.PathLike[str] | None = None,
        simulation: bool = False,
        untrusted_port: int = 50052,
        attested_port: int = 50051,
    ) -> None:
        """Attest the server, then connect. ``server_name`` and ``certificate`` are accepted
        for compatibility: the attested key is pinned directly, which is stronger."""
        if certificate is not None:
            warnings.warn(
                "certificate= is ignored: the unattested port carries only public evidence, "
                "and the attested port is pinned to the key bound in that evidence",
                DeprecationWarning,
                stacklevel=2,
            )
        self.close_connection()
        self._conn = connect(
            addr,
            attested_port=attested_port,
            unattested_port=untrusted_port,
            policy=policy,
            simulation=simulation,
        )

    def upload_model(
        self,
        model: str | os.PathLike[str] | bytes | Any,
        shape: tuple[int, ...] | list[int] | Any | None = None,
        dtype: ModelDatumType = ModelDatumType.F32,
        dtype_out: ModelDatumType = ModelDatumType.F32,
    ) -> UploadModelResponse:
        hints = {
            "BlindAI-Input-Datatype": _OIP[ModelDatumType(dtype)],
            "BlindAI-Output-Datatype": _OIP[ModelDatumType(dtype_out)],
        }
        if shape is not None:
            hints["BlindAI-Input-Shape"] = ",".join(str(int(d)) for d in tuple(shape))
        self._model = self.connection.upload_model(model, _hints=hints)
        return UploadModelResponse(self._model.model_id, self._model.sha256)

    def run_model(self, data_list: Any) -> RunModelResponse:
        """Run the model this client uploaded, or else the server's latest upload."""
        model = self._model or self._latest()
        hints = model.hints
        spec = model.inputs[0]
        dtype_name = hints.get("input_datatype", spec.datatype)
        from ..protocol.tensors import numpy_dtype

        data = np.asarray(data_list, dtype=numpy_dtype(dtype_name)).reshape(-1)
        shape = tuple(hints["input_shape"]) if "input_shape" in hints else _infer_shape(spec.shape, data.size)
        if math.prod(shape) != data.size:
            raise InvalidInputError(f"{data.size} values do not fit the upload shape {list(shape)}", status=400)
        result = self.connection.run_model(model.model_id, {spec.name: data.reshape(shape)})
        out = result.output
        if "output_datatype" in hints:
            out = out.astype(numpy_dtype(hints["output_datatype"]))
        return RunModelResponse(out.reshape(-1).tolist(), model.model_id)

    def _latest(self) -> ModelInfo:
        models = self.connection.list_models()
        if not models:
            raise ModelNotFoundError("no model has been uploaded to this server", status=404)
        return models[-1]

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    close = close_connection

    def __enter__(self) -> BlindAiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close_connection()


def _infer_shape(declared: tuple[int, ...], size: int) -> tuple[int, ...]:
    dynamic = [i for i, d in enumerate(declared) if d < 0]
    fixed = math.prod(d for d in declared if d >= 0)
    if not dynamic:
        return declared
    if len(dynamic) == 1 and fixed and size % fixed == 0:
        return tuple(size // fixed if d < 0 else d for d in declared)
    if len(declared) >= 2 and dynamic[0] == 0 and len(dynamic) == 2 and fixed and size % fixed == 0:
        return tuple(1 if i == 0 else (size // fixed if d < 0 else d) for i, d in enumerate(declared))
    raise InvalidInputError(
        f"cannot tell how to reshape {size} values for input shape {list(declared)}: pass shape= to upload_model",
        status=400,
    )
