"""One row per TEE kind: its evidence, what that measures, what a policy must pin, where the
server gets it and how models are sealed.

Policy loading, policy writing, validation, the CLI, the server's provider detection and
its sealing key all read this table, so a TEE's rules live in one place; adding a TEE is a
row here plus its ``attestation/*_abi.py`` and ``*_verify.py``. Sizes are the byte lengths
the hardware reports; a policy value of another length could never match and is refused
when the policy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SIMULATION", "TEE_NAMES", "TEES", "TeeSpec", "is_simulation"]

SIMULATION = "simulation"
"""The name of the no-TEE mode: evidence that proves nothing, accepted only when asked for."""


@dataclass(frozen=True, slots=True)
class TeeSpec:
    """What a TEE's verified claims hold and what a policy for it must say.

    ``measurements``: pinnable hex claims and their sizes, in display order.
    ``required_any``: a policy pins at least one of these (else it accepts any code).
    ``must_pin``: each of these is pinned or named in the TEE's explicit opt-out list
    (TDX's ``unpinned_rtmrs``), because leaving it free silently accepts other software.
    ``shown``: the measurements printed as "the" measurements of this TEE.
    ``evidence``: the evidence format (``dcap`` quote, ``snp`` report, ``simulation``).
    ``provider``: where the server gets it (``gramine`` /dev/attestation, ``configfs-tsm``,
    or ``simulation``).
    ``sealing``: how the server seals stored models: ``tee-key`` (a key only this TEE
    identity derives), ``host-key-file`` (simulation: a file the host can read), or
    ``none`` (the TEE offers no sealing key, so a model store is refused).
    ``model_memory``: where the server holds an uploaded model: ``file`` (an in-memory file
    onnxruntime reads by path: an unnamed tmpfs file where possible, else a sealed memfd;
    private wherever all of the process's memory is: a confidential VM, or no TEE at all) or
    ``bytes`` (SGX under Gramine, whose emulation of both this project does not rely on).
    """

    name: str
    measurements: dict[str, int]
    required_any: tuple[str, ...]
    must_pin: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()
    numbers: tuple[str, ...] = field(default=())  # policy keys holding exact integers
    hardware: bool = True
    evidence: str = "dcap"
    provider: str = "gramine"
    sealing: str = "none"
    model_memory: str = "file"


TEES: dict[str, TeeSpec] = {
    SIMULATION: TeeSpec(
        SIMULATION,
        {"measurement": 48},
        required_any=(),
        shown=("measurement",),
        hardware=False,
        evidence="simulation",
        provider="simulation",
        sealing="host-key-file",
    ),
    "sgx": TeeSpec(
        "sgx",
        {"mrenclave": 32, "mrsigner": 32},
        required_any=("mrenclave", "mrsigner"),
        shown=("mrenclave", "mrsigner"),
        numbers=("isv_prod_id",),
        evidence="dcap",
        provider="gramine",
        sealing="tee-key",
        model_memory="bytes",
    ),
    "tdx": TeeSpec(
        "tdx",
        {
            "mrtd": 48,
            "rtmr0": 48,
            "rtmr1": 48,
            "rtmr2": 48,
            "rtmr3": 48,
            "mrconfigid": 48,
            "mrowner": 48,
            "xfam": 8,
            "td_attributes": 8,
        },
        required_any=("mrtd",),
        must_pin=("rtmr0", "rtmr1", "rtmr2", "rtmr3"),
        shown=("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"),
        evidence="dcap",
        provider="configfs-tsm",
        sealing="none",
    ),
    "sev-snp": TeeSpec(
        "sev-snp",
        {"measurement": 48, "host_data": 32},
        required_any=("measurement",),
        shown=("measurement",),
        numbers=("vmpl", "guest_policy"),
        evidence="snp",
        provider="configfs-tsm",
        sealing="none",
    ),
}
TEE_NAMES: tuple[str, ...] = tuple(TEES)


def is_simulation(tee: str) -> bool:
    """True for the no-TEE mode (and only for it): its row has no hardware behind it."""
    spec = TEES.get(tee)
    return spec is not None and not spec.hardware
