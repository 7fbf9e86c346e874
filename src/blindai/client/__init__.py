"""Client SDK: :func:`connect` and the seed-compatible :class:`BlindAiClient`."""

from .connection import Connection, ModelInfo, RunResult, TensorInfo, connect
from .seed import BlindAiClient, ModelDatumType, RunModelResponse, UploadModelResponse

__all__ = [
    "BlindAiClient",
    "Connection",
    "ModelDatumType",
    "ModelInfo",
    "RunModelResponse",
    "RunResult",
    "TensorInfo",
    "UploadModelResponse",
    "connect",
]
