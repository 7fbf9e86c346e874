"""Binding rule, simulation evidence and policy: positive and negative cases."""

from __future__ import annotations

import hashlib

import pytest

from blindai.attestation import load_policy, report_data_for, validate
from blindai.attestation import simulation as sim
from blindai.attestation.binding import DOMAIN, check_binding
from blindai.attestation.evidence import VerifiedAttestation
from blindai.attestation.policy import PolicyLoadError, policy_from_attestation
from blindai.attestation.verify import verify_server_attestation
from blindai.errors import BindingError, EvidenceParseError, PolicyError, SignatureError, SimulationRefusedError
from blindai.server.tls import make_identity


def test_report_data_is_the_documented_hash() -> None:
    spki = hashlib.sha256(b"key").digest()
    nonce = bytes(range(16))
    assert report_data_for(spki, nonce) == hashlib.sha512(b"blindai/attestation/v1" + spki + nonce).digest()
    assert DOMAIN == b"blindai/attestation/v1"
    with pytest.raises(ValueError):
        report_data_for(spki, b"x" * 65)


def test_binding_accepts_only_the_same_key_and_nonce() -> None:
    a, b = make_identity(), make_identity()
    rd = report_data_for(a.spki_sha256, b"n1")
    check_binding(rd, a.certificate, b"n1")
    with pytest.raises(BindingError, match="binding"):
        check_binding(rd, b.certificate, b"n1")
    with pytest.raises(BindingError):
        check_binding(rd, a.certificate, b"n2")


@pytest.fixture(scope="module")
def signer() -> sim.SimulationSigner:
    return sim.SimulationSigner(sim.code_measurement())


def test_simulation_evidence_round_trip(signer: sim.SimulationSigner) -> None:
    rd = bytes(range(64))
    ev = sim.parse(signer.sign(rd) + b"trailing bytes are ignored")
    claims = sim.verify(ev)
    assert claims.report_data == rd
    assert claims.tee == "simulation" and claims.simulation
    assert claims.measurements["measurement"] == signer.measurement.hex()


@pytest.mark.parametrize("offset", [0, 8, 71, 72, 119, 120, 151, 152, 215])
def test_simulation_evidence_flipped_byte_refused(signer: sim.SimulationSigner, offset: int) -> None:
    data = bytearray(signer.sign(bytes(64)))
    data[offset] ^= 0x01
    with pytest.raises((SignatureError, EvidenceParseError)):
        sim.verify(sim.parse(bytes(data)))


def test_simulation_evidence_truncated_refused(signer: sim.SimulationSigner) -> None:
    data = signer.sign(bytes(64))
    for n in (0, 8, 100, sim.SIZE - 1):
        with pytest.raises(EvidenceParseError, match="needs"):
            sim.parse(data[:n])


def test_simulation_gate_both_ways(signer: sim.SimulationSigner) -> None:
    ident = make_identity()
    nonce = b"fresh"
    ev = signer.sign(report_data_for(ident.spki_sha256, nonce))
    kwargs = dict(evidence=ev, collateral=None, certificate_pem=ident.certificate_pem, nonce=nonce, policy=None)
    with pytest.raises(SimulationRefusedError, match="SIMULATION"):
        verify_server_attestation(tee="simulation", simulation_ok=False, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SimulationRefusedError, match="only accepts simulation"):
        verify_server_attestation(tee="sgx", simulation_ok=True, **kwargs)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="SIMULATION"):
        claims, _ = verify_server_attestation(tee="simulation", simulation_ok=True, **kwargs)  # type: ignore[arg-type]
    assert claims.simulation
    with pytest.raises(BindingError):
        verify_server_attestation(tee="simulation", simulation_ok=True, **{**kwargs, "nonce": b"stale"})  # type: ignore[arg-type]


# ------------------------------------------------------------------ policy


def _claims(**kw: object) -> VerifiedAttestation:
    base: dict[str, object] = dict(
        tee="sgx",
        measurements={"mrenclave": "aa" * 32, "mrsigner": "bb" * 32},
        debug=False,
        report_data=bytes(64),
        tcb_status="UpToDate",
        svns={"isv_svn": 3, "isv_prod_id": 1},
    )
    base.update(kw)
    return VerifiedAttestation(**base)  # type: ignore[arg-type]


def test_policy_without_measurement_is_refused() -> None:
    for text in ("[sgx]\nallow_debug = false\n", "[tdx]\n", "[sev-snp]\nmin_tcb = { snp = 8 }\n", ""):
        with pytest.raises(PolicyLoadError):
            load_policy(text)


@pytest.mark.parametrize(
    "text",
    [
        "[sgx]\nmrenclave = 'zz'\n",
        "[sgx]\nmrenclave = []\n",
        "[nope]\nx = 1\n",
        "[sgx]\nmrenclave = 'aa'\ntypo = 1\n",
        "[sgx]\nmrenclave='aa'\nmin_isv_svn = 2\n",
        "not toml [",
    ],
)
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyLoadError):
        load_policy(text)


def test_policy_accepts_matching_claims() -> None:
    policy = load_policy(
        f"[sgx]\nmrenclave = ['{'aa' * 32}']\nmrsigner = '{'bb' * 32}'\nisv_prod_id = 1\nmin_isv_svn = 2\n"
    )
    validate(_claims(), policy)


def test_policy_reports_every_failure_with_got_and_expected() -> None:
    signer = f"mrsigner = '{'bb' * 32}'\nisv_prod_id = 1\nmin_isv_svn = 5\n"
    policy = load_policy(f"[sgx]\nmrenclave = ['{'cc' * 32}']\n{signer}")
    with pytest.raises(PolicyError) as info:
        validate(_claims(debug=True, tcb_status="OutOfDate"), policy)
    fields = {f for f, _, _ in info.value.failures}
    assert fields == {"mrenclave", "debug", "tcb_status", "isv_svn"}
    assert "got OutOfDate" in str(info.value) and "expected ['UpToDate']" in str(info.value)


def test_policy_for_another_tee_is_refused() -> None:
    policy = load_policy(f"[tdx]\nmrtd = ['{'00' * 48}']\nunpinned_rtmrs = [0, 1, 2, 3]\n")
    with pytest.raises(PolicyError, match="tee"):
        validate(_claims(), policy)


def test_debug_allowed_only_when_said() -> None:
    policy = load_policy(f"[sgx]\nmrenclave = ['{'aa' * 32}']\nallow_debug = true\n")
    validate(_claims(debug=True), policy)


def test_written_policy_round_trips() -> None:
    claims = _claims()
    validate(claims, load_policy(policy_from_attestation(claims)))
