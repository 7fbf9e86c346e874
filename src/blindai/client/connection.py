"""An attested connection: model management and inference over the pinned channel.

Made by `blindai.connect` (``client/connect.py``) once the server's evidence
verified; every TLS handshake of its connection pool is checked against the attested
key (``attestation/channel.py``), so a reconnection cannot land on another server.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h11
import httpx
import numpy as np
import numpy.typing as npt

from ..attestation.binding import load_certificate
from ..attestation.channel import is_pin_failure, pinned_context
from ..attestation.evidence import VerifiedAttestation
from ..errors import (
    BindingError,
    BlindAIError,
    Check,
    InvalidInputError,
    ModelHashMismatchError,
    ModelNotFoundError,
    PermissionDeniedError,
    ServerError,
    TransportError,
)
from ..protocol.error_body import decode_error
from ..protocol.infer import HEADER_LENGTH, decode_response, encode_request
from ..protocol.models import (
    MODEL_NAME,
    MODEL_PUBLIC,
    MODEL_SHA256,
    OWNER_TOKENS,
    ModelInfo,
    ModelInfoError,
    TensorInfo,
    decode_model_list,
    decode_upload_answer,
)
from ..protocol.tensors import TensorError, cast_exact
from .wire import PinnedHTTP, Reply

__all__ = ["Connection", "ModelInfo", "RunResult", "TensorInfo"]

DEFAULT_TIMEOUT = 60.0
UPLOAD_CHUNK = 1 << 20
ProgressCallback = Callable[[int, int], None]


_T = TypeVar("_T")


def _answer(decode: Callable[[object], _T], resp: httpx.Response) -> _T:
    """A model-management answer, decoded by its ``protocol.models`` reader; malformed is typed."""
    try:
        return decode(resp.json())
    except (ValueError, ModelInfoError) as exc:  # JSONDecodeError is a ValueError
        raise BlindAIError(
            f"the server's answer to {resp.request.method} {resp.request.url.path} is malformed: {exc}"
        ) from None


@dataclass(frozen=True, slots=True)
class RunResult:
    """One inference's outputs, decoded from the server's binary tensors.

    Attributes:
        outputs: output name -> array, in the model's output order.
    """

    outputs: dict[str, npt.NDArray[Any]]

    @property
    def output(self) -> npt.NDArray[Any]:
        """The first output, for single-output models."""
        return next(iter(self.outputs.values()))


_STATUS_ERRORS: dict[int, type[ServerError]] = {
    400: InvalidInputError,
    401: PermissionDeniedError,
    403: PermissionDeniedError,
    404: ModelNotFoundError,
    409: InvalidInputError,
    412: ModelHashMismatchError,
    413: InvalidInputError,
    422: InvalidInputError,
}


def raise_for_status(resp: httpx.Response) -> None:
    """Turn an error answer into the typed `ServerError` for its status."""
    raise_for_status_code(resp.status_code, resp.content, resp.reason_phrase)


def raise_for_status_code(status: int, content: bytes, reason: str) -> None:
    """`raise_for_status` from the parts of an answer (the httpx-free hot path has no Response)."""
    if status < 400:
        return
    message = decode_error(content, reason or f"status {status}")
    raise _STATUS_ERRORS.get(status, ServerError)(message, status=status)


def _transport_error(method: str, url: str, exc: BaseException) -> BlindAIError:
    """A failed exchange, typed: a refused key is a BindingError (nothing was sent)."""
    if is_pin_failure(exc):
        return BindingError(
            "the attested port presented a TLS key that is not the one bound in the evidence "
            "(another server, or someone in between): nothing was sent",
            check=Check.TLS_PIN,
        )
    return TransportError(f"{method} {url} failed: {exc}")


# Model ids and names sent as they are on the hot path (httpx would leave them unchanged too);
# anything else, dot segments included, goes through httpx as before.
_PLAIN_ID = re.compile(r"(?=.*[A-Za-z0-9])[A-Za-z0-9._~-]{1,512}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def host_for_url(host: str) -> str:
    """Bracket IPv6 literals for URLs."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "numpy"))


def _as_array(value: Any) -> npt.NDArray[Any]:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


class Connection:
    """An attested connection. Use `blindai.connect` to make one; close it (or use ``with``).

    ``attestation`` holds the verified claims; ``certificate_pem`` is exactly the attested
    certificate (one certificate, PEM). Third-party clients should use `ssl_context`.
    """

    def __init__(
        self,
        *,
        host: str,
        attested_port: int,
        attestation: VerifiedAttestation,
        certificate_pem: str,
        http: httpx.Client,
        upload_token: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        """The server's host name or address, as given to ``connect``."""
        self.attested_port = attested_port
        """The TLS port whose key was attested."""
        self.attestation = attestation
        """What the server proved (TEE kind, measurements, TCB status, debug...), checked against the policy."""
        self.certificate_pem = certificate_pem
        """The attested TLS certificate (exactly one, PEM): every handshake of this connection must present it."""
        self._http = http
        self._upload_token = upload_token
        self._owner_tokens: dict[str, str] = {}
        self._metadata: dict[str, ModelInfo] = {}
        timeout = http.timeout
        # The inference hot path (client/wire.py): no I/O until the first run_model.
        self._wire = PinnedHTTP(
            host,
            attested_port,
            context or pinned_context(load_certificate(certificate_pem)),  # connect() passes httpx's own
            connect_timeout=timeout.connect,
            timeout=timeout.read,
        )

    # -- plumbing

    def request_raw(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request over the pinned channel, transport errors typed (a refused key is a BindingError)."""
        if self._http.is_closed:
            raise TransportError(f"{method} {url}: the connection is closed")
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(method, url, exc) from exc

    def _exchange(self, target: str, headers: list[tuple[str, str]], body: bytes) -> Reply:
        """A POST on the inference hot path (`wire.PinnedHTTP`): same channel, same typed errors."""
        if self._http.is_closed:
            raise TransportError(f"POST {target}: the connection is closed")
        try:
            reply = self._wire.exchange("POST", target, headers, body)
        except (OSError, h11.ProtocolError) as exc:  # ssl errors and timeouts are OSErrors
            raise _transport_error("POST", target, exc) from exc
        raise_for_status_code(reply.status, reply.body, reply.reason)
        return reply

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        resp = self.request_raw(method, url, **kwargs)
        raise_for_status(resp)
        return resp

    def ssl_context(self) -> ssl.SSLContext:
        """A new client context pinned to the attested key, for third-party clients (tritonclient...).

        It trusts only the attested certificate and, on standard-library sockets, checks the
        key again after every handshake. Host names are not checked: pass any host.
        """
        return pinned_context(load_certificate(self.certificate_pem))

    def close(self) -> None:
        """Close the pinned HTTP pool. Models stay on the server; owner tokens kept here are forgotten."""
        self._http.close()
        self._wire.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- models

    def upload_model(
        self,
        model: str | os.PathLike[str] | bytes | bytearray | memoryview | Any,
        *,
        name: str | None = None,
        progress: ProgressCallback | None = None,
        upload_token: str | None = None,
        public: bool = False,
    ) -> ModelInfo:
        """Upload an ONNX model (a path, its bytes, or an ``onnx.ModelProto``), streamed.

        The owner token the server returns is kept by this connection, so
        `delete_model` works without passing it; read it from
        `owner_token` to keep it elsewhere.

        Args:
            model: the ONNX model: a file path, its bytes, or an ``onnx.ModelProto``.
            name: a label shown by ``list_models`` (default: the file name).
            progress: called as ``progress(sent, total)`` while the body streams.
            upload_token: bearer token for servers that restrict uploads
                (default: the one given to ``connect``).
            public: list the model for every client of the server and let them find it by
                name (its id always works for whoever knows it); by default only callers
                presenting its owner token see it.
        """
        hints = {MODEL_PUBLIC: "true" if public else "false"}
        return self._upload(model, name=name, progress=progress, upload_token=upload_token, hints=hints)

    def _upload(
        self,
        model: str | os.PathLike[str] | bytes | bytearray | memoryview | Any,
        *,
        name: str | None = None,
        progress: ProgressCallback | None = None,
        upload_token: str | None = None,
        hints: Mapping[str, str] | None = None,
    ) -> ModelInfo:
        # ``hints``: the seed client's shape/datatype headers, not part of the public API.
        body, size, default_name = _model_body(model, progress)
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        if name or default_name:
            headers[MODEL_NAME] = name or default_name or ""
        headers.update(hints or {})
        token = upload_token or self._upload_token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = self._request("POST", "/v1/models", content=body, headers=headers)
        info, owner_token = _answer(decode_upload_answer, resp)
        self._owner_tokens[info.model_id] = owner_token
        self._metadata[info.model_id] = info
        return info

    def replace_model(
        self,
        model_id: str,
        model: str | os.PathLike[str] | bytes | bytearray | memoryview | Any,
        *,
        owner_token: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ModelInfo:
        """New weights under the same id (owner only); the old version serves until the new one is stored."""
        body, size, _ = _model_body(model, progress)
        token = owner_token or self._owner_tokens.get(model_id)
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        info = _answer(
            ModelInfo.from_json, self._request("PUT", f"/v1/models/{model_id}", content=body, headers=headers)
        )
        self._metadata[info.model_id] = info
        return info

    def owner_token(self, model_id: str) -> str | None:
        """The owner token of a model uploaded through this connection, to keep it beyond its lifetime.

        ``None`` for models uploaded elsewhere: the server keeps only a hash, so a lost token
        cannot be recovered.
        """
        return self._owner_tokens.get(model_id)

    def list_models(self, *, owner_tokens: Sequence[str] = ()) -> list[ModelInfo]:
        """Models this connection owns (tokens it received at upload, plus ``owner_tokens``) and public ones.

        The server lists only the models whose owner tokens the caller presents, so tenants do
        not see each other's models; the tokens travel in ``BlindAI-Owner-Tokens`` (attested TLS).
        """
        tokens = list(dict.fromkeys([*self._owner_tokens.values(), *owner_tokens]))
        headers = {OWNER_TOKENS: ",".join(tokens)} if tokens else {}
        return _answer(decode_model_list, self._request("GET", "/v1/models", headers=headers))

    def get_model(self, model_id: str) -> ModelInfo:
        """One model's description; raises ``ModelNotFoundError`` if the server does not hold it."""
        info = _answer(ModelInfo.from_json, self._request("GET", f"/v1/models/{model_id}"))
        self._metadata[info.model_id] = info
        return info

    def delete_model(self, model_id: str, *, owner_token: str | None = None) -> None:
        """Delete a model (owner only): from memory and, with a model store, from disk.

        Args:
            model_id: the id ``upload_model`` returned.
            owner_token: needed only for models uploaded through another connection;
                otherwise the token this connection kept is used.

        Raises ``PermissionDeniedError`` without the right token, ``ModelNotFoundError`` if absent.
        """
        token = owner_token or self._owner_tokens.get(model_id)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._request("DELETE", f"/v1/models/{model_id}", headers=headers)
        self._owner_tokens.pop(model_id, None)
        self._metadata.pop(model_id, None)

    def run_model(
        self,
        model_id: str,
        inputs: Mapping[str, Any] | Sequence[Any] | Any,
        *,
        model_sha256: str | None = None,
        outputs: list[str] | None = None,
    ) -> RunResult:
        """Run inference. ``inputs``: a name->array dict, a list of arrays in the model's input order,
        or one array (nested Python lists count as one array for a single-input model).
        Values are cast to the model's declared datatypes when no value changes (an int64 or
        float64 array for an FP32 model); otherwise the error names the ``astype`` to use.

        Arrays may be numpy arrays, torch tensors or anything ``np.asarray`` takes;
        they travel as binary tensors. With ``model_sha256`` the server refuses
        to run unless the model is exactly that one.
        """
        named = self._cast_inputs(model_id, self._name_inputs(model_id, inputs))
        chunks, head_len = encode_request(named, binary=True, outputs=outputs, binary_output=True)
        headers = {HEADER_LENGTH: str(head_len), "Content-Type": "application/octet-stream"}
        if model_sha256 is not None:
            headers[MODEL_SHA256] = model_sha256
        target, body = f"/v2/models/{model_id}/infer", b"".join(chunks)
        if _PLAIN_ID.fullmatch(model_id) and (model_sha256 is None or _SHA256.fullmatch(model_sha256)):
            reply = self._exchange(target, list(headers.items()), body)
            raw_len, content = reply.headers.get(HEADER_LENGTH.lower()), reply.body
        else:  # a name httpx would percent-encode, or a malformed pin: as before, through httpx
            resp = self._request("POST", target, content=body, headers=headers)
            raw_len, content = resp.headers.get(HEADER_LENGTH.lower()), resp.content
        try:
            out = decode_response(content, int(raw_len) if raw_len is not None else None)
        except ValueError as exc:
            raise BlindAIError(f"the server's response could not be decoded: {exc}") from exc
        return RunResult(out)

    def _cast_inputs(self, model_id: str, named: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Cast to the declared datatypes when no value changes (see ``protocol.tensors.cast_exact``)."""
        info = self._metadata.get(model_id)
        if info is None:
            try:
                info = self._metadata[model_id] = self.get_model(model_id)
            except ModelNotFoundError:
                return named  # the server will say so for the run itself
        declared = {s.name: s.datatype for s in info.inputs}
        try:
            return {n: cast_exact(n, a, declared[n]) if n in declared else a for n, a in named.items()}
        except TensorError as exc:
            raise InvalidInputError(str(exc)) from exc

    def _name_inputs(self, model_id: str, inputs: Any) -> dict[str, npt.NDArray[Any]]:
        if isinstance(inputs, Mapping):
            return {str(k): _as_array(v) for k, v in inputs.items()}
        info = self._metadata.get(model_id) or self.get_model(model_id)
        names = [s.name for s in info.inputs]
        arrays_only = isinstance(inputs, list | tuple) and all(_is_array(v) for v in inputs)
        if isinstance(inputs, list | tuple) and len(names) == 1 and not arrays_only:
            return {names[0]: _as_array(inputs)}  # nested Python lists: the one input's values
        if isinstance(inputs, list | tuple):
            if len(inputs) != len(names):
                raise InvalidInputError(f"model takes {len(names)} input(s) {names}, got a list of {len(inputs)}")
            return {n: _as_array(v) for n, v in zip(names, inputs, strict=True)}
        if len(names) != 1:
            raise InvalidInputError(f"model takes {len(names)} inputs {names}: pass a dict or a list")
        return {names[0]: _as_array(inputs)}


def _model_body(model: Any, progress: ProgressCallback | None) -> tuple[Iterator[bytes] | bytes, int, str | None]:
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InvalidInputError(f"cannot read model file {path}: {exc}") from exc
        return _file_chunks(path, size, progress), size, path.stem
    if isinstance(model, bytes | bytearray | memoryview):
        data = bytes(model)
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        raise InvalidInputError(f"model must be a path, bytes or an onnx.ModelProto, not {type(model).__name__}")
    if progress is None:
        return data, len(data), None
    return _bytes_chunks(data, progress), len(data), None


def _file_chunks(path: Path, size: int, progress: ProgressCallback | None) -> Iterator[bytes]:
    sent = 0
    with path.open("rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            sent += len(chunk)
            if progress is not None:
                progress(sent, size)
            yield chunk


def _bytes_chunks(data: bytes, progress: ProgressCallback) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), UPLOAD_CHUNK):
        chunk = view[start : start + UPLOAD_CHUNK]
        progress(start + len(chunk), len(view))
        yield bytes(chunk)
