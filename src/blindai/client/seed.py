"""The original BlindAI tutorial API, kept so its code runs unchanged.

``BlindAiClient().connect_server(...)``, ``upload_model(model, shape, dtype,
dtype_out)`` and ``run_model(flat_list)`` map onto `blindai.connect`.
Flat lists are reshaped with the shape given at upload; that shape travels to
the server as a hint.

Which model ``run_model`` runs is never "whatever was uploaded last": that would run
a stranger's upload on this user's data. It runs the model this client uploaded; else
the one its user last uploaded to that server from this machine (the tutorial's second
script, recorded in the user's config folder, pinned by hash); else the only model of
a single-model server; otherwise it refuses and says to pass ``model_id=``.
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
from ..protocol.models import INPUT_DATATYPE, INPUT_SHAPE, OUTPUT_DATATYPE
from ..protocol.v06 import DATUM_TYPES
from . import tokens
from .connect import connect
from .connection import Connection, ModelInfo

__all__ = ["BlindAiClient", "ModelDatumType", "RunModelResponse", "UploadModelResponse"]


class ModelDatumType(IntEnum):
    """The seed's tensor datatypes, numbered as BlindAI 0.6 numbered them on the wire.

    ``upload_model`` maps them onto Open Inference Protocol datatypes (``F32`` -> ``FP32``...).
    """

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


_OIP = {ModelDatumType(code): datatype for code, datatype in enumerate(DATUM_TYPES)}  # one table: protocol/v06.py


@dataclass(frozen=True)
class UploadModelResponse:
    """What the seed's ``upload_model`` returned: the id, and the hash to check the model by."""

    model_id: str
    sha256: str


@dataclass(frozen=True)
class RunModelResponse:
    """The seed's answer shape: ``output`` is a flat list, whatever the model's output shape."""

    output: list[Any]
    model_id: str


class BlindAiClient:
    """Seed-compatible client; new code should prefer `blindai.connect`."""

    def __init__(self, debug_mode: bool = False) -> None:
        self.debug_mode = debug_mode
        self._conn: Connection | None = None
        self._model: ModelInfo | None = None

    @property
    def connection(self) -> Connection:
        """The attested `Connection` underneath, for the new API; raises before ``connect_server``."""
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
        **connect_kwargs: Any,
    ) -> None:
        """Attest the server, then connect. ``server_name`` and ``certificate`` are accepted
        for compatibility: the attested key is pinned directly, which is stronger. Other
        keyword arguments (``unsafe_trust_roots``, ``now``, ``collateral_url``...) go to
        `blindai.connect`."""
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
            **connect_kwargs,
        )

    def upload_model(
        self,
        model: str | os.PathLike[str] | bytes | Any,
        shape: tuple[int, ...] | list[int] | Any | None = None,
        dtype: ModelDatumType = ModelDatumType.F32,
        dtype_out: ModelDatumType = ModelDatumType.F32,
    ) -> UploadModelResponse:
        """Upload a model over the attested channel, as the seed did.

        ``shape``, ``dtype`` and ``dtype_out`` travel to the server as hints, so that
        ``run_model`` can take a flat list and return one. The owner token is saved in the
        user's config folder, so a later script can find and delete the model.
        """
        hints = {
            INPUT_DATATYPE: _OIP[ModelDatumType(dtype)],
            OUTPUT_DATATYPE: _OIP[ModelDatumType(dtype_out)],
        }
        if shape is not None:
            hints[INPUT_SHAPE] = ",".join(str(int(d)) for d in tuple(shape))
        conn = self.connection
        self._model = conn._upload(model, hints=hints)
        token = conn.owner_token(self._model.model_id)
        try:
            tokens.set_seed_last_upload(conn.host, conn.attested_port, self._model.model_id, self._model.sha256)
            if token:
                tokens.save_token(self._model.model_id, token)
        except OSError:
            pass  # a read-only home only costs the second script its shortcut
        return UploadModelResponse(self._model.model_id, self._model.sha256)

    def run_model(self, data_list: Any, *, model_id: str | None = None) -> RunModelResponse:
        """Run this client's model (see the module docstring for which one), or ``model_id``."""
        model = self._pick(model_id)
        hints = model.hints
        spec = model.inputs[0]
        dtype_name = hints.get("input_datatype", spec.datatype)
        from ..protocol.tensors import numpy_dtype

        data = np.asarray(data_list, dtype=numpy_dtype(dtype_name)).reshape(-1)
        shape = tuple(hints["input_shape"]) if "input_shape" in hints else _infer_shape(spec.shape, data.size)
        if math.prod(shape) != data.size:
            raise InvalidInputError(f"{data.size} values do not fit the upload shape {list(shape)}")
        result = self.connection.run_model(model.model_id, {spec.name: data.reshape(shape)}, model_sha256=model.sha256)
        out = result.output
        if "output_datatype" in hints:
            out = out.astype(numpy_dtype(hints["output_datatype"]))
        return RunModelResponse(out.reshape(-1).tolist(), model.model_id)

    def _pick(self, model_id: str | None) -> ModelInfo:
        conn = self.connection
        if model_id is not None:
            return conn.get_model(model_id)
        if self._model is not None:
            return self._model
        last = tokens.seed_last_upload(conn.host, conn.attested_port)
        if last is not None:
            # The user's own upload, or nothing: once a record exists, never fall back to a model
            # that happens to be there (after a restart it could be anyone's).
            try:
                info = conn.get_model(last["model_id"])
            except ModelNotFoundError:
                info = None
            if info is None or info.sha256 != last["sha256"]:
                raise ModelNotFoundError(
                    f"the model you last uploaded to this server ({last['model_id']}) is no longer there "
                    "(or has changed): upload it again, or pass run_model(data, model_id=...)",
                    status=404,  # the server's answer (404, or another model under that id)
                )
            self._model = info
            return info
        # The server lists only models whose owner tokens are presented (and public ones).
        models = conn.list_models(owner_tokens=list(tokens.load_tokens().values()))
        if len(models) == 1:
            self._model = models[0]
            return models[0]
        if not models:
            raise ModelNotFoundError("no model to run: upload one with upload_model() first", status=404)
        raise InvalidInputError(
            f"this server holds {len(models)} models and none was uploaded by this client: pass "
            "run_model(data, model_id=...) with the id upload_model() returned, so that your data "
            "never goes to a model someone else uploaded",
        )

    def close_connection(self) -> None:
        """Close the attested connection (``close`` is the same); uploaded models stay on the server."""
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
    )
