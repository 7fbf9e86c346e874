"""Model metadata on the wire: one encode/decode pair that server and client both use, and
the names of BlindAI's own request headers.

The server builds a `ModelInfo` and sends ``to_json()``; the client reads the answer with
``from_json``, which checks every field's type before anything is trusted (a model id is a
path segment of later requests, a digest is compared with the caller's pin). Header names
live here once: starlette reads headers case-insensitively, so both sides use these spellings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import ProtocolError
from .tensors import DATATYPES

__all__ = [
    "INPUT_DATATYPE",
    "INPUT_SHAPE",
    "MODEL_NAME",
    "MODEL_PUBLIC",
    "MODEL_SHA256",
    "OUTPUT_DATATYPE",
    "OWNER_TOKENS",
    "ModelInfo",
    "ModelInfoError",
    "TensorInfo",
    "decode_model_list",
    "decode_upload_answer",
    "encode_model_list",
    "encode_upload_answer",
    "is_sha256_hex",
]

MODEL_NAME: Final = "BlindAI-Model-Name"
"""Upload: the model's label (also accepted as the ``name`` query parameter)."""
MODEL_PUBLIC: Final = "BlindAI-Model-Public"
"""Upload: ``true`` lists the model to every caller; private (``false``) is the default."""
MODEL_SHA256: Final = "BlindAI-Model-SHA256"
"""Inference: the SHA-256 the caller pins; any other model is refused (412) before the body is read."""
OWNER_TOKENS: Final = "BlindAI-Owner-Tokens"
"""Listing: comma-separated owner tokens; a private model is listed only to its owner."""
INPUT_SHAPE: Final = "BlindAI-Input-Shape"
"""Upload, seed client: the input shape the 0.6-style ``run_model`` fills."""
INPUT_DATATYPE: Final = "BlindAI-Input-Datatype"
"""Upload, seed client: the input datatype the 0.6-style ``run_model`` sends."""
OUTPUT_DATATYPE: Final = "BlindAI-Output-Datatype"
"""Upload, seed client: the output datatype the 0.6-style ``run_model`` returns."""


def is_sha256_hex(value: object) -> bool:
    """A SHA-256 digest as text: 64 ASCII hex digits, either case (a pin, a model's ``sha256``).

    Anything else never reaches ``hmac.compare_digest`` (a non-ASCII str raises there).
    """
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


class ModelInfoError(ProtocolError):
    """A model description does not have the documented shape (the message names the field)."""


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    if key not in obj:
        if default is None:
            raise ModelInfoError(f"model description has no {key!r}")
        return default
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelInfoError(f"model description's {key!r} is {type(value).__name__}, not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output as the model declares it, so callers can build matching arrays.

    Attributes:
        name: the tensor's name in the ONNX graph (the key for ``run_model`` inputs and outputs).
        datatype: Open Inference Protocol datatype (``FP32``, ``INT64``, ...).
        shape: declared dimensions; ``-1`` where the model leaves one free (batch, sequence).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"name", "datatype", "shape"}`` as in OIP model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: object) -> TensorInfo:
        """Checked: a string name, a datatype BlindAI knows, a list of integer dimensions (>= -1)."""
        if not isinstance(obj, Mapping):
            raise ModelInfoError(f"a tensor description is {type(obj).__name__}, not an object")
        name, datatype = _field(obj, "name", str), _field(obj, "datatype", str)
        if datatype not in DATATYPES:
            raise ModelInfoError(f"tensor {name!r} has datatype {datatype[:20]!r}, not one of {list(DATATYPES)}")
        shape = _field(obj, "shape", list)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise ModelInfoError(f"tensor {name!r} has a shape that is not a list of integers >= -1")
        return cls(name, datatype, tuple(shape))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server stored: pin ``sha256`` in ``run_model`` so data only ever reaches this model.

    Attributes:
        model_id: random id the server gave the upload; the name for every later call.
        name: the uploader's label (not unique, not checked).
        sha256: SHA-256 of the ONNX bytes as the server received them.
        size: size of the model in bytes.
        created_at: when the server stored it (ISO 8601, UTC).
        inputs: declared inputs, in the model's order.
        outputs: declared outputs, in the model's order.
        hints: shape and datatype hints recorded for the seed-compatible client.
    """

    model_id: str
    name: str
    sha256: str
    size: int
    created_at: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    hints: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Public metadata: what ``/v1/models`` answers (never an owner token or its hash)."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "created_at": self.created_at,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "hints": dict(self.hints),
        }

    @classmethod
    def from_json(cls, obj: object) -> ModelInfo:
        """Read a server's description of a model, every field type-checked.

        ``model_id`` and ``sha256`` are required (an id must be a URL-safe token, a digest
        64 hex digits); the others default when absent, as older servers may omit them.
        """
        if not isinstance(obj, Mapping):
            raise ModelInfoError(f"a model description is {type(obj).__name__}, not an object")
        model_id = _field(obj, "model_id", str)
        if (
            not model_id
            or len(model_id) > 128
            or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in model_id)
        ):
            raise ModelInfoError("model description's 'model_id' is not a token of letters, digits, '-', '_', '.'")
        sha256 = _field(obj, "sha256", str)
        if not is_sha256_hex(sha256):
            raise ModelInfoError("model description's 'sha256' is not 64 hex digits")
        size = _field(obj, "size", int, 0)
        if size < 0:
            raise ModelInfoError("model description's 'size' is negative")
        return cls(
            model_id=model_id,
            name=_field(obj, "name", str, ""),
            sha256=sha256.lower(),
            size=size,
            created_at=_field(obj, "created_at", str, ""),
            inputs=tuple(TensorInfo.from_json(s) for s in _field(obj, "inputs", list, [])),
            outputs=tuple(TensorInfo.from_json(s) for s in _field(obj, "outputs", list, [])),
            hints=dict(_field(obj, "hints", dict, {})),
        )


def encode_upload_answer(info: ModelInfo, owner_token: str) -> dict[str, Any]:
    """An upload's answer: the description plus the owner token (shown once, never stored in clear)."""
    return {**info.to_json(), "owner_token": owner_token}


def decode_upload_answer(obj: object) -> tuple[ModelInfo, str]:
    """The description and the owner token of an upload's answer."""
    info = ModelInfo.from_json(obj)
    assert isinstance(obj, Mapping)
    token = _field(obj, "owner_token", str)
    if not token:
        raise ModelInfoError("the upload answer's 'owner_token' is empty")
    return info, token


def encode_model_list(infos: Sequence[ModelInfo]) -> dict[str, Any]:
    """``{"models": [...]}``, the listing's answer."""
    return {"models": [i.to_json() for i in infos]}


def decode_model_list(obj: object) -> list[ModelInfo]:
    """The descriptions of a listing's answer."""
    if not isinstance(obj, Mapping):
        raise ModelInfoError(f"a model listing is {type(obj).__name__}, not an object")
    return [ModelInfo.from_json(m) for m in _field(obj, "models", list)]
