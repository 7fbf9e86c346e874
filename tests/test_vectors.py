"""Real recorded evidence (../shared/vectors): each file gives its documented result inside its
window and is refused outside it; flipped bytes, the Intel test root and debug TEEs are refused."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from blindai.attestation import dcap_abi, dcap_verify, load_policy, ratls, snp_abi, snp_verify, trust, validate
from blindai.attestation.binding import spki_sha256
from blindai.attestation.snp_verify import verify_snp_evidence
from blindai.attestation.verify import TrustOptions, detect_tee, verify_evidence
from blindai.errors import (
    AttestationError,
    BindingError,
    CollateralError,
    EvidenceParseError,
    PolicyError,
    SignatureError,
)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def second(t: dt.datetime, delta: int) -> dt.datetime:
    return t + dt.timedelta(seconds=delta)


def load(vectors: Path, name: str) -> tuple[bytes, dict[str, str] | None]:
    quote = (vectors / name).read_bytes()
    col = vectors / name.replace(".bin", ".collateral.json")
    return quote, (json.loads(col.read_text()) if col.exists() else None)


# (file, window start, window end, tee, tcb status or expected error check, advisories, facts)
INTEL = [
    (
        "sgx/phala_sgx_quote.bin",
        "2025-06-19T10:56:11Z",
        "2025-07-19T10:01:18Z",
        "sgx",
        "ConfigurationAndSWHardeningNeeded",
        ["INTEL-SA-00289", "INTEL-SA-00615"],
        {
            "mrenclave": "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
            "mrsigner": "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6",
        },
    ),
    (
        "tdx/phala_tdx_quote.bin",
        "2025-06-19T10:32:27Z",
        "2025-07-19T10:00:35Z",
        "tdx",
        "UpToDate",
        [],
        {"mrtd": "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"},
    ),
    ("tdx/phala_tdx_v5_quote_no_tcb_match.bin", "2026-02-18T10:58:51Z", "2026-03-20T10:41:15Z", "tdx", "!tcb", [], {}),
    ("tdx/gotdx_spr_quote_no_tcb_match.bin", "2023-06-18T08:42:58Z", "2023-07-08T07:24:59Z", "tdx", "!tcb", [], {}),
]


@pytest.mark.parametrize(
    ("name", "start", "end", "tee", "status", "advisories", "facts"), INTEL, ids=[c[0] for c in INTEL]
)
def test_intel_vector_inside_its_window(
    vectors: Path, name: str, start: str, end: str, tee: str, status: str, advisories: list[str], facts: dict[str, str]
) -> None:
    quote, col = load(vectors, name)
    assert detect_tee(quote) == tee
    for when in (second(at(start), 1), second(at(end), -1)):
        if status.startswith("!"):
            with pytest.raises(CollateralError) as info:
                verify_evidence(tee, quote, col, TrustOptions(now=when))
            assert info.value.check == status[1:]
            continue
        claims = verify_evidence(tee, quote, col, TrustOptions(now=when))
        assert claims.tcb_status == status
        assert list(claims.advisory_ids) == advisories
        assert claims.debug is False
        for k, v in facts.items():
            assert claims.measurements[k] == v


@pytest.mark.parametrize(("name", "start", "end"), [(c[0], c[1], c[2]) for c in INTEL], ids=[c[0] for c in INTEL])
def test_intel_vector_refused_outside_its_window(vectors: Path, name: str, start: str, end: str) -> None:
    quote, col = load(vectors, name)
    tee = detect_tee(quote)
    for when in (second(at(start), -1), second(at(end), 1), None):
        with pytest.raises(CollateralError, match="collateral is expired or not yet valid") as info:
            verify_evidence(tee, quote, col, TrustOptions(now=when))
        assert info.value.check == "collateral-time"


def test_phala_sgx_report_data(vectors: Path) -> None:
    quote, col = load(vectors, "sgx/phala_sgx_quote.bin")
    claims = verify_evidence("sgx", quote, col, TrustOptions(now=at("2025-07-01T00:00:00Z")))
    assert claims.report_data == b"Hello, world!".ljust(64, b"\0")


@pytest.mark.parametrize(
    ("name", "version", "tee", "trailing", "fmspc", "debug"),
    [
        ("sgx/phala_sgx_quote.bin", 3, "sgx", 0, "00A067110000", False),
        ("sgx/trustee_occlum_debug_quote.bin", 3, "sgx", 0, "00606A000000", True),
        ("tdx/phala_tdx_quote.bin", 4, "tdx", 70, "B0C06F000000", False),
        ("tdx/phala_tdx_v5_quote_no_tcb_match.bin", 5, "tdx", 0, "90C06F000000", False),
        ("tdx/gotdx_spr_quote_no_tcb_match.bin", 4, "tdx", 39, "50806F000000", False),
        ("tdx/trustee_tdx_v4_debug_quote.bin", 4, "tdx", 0, None, True),
        ("tdx/trustee_tdx_v5_quote.bin", 5, "tdx", 0, "90C06F000000", False),
        ("tdx/trustee_tdx_v4_quote.bin", 4, "tdx", None, "00A06D080000", False),
    ],
)
def test_every_quote_parses_by_its_length_fields(
    vectors: Path, name: str, version: int, tee: str, trailing: int | None, fmspc: str | None, debug: bool
) -> None:
    import dcap_qvl

    data = (vectors / name).read_bytes()
    q = dcap_abi.parse_quote(data)
    assert (q.version, q.tee, q.body.debug) == (version, tee, debug)
    if trailing is not None:
        assert len(data) - len(q.raw) == trailing
    else:
        assert len(data) > len(q.raw) and not data[len(q.raw) :].strip(b"\0")  # zero padding only
    if fmspc is not None:
        assert dcap_qvl.parse_quote(q.raw).fmspc() == fmspc
    chain = dcap_verify.verify_quote_signatures(q)  # everything inside the quote checks out
    assert len(chain) == 3
    assert dcap_abi.parse_quote(q.raw + b"\xff" * 17).raw == q.raw  # trailing junk never reaches the verifier


@pytest.mark.parametrize("name", ["sgx/trustee_occlum_debug_quote.bin", "tdx/trustee_tdx_v4_debug_quote.bin"])
def test_debug_quotes_are_refused_by_a_default_policy(vectors: Path, name: str) -> None:
    q = dcap_abi.parse_quote((vectors / name).read_bytes())
    dcap_verify.verify_quote_signatures(q)
    claims = dcap_verify.claims_of(q, "UpToDate", ())
    keys = ["mrenclave"] if q.tee == "sgx" else ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]
    policy = load_policy(f"[{q.tee}]\n" + "".join(f'{k} = ["{claims.measurements[k]}"]\n' for k in keys))
    with pytest.raises(PolicyError, match="debug"):
        validate(claims, policy)
    if q.tee == "sgx":
        assert claims.report_data == b"test".ljust(64, b"\0")


@pytest.mark.parametrize("name", ["sgx/phala_sgx_quote.bin", "tdx/phala_tdx_quote.bin"])
@pytest.mark.parametrize("where", ["header", "body-measurement", "body-report-data", "qe-report", "signature"])
def test_flipped_bytes_in_signed_regions_are_refused(vectors: Path, name: str, where: str) -> None:
    quote, col = load(vectors, name)
    q = dcap_abi.parse_quote(quote)
    body_at = 48
    offsets = {
        "header": 8,  # qe_svn / reserved
        "body-measurement": body_at + (64 if q.tee == "sgx" else 136),
        "body-report-data": q.signed_length - 4 - 1,
        "qe-report": q.signed_length + 128 + (0 if q.version == 3 else 6) + 100,
        "signature": q.signed_length + 10,
    }
    data = bytearray(quote)
    data[offsets[where]] ^= 0x01
    when = at("2025-07-01T00:00:00Z")
    with pytest.raises(AttestationError):
        verify_evidence(q.tee, bytes(data), col, TrustOptions(now=when))
    with pytest.raises(AttestationError):
        dcap_verify.verify_quote_signatures(dcap_abi.parse_quote(bytes(data)))


def test_truncated_quotes_are_refused(vectors: Path) -> None:
    quote, _ = load(vectors, "sgx/phala_sgx_quote.bin")
    for n in (0, 10, 47, 48, 431, 436, len(quote) - 1):
        with pytest.raises(EvidenceParseError):
            dcap_abi.parse_quote(quote[:n])


def test_intel_test_root_sample_is_refused(vectors: Path) -> None:
    d = vectors / "negative" / "intel-qvl-sample-test-root"

    def signed(path: Path, key: str) -> tuple[str, str]:
        text = path.read_text()
        inner = text[text.index(f'"{key}":') + len(key) + 3 : text.rindex(',"signature"')]
        return inner, json.loads(text)["signature"]

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    tcb, tcb_sig = signed(d / "tcbInfo.json", "tcbInfo")
    qe, qe_sig = signed(d / "qeIdentity.json", "enclaveIdentity")
    collateral = {
        "pck_crl_issuer_chain": (d / "pckSignChain.pem").read_text(),
        "root_ca_crl": x509.load_pem_x509_crl((d / "rootCaCrl.pem").read_bytes()).public_bytes(Encoding.DER).hex(),
        "pck_crl": x509.load_pem_x509_crl((d / "intermediateCaCrl.pem").read_bytes()).public_bytes(Encoding.DER).hex(),
        "tcb_info_issuer_chain": (d / "tcbSignChain.pem").read_text(),
        "tcb_info": tcb,
        "tcb_info_signature": tcb_sig,
        "qe_identity_issuer_chain": (d / "tcbSignChain.pem").read_text(),
        "qe_identity": qe,
        "qe_identity_signature": qe_sig,
    }
    quote = (d / "quote.dat").read_bytes()
    with pytest.raises(SignatureError, match="Intel SGX root key") as info:
        verify_evidence("sgx", quote, collateral, TrustOptions(now=at("2025-01-01T00:00:00Z")))
    assert info.value.check == "root"
    with pytest.raises(AttestationError):
        dcap_verify.verify_quote_signatures(dcap_abi.parse_quote(quote))


# ------------------------------------------------------------------ SEV-SNP

SNP = [
    (
        "gosev_milan_report.bin",
        ["gosev_milan_vcek.der", "ask_ark_milan.pem"],
        True,
        (2, 0, 5, 68),
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
    ),
    (
        "virtee_milan_report.bin",
        ["virtee_milan_vcek.der", "virtee_cert_chain_milan.pem"],
        False,
        (3, 0, 8, 115),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
    ),
]


def snp_certs(vectors: Path, files: list[str]) -> tuple[bytes, ...]:
    return tuple((vectors / "sev-snp" / f).read_bytes() for f in files)


@pytest.mark.parametrize(("report", "certs", "debug", "tcb", "measurement"), SNP, ids=[s[0] for s in SNP])
def test_snp_reports_verify(
    vectors: Path, report: str, certs: list[str], debug: bool, tcb: tuple[int, int, int, int], measurement: str
) -> None:
    data = (vectors / "sev-snp" / report).read_bytes()
    assert detect_tee(data) == "sev-snp"
    claims = verify_snp_evidence(data, None, TrustOptions(), snp_certs(vectors, certs))
    assert claims.measurements["measurement"] == measurement
    assert claims.debug is debug
    assert tuple(claims.svns[f"tcb.{k}"] for k in ("bootloader", "tee", "snp", "microcode")) == tcb
    # The vectors come without a CRL: these policies say so explicitly.
    policy = load_policy(f'[sev-snp]\nmeasurement = ["{measurement}"]\nrequire_crl = false\n')
    if debug:
        with pytest.raises(PolicyError, match="debug"):
            validate(claims, policy)
    else:
        validate(claims, policy)
        with pytest.raises(PolicyError, match=r"tcb\.snp"):
            validate(
                claims,
                load_policy(f'[sev-snp]\nmeasurement = ["{measurement}"]\nmin_tcb = {{ snp = 9 }}\nrequire_crl=false'),
            )
    if report.startswith("gosev"):
        assert claims.report_data == bytes([1, 2, 3, 4, 5]).ljust(64, b"\0")


def test_snp_refused_after_the_vcek_expires(vectors: Path) -> None:
    data = (vectors / "sev-snp" / "virtee_milan_report.bin").read_bytes()
    with pytest.raises(CollateralError, match="not valid"):
        verify_snp_evidence(data, None, TrustOptions(now=at("2031-01-01T00:00:00Z")), snp_certs(vectors, SNP[1][1]))


@pytest.mark.parametrize("offset", [0x04, 0x08, 0x38, 0x50, 0x90, 0xBF, 0x180, 0x1A0, 0x29F, 0x2A0, 0x2E8])
def test_snp_flipped_byte_is_refused(vectors: Path, offset: int) -> None:
    data = bytearray((vectors / "sev-snp" / "virtee_milan_report.bin").read_bytes())
    data[offset] ^= 0x01
    with pytest.raises(AttestationError):
        verify_snp_evidence(bytes(data), None, TrustOptions(), snp_certs(vectors, SNP[1][1]))


def test_snp_wrong_vcek_and_missing_chain_are_refused(vectors: Path) -> None:
    data = (vectors / "sev-snp" / "virtee_milan_report.bin").read_bytes()
    with pytest.raises(SignatureError):
        verify_snp_evidence(
            data, None, TrustOptions(), snp_certs(vectors, ["gosev_milan_vcek.der", "ask_ark_milan.pem"])
        )
    with pytest.raises(CollateralError, match="ASK"):
        verify_snp_evidence(data, None, TrustOptions(), snp_certs(vectors, ["virtee_milan_vcek.der"]))
    with pytest.raises(SignatureError, match=r"ASK|chain"):  # Milan VCEK under the Genoa chain
        verify_snp_evidence(
            data, None, TrustOptions(), snp_certs(vectors, ["virtee_milan_vcek.der", "ask_ark_genoa.pem"])
        )
    with pytest.raises(EvidenceParseError):
        snp_abi.parse_report(data[: 0x4A0 - 1])


@pytest.mark.parametrize(
    ("vcek", "chain"),
    [
        ("virtee_turin_vcek.der", "virtee_cert_chain_turin.pem"),
        ("virtee_turin_vcek.der", "ask_ark_turin_vcek.pem"),
        ("virtee_milan_vcek.der", "ask_ark_milan.pem"),
    ],
)
def test_snp_chains_end_at_pinned_arks(vectors: Path, vcek: str, chain: str) -> None:
    certs = snp_verify.sort_certs(snp_certs(vectors, [vcek, chain]))
    snp_verify.verify_cert_chain(certs, options=TrustOptions(now=at("2026-01-01T00:00:00Z")))


@pytest.mark.parametrize("chain", ["ask_ark_genoa.pem", "ask_ark_milan_vlek.pem", "ask_ark_turin_vcek.pem"])
def test_shipped_ark_pins_match_amd_roots(vectors: Path, chain: str) -> None:
    certs = snp_verify.sort_certs(
        [(vectors / "sev-snp" / "virtee_milan_vcek.der").read_bytes(), (vectors / "sev-snp" / chain).read_bytes()]
    )
    assert certs.root is not None
    assert spki_sha256(certs.root) in trust.PINNED_ARK_SPKI_SHA256.values()


def test_snp_untrusted_ark_is_refused(vectors: Path) -> None:
    """A chain that verifies internally but ends at a root nobody pinned: a forged AMD hierarchy."""
    from tests.fakes.amd_pki import FakeAmdPki

    fake = FakeAmdPki()
    report = fake.report(report_data=bytes(64), measurement=bytes(48))
    with pytest.raises(SignatureError, match="not a pinned AMD root"):
        verify_snp_evidence(report, None, TrustOptions(), fake.cert_blobs())
    claims = verify_snp_evidence(report, None, TrustOptions(unsafe_trust_roots=(fake.ark_pem,)), fake.cert_blobs())
    assert claims.tee == "sev-snp"


# ------------------------------------------------------------------ RA-TLS


@pytest.mark.parametrize("name", ["gramine-cert.pem", "intel-sgxsdk-cert.pem", "rats-tls-cert.pem"])
def test_ratls_dice_evidence_binds_the_certificate_key(vectors: Path, name: str) -> None:
    pem = (vectors / "ra-tls" / name).read_bytes()
    quote = ratls.check_ratls_binding(pem)
    assert quote.tee == "sgx" and quote.body.debug  # all three are DEBUG enclaves
    dcap_verify.verify_quote_signatures(quote)


def test_ratls_gramine_legacy_extension(vectors: Path) -> None:
    pem = (vectors / "ra-tls" / "gramine-cert.pem").read_bytes()
    quote = ratls.check_ratls_binding(pem, kind="gramine-legacy")
    assert quote.body.report_data[32:] == bytes(32)


def test_ratls_tampered_key_is_refused(vectors: Path) -> None:
    der = ratls._pem_to_der((vectors / "ra-tls" / "gramine-cert.pem").read_bytes())
    ev = ratls.extract(der)
    i = der.index(ev.spki_der) + len(ev.spki_der) - 5  # a byte of the public key's point
    tampered = bytearray(der)
    tampered[i] ^= 0x01
    with pytest.raises(BindingError):
        ratls.check_ratls_binding(bytes(tampered))
    with pytest.raises(BindingError):
        ratls.check_ratls_binding(bytes(tampered), kind="gramine-legacy")


# ------------------------------------------------------------------ the CLI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blindai", "attest", "verify", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_verify_json(vectors: Path) -> None:
    v = vectors
    out = cli(
        str(v / "sgx/phala_sgx_quote.bin"),
        "--collateral",
        str(v / "sgx/phala_sgx_quote.collateral.json"),
        "--at",
        "2025-07-01T00:00:00Z",
        "--json",
        "--report-data",
        b"Hello, world!".hex(),
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc == {
        "tee": "sgx",
        "tcb_status": "ConfigurationAndSWHardeningNeeded",
        "advisory_ids": ["INTEL-SA-00289", "INTEL-SA-00615"],
        "debug": False,
        "measurements": {"mrenclave": INTEL[0][6]["mrenclave"], "mrsigner": INTEL[0][6]["mrsigner"]},
        "report_data": b"Hello, world!".ljust(64, b"\0").hex(),
    }
    out = cli(
        str(v / "tdx/phala_tdx_quote.bin"),
        "--collateral",
        str(v / "tdx/phala_tdx_quote.collateral.json"),
        "--at",
        "2025-07-01T00:00:00Z",
        "--json",
    )
    doc = json.loads(out.stdout)
    assert doc["tee"] == "tdx" and doc["tcb_status"] == "UpToDate" and doc["advisory_ids"] == []
    assert set(doc["measurements"]) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"}
    out = cli(
        str(v / "sev-snp/virtee_milan_report.bin"),
        "--certs",
        str(v / "sev-snp/virtee_milan_vcek.der"),
        str(v / "sev-snp/virtee_cert_chain_milan.pem"),
        "--json",
    )
    doc = json.loads(out.stdout)
    assert doc["tee"] == "sev-snp" and doc["tcb_status"] is None and doc["measurements"] == {"measurement": SNP[1][4]}


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["sgx/phala_sgx_quote.bin", "--collateral", "sgx/phala_sgx_quote.collateral.json"], "collateral-time"),
        (
            [
                "tdx/gotdx_spr_quote_no_tcb_match.bin",
                "--collateral",
                "tdx/gotdx_spr_quote_no_tcb_match.collateral.json",
                "--at",
                "2023-06-20T00:00:00Z",
            ],
            "tcb",
        ),
        (
            [
                "sgx/phala_sgx_quote.bin",
                "--collateral",
                "sgx/phala_sgx_quote.collateral.json",
                "--at",
                "2025-07-01T00:00:00Z",
                "--report-data",
                "00",
            ],
            "report-data",
        ),
        (
            [
                "sev-snp/gosev_milan_report.bin",
                "--certs",
                "sev-snp/gosev_milan_vcek.der",
                "sev-snp/ask_ark_milan.pem",
                "--policy",
                "POLICY",
            ],
            "policy",
        ),
        (["sgx/trustee_occlum_debug_quote.bin"], "collateral"),
    ],
)
def test_cli_verify_failures_name_the_check(vectors: Path, tmp_path: Path, args: list[str], check: str) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(f'[sev-snp]\nmeasurement = ["{SNP[0][4]}"]\n')
    full = [str(policy) if a == "POLICY" else (str(vectors / a) if "/" in a else a) for a in args]
    with warnings.catch_warnings():
        out = cli(*full)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {check}:"), out.stderr


# ------------------------------------------------------------------ SNP shapes the recorded vectors lack


@pytest.mark.parametrize(("product", "vlek"), [("Turin", False), ("Milan", True), ("Turin", True)])
def test_snp_v3_turin_and_vlek_reports(product: str, vlek: bool) -> None:
    from tests.fakes.amd_pki import FakeAmdPki

    fake = FakeAmdPki(product=product, vlek=vlek, tcb=(4, 1, 22, 213), fmc=3)
    data = fake.report(report_data=b"nonce", measurement=b"\x42" * 48)
    report = snp_abi.parse_report(data)
    assert report.version == (3 if product == "Turin" else 2)
    if product == "Turin":
        assert report.product == "Turin"
    claims = verify_snp_evidence(data, None, TrustOptions(unsafe_trust_roots=(fake.ark_pem,)), fake.cert_blobs())
    assert claims.svns["tcb.snp"] == 22 and claims.svns["tcb.microcode"] == 213
    if product == "Turin":
        assert claims.svns["tcb.fmc"] == 3 and claims.svns["tcb.bootloader"] == 4
    # the same report claiming the other key kind is refused
    flipped = bytearray(data)
    flipped[0x48] ^= 0x04
    with pytest.raises(SignatureError):
        verify_snp_evidence(bytes(flipped), None, TrustOptions(unsafe_trust_roots=(fake.ark_pem,)), fake.cert_blobs())


def test_snp_reported_tcb_must_match_the_vcek() -> None:
    from tests.fakes.amd_pki import FakeAmdPki

    fake = FakeAmdPki(product="Turin")
    fake.tcb = (9, 9, 9, 9)  # the PSP now reports a TCB the VCEK was not issued for
    data = fake.report(report_data=b"", measurement=bytes(48))
    with pytest.raises(SignatureError, match="REPORTED_TCB"):
        verify_snp_evidence(data, None, TrustOptions(unsafe_trust_roots=(fake.ark_pem,)), fake.cert_blobs())


def test_snp_certificates_from_the_auxblob_table() -> None:
    from tests.fakes.amd_pki import FakeAmdPki

    fake = FakeAmdPki()
    table = fake.cert_table()
    assert len(snp_abi.parse_cert_table(table)) == 3
    import base64

    data = fake.report(report_data=b"", measurement=bytes(48))
    claims = verify_snp_evidence(
        data, {"snp_certs": base64.b64encode(table).decode()}, TrustOptions(unsafe_trust_roots=(fake.ark_pem,))
    )
    assert claims.tee == "sev-snp"


def test_collateral_is_fetched_only_when_allowed(vectors: Path) -> None:
    quote, _ = load(vectors, "sgx/phala_sgx_quote.bin")
    with pytest.raises(CollateralError, match="no collateral") as info:
        verify_evidence("sgx", quote, None, TrustOptions())
    assert info.value.check == "collateral"
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: the fetch must fail closed, naming the URL
    with pytest.raises(CollateralError, match="could not fetch collateral") as info:
        verify_evidence(
            "sgx", quote, None, TrustOptions(collateral_url=f"http://127.0.0.1:{port}/sgx/certification/v4/")
        )
    assert info.value.check == "collateral-fetch"
