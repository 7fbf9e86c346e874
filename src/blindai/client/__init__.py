"""Client SDK: `connect` and the seed-compatible `BlindAiClient`."""

from .cluster import Endpoint, ReplicaSet, connect_replicas
from .connect import attest, connect
from .connection import Connection, ModelInfo, RunResult, TensorInfo
from .seed import BlindAiClient, ModelDatumType, RunModelResponse, UploadModelResponse

__all__ = [
    "BlindAiClient",
    "Connection",
    "Endpoint",
    "ReplicaSet",
    "ModelDatumType",
    "ModelInfo",
    "RunModelResponse",
    "RunResult",
    "TensorInfo",
    "UploadModelResponse",
    "attest",
    "connect",
    "connect_replicas",
]
