"""Fuzz the client's whole ``/attestation`` path: whatever the network sends, the answer is a
typed ``AttestationError`` (or a success for an untouched answer), never a foreign exception.

Base answers are made the way each server makes them (simulation signer, FAKE Intel PKI
quotes with collateral, FAKE AMD PKI reports with certificate table and CRL), then hypothesis
mutates every part: the evidence bytes, each collateral field, the certificate text, the TEE
name, the shape of the document itself.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindai.attestation import report_data_for, simulation
from blindai.attestation.trust import TrustOptions
from blindai.attestation.verify import verify_server_attestation
from blindai.errors import AttestationError
from blindai.protocol.attestation_doc import decode_attestation_doc, encode_attestation_doc
from blindai.server.tls import make_identity
from tests.fakes.amd_pki import FakeAmdPki
from tests.fakes.intel_pki import FakeIntelPki

NONCE = bytes(range(32))
NOW = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)


@dataclass
class Base:
    doc: dict[str, Any]
    options: TrustOptions


def _bases() -> dict[str, Base]:
    ident = make_identity()
    rd = report_data_for(ident.spki_sha256, NONCE)
    intel, amd = FakeIntelPki(NOW), FakeAmdPki(now=NOW)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    crl_pem = x509.load_der_x509_crl(amd.crl()).public_bytes(Encoding.PEM).decode()
    made = {
        "simulation": (simulation.SimulationSigner(b"\x01" * 48).sign(rd), None, ()),
        "sgx": (
            intel.sgx_quote(mrenclave=b"\x02" * 32, mrsigner=b"\x03" * 32, report_data=rd),
            intel.collateral(),
            (intel.root_pem,),
        ),
        "tdx": (intel.tdx_quote(mrtd=b"\x04" * 48, report_data=rd), intel.collateral(tee="tdx"), (intel.root_pem,)),
        "sev-snp": (
            amd.report(report_data=rd, measurement=b"\x05" * 48),
            {"snp_certs": base64.b64encode(amd.cert_table()).decode(), "crl": crl_pem},
            (amd.ark_pem,),
        ),
    }
    return {
        tee: Base(
            encode_attestation_doc(
                tee=tee, evidence=ev, collateral=col, certificate_pem=ident.certificate_pem, nonce=NONCE, version="t"
            ),
            TrustOptions(now=NOW, unsafe_trust_roots=roots),
        )
        for tee, (ev, col, roots) in made.items()
    }


BASES = _bases()
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _run(doc: object, tee: str) -> None:
    base = BASES[tee]
    parsed = decode_attestation_doc(doc, NONCE)
    verify_server_attestation(
        tee=parsed.tee,
        evidence=parsed.evidence,
        collateral=parsed.collateral,
        certificate_pem=parsed.certificate_pem,
        nonce=NONCE,
        policy=None,
        simulation_ok=parsed.tee == "simulation",
        options=base.options,
        require_policy=False,
    )


def _check(doc: object, tee: str) -> None:
    with contextlib.suppress(AttestationError):
        _run(json.loads(json.dumps(doc)), tee)


@pytest.mark.parametrize("tee", sorted(BASES))
def test_untouched_answers_verify(tee: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run(BASES[tee].doc, tee)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("tee", sorted(BASES))
@FUZZ
@given(data=st.data())
def test_mutated_evidence_bytes(tee: str, data: st.DataObject) -> None:
    raw = bytearray(base64.b64decode(BASES[tee].doc["evidence"]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "extend", "zero"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "extend":
            raw += data.draw(st.binary(max_size=64))
        else:
            raw[pos : pos + 8] = bytes(min(8, len(raw) - pos))
    _check({**BASES[tee].doc, "evidence": base64.b64encode(bytes(raw)).decode()}, tee)


@pytest.mark.parametrize("tee", ["sgx", "tdx", "sev-snp"])
@FUZZ
@given(data=st.data())
def test_mutated_collateral(tee: str, data: st.DataObject) -> None:
    col = dict(BASES[tee].doc["collateral"])
    for key in data.draw(st.lists(st.sampled_from([*col, "extra"]), min_size=1, max_size=3, unique=True)):
        choice = data.draw(st.sampled_from(["json", "drop", "truncate", "b64junk"]))
        if choice == "json":
            col[key] = data.draw(JSONISH)
        elif choice == "drop":
            col.pop(key, None)
        elif choice == "truncate" and isinstance(col.get(key), str):
            col[key] = col[key][: data.draw(st.integers(0, len(col[key])))]
        else:
            col[key] = base64.b64encode(data.draw(st.binary(max_size=200))).decode()
    _check({**BASES[tee].doc, "collateral": col}, tee)


@pytest.mark.parametrize("tee", sorted(BASES))
@FUZZ
@given(data=st.data())
def test_mutated_certificate_tee_and_shape(tee: str, data: st.DataObject) -> None:
    doc = dict(BASES[tee].doc)
    pem = doc["certificate"]
    field = data.draw(st.sampled_from(["certificate", "tee", "doc", "key"]))
    if field == "certificate":
        body = pem.split("\n")
        i = data.draw(st.integers(1, max(1, len(body) - 3)))
        body[i] = data.draw(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/=", max_size=64))
        doc["certificate"] = "\n".join(body) + data.draw(st.sampled_from(["", pem, "junk"]))
    elif field == "tee":
        doc["tee"] = data.draw(st.sampled_from(sorted(BASES)) | st.text(max_size=10))
    elif field == "key":
        doc[data.draw(st.sampled_from(sorted(doc)))] = data.draw(JSONISH)
    else:
        _check(data.draw(JSONISH), tee)
        return
    _check(doc, tee)
