"""Verify Intel DCAP quotes (SGX, TDX): the pinned root, dcap-qvl, and the quote's own signatures.

Two verifications, both over records `dcap_abi.parse_quote` produced:

`verify_quote` (with collateral; what clients use), in order:
  1. collateral is present and in dcap-qvl's QuoteCollateralV3 layout;
  2. every issuer chain in the collateral ends at a trusted root key: the pinned Intel SGX root
     (`trust.INTEL_SGX_ROOT_SPKI_SHA256`) or an ``unsafe_`` test root of `TrustOptions`, the
     same set as for SEV-SNP; dcap-qvl then verifies against that root;
  3. dcap-qvl checks the quote signature, the QE report and its binding, the PCK chain to the
     root, the root and PCK CRLs, TCB Info and QE Identity (signatures and validity at ``now``),
     and derives the TCB status and advisories (SGX ECDSA Quote Library API, "Quote
     Verification"; TDX DCAP Quoting Library API);
  4. its errors become this package's (`_translate`): expiry, revocation, TCB, foreign collateral;
  5. the claims come from the parsed body (`claims_of`).

`verify_quote_signatures` (no collateral: no CRLs, no TCB status): what a quote proves on its
own, checked here step by step (see its docstring).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import Check, CollateralError, EvidenceParseError, PolicyError, SignatureError
from .binding import spki_sha256
from .collateral import fetch_collateral
from .dcap_abi import CERT_TYPE_PCK_CHAIN, DcapQuote, SgxReportBody, parse_quote, parse_signature_data
from .evidence import VerifiedAttestation
from .trust import INTEL_SGX_ROOT_SPKI_SHA256, TrustOptions, unsafe_root_pins, unsafe_roots

__all__ = ["claims_of", "collateral_window", "verify_dcap_evidence", "verify_quote", "verify_quote_signatures"]

_COLLATERAL_CHAINS = ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")


def claims_of(quote: DcapQuote, tcb_status: str | None, advisories: tuple[str, ...]) -> VerifiedAttestation:
    """The claims of a verified quote, from its parsed body."""
    body = quote.body
    if isinstance(body, SgxReportBody):
        return VerifiedAttestation(
            tee="sgx",
            measurements={"mrenclave": body.mr_enclave.hex(), "mrsigner": body.mr_signer.hex()},
            debug=body.debug,
            report_data=body.report_data,
            tcb_status=tcb_status,
            advisory_ids=advisories,
            svns={"isv_svn": body.isv_svn, "isv_prod_id": body.isv_prod_id},
            crl_checked=True,  # dcap-qvl checks the PCK and root CRLs of the collateral
        )
    meas = {"mrtd": body.mr_td.hex(), "mrconfigid": body.mr_config_id.hex(), "mrowner": body.mr_owner.hex()}
    meas.update({f"rtmr{i}": r.hex() for i, r in enumerate(body.rtmrs)})
    meas.update({"xfam": body.xfam.hex(), "td_attributes": body.td_attributes.hex()})
    return VerifiedAttestation(
        tee="tdx",
        measurements=meas,
        debug=body.debug,
        report_data=body.report_data,
        tcb_status=tcb_status,
        advisory_ids=advisories,
        crl_checked=True,
    )


# ------------------------------------------------------------------ with collateral (dcap-qvl)


def _collateral(collateral: Mapping[str, Any]) -> Any:
    import dcap_qvl

    try:
        return dcap_qvl.QuoteCollateralV3.from_json(json.dumps(dict(collateral)))
    except (ValueError, TypeError) as exc:
        raise CollateralError(
            f"collateral is not in the QuoteCollateralV3 layout: {exc}", check=Check.COLLATERAL
        ) from exc


def _chain_root_spki(chain_pem: str) -> bytes | None:
    certs = x509.load_pem_x509_certificates(chain_pem.encode()) if chain_pem else []
    return spki_sha256(certs[-1]) if certs else None


def _translate(message: str) -> Exception:
    """dcap-qvl reports failures as text: map them to this package's errors and check names."""
    low = message.lower()
    if "debug" in low:
        # dcap-qvl refuses debug enclaves and debug TDs outright, whatever the policy says.
        return PolicyError([("debug", True, False)])
    if any(k in low for k in ("expired", "not yet valid", "notyetvalid", "in the future", "next_update")):
        return CollateralError(
            f"collateral expired or not yet valid at the verification time ({message})",
            check=Check.COLLATERAL_TIME,
        )
    if "revoked" in low:
        return CollateralError(f"a certificate is revoked ({message})", check=Check.REVOCATION)
    if "tcb level" in low or ("tcb" in low and "match" in low):
        return CollateralError(f"the platform's TCB matches no level in TCB Info ({message})", check=Check.TCB)
    if "fmspc" in low or ("mismatch" in low and "collateral" in low):
        return CollateralError(f"collateral does not belong to this quote ({message})", check=Check.COLLATERAL)
    return SignatureError(f"quote verification failed ({message})", check=Check.SIGNATURE)


def collateral_window(collateral: Mapping[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    """When Intel collateral is valid: the latest issue date to the earliest next update of TCB Info
    and QE Identity (the CRLs usually span longer)."""
    starts, ends = [], []
    for key in ("tcb_info", "qe_identity"):
        try:
            body = json.loads(str(collateral[key]))
            starts.append(dt.datetime.fromisoformat(body["issueDate"].replace("Z", "+00:00")))
            ends.append(dt.datetime.fromisoformat(body["nextUpdate"].replace("Z", "+00:00")))
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
    return (max(starts), min(ends)) if starts and ends else None


def _expired(collateral: Mapping[str, Any], now_secs: int) -> CollateralError:
    at = dt.datetime.fromtimestamp(now_secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    window = collateral_window(collateral)
    span = (
        f"it is valid from {window[0].strftime('%Y-%m-%dT%H:%M:%SZ')} to {window[1].strftime('%Y-%m-%dT%H:%M:%SZ')}"
        if window
        else "its validity dates could not be read"
    )
    message = f"the collateral is expired or not yet valid at {at}: {span}"
    return CollateralError(
        f"{message}; the server must serve current collateral (PCCS), or verify recorded evidence with now=",
        check=Check.COLLATERAL_TIME,
        cli_message=f"{message}; for recorded evidence, verify at a time inside that window with --at",
    )


def verify_quote(
    quote: DcapQuote, collateral: Mapping[str, Any] | None, options: TrustOptions | None = None
) -> VerifiedAttestation:
    """Steps 1-5 of the module docstring. Time and test roots come from ``options`` only."""
    import dcap_qvl

    opts = options or TrustOptions()
    # Step 1: collateral present and well formed.
    if collateral is None:
        raise CollateralError(
            "no collateral for this quote: get it from the server, a file or a PCCS", check=Check.COLLATERAL
        )
    col = _collateral(collateral)
    # Step 2: every issuer chain of the collateral ends at a trusted root key: the pinned Intel
    # root, or a test root of the options (the same set verify_quote_signatures and SNP use).
    test_roots = {spki_sha256(c): c for c in unsafe_roots(opts)}
    ends = [(name, _chain_root_spki(str(collateral.get(name, "")))) for name in _COLLATERAL_CHAINS]
    for name, root in ends:
        if root is not None and root != INTEL_SGX_ROOT_SPKI_SHA256 and root not in test_roots:
            raise SignatureError(
                f"{name} does not end at the Intel SGX root key" + (" nor at a test root" if test_roots else ""),
                check=Check.ROOT,
                got=root,
                expected=INTEL_SGX_ROOT_SPKI_SHA256,
            )
    at_test_root = [test_roots[root] for _, root in ends if root in test_roots]
    at_intel = any(root == INTEL_SGX_ROOT_SPKI_SHA256 for _, root in ends)
    test_root: x509.Certificate | None = None
    if at_test_root:
        test_root = at_test_root[0]
    elif test_roots and not at_intel:
        # no chain says which root: the given test root is the one dcap-qvl checks the quote's PCK chain against
        test_root = next(iter(test_roots.values()))
    # Steps 3 and 4: dcap-qvl at the injected time, against that root; its failures translated.
    now_secs = int(opts.now.timestamp()) if opts.now is not None else int(time.time())
    try:
        if test_root is None:
            report = dcap_qvl.verify(quote.raw, col, now_secs)
        else:
            root_der = test_root.public_bytes(serialization.Encoding.DER)
            report = dcap_qvl.verify_with_root_ca(quote.raw, col, root_der, now_secs)
    except (ValueError, RuntimeError) as exc:
        error = _translate(str(exc))
        if isinstance(error, CollateralError) and error.check == Check.COLLATERAL_TIME:
            error = _expired(collateral, now_secs)
        raise error from exc
    # Step 5: claims from the parsed body.
    return claims_of(quote, str(report.status), tuple(str(a) for a in report.advisory_ids))


def verify_dcap_evidence(
    tee: str, evidence: bytes, collateral: Mapping[str, Any] | None, options: TrustOptions
) -> VerifiedAttestation:
    """Parse ``evidence`` as a quote of kind ``tee`` and verify it, with the client's own collateral
    (``options.collateral_url``) in place of the host's when the caller asked for it."""
    quote = parse_quote(evidence)
    if quote.tee != tee:
        raise EvidenceParseError(
            f"the server says {tee} but the quote is {quote.tee}", check=Check.TEE, got=quote.tee, expected=tee
        )
    if options.collateral_url is not None:  # the client's own source wins over the host's
        collateral = fetch_collateral(options.collateral_url, quote.raw)
    return verify_quote(quote, collateral, options)


# ------------------------------------------------------------------ signatures inside the quote


def _p256(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_xy)


def _check_raw_sig(key: Any, sig: bytes, data: bytes, what: str) -> None:
    """Quote signatures are raw r || s (32 bytes each, big-endian), ECDSA P-256 with SHA-256."""
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError(f"{what} does not verify", check=Check.SIGNATURE) from exc


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def verify_quote_signatures(quote: DcapQuote, options: TrustOptions | None = None) -> list[x509.Certificate]:
    """Check what a quote proves on its own, without collateral (no CRLs, no TCB status):

    1. the attestation key signs header and body (SGX ECDSA Quote Library API, "Quote Signature");
    2. the QE report binds that key: report_data = SHA-256(key || QE auth data) || 32 zero bytes;
    3. the PCK certificate (certification data type 5) signs the QE report;
    4. each certificate of the PCK chain is signed by the next, the last by itself;
    5. the chain ends at the pinned Intel root key, or at an ``unsafe_`` test root of ``options``.

    Returns the PCK chain, leaf first."""
    pins = (INTEL_SGX_ROOT_SPKI_SHA256, *unsafe_root_pins(options or TrustOptions()))
    sd = parse_signature_data(quote)
    # Step 1.
    _check_raw_sig(_p256(sd.attestation_key), sd.signature, quote.raw[: quote.signed_length - 4], "quote signature")
    # Step 2.
    expected = hashlib.sha256(sd.attestation_key + sd.qe.qe_auth_data).digest() + bytes(32)
    got = sd.qe.qe_report.report_data
    if got != expected:
        raise SignatureError(
            "the QE report does not bind the attestation key", check=Check.QE_REPORT_DATA, got=got, expected=expected
        )
    # Step 3.
    if sd.qe.cert_type != CERT_TYPE_PCK_CHAIN:
        raise EvidenceParseError(
            "the quote carries no PCK certificate chain",
            check=Check.PARSE,
            got=sd.qe.cert_type,
            expected=CERT_TYPE_PCK_CHAIN,
        )
    try:
        chain = x509.load_pem_x509_certificates(sd.qe.cert_data.rstrip(b"\0"))
    except ValueError as exc:
        raise EvidenceParseError("the PCK certificate chain does not parse", check=Check.PARSE) from exc
    _check_raw_sig(chain[0].public_key(), sd.qe.qe_report_signature, sd.qe.qe_report_bytes, "QE report signature")
    # Step 4.
    for cert, issuer in zip(chain, chain[1:] + chain[-1:], strict=True):
        key = issuer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
            raise SignatureError("PCK chain uses an unexpected key type", check=Check.CHAIN)
        try:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        except InvalidSignature as exc:
            raise SignatureError(f"{_subject(cert)} is not signed by {_subject(issuer)}", check=Check.CHAIN) from exc
    # Step 5.
    root = spki_sha256(chain[-1])
    if root not in pins:
        raise SignatureError(
            "the PCK chain does not end at the Intel SGX root key", check=Check.ROOT, got=root, expected=pins[0]
        )
    return chain
