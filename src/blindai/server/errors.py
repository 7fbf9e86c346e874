"""What the server core refuses, said in its own words: no status code, no header name.

The store, vetting, inference and body budgets raise these; ``server/http/errors.py``
holds the one table that turns each class into an HTTP status, so a change of wire
(another status, another protocol) never touches the core, and a core test asserts a
domain class rather than a number. The client's own tree (``blindai.errors``) is what
the SDK raises after reading a status; the server never raises it.

::

    CoreError
    +-- InvalidRequest       a field of the request is malformed (hints, names, pins, inputs)
    +-- UnsupportedModel     the bytes are not a model this server will load and run
    +-- InputRejected        onnxruntime refused inputs that passed our own checks
    +-- LimitExceeded        a request is over a size limit; nothing was kept
    +-- NotFound             no such model (or not one this caller may see)
    +-- Conflict             a name answers to more than one model
    +-- PinMismatch          the model's SHA-256 is not the one the caller pinned
    +-- Unauthenticated      a token is required and none was given
    +-- Forbidden            the token given is not accepted
    +-- Unavailable          a shared budget is full or the model is changing: retry
    +-- RateLimited          too many fresh-evidence requests: retry later
    +-- CapacityExceeded     the store, model count, memory or output limit is reached
    +-- DeadlineExceeded     inference ran past its time limit
"""

from __future__ import annotations

__all__ = [
    "CapacityExceeded",
    "Conflict",
    "CoreError",
    "DeadlineExceeded",
    "Forbidden",
    "InputRejected",
    "InvalidRequest",
    "LimitExceeded",
    "NotFound",
    "PinMismatch",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedModel",
]


class CoreError(Exception):
    """Base of every refusal the server core makes; ``message`` is safe to show the caller."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class InvalidRequest(CoreError):
    """A request field is malformed or does not fit the model (the caller must change it)."""


class UnsupportedModel(CoreError):
    """The uploaded bytes are not a model this server accepts (format, operators, sizes, types)."""


class InputRejected(CoreError):
    """onnxruntime refused inputs that passed the server's own checks."""


class LimitExceeded(CoreError):
    """The request is over a configured size limit; nothing of it was kept."""


class NotFound(CoreError):
    """No model answers to this reference for this caller."""


class Conflict(CoreError):
    """A name answers to more than one model, or would."""


class PinMismatch(CoreError):
    """The model's SHA-256 differs from the one the caller pinned."""


class Unauthenticated(CoreError):
    """An upload or owner token is required and none was given."""


class Forbidden(CoreError):
    """The token given is not accepted for this action."""


class Unavailable(CoreError):
    """A shared budget is full, the TEE cannot answer, or the model is changing: retry shortly."""


class RateLimited(CoreError):
    """Too many fresh-evidence requests in the current window."""


class CapacityExceeded(CoreError):
    """A server-wide capacity (store bytes, model count, inference memory, output size) is reached."""


class DeadlineExceeded(CoreError):
    """Inference ran past the server's time limit and was abandoned."""
