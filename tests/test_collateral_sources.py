"""The server's SEV-SNP CRL source fetches through the one KDS fetch (attestation/collateral.py):
cached until the CRL's next update, and a failing KDS is a typed refusal, never a 500."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509

from blindai.errors import CollateralError
from blindai.server.errors import Unavailable
from blindai.server.evidence import EvidenceService
from blindai.server.providers import Evidence, KdsSnpCrl
from tests.fakes.amd_pki import FakeAmdPki


class _Kds:
    """A KDS-shaped CRL service on loopback: ``/vcek/v1/{product}/crl``; counts what it is asked."""

    def __init__(self, crl: bytes) -> None:
        self.crl, self.paths, self.fail = crl, [], False
        kds = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                kds.paths.append(self.path)
                body = b"down" if kds.fail else kds.crl
                self.send_response(500 if kds.fail else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def pki() -> FakeAmdPki:
    return FakeAmdPki()


@pytest.fixture
def kds(pki: FakeAmdPki) -> Iterator[_Kds]:
    server = _Kds(pki.crl())
    yield server
    server.httpd.shutdown()


def test_the_crl_is_fetched_once_per_product_until_its_next_update(pki: FakeAmdPki, kds: _Kds) -> None:
    source = KdsSnpCrl(kds.url)
    report = pki.report(report_data=b"x", measurement=bytes(48))
    first = source.get(report, pki.cert_table())
    assert source.get(report, pki.cert_table()) == first
    assert kds.paths == ["/vcek/v1/Milan/crl"]
    assert x509.load_pem_x509_crl(first.encode()).issuer == pki.ark.subject


def test_a_failing_kds_is_a_typed_refusal_and_the_evidence_port_says_503(pki: FakeAmdPki, kds: _Kds) -> None:
    kds.fail = True
    source = KdsSnpCrl(kds.url)
    report = pki.report(report_data=b"x", measurement=bytes(48))
    with pytest.raises(CollateralError, match="could not fetch the SEV-SNP CRL"):
        source.get(report, pki.cert_table())

    class SnpWithKds:  # the shape of TsmProvider's SEV-SNP answer: the CRL fetched per evidence
        tee = "sev-snp"

        def get_evidence(self, report_data: bytes) -> Evidence:
            return Evidence("sev-snp", report, {"crl": source.get(report, pki.cert_table())})

        def sealing_key(self) -> bytes | None:
            return None

    with pytest.raises(Unavailable, match="could not produce evidence"):
        EvidenceService(SnpWithKds(), bytes(32)).get(b"nonce")
