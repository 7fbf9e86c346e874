"""One row per TEE kind: what its evidence measures and what a policy must pin.

Policy loading, policy writing, validation and the CLI read this table, so a TEE's
rules live in one place. Sizes are the byte lengths the hardware reports; a policy
value of another length could never match and is refused when the policy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TEE_NAMES", "TEES", "TeeSpec"]


@dataclass(frozen=True, slots=True)
class TeeSpec:
    """What a TEE's verified claims hold and what a policy for it must say.

    ``measurements``: pinnable hex claims and their sizes, in display order.
    ``required_any``: a policy pins at least one of these (else it accepts any code).
    ``must_pin``: each of these is pinned or named in the TEE's explicit opt-out list
    (TDX's ``unpinned_rtmrs``), because leaving it free silently accepts other software.
    ``shown``: the measurements printed as "the" measurements of this TEE.
    """

    name: str
    measurements: dict[str, int]
    required_any: tuple[str, ...]
    must_pin: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()
    numbers: tuple[str, ...] = field(default=())  # policy keys holding exact integers
    hardware: bool = True


TEES: dict[str, TeeSpec] = {
    "simulation": TeeSpec("simulation", {"measurement": 48}, required_any=(), shown=("measurement",), hardware=False),
    "sgx": TeeSpec(
        "sgx",
        {"mrenclave": 32, "mrsigner": 32},
        required_any=("mrenclave", "mrsigner"),
        shown=("mrenclave", "mrsigner"),
        numbers=("isv_prod_id",),
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
    ),
    "sev-snp": TeeSpec(
        "sev-snp",
        {"measurement": 48, "host_data": 32},
        required_any=("measurement",),
        shown=("measurement",),
        numbers=("vmpl", "guest_policy"),
    ),
}
TEE_NAMES: tuple[str, ...] = tuple(TEES)
