"""The one exception tree of BlindAI.

Every error the SDK raises is a `BlindAIError`, so callers can catch one
type; foreign exceptions (httpx, ssl, cryptography, dcap-qvl) are translated at
the boundary with ``raise ... from exc`` so the cause is kept for debugging::

    BlindAIError
    +-- ConfigurationError           a wrong argument, file, port or policy file (nothing was attempted)
    +-- TransportError               the server could not be reached or broke the connection
    +-- AttestationError             the server could not prove what it is: nothing was sent
    |   +-- EvidenceParseError       evidence bytes are malformed or truncated
    |   +-- SignatureError           a signature or certificate chain does not verify
    |   +-- CollateralError          collateral missing, expired, or a certificate revoked
    |   +-- PolicyError              verified claims do not satisfy the policy
    |   +-- BindingError             evidence does not bind the TLS key or the nonce
    |   +-- SimulationRefusedError   simulation evidence without ``simulation=True`` (or the reverse)
    +-- ModelFormatError             a local model file is not in a layout this code knows (nothing sent)
    +-- ProtocolError                a wire message without its documented shape (also a ValueError)
    |   +-- TensorError, TensorLimitError     tensors (protocol/tensors.py)
    |   +-- ModelInfoError                    model metadata (protocol/models.py)
    |   +-- V06Error, V06LimitError, ...      BlindAI 0.6 messages (protocol/v06.py)
    +-- ServerError                  a refused request (``status``: the server's, or None: refused locally)
        +-- InvalidInputError        400/413/422: the request was malformed or too large
        +-- ModelNotFoundError       404: no such model
        +-- PermissionDeniedError    401/403: missing or wrong owner / upload token
        +-- ModelHashMismatchError   412: the model is not the one pinned with ``model_sha256``
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CHECKS",
    "AttestationError",
    "BindingError",
    "BlindAIError",
    "Check",
    "CollateralError",
    "ConfigurationError",
    "EvidenceParseError",
    "InvalidInputError",
    "ModelFormatError",
    "ModelHashMismatchError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "PolicyError",
    "ProtocolError",
    "ServerError",
    "SignatureError",
    "SimulationModeWarning",
    "SimulationRefusedError",
    "TransportError",
]


class Check(StrEnum):
    """The name of a failed attestation check: ``AttestationError.check`` is one of these.

    A ``StrEnum`` so that ``err.check == "parse"`` and messages ("parse: ...") keep the plain
    strings that docs, tests and scripts match on; the members make a typo a NameError.
    """

    ATTESTATION = "attestation"
    """No more precise check applies."""

    BINDING = "binding"
    """report_data does not bind the TLS key and the nonce."""

    CERTIFICATE = "certificate"
    """The server's TLS certificate is not a certificate."""

    CERTIFICATE_TIME = "certificate-time"
    """A vendor certificate is outside its validity at the verification time."""

    CERTIFICATES = "certificates"
    """Vendor certificates missing or unparseable (SEV-SNP VCEK/VLEK, ASK/ASVK, ARK)."""

    CHAIN = "chain"
    """A certificate is not signed by its issuer."""

    CHIP_ID = "chip-id"
    """SEV-SNP CHIP_ID differs from the VCEK's hwID."""

    COLLATERAL = "collateral"
    """Collateral missing, malformed, or for another platform."""

    COLLATERAL_FETCH = "collateral-fetch"
    """Collateral or a CRL could not be fetched."""

    COLLATERAL_TIME = "collateral-time"
    """Collateral expired or not yet valid at the verification time."""

    CRL = "crl"
    """The CRL is missing, unparseable or not signed by the root."""

    CRL_TIME = "crl-time"
    """The CRL is not current at the verification time."""

    DETECT = "detect"
    """The evidence kind could not be told from its bytes."""

    FETCH = "fetch"
    """The server refused to give evidence."""

    NONCE = "nonce"
    """The nonce in the attestation document is not the one sent."""

    OPTIONS = "options"
    """A verification option that does not apply to this TEE."""

    PARSE = "parse"
    """Evidence bytes malformed, truncated, or with non-zero reserved bytes."""

    POLICY = "policy"
    """Verified claims do not satisfy the policy (or no policy given)."""

    QE_REPORT_DATA = "qe-report-data"
    """The Intel QE report does not bind the attestation key."""

    RATLS_BINDING = "ratls-binding"
    """An RA-TLS certificate's evidence does not bind its key."""

    REPORT_DATA = "report-data"
    """report_data differs from the expected value."""

    REVOCATION = "revocation"
    """A certificate is revoked."""

    ROOT = "root"
    """A chain does not end at a pinned vendor root key."""

    SIGNATURE = "signature"
    """A signature over the evidence does not verify."""

    SIGNING_KEY = "signing-key"
    """The SEV-SNP report's signing key kind disagrees with its certificate."""

    SIMULATION = "simulation"
    """Simulation evidence without simulation=True, or the reverse."""

    TCB = "tcb"
    """The TCB matches no level (Intel) or differs from the VCEK's (AMD)."""

    TEE = "tee"
    """Unknown TEE kind, or the evidence is of another TEE than announced."""

    TLS_PIN = "tls-pin"
    """The attested port's TLS key is not the attested one."""


CHECKS: tuple[str, ...] = tuple(c.value for c in Check)
"""Every check name, in declaration order (what ``AttestationError.check`` may hold)."""


class BlindAIError(Exception):
    """Root of every error raised by BlindAI."""


class ConfigurationError(BlindAIError):
    """An argument, file, port or policy file is wrong: fix the call (the CLI exits 2)."""


class TransportError(BlindAIError):
    """The server could not be reached, or the connection broke mid-request."""


class AttestationError(BlindAIError):
    """The server's evidence was not accepted; no model or input was sent.

    ``check`` names the failed check; ``got`` and ``expected`` are shown when
    they make sense, so an operator can tell what to fix. ``cli_text`` says the
    same in the command line's terms (``--simulation`` rather than ``simulation=True``).
    """

    def __init__(
        self,
        message: str,
        *,
        check: str = Check.ATTESTATION,
        got: object | None = None,
        expected: object | None = None,
        cli_message: str | None = None,
    ) -> None:
        self.check = check
        self.got = got
        self.expected = expected
        detail = f" (got {_show(got)}, expected {_show(expected)})" if got is not None or expected is not None else ""
        # The same failure told in the command line's words (flags, not keyword arguments).
        self.cli_text = f"{check}: {cli_message or message}{detail}"
        super().__init__(f"{check}: {message}{detail}")


def _show(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return str(value)


class EvidenceParseError(AttestationError):
    """Evidence bytes are malformed, truncated or of an unknown kind."""


class SignatureError(AttestationError):
    """A signature or a certificate chain does not verify."""


class CollateralError(AttestationError):
    """Collateral is missing, not yet valid, expired, or revokes a certificate."""


class PolicyError(AttestationError):
    """Verified claims do not satisfy the policy; ``failures`` lists every field."""

    def __init__(self, failures: list[tuple[str, object, object]]) -> None:
        self.failures = failures
        parts = [f"{field} (got {_show(got)}, expected {_show(exp)})" for field, got, exp in failures]
        super().__init__("; ".join(parts), check=Check.POLICY)


class BindingError(AttestationError):
    """The evidence does not bind the TLS public key and the client's nonce."""


class SimulationRefusedError(AttestationError):
    """Simulation evidence was offered without ``simulation=True``, or the reverse."""


class ModelFormatError(BlindAIError, ValueError):
    """A local model file (e.g. a CTranslate2 ``model.bin``) is truncated or in an unknown layout.

    Raised before anything is converted or sent, so a wrong or damaged weights file
    never becomes a model that silently transcribes garbage.
    """


class ProtocolError(BlindAIError, ValueError):
    """A message on the wire does not have its documented shape; the message names the field.

    The codecs in ``blindai.protocol`` raise subclasses of it. The SDK translates them where
    it reads a server's answer; the server's HTTP edge gives each its status.
    """


class ServerError(BlindAIError):
    """A request was refused: ``status`` is the server's HTTP status, ``message`` says why.

    ``status`` is ``None`` when the SDK refused the request itself before sending it (an
    input that cannot match the model, a model file it cannot read): the same class, so one
    ``except InvalidInputError`` covers both, but no server was involved.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        self.message = message
        super().__init__(
            f"server error {status}: {message}" if status is not None else f"refused before sending: {message}"
        )


class InvalidInputError(ServerError):
    """The request was malformed, of the wrong shape or type, or too large."""


class ModelNotFoundError(ServerError):
    """No model with that id (or name) exists on the server."""


class PermissionDeniedError(ServerError):
    """The owner token (or upload token) was missing or wrong."""


class ModelHashMismatchError(ServerError):
    """The model behind the id is not the one pinned with ``model_sha256``."""


class SimulationModeWarning(UserWarning):
    """Emitted on every connection to a simulation server: it proves nothing."""
