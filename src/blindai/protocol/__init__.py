"""Wire types and codecs shared by client and server (no transport, no I/O)."""

from .infer import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from .tensors import DATATYPES, TensorError, datatype_of, numpy_dtype

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferRequest",
    "RequestedOutput",
    "TensorError",
    "datatype_of",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "numpy_dtype",
]
