"""Server side: where evidence comes from.

Every provider answers ``get_evidence(report_data) -> Evidence`` for 64 bytes of
report data. Hardware providers talk to the real kernel / Gramine interfaces;
their paths are parameters so tests can point them at folders shaped like the
real ones.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from cryptography import x509

from ..attestation import simulation
from ..tees import TEES
from .errors import CoreError

__all__ = [
    "Evidence",
    "EvidenceProvider",
    "GramineSgxProvider",
    "NoTeeError",
    "SimulationProvider",
    "TsmProvider",
    "CollateralSource",
    "FileCollateral",
    "FileSnpCrl",
    "KdsSnpCrl",
    "PccsCollateral",
    "SnpCrlSource",
    "detect_provider",
]

GRAMINE_ATTESTATION_DIR = Path("/dev/attestation")
TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")


class NoTeeError(CoreError):
    """The requested TEE is not available on this machine."""


@dataclass(frozen=True, slots=True)
class Evidence:
    tee: str
    evidence: bytes
    collateral: dict[str, Any] | None = None


class EvidenceProvider(Protocol):
    tee: str

    def get_evidence(self, report_data: bytes) -> Evidence: ...

    def sealing_key(self) -> bytes | None: ...


class SimulationProvider:
    """Signs report_data with a key made at start. Proves nothing: see simulation.py."""

    tee = "simulation"

    def __init__(self) -> None:
        self._signer = simulation.SimulationSigner(simulation.code_measurement())

    @property
    def measurement(self) -> bytes:
        return self._signer.measurement

    def get_evidence(self, report_data: bytes) -> Evidence:
        return Evidence("simulation", self._signer.sign(report_data))

    def sealing_key(self) -> bytes | None:
        return None  # simulation sealing uses an explicit, insecure key file


class CollateralSource(Protocol):
    """Where a server finds Intel collateral for its own quotes, to serve beside them."""

    def get(self, quote: bytes) -> dict[str, Any]: ...


def _next_update(collateral: dict[str, Any]) -> dt.datetime:
    """The earliest nextUpdate among TCB Info and QE Identity: when cached collateral goes stale."""
    times = []
    for key in ("tcb_info", "qe_identity"):
        try:
            times.append(dt.datetime.fromisoformat(json.loads(collateral[key])["nextUpdate"].replace("Z", "+00:00")))
        except (KeyError, ValueError, TypeError):
            continue
    return min(times) if times else dt.datetime.now(dt.UTC)


class FileCollateral:
    """Collateral in a JSON file (QuoteCollateralV3 layout) that the operator refreshes; re-read on change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: tuple[float, dict[str, Any]] | None = None

    def get(self, quote: bytes) -> dict[str, Any]:
        mtime = self.path.stat().st_mtime
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, json.loads(self.path.read_text()))
        return self._cached[1]


class PccsCollateral:
    """Collateral fetched from a PCCS (or Intel PCS) through dcap-qvl, cached until its next update."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._cache: dict[str, tuple[dt.datetime, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, quote: bytes) -> dict[str, Any]:
        import dcap_qvl

        from ..attestation.collateral import fetch_collateral

        key = dcap_qvl.parse_quote(quote).fmspc()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > dt.datetime.now(dt.UTC):
                return hit[1]
            collateral = fetch_collateral(self.url, quote)  # the one fetch (attestation/collateral.py)
            self._cache[key] = (_next_update(collateral), collateral)
            return collateral


class SnpCrlSource(Protocol):
    """Where a SEV-SNP server finds the VCEK/VLEK CRL to serve beside its reports.

    CRLs are signed by AMD's root key, so the host cannot forge one; serving it lets
    clients check revocation without going to the network themselves."""

    def get(self, report: bytes, cert_table: bytes) -> str: ...


def _crl_pem(raw: bytes | x509.CertificateRevocationList) -> tuple[str, dt.datetime]:
    from cryptography.hazmat.primitives.serialization import Encoding

    from ..attestation.collateral import load_crl

    crl = raw if isinstance(raw, x509.CertificateRevocationList) else load_crl(raw)
    nxt = crl.next_update_utc or dt.datetime.now(dt.UTC)
    return crl.public_bytes(Encoding.PEM).decode(), nxt


class FileSnpCrl:
    """A CRL file (DER or PEM) that the operator refreshes (e.g. a cron job on KDS); re-read on change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: tuple[float, str] | None = None
        _crl_pem(path.read_bytes())  # refuse to start with a file that is not a CRL

    def get(self, report: bytes, cert_table: bytes) -> str:
        mtime = self.path.stat().st_mtime
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, _crl_pem(self.path.read_bytes())[0])
        return self._cached[1]


class KdsSnpCrl:
    """The CRL fetched from AMD KDS (or a mirror) for this machine's product, cached until its next update."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._cache: dict[str, tuple[dt.datetime, str]] = {}
        self._lock = threading.Lock()

    def get(self, report: bytes, cert_table: bytes) -> str:
        from ..attestation.collateral import fetch_snp_crl
        from ..attestation.snp_abi import KEY_VLEK, parse_cert_table, parse_report
        from ..attestation.snp_verify import cert_product, sort_certs

        parsed = parse_report(report)
        certs = sort_certs(parse_cert_table(cert_table)) if cert_table else None
        product = (cert_product(certs.endorsement) if certs else None) or parsed.product
        if product is None:
            raise NoTeeError("cannot tell this machine's AMD product to fetch its CRL: use --snp-crl-file")
        kind = "vlek" if parsed.signing_key == KEY_VLEK else "vcek"
        key = f"{kind}/{product}"
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > dt.datetime.now(dt.UTC):
                return hit[1]
            pem, nxt = _crl_pem(fetch_snp_crl(self.url, product, vlek=kind == "vlek", proxy_env=True))  # the one fetch
            self._cache[key] = (nxt, pem)
            return pem


class GramineSgxProvider:
    """Gramine's pseudo-files: write ``user_report_data``, read ``quote``."""

    tee = "sgx"

    def __init__(self, root: Path = GRAMINE_ATTESTATION_DIR, collateral: CollateralSource | None = None) -> None:
        self.root = root
        self.collateral = collateral
        self._lock = threading.Lock()  # the pseudo-files hold one report_data at a time
        kind = (root / "attestation_type").read_text().strip() if (root / "attestation_type").exists() else ""
        if kind != "dcap":
            raise NoTeeError(f'{root}/attestation_type is {kind!r}; set sgx.remote_attestation = "dcap"')

    def get_evidence(self, report_data: bytes) -> Evidence:
        with self._lock:
            (self.root / "user_report_data").write_bytes(report_data)
            quote = (self.root / "quote").read_bytes()
        return Evidence("sgx", quote, self.collateral.get(quote) if self.collateral else None)

    def sealing_key(self) -> bytes | None:
        path = self.root / "keys" / "_sgx_mrenclave"
        return path.read_bytes() if path.exists() else None


class TsmProvider:
    """Linux configfs-tsm (``/sys/kernel/config/tsm/report``) for TDX and SEV-SNP guests."""

    _PROVIDERS: ClassVar[dict[str, str]] = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}

    def __init__(
        self,
        root: Path = TSM_REPORT_DIR,
        collateral: CollateralSource | None = None,
        snp_crl: SnpCrlSource | None = None,
    ) -> None:
        self.root = root
        self.collateral = collateral
        self.snp_crl = snp_crl
        self._lock = threading.Lock()
        entry = self._entry()
        try:
            name = _read_attr(entry / "provider").strip()
        finally:
            _rmdir(entry)
        if name not in self._PROVIDERS:
            raise NoTeeError(f"configfs-tsm provider {name!r} is not one of {sorted(self._PROVIDERS)}")
        self.tee = self._PROVIDERS[name]

    def _entry(self) -> Path:
        entry = self.root / f"blindai-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        entry.mkdir()
        return entry

    def get_evidence(self, report_data: bytes) -> Evidence:
        with self._lock:
            entry = self._entry()
            try:
                _read_attr(entry / "provider")  # the entry's attributes exist once this one does
                gen_before = _read_int(entry / "generation")
                (entry / "inblob").write_bytes(report_data)
                outblob = (entry / "outblob").read_bytes()
                aux = entry / "auxblob"
                certs = aux.read_bytes() if self.tee == "sev-snp" and aux.exists() else b""
                if _read_int(entry / "generation") != gen_before + 1:
                    raise NoTeeError("configfs-tsm report changed while it was read (another writer)")
            finally:
                _rmdir(entry)
        collateral: dict[str, Any] | None
        if self.tee == "sev-snp":
            snp: dict[str, Any] = {"snp_certs": base64.b64encode(certs).decode()} if certs else {}
            if self.snp_crl is not None:
                snp["crl"] = self.snp_crl.get(outblob, certs)
            collateral = snp or None
        else:
            collateral = self.collateral.get(outblob) if self.collateral else None
        return Evidence(self.tee, outblob, collateral)

    def sealing_key(self) -> bytes | None:
        return None


def _read_attr(path: Path, wait_s: float = 1.0) -> str:
    """configfs creates an entry's attributes with the directory; allow a moment for slower backends."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return path.read_text()
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def detect_provider(
    tee: str,
    *,
    gramine_dir: Path = GRAMINE_ATTESTATION_DIR,
    tsm_dir: Path = TSM_REPORT_DIR,
    collateral: CollateralSource | None = None,
    snp_crl: SnpCrlSource | None = None,
) -> EvidenceProvider:
    """``auto`` tries Gramine SGX, then configfs-tsm; a named TEE must be present (its ``provider``
    row in tees.py says where its evidence comes from)."""
    if tee != "auto" and tee not in TEES:
        raise NoTeeError(f"unknown TEE {tee!r}: one of auto, {', '.join(TEES)}")
    kinds = {spec.provider for spec in TEES.values() if spec.hardware} if tee == "auto" else {TEES[tee].provider}
    if "simulation" in kinds:
        return SimulationProvider()
    errors: list[str] = []
    if "gramine" in kinds:
        try:
            if (gramine_dir / "quote").exists():
                return GramineSgxProvider(gramine_dir, collateral)
            errors.append(f"no Gramine SGX attestation interface at {gramine_dir}")
        except (NoTeeError, OSError) as exc:
            errors.append(str(exc))
    if "configfs-tsm" in kinds:
        try:
            if tsm_dir.is_dir():
                tsm = TsmProvider(tsm_dir, collateral, snp_crl)
                if tee in ("auto", tsm.tee):
                    return tsm
                errors.append(f"configfs-tsm offers {tsm.tee}, not {tee}")
            else:
                errors.append(f"no configfs-tsm report interface at {tsm_dir}")
        except (NoTeeError, OSError) as exc:
            errors.append(f"configfs-tsm: {exc}")
    raise NoTeeError(f"no {tee if tee != 'auto' else ''} TEE found ({'; '.join(errors)})".replace("no  TEE", "no TEE"))
