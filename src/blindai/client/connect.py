"""Attest first, then talk only to the attested key.

`attest` fetches evidence with a fresh random nonce from the unattested port and
verifies it (signatures, chains, collateral, binding of the TLS key and nonce) against
the pinned vendor roots, with or without a policy; it opens no channel. `connect`
does the same with a policy and then opens TLS to the attested port through a context
that trusts exactly the attested certificate and checks its key at every handshake.
No model or input byte is sent before all of that passed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import ssl
import time
from collections.abc import Sequence

import httpx

from .._version import __version__
from ..attestation.binding import MAX_NONCE_BYTES, load_certificate
from ..attestation.channel import pinned_context
from ..attestation.evidence import VerifiedAttestation
from ..attestation.policy import Policy, load_policy
from ..attestation.trust import TrustOptions
from ..attestation.verify import verify_server_attestation
from ..errors import AttestationError, Check, EvidenceParseError, TransportError
from ..protocol.attestation_doc import MAX_DOC_BYTES, decode_attestation_doc
from ..protocol.error_body import decode_error
from .connection import DEFAULT_TIMEOUT, Connection, host_for_url, raise_for_status

__all__ = ["attest", "connect", "fetch_attestation"]

PolicyArg = str | os.PathLike[str] | Policy | None
MIN_CLIENT_NONCE_BYTES = 16


def _no_tls() -> ssl.SSLContext:
    """The TLS settings of the plain-HTTP evidence fetch: never used (the URL is http), and
    trusting no root if it ever were. httpx otherwise builds a default context per client,
    loading the whole CA bundle: 20-40 ms of every connect, for nothing."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def fetch_attestation(host: str, port: int, nonce: bytes, timeout: float) -> object:
    """The raw ``/attestation`` answer (parsed JSON, not yet trusted in any way).

    The answer comes from the network, so its cost is bounded before it is parsed: no
    content encoding (a compressed answer could inflate a thousandfold), at most
    ``MAX_DOC_BYTES``, and ``timeout`` for the whole answer, not per read (a server that
    trickles bytes cannot hold the client)."""
    url = f"http://{host_for_url(host)}:{port}/attestation"
    deadline = time.monotonic() + timeout
    headers = {"User-Agent": f"blindai/{__version__}", "Accept-Encoding": "identity"}
    body = bytearray()
    try:
        with (
            httpx.Client(timeout=timeout, trust_env=False, verify=_no_tls()) as client,
            client.stream("GET", url, params={"nonce": nonce.hex()}, headers=headers) as resp,
        ):
            encoding = resp.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise EvidenceParseError(
                    f"the /attestation answer is {encoding}-encoded; evidence is only accepted unencoded",
                    check=Check.PARSE,
                )
            for chunk in resp.iter_raw():
                body += chunk
                if len(body) > MAX_DOC_BYTES:
                    raise EvidenceParseError(
                        f"the /attestation answer is larger than {MAX_DOC_BYTES} bytes", check=Check.PARSE
                    )
                if time.monotonic() > deadline:
                    raise TransportError(f"the unattested port {url} did not answer within {timeout} s")
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot read the unattested port {url}: {exc}") from exc
    if resp.status_code != 200:
        message = decode_error(bytes(body), resp.reason_phrase or f"status {resp.status_code}")
        raise AttestationError(
            f"the server refused to give evidence ({resp.status_code}): {message}", check=Check.FETCH
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EvidenceParseError("the /attestation answer is not JSON (or nests too deep)", check=Check.PARSE) from exc


def _attest(
    host: str,
    *,
    unattested_port: int,
    policy: PolicyArg,
    simulation: bool,
    nonce: bytes | None,
    timeout: float,
    now: dt.datetime | None,
    unsafe_trust_roots: Sequence[bytes],
    collateral_url: str | None,
    require_policy: bool,
) -> tuple[VerifiedAttestation, str]:
    if nonce is None:
        nonce = secrets.token_bytes(32)
    if not MIN_CLIENT_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        # Shorter nonces give up freshness (the server may even cache the empty nonce's evidence).
        raise ValueError(f"nonce must be {MIN_CLIENT_NONCE_BYTES} to {MAX_NONCE_BYTES} random bytes")
    loaded = load_policy(policy) if policy is not None and not isinstance(policy, Policy) else policy
    doc = decode_attestation_doc(fetch_attestation(host, unattested_port, nonce, timeout), nonce)
    verified, _cert = verify_server_attestation(
        tee=doc.tee,
        evidence=doc.evidence,
        collateral=doc.collateral,
        certificate_pem=doc.certificate_pem,
        nonce=nonce,
        policy=loaded,
        simulation_ok=simulation,
        options=TrustOptions(now=now, unsafe_trust_roots=tuple(unsafe_trust_roots), collateral_url=collateral_url),
        require_policy=require_policy,
    )
    return verified, doc.certificate_pem


def attest(
    host: str,
    *,
    unattested_port: int = 50052,
    policy: PolicyArg = None,
    simulation: bool = False,
    nonce: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    now: dt.datetime | None = None,
    unsafe_trust_roots: Sequence[bytes] = (),
    collateral_url: str | None = None,
) -> VerifiedAttestation:
    """Verify the server's evidence without opening the attested channel; no policy needed.

    Signatures, certificate chains to the pinned vendor roots, collateral, CRLs, the
    binding of the TLS key and the nonce are all checked; ``policy`` (optional) is
    validated too. Use it to onboard a server: ``Policy.from_attestation(attest(host))``
    pins what it runs. Raises `AttestationError` on any failure.
    """
    verified, _ = _attest(
        host,
        unattested_port=unattested_port,
        policy=policy,
        simulation=simulation,
        nonce=nonce,
        timeout=timeout,
        now=now,
        unsafe_trust_roots=unsafe_trust_roots,
        collateral_url=collateral_url,
        require_policy=False,
    )
    return verified


def connect(
    host: str,
    *,
    attested_port: int = 50051,
    unattested_port: int = 50052,
    policy: PolicyArg = None,
    simulation: bool = False,
    nonce: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    now: dt.datetime | None = None,
    unsafe_trust_roots: Sequence[bytes] = (),
    upload_token: str | None = None,
    collateral_url: str | None = None,
) -> Connection:
    """Attest the server at ``host`` and return a connection bound to its attested key.

    Raises `AttestationError` (and sends nothing) unless
    the evidence verifies, satisfies ``policy`` and binds the TLS key and nonce.
    ``simulation=True`` accepts only simulation evidence, and warns each time.
    ``unsafe_trust_roots`` adds test PKI roots (PEM) and must never be used in production.
    ``upload_token`` is sent with uploads to servers that restrict who may upload.
    ``collateral_url`` (a PCCS or Intel PCS; an AMD KDS for SEV-SNP) makes the client fetch
    collateral itself and ignore what the host served; without it the client never goes to
    the network for collateral.
    """
    verified, cert_pem = _attest(
        host,
        unattested_port=unattested_port,
        policy=policy,
        simulation=simulation,
        nonce=nonce,
        timeout=timeout,
        now=now,
        unsafe_trust_roots=unsafe_trust_roots,
        collateral_url=collateral_url,
        require_policy=True,
    )
    ctx = pinned_context(load_certificate(cert_pem))
    http = httpx.Client(
        base_url=f"https://{host_for_url(host)}:{attested_port}", verify=ctx, timeout=timeout, trust_env=False
    )
    conn = Connection(
        host=host,
        attested_port=attested_port,
        attestation=verified,
        certificate_pem=cert_pem,
        http=http,
        upload_token=upload_token,
        context=ctx,
    )
    try:
        # Carries nothing secret: fails early, with a BindingError, when the attested port is not the attested key.
        raise_for_status(conn.request_raw("GET", "/v2/health/ready"))
    except BaseException:
        conn.close()
        raise
    return conn
