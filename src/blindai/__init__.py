"""BlindAI: confidential inference for ONNX models inside a TEE.

The client verifies the server's hardware-signed evidence against a policy and
checks that the TLS key it talks to is bound into that evidence before it sends
any model or data. See ``blindai.connect``.
"""

from ._version import __version__
from .attestation import Policy, VerifiedAttestation, load_policy
from .client import (
    BlindAiClient,
    Connection,
    Endpoint,
    ModelDatumType,
    ModelInfo,
    ReplicaSet,
    RunResult,
    attest,
    connect,
    connect_replicas,
)
from .errors import (
    AttestationError,
    BindingError,
    BlindAIError,
    CollateralError,
    EvidenceParseError,
    InvalidInputError,
    ModelHashMismatchError,
    ModelNotFoundError,
    PermissionDeniedError,
    PolicyError,
    ServerError,
    SignatureError,
    SimulationModeWarning,
    SimulationRefusedError,
    TransportError,
)

__all__ = [
    "AttestationError",
    "BindingError",
    "BlindAIError",
    "BlindAiClient",
    "CollateralError",
    "Connection",
    "Endpoint",
    "EvidenceParseError",
    "InvalidInputError",
    "ModelDatumType",
    "ModelHashMismatchError",
    "ModelInfo",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "Policy",
    "PolicyError",
    "ReplicaSet",
    "RunResult",
    "ServerError",
    "SignatureError",
    "SimulationModeWarning",
    "SimulationRefusedError",
    "TransportError",
    "VerifiedAttestation",
    "__version__",
    "attest",
    "connect",
    "connect_replicas",
    "load_policy",
]
