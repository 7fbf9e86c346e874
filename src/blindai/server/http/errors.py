"""The one table from the core's refusals to HTTP statuses, and the app's error handlers.

Every error body is ``{"error": message}``; the client SDK turns the status back into its
own exception (``blindai.errors``). A core class missing from the table would answer 500,
so a test walks every ``CoreError`` subclass and asserts it has a row here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...protocol.error_body import encode_error
from ...protocol.tensors import TensorError, TensorLimitError
from ...protocol.v06 import V06Error, V06LimitError, V06OutputError
from ..errors import (
    CapacityExceeded,
    Conflict,
    CoreError,
    DeadlineExceeded,
    Forbidden,
    InputRejected,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PinMismatch,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UnsupportedModel,
)

__all__ = ["HANDLERS", "PROTOCOL_STATUS", "STATUS", "RequestTimeout", "answer_of", "error_response", "status_of"]

log = logging.getLogger("blindai.server")


class RequestTimeout(CoreError):
    """A request's body did not arrive within its deadline (bytes per second or total)."""


STATUS: Final[Mapping[type[CoreError], int]] = {
    InvalidRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    RequestTimeout: 408,
    Conflict: 409,
    PinMismatch: 412,
    LimitExceeded: 413,
    UnsupportedModel: 422,
    InputRejected: 422,
    RateLimited: 429,
    Unavailable: 503,
    DeadlineExceeded: 504,
    CapacityExceeded: 507,
}

# Wire formats refuse what they cannot read with their own errors (protocol/ knows no status).
PROTOCOL_STATUS: Final[Mapping[type[ValueError], int]] = {
    TensorLimitError: 413,
    TensorError: 400,
    V06LimitError: 413,
    V06OutputError: 422,
    V06Error: 400,
}

# What the core cannot say without naming a header: how the token travels on this wire.
_HINTS: Final[Mapping[type[CoreError], str]] = {Unauthenticated: "send it as Authorization: Bearer <token>"}


def status_of(exc: Exception) -> int:
    """The status of the nearest class in ``exc``'s MRO that has a row in either table; 500 if none does."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
        if cls in PROTOCOL_STATUS:
            return PROTOCOL_STATUS[cls]
    return 500


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": message}``, closing the connection.

    An error may come before the body was read (unknown model, too large, too slow): closing
    stops the client from sending it, instead of the server reading it to discard.
    """
    return JSONResponse(encode_error(message), status_code=status, headers={"Connection": "close"})


def _message(exc: CoreError) -> str:
    hint = next((_HINTS[c] for c in type(exc).__mro__ if c in _HINTS), None)
    return f"{exc.message}; {hint}" if hint else exc.message


def answer_of(exc: Exception) -> tuple[int, str]:
    """The status and message an exception is answered with (500s logged, their details kept out)."""
    if isinstance(exc, CoreError):
        status = status_of(exc)
        if status == 500:
            log.error("core error with no status row: %s", type(exc).__name__, exc_info=exc)
            return 500, "internal server error"
        return status, _message(exc)
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    status = status_of(exc)
    if status == 500:
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
        return 500, "internal server error"
    return status, str(exc)


async def _on_error(_req: Request, exc: Exception) -> Response:
    return error_response(*answer_of(exc))


HANDLERS: Final[dict[Any, Any]] = {
    CoreError: _on_error,
    TensorError: _on_error,
    V06Error: _on_error,
    HTTPException: _on_error,
    Exception: _on_error,
}
