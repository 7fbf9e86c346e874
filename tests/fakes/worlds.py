"""A running server per TEE kind, over FAKE devices and FAKE vendor PKIs, with what a client needs.

``World`` bundles a real ``blindai serve`` (simulation, or ``--tee sgx|tdx|sev-snp`` over the
FAKE Gramine / configfs-tsm folders) with the arguments a client must pass to trust it: the
policy, the FAKE root (through the ``unsafe_`` options only), and the ports. Every PKI is made
at "now", so the CLI (which verifies at the current time) can be driven too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blindai.testing import LocalServer
from tests.fakes.amd_pki import FakeAmdPki
from tests.fakes.devices import FakeGramine, FakeTsm
from tests.fakes.intel_pki import FakeIntelPki

TEES = ("simulation", "sgx", "tdx", "sev-snp")
MRENCLAVE = bytes.fromhex("c0ffee" * 10 + "c0de")
MRSIGNER = bytes.fromhex("5a" * 32)
MRTD = b"\x7d" * 48
RTMRS = (b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, b"\x04" * 48)
SNP_MEASUREMENT = bytes.fromhex("ab" * 48)


@dataclass
class World:
    tee: str
    server: LocalServer
    policy: str | None
    root_pem: bytes | None
    root_file: Path | None
    stops: list[Callable[[], None]] = field(default_factory=list)
    pki: Any = None

    @property
    def simulation(self) -> bool:
        return self.tee == "simulation"

    def connect_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``blindai.connect`` (ports, policy, FAKE root)."""
        kw: dict[str, Any] = {**self.server.connect_kwargs()}
        if self.simulation:
            kw["simulation"] = True
        else:
            kw["policy"] = self.policy
            kw["unsafe_trust_roots"] = [self.root_pem]
        kw.update(overrides)
        return kw

    def cli_args(self, policy_file: Path) -> list[str]:
        """The CLI's connection flags for this world (the policy written to ``policy_file``)."""
        ports = self.server
        args = ["--attested-port", str(ports.attested_port), "--unattested-port", str(ports.unattested_port)]
        if self.simulation:
            return [*args, "--simulation"]
        assert self.policy is not None and self.root_file is not None
        policy_file.write_text(self.policy)
        return [*args, "--policy", str(policy_file), "--unsafe-trust-root", str(self.root_file)]

    def stop(self) -> None:
        self.server.stop()
        for stop in self.stops:
            with contextlib.suppress(Exception):
                stop()


def sgx_policy(mrenclave: bytes = MRENCLAVE) -> str:
    return f'[sgx]\nmrenclave = ["{mrenclave.hex()}"]\n'


def tdx_policy(mrtd: bytes = MRTD) -> str:
    rtmrs = "".join(f'rtmr{i} = ["{r.hex()}"]\n' for i, r in enumerate(RTMRS))
    return f'[tdx]\nmrtd = ["{mrtd.hex()}"]\n{rtmrs}'


def snp_policy(measurement: bytes = SNP_MEASUREMENT) -> str:
    tcb = "min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }"
    return f'[sev-snp]\nmeasurement = ["{measurement.hex()}"]\n{tcb}\n'


def start_world(tee: str, tmp: Path, *server_args: str, mrenclave: bytes = MRENCLAVE, pki: Any = None) -> World:
    """Start a server of kind ``tee`` whose evidence a client can verify with the returned policy.

    ``pki``: reuse another world's FAKE vendor PKI (a second machine of the same vendor)."""
    if tee == "simulation":
        return World(tee, LocalServer(*server_args).start(), None, None, None)
    tmp.mkdir(parents=True, exist_ok=True)
    root_file = tmp / "fake-root.pem"
    if tee in ("sgx", "tdx"):
        intel = pki or FakeIntelPki(_now())
        root_file.write_bytes(intel.root_pem)
        collateral = tmp / "collateral.json"
        collateral.write_text(json.dumps(intel.collateral(tee=tee)))
        if tee == "sgx":
            gramine = FakeGramine(
                tmp / "dev-attestation",
                lambda rd: intel.sgx_quote(mrenclave=mrenclave, mrsigner=MRSIGNER, report_data=rd),
            )
            args = ["--tee", "sgx", "--gramine-dir", str(gramine.root)]
            stop, policy = gramine.stop, sgx_policy(mrenclave)
        else:
            tsm = FakeTsm(
                tmp / "tsm", "tdx_guest", lambda rd: (intel.tdx_quote(mrtd=MRTD, report_data=rd, rtmrs=RTMRS), b"")
            )
            args = ["--tee", "tdx", "--tsm-dir", str(tsm.root)]
            stop, policy = tsm.stop, tdx_policy()
        server = LocalServer(*args, "--collateral-file", str(collateral), *server_args, simulation=False)
        try:
            server.start()
        except BaseException:
            stop()
            raise
        return World(tee, server, policy, intel.root_pem, root_file, [stop], intel)
    if tee == "sev-snp":
        amd = pki or FakeAmdPki()
        root_file.write_bytes(amd.ark_pem)
        crl = tmp / "vcek.crl"
        crl.write_bytes(amd.crl())
        tsm = FakeTsm(
            tmp / "tsm",
            "sev_guest",
            lambda rd: (amd.report(report_data=rd, measurement=SNP_MEASUREMENT), amd.cert_table()),
        )
        server = LocalServer(
            "--tee", "sev-snp", "--tsm-dir", str(tsm.root), "--snp-crl-file", str(crl), *server_args, simulation=False
        )
        try:
            server.start()
        except BaseException:
            tsm.stop()
            raise
        return World(tee, server, snp_policy(), amd.ark_pem, root_file, [tsm.stop], amd)
    raise ValueError(tee)


@contextlib.contextmanager
def world(tee: str, tmp: Path, *server_args: str) -> Iterator[World]:
    w = start_world(tee, tmp, *server_args)
    try:
        yield w
    finally:
        w.stop()


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)
