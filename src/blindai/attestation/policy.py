"""Policy: what the client expects of verified evidence, as data (TOML).

Safe by default: a section without an expected measurement is refused when
loaded, debug is refused unless ``allow_debug = true``, and the accepted Intel
TCB statuses default to ``["UpToDate"]``. :func:`validate` checks every field
and reports all failures at once, each with got and expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BlindAIError, PolicyError
from .evidence import VerifiedAttestation

__all__ = ["Policy", "PolicyLoadError", "load_policy", "policy_from_attestation", "validate"]

_HEX = re.compile(r"^[0-9a-f]*$")
_SNP_TCB_FIELDS = ("bootloader", "tee", "snp", "microcode", "fmc")
DEFAULT_TCB_STATUS: tuple[str, ...] = ("UpToDate",)


class PolicyLoadError(BlindAIError, ValueError):
    """The policy file itself is invalid or unsafe."""


@dataclass(frozen=True, slots=True)
class TeePolicy:
    """Expected claims for one TEE kind; empty tuples mean 'not checked'."""

    measurements: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allow_debug: bool = False
    accepted_tcb_status: tuple[str, ...] = DEFAULT_TCB_STATUS
    min_svns: dict[str, int] = field(default_factory=dict)
    exact: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Policy:
    sections: dict[str, TeePolicy]

    def for_tee(self, tee: str) -> TeePolicy | None:
        return self.sections.get(tee)


# Which keys each section may hold, and which of them count as a measurement.
_MEASUREMENT_KEYS = {
    "sgx": ("mrenclave", "mrsigner"),
    "tdx": ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner"),
    "sev-snp": ("measurement", "host_data"),
    "simulation": ("measurement",),
}
# Byte length of each measurement, to refuse at load time a value that could never match.
_SIZES = {
    "mrenclave": 32,
    "mrsigner": 32,
    "mrtd": 48,
    "rtmr0": 48,
    "rtmr1": 48,
    "rtmr2": 48,
    "rtmr3": 48,
    "mrconfigid": 48,
    "mrowner": 48,
    "measurement": 48,
    "host_data": 32,
}
_REQUIRED = {"sgx": ("mrenclave", "mrsigner"), "tdx": ("mrtd",), "sev-snp": ("measurement",), "simulation": ()}


def _hex_list(section: str, key: str, value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise PolicyLoadError(f"[{section}] {key} must be a hex string or a non-empty list of them")
    out = tuple(x.lower().removeprefix("0x") for x in items)
    for x in out:
        if not _HEX.match(x) or len(x) % 2:
            raise PolicyLoadError(f"[{section}] {key}: {x!r} is not hex")
        if key in _SIZES and len(x) != 2 * _SIZES[key]:
            raise PolicyLoadError(f"[{section}] {key}: {x!r} is {len(x) // 2} bytes; it must be {_SIZES[key]}")
    return out


def _section(name: str, raw: Mapping[str, Any]) -> TeePolicy:
    known = set(_MEASUREMENT_KEYS[name]) | {"allow_debug", "accepted_tcb_status"}
    known |= {"isv_prod_id", "min_isv_svn"} if name == "sgx" else set()
    known |= {"min_tcb", "min_guest_svn"} if name == "sev-snp" else set()
    unknown = set(raw) - known
    if unknown:
        raise PolicyLoadError(f"[{name}] has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    meas = {k: _hex_list(name, k, raw[k]) for k in _MEASUREMENT_KEYS[name] if k in raw}
    if _REQUIRED[name] and not any(k in meas for k in _REQUIRED[name]):
        raise PolicyLoadError(
            f"[{name}] pins no measurement: set {' or '.join(_REQUIRED[name])} "
            "(a policy that accepts any code would accept an attacker's)"
        )
    allow_debug = raw.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyLoadError(f"[{name}] allow_debug must be true or false")
    statuses = raw.get("accepted_tcb_status", list(DEFAULT_TCB_STATUS))
    if not isinstance(statuses, list) or not all(isinstance(s, str) for s in statuses):
        raise PolicyLoadError(f"[{name}] accepted_tcb_status must be a list of strings")
    min_svns: dict[str, int] = {}
    exact: dict[str, int] = {}
    if name == "sgx":
        if "min_isv_svn" in raw:
            min_svns["isv_svn"] = _int(name, "min_isv_svn", raw["min_isv_svn"])
        if "isv_prod_id" in raw:
            exact["isv_prod_id"] = _int(name, "isv_prod_id", raw["isv_prod_id"])
        if ("min_isv_svn" in raw or "isv_prod_id" in raw) and "mrsigner" not in meas:
            raise PolicyLoadError("[sgx] isv_prod_id and min_isv_svn only mean something with mrsigner")
    if name == "sev-snp":
        tcb = raw.get("min_tcb", {})
        if not isinstance(tcb, dict) or set(tcb) - set(_SNP_TCB_FIELDS):
            raise PolicyLoadError(f"[sev-snp] min_tcb takes only {', '.join(_SNP_TCB_FIELDS)}")
        min_svns.update({f"tcb.{k}": _int(name, f"min_tcb.{k}", v) for k, v in tcb.items()})
        if "min_guest_svn" in raw:
            min_svns["guest_svn"] = _int(name, "min_guest_svn", raw["min_guest_svn"])
    return TeePolicy(meas, allow_debug, tuple(statuses), min_svns, exact)


def _int(section: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyLoadError(f"[{section}] {key} must be a non-negative integer")
    return value


def load_policy(source: str | os.PathLike[str] | Mapping[str, Any]) -> Policy:
    """Load a policy from a TOML file path, TOML text, or an already parsed mapping."""
    if isinstance(source, Mapping):
        raw: Mapping[str, Any] = source
    else:
        text: str
        path = Path(source)
        if isinstance(source, os.PathLike) or (len(str(source)) < 4096 and "\n" not in str(source) and path.exists()):
            try:
                text = path.read_text()
            except OSError as exc:
                raise PolicyLoadError(f"cannot read policy file {path}: {exc}") from exc
        else:
            text = str(source)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyLoadError(f"policy is not valid TOML: {exc}") from exc
    unknown = set(raw) - set(_MEASUREMENT_KEYS)
    if unknown:
        raise PolicyLoadError(f"unknown policy sections {sorted(unknown)}; known: {sorted(_MEASUREMENT_KEYS)}")
    sections = {}
    for name, body in raw.items():
        if not isinstance(body, Mapping):
            raise PolicyLoadError(f"[{name}] must be a table")
        sections[name] = _section(name, body)
    if not sections:
        raise PolicyLoadError("policy has no section: add [sgx], [tdx] or [sev-snp] with an expected measurement")
    return Policy(sections)


def validate(verified: VerifiedAttestation, policy: Policy) -> None:
    """Check verified claims against the policy; raise one PolicyError listing every failure."""
    section = policy.for_tee(verified.tee)
    if section is None:
        raise PolicyError([("tee", verified.tee, sorted(policy.sections) or "a [section] for this TEE")])
    failures: list[tuple[str, object, object]] = []
    for key, allowed in section.measurements.items():
        got = verified.measurements.get(key)
        if got is None or got.lower() not in allowed:
            failures.append((key, got, list(allowed) if len(allowed) > 1 else allowed[0]))
    if verified.debug and not section.allow_debug and verified.tee != "simulation":
        failures.append(("debug", True, False))
    if verified.tcb_status is not None and verified.tcb_status not in section.accepted_tcb_status:
        failures.append(("tcb_status", verified.tcb_status, list(section.accepted_tcb_status)))
    for key, minimum in section.min_svns.items():
        got_svn = verified.svns.get(key)
        if got_svn is None or got_svn < minimum:
            failures.append((key, got_svn, f">= {minimum}"))
    for key, value in section.exact.items():
        if verified.svns.get(key) != value:
            failures.append((key, verified.svns.get(key), value))
    if failures:
        raise PolicyError(failures)


def policy_from_attestation(verified: VerifiedAttestation) -> str:
    """TOML text that pins exactly what was seen (for ``attest show --write-policy``)."""
    lines = [f"[{verified.tee}]"]
    pin = {
        "sgx": ("mrenclave",),
        "tdx": ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"),
        "sev-snp": ("measurement",),
        "simulation": ("measurement",),
    }[verified.tee]
    for key in pin:
        if key in verified.measurements:
            lines.append(f'{key} = ["{verified.measurements[key]}"]')
    if verified.tee != "simulation":
        lines.append(f"allow_debug = {'true' if verified.debug else 'false'}")
    if verified.tcb_status is not None:
        lines.append(f'accepted_tcb_status = ["{verified.tcb_status}"]')
    return "\n".join(lines) + "\n"
