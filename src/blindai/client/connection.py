"""The client SDK: attest first, then talk only to the attested key.

``connect()`` fetches evidence with a fresh random nonce from the unattested
port, verifies it, checks that it binds the server's TLS public key and the
nonce, and only then opens TLS to the attested port trusting exactly that
certificate. No model or input byte is sent before all of that passed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import os
import secrets
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from ..attestation.binding import MAX_NONCE_BYTES, spki_sha256
from ..attestation.evidence import VerifiedAttestation
from ..attestation.policy import Policy, load_policy
from ..attestation.verify import TrustOptions, verify_server_attestation
from ..errors import (
    AttestationError,
    BindingError,
    BlindAIError,
    EvidenceParseError,
    InvalidInputError,
    ModelHashMismatchError,
    ModelNotFoundError,
    PermissionDeniedError,
    ServerError,
    TransportError,
)
from ..protocol.infer import HEADER_LENGTH, decode_response, encode_request

__all__ = ["Connection", "ModelInfo", "RunResult", "TensorInfo", "connect"]

DEFAULT_TIMEOUT = 60.0
UPLOAD_CHUNK = 1 << 20
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    name: str
    sha256: str
    size: int
    created_at: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    hints: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelInfo:
        def specs(key: str) -> tuple[TensorInfo, ...]:
            return tuple(TensorInfo(s["name"], s["datatype"], tuple(s["shape"])) for s in obj.get(key, []))

        return cls(
            model_id=obj["model_id"],
            name=obj.get("name", ""),
            sha256=obj["sha256"],
            size=int(obj.get("size", 0)),
            created_at=obj.get("created_at", ""),
            inputs=specs("inputs"),
            outputs=specs("outputs"),
            hints=dict(obj.get("hints") or {}),
        )


@dataclass(frozen=True, slots=True)
class RunResult:
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


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        message = str(resp.json().get("error", resp.text))
    except (ValueError, AttributeError):
        message = resp.text[:500] or resp.reason_phrase
    raise _STATUS_ERRORS.get(resp.status_code, ServerError)(message, status=resp.status_code)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _as_array(value: Any) -> npt.NDArray[Any]:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


class Connection:
    """An attested connection. Use :func:`connect` to make one; close it (or use ``with``)."""

    def __init__(
        self,
        *,
        host: str,
        attested_port: int,
        attestation: VerifiedAttestation,
        certificate_pem: str,
        http: httpx.Client,
        upload_token: str | None = None,
    ) -> None:
        self.host = host
        self.attested_port = attested_port
        self.attestation = attestation
        self.certificate_pem = certificate_pem
        self._http = http
        self._upload_token = upload_token
        self._owner_tokens: dict[str, str] = {}
        self._metadata: dict[str, ModelInfo] = {}

    # -- plumbing

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {url} failed: {exc}") from exc
        _raise_for(resp)
        return resp

    def close(self) -> None:
        self._http.close()

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
        _hints: Mapping[str, str] | None = None,
    ) -> ModelInfo:
        """Upload an ONNX model (a path, its bytes, or an ``onnx.ModelProto``), streamed.

        The owner token the server returns is kept by this connection, so
        :meth:`delete_model` works without passing it; read it from
        :meth:`owner_token` to keep it elsewhere.
        """
        body, size, default_name = _model_body(model, progress)
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        if name or default_name:
            headers["BlindAI-Model-Name"] = name or default_name or ""
        headers.update(_hints or {})
        token = upload_token or self._upload_token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = self._request("POST", "/v1/models", content=body, headers=headers)
        obj = resp.json()
        info = ModelInfo.from_json(obj)
        self._owner_tokens[info.model_id] = obj["owner_token"]
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
        info = ModelInfo.from_json(self._request("PUT", f"/v1/models/{model_id}", content=body, headers=headers).json())
        self._metadata[info.model_id] = info
        return info

    def owner_token(self, model_id: str) -> str | None:
        return self._owner_tokens.get(model_id)

    def list_models(self, *, owner_tokens: Sequence[str] = ()) -> list[ModelInfo]:
        """Models this connection owns (tokens it received at upload, plus ``owner_tokens``) and public ones.

        The server lists only the models whose owner tokens the caller presents, so tenants do
        not see each other's models; the tokens travel in ``BlindAI-Owner-Tokens`` (attested TLS).
        """
        tokens = list(dict.fromkeys([*self._owner_tokens.values(), *owner_tokens]))
        headers = {"BlindAI-Owner-Tokens": ",".join(tokens)} if tokens else {}
        return [ModelInfo.from_json(m) for m in self._request("GET", "/v1/models", headers=headers).json()["models"]]

    def get_model(self, model_id: str) -> ModelInfo:
        info = ModelInfo.from_json(self._request("GET", f"/v1/models/{model_id}").json())
        self._metadata[info.model_id] = info
        return info

    def delete_model(self, model_id: str, *, owner_token: str | None = None) -> None:
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
        """Run inference. ``inputs``: a name->array dict, a list in the model's input order, or one array.

        Arrays may be numpy arrays, torch tensors or anything ``np.asarray`` takes;
        they travel as binary tensors. With ``model_sha256`` the server refuses
        to run unless the model is exactly that one.
        """
        named = self._name_inputs(model_id, inputs)
        chunks, head_len = encode_request(named, binary=True, outputs=outputs, binary_output=True)
        headers = {HEADER_LENGTH: str(head_len), "Content-Type": "application/octet-stream"}
        if model_sha256 is not None:
            headers["BlindAI-Model-SHA256"] = model_sha256
        resp = self._request("POST", f"/v2/models/{model_id}/infer", content=b"".join(chunks), headers=headers)
        raw_len = resp.headers.get(HEADER_LENGTH.lower())
        try:
            out = decode_response(resp.content, int(raw_len) if raw_len is not None else None)
        except ValueError as exc:
            raise BlindAIError(f"the server's response could not be decoded: {exc}") from exc
        return RunResult(out)

    def _name_inputs(self, model_id: str, inputs: Any) -> dict[str, npt.NDArray[Any]]:
        if isinstance(inputs, Mapping):
            return {str(k): _as_array(v) for k, v in inputs.items()}
        info = self._metadata.get(model_id) or self.get_model(model_id)
        names = [s.name for s in info.inputs]
        if isinstance(inputs, list | tuple):
            if len(inputs) != len(names):
                raise InvalidInputError(
                    f"model takes {len(names)} input(s) {names}, got a list of {len(inputs)}", status=400
                )
            return {n: _as_array(v) for n, v in zip(names, inputs, strict=True)}
        if len(names) != 1:
            raise InvalidInputError(f"model takes {len(names)} inputs {names}: pass a dict or a list", status=400)
        return {names[0]: _as_array(inputs)}


def _model_body(model: Any, progress: ProgressCallback | None) -> tuple[Iterator[bytes] | bytes, int, str | None]:
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InvalidInputError(f"cannot read model file {path}: {exc}", status=400) from exc
        return _file_chunks(path, size, progress), size, path.stem
    if isinstance(model, bytes | bytearray | memoryview):
        data = bytes(model)
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        raise InvalidInputError(
            f"model must be a path, bytes or an onnx.ModelProto, not {type(model).__name__}", status=400
        )
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


# ---------------------------------------------------------------- connect


def fetch_attestation(host: str, port: int, nonce: bytes, timeout: float) -> dict[str, Any]:
    url = f"http://{_host_for_url(host)}:{port}/attestation"
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            resp = client.get(url, params={"nonce": nonce.hex()})
    except httpx.TransportError as exc:
        raise TransportError(f"cannot reach the unattested port {url}: {exc}") from exc
    if resp.status_code != 200:
        try:
            message = resp.json().get("error", resp.text)
        except ValueError:
            message = resp.text[:300]
        raise AttestationError(f"the server refused to give evidence ({resp.status_code}): {message}", check="fetch")
    try:
        doc = resp.json()
    except ValueError as exc:
        raise EvidenceParseError("the /attestation answer is not JSON", check="parse") from exc
    if not isinstance(doc, dict):
        raise EvidenceParseError("the /attestation answer is not a JSON object", check="parse")
    return doc


def connect(
    host: str,
    *,
    attested_port: int = 50051,
    unattested_port: int = 50052,
    policy: str | os.PathLike[str] | Policy | None = None,
    simulation: bool = False,
    nonce: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    now: dt.datetime | None = None,
    unsafe_trust_roots: Sequence[bytes] = (),
    upload_token: str | None = None,
    collateral_url: str | None = None,
) -> Connection:
    """Attest the server at ``host`` and return a connection bound to its attested key.

    Raises :class:`~blindai.errors.AttestationError` (and sends nothing) unless
    the evidence verifies, satisfies ``policy`` and binds the TLS key and nonce.
    ``simulation=True`` accepts only simulation evidence, and warns each time.
    ``unsafe_trust_roots`` adds test PKI roots (PEM) and must never be used in production.
    ``upload_token`` is sent with uploads to servers that restrict who may upload.
    ``collateral_url`` (a PCCS, or Intel PCS) lets the client fetch Intel collateral itself when
    the server sends none; without it the client never goes to the network for collateral.
    """
    if nonce is None:
        nonce = secrets.token_bytes(32)
    if len(nonce) > MAX_NONCE_BYTES:
        raise ValueError(f"nonce must be at most {MAX_NONCE_BYTES} bytes")
    loaded = load_policy(policy) if policy is not None and not isinstance(policy, Policy) else policy
    doc = fetch_attestation(host, unattested_port, nonce, timeout)
    tee, evidence_b64, cert_pem = doc.get("tee"), doc.get("evidence"), doc.get("certificate")
    if not isinstance(tee, str) or not isinstance(evidence_b64, str) or not isinstance(cert_pem, str):
        raise EvidenceParseError("the /attestation answer lacks tee, evidence or certificate", check="parse")
    if doc.get("nonce") != nonce.hex():
        raise BindingError(
            "the server answered for another nonce (stale or replayed evidence)",
            check="nonce",
            got=doc.get("nonce"),
            expected=nonce.hex(),
        )
    try:
        evidence = base64.b64decode(evidence_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceParseError("evidence is not base64", check="parse") from exc
    collateral = doc.get("collateral")
    verified, cert = verify_server_attestation(
        tee=tee,
        evidence=evidence,
        collateral=collateral if isinstance(collateral, dict) else None,
        certificate_pem=cert_pem,
        nonce=nonce,
        policy=loaded,
        simulation_ok=simulation,
        options=TrustOptions(now=now, unsafe_trust_roots=tuple(unsafe_trust_roots), collateral_url=collateral_url),
    )
    pin = spki_sha256(cert)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=cert_pem)
    # The trust store holds exactly the attested certificate, so only its key can
    # complete the handshake; host names add nothing to that and are not checked.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    http = httpx.Client(
        base_url=f"https://{_host_for_url(host)}:{attested_port}", verify=ctx, timeout=timeout, trust_env=False
    )
    try:
        _check_peer(http, pin)
    except BaseException:
        http.close()
        raise
    return Connection(
        host=host,
        attested_port=attested_port,
        attestation=verified,
        certificate_pem=cert_pem,
        http=http,
        upload_token=upload_token,
    )


def _check_peer(http: httpx.Client, pin: bytes) -> None:
    """A request that carries nothing secret, to see the peer's key before anything else is sent."""
    try:
        resp = http.get("/v2/health/ready")
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or isinstance(exc.__cause__, ssl.SSLCertVerificationError):
            raise BindingError(
                "the attested port presented a TLS certificate that is not the one bound in the evidence",
                check="tls-pin",
            ) from exc
        raise TransportError(f"cannot reach the attested port: {exc}") from exc
    except httpx.TransportError as exc:
        raise TransportError(f"cannot reach the attested port: {exc}") from exc
    stream = resp.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(True) if ssl_object is not None else None
    if der is None:
        raise BindingError("could not read the attested port's certificate", check="tls-pin")
    from cryptography import x509

    got = spki_sha256(x509.load_der_x509_certificate(der))
    if not hmac.compare_digest(got, pin):
        raise BindingError(
            "the attested port's key differs from the attested one", check="tls-pin", got=got, expected=pin
        )
    _raise_for(resp)
