"""Policy: what the client expects of verified evidence, as data (TOML or code).

Safe by default, and the same rules whether a policy is loaded or built in code
(`Policy` checks itself when constructed):

- every section pins a measurement (a policy that accepts any code accepts an attacker's);
- SGX ``mrsigner`` comes with ``isv_prod_id`` and ``min_isv_svn`` (otherwise every enclave
  that signer ever shipped, old and vulnerable ones included, passes);
- TDX pins RTMR0-3 (kernel, command line, application) or names the ones it leaves free in
  ``unpinned_rtmrs``: MRTD alone is only the firmware;
- SEV-SNP requires a current VCEK/VLEK CRL with the evidence unless ``require_crl = false``;
- debug is refused unless ``allow_debug = true``; accepted Intel TCB statuses default to
  ``["UpToDate"]``.

`validate` checks every field and reports all failures at once, each with got and expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigurationError, PolicyError
from ..tees import TEES, is_simulation
from .evidence import VerifiedAttestation

__all__ = ["Policy", "PolicyLoadError", "TeePolicy", "load_policy", "policy_from_attestation", "validate"]

_HEX = re.compile(r"^[0-9a-f]*$")
_SNP_TCB_FIELDS = ("bootloader", "tee", "snp", "microcode", "fmc")
DEFAULT_TCB_STATUS: tuple[str, ...] = ("UpToDate",)
_RTMRS = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")


class PolicyLoadError(ConfigurationError, ValueError):
    """The policy itself is invalid or unsafe (raised when it is loaded or built)."""


@dataclass(frozen=True, slots=True)
class TeePolicy:
    """Expected claims for one TEE kind.

    ``measurements`` maps a claim name to the accepted hex values (any of). ``min_svns``
    and ``exact`` compare numeric claims (``isv_svn``, ``tcb.snp``, ``vmpl``...).
    ``unpinned_rtmrs`` (TDX) names the RTMRs deliberately left free; ``require_crl``
    (SEV-SNP) demands a current CRL with the evidence.
    """

    measurements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    allow_debug: bool = False
    accepted_tcb_status: tuple[str, ...] = DEFAULT_TCB_STATUS
    min_svns: Mapping[str, int] = field(default_factory=dict)
    exact: Mapping[str, int] = field(default_factory=dict)
    unpinned_rtmrs: tuple[int, ...] = ()
    require_crl: bool = True

    def __post_init__(self) -> None:
        # Types are checked and every mapping frozen here, so that a policy built in code can
        # neither be weaker than its TOML twin (a str where a tuple belongs matches substrings)
        # nor be emptied after it was checked.
        for name in ("allow_debug", "require_crl"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyLoadError(f"{name} must be True or False, not {getattr(self, name)!r}")
        meas: dict[str, tuple[str, ...]] = {}
        for key, values in dict(self.measurements).items():
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise PolicyLoadError(f"measurement {key} must be a tuple of hex strings")
            meas[str(key)] = tuple(v.lower() for v in values)
        statuses = self.accepted_tcb_status
        if isinstance(statuses, str) or not all(isinstance(t, str) for t in statuses):
            raise PolicyLoadError("accepted_tcb_status must be a tuple of status names")
        for name in ("min_svns", "exact"):
            for key, value in dict(getattr(self, name)).items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise PolicyLoadError(f"{name}[{key!r}] must be a non-negative integer")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.unpinned_rtmrs):
            raise PolicyLoadError("unpinned_rtmrs must hold RTMR indexes")
        object.__setattr__(self, "measurements", MappingProxyType(meas))
        object.__setattr__(self, "accepted_tcb_status", tuple(statuses))
        object.__setattr__(self, "min_svns", MappingProxyType(dict(self.min_svns)))
        object.__setattr__(self, "exact", MappingProxyType(dict(self.exact)))
        object.__setattr__(self, "unpinned_rtmrs", tuple(self.unpinned_rtmrs))


@dataclass(frozen=True, slots=True)
class Policy:
    """One `TeePolicy` per TEE kind the client accepts; checked by the same rules however it was made."""

    sections: Mapping[str, TeePolicy]

    def __post_init__(self) -> None:
        if not self.sections:
            raise PolicyLoadError("policy has no section: add [sgx], [tdx] or [sev-snp] with an expected measurement")
        for name, section in self.sections.items():
            if not isinstance(section, TeePolicy):
                raise PolicyLoadError(f"[{name}] must be a TeePolicy")
            _check_section(name, section)
        if "simulation" in self.sections and len(self.sections) > 1:
            raise PolicyLoadError(
                "a [simulation] section accepts evidence anyone can forge, so it cannot sit beside "
                f"{', '.join(f'[{n}]' for n in self.sections if n != 'simulation')}: keep development and "
                "production policies in separate files"
            )
        object.__setattr__(self, "sections", MappingProxyType(dict(self.sections)))

    def for_tee(self, tee: str) -> TeePolicy | None:
        """The section for one TEE kind, or ``None``: evidence from a TEE the policy does not name is refused."""
        return self.sections.get(tee)

    @classmethod
    def from_attestation(cls, verified: VerifiedAttestation) -> Policy:
        """A first policy that pins everything ``verified`` showed (its code, versions and settings)."""
        return cls({verified.tee: _pin_everything(verified)})

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any]) -> Policy:
        """From a TOML file path, TOML text, or an already parsed mapping."""
        return load_policy(source)

    def to_toml(self) -> str:
        """TOML that `load_policy` turns back into an equal policy."""
        out: list[str] = []
        for name, s in self.sections.items():
            if is_simulation(name):
                out.append("# DANGER: this policy accepts a SIMULATION server: no hardware protects what you send")
            out.append(f"[{name}]")
            for key, values in s.measurements.items():
                out.append(f"{key} = [{', '.join(f'{chr(34)}{v}{chr(34)}' for v in values)}]")
            if name == "tdx" and s.unpinned_rtmrs:
                out.append(f"unpinned_rtmrs = {list(s.unpinned_rtmrs)}  # DANGER: these RTMRs accept any value")
            if not is_simulation(name):
                note = "  # DANGER: a debug TEE can be read by its host" if s.allow_debug else ""
                out.append(f"allow_debug = {'true' if s.allow_debug else 'false'}{note}")
            if name in ("sgx", "tdx"):
                out.append(f"accepted_tcb_status = [{', '.join(chr(34) + t + chr(34) for t in s.accepted_tcb_status)}]")
            for key, value in s.exact.items():
                out.append(f"{key} = {value}")
            if "isv_svn" in s.min_svns:
                out.append(f"min_isv_svn = {s.min_svns['isv_svn']}")
            if "guest_svn" in s.min_svns:
                out.append(f"min_guest_svn = {s.min_svns['guest_svn']}")
            tcb = {k.removeprefix("tcb."): v for k, v in s.min_svns.items() if k.startswith("tcb.")}
            if tcb:
                out.append("min_tcb = { " + ", ".join(f"{k} = {v}" for k, v in tcb.items()) + " }")
            if name == "sev-snp":
                out.append(f"require_crl = {'true' if s.require_crl else 'false'}")
            out.append("")
        return "\n".join(out)


# ---------------------------------------------------------------- rules


def _check_section(name: str, s: TeePolicy) -> None:
    spec = TEES.get(name)
    if spec is None:
        raise PolicyLoadError(f"unknown policy section [{name}]; known: {sorted(TEES)}")
    for key, values in s.measurements.items():
        if key not in spec.measurements:
            raise PolicyLoadError(f"[{name}] {key} is not a claim of {name}; known: {sorted(spec.measurements)}")
        if not values:
            raise PolicyLoadError(f"[{name}] {key} needs at least one value")
        for v in values:
            if not _HEX.match(v) or len(v) != 2 * spec.measurements[key]:
                raise PolicyLoadError(f"[{name}] {key}: {v!r} is not {spec.measurements[key]} bytes of lowercase hex")
    if spec.required_any and not any(k in s.measurements for k in spec.required_any):
        raise PolicyLoadError(
            f"[{name}] pins no measurement: set {' or '.join(spec.required_any)} "
            "(a policy that accepts any code would accept an attacker's)"
        )
    if name == "sgx":
        has_signer = "mrsigner" in s.measurements
        has_ids = "isv_prod_id" in s.exact and "isv_svn" in s.min_svns
        if has_signer and not has_ids:
            raise PolicyLoadError(
                "[sgx] mrsigner needs isv_prod_id and min_isv_svn: without them every enclave this signer "
                "ever shipped passes, older vulnerable versions and other products included "
                "(add isv_prod_id = N and min_isv_svn = N, or pin mrenclave instead)"
            )
        if ("isv_prod_id" in s.exact or "isv_svn" in s.min_svns) and not has_signer:
            raise PolicyLoadError("[sgx] isv_prod_id and min_isv_svn only mean something with mrsigner")
    if name == "tdx":
        bad = [i for i in s.unpinned_rtmrs if i not in range(4)]
        if bad:
            raise PolicyLoadError(f"[tdx] unpinned_rtmrs takes RTMR indexes 0-3, got {bad}")
        both = [f"rtmr{i}" for i in s.unpinned_rtmrs if f"rtmr{i}" in s.measurements]
        if both:
            raise PolicyLoadError(f"[tdx] {', '.join(both)} is both pinned and listed in unpinned_rtmrs")
    free = {f"rtmr{i}" for i in s.unpinned_rtmrs}
    missing = [k for k in spec.must_pin if k not in s.measurements and k not in free]
    if missing:
        raise PolicyLoadError(
            f"[{name}] does not pin {', '.join(missing)}: MRTD alone is only the firmware, so any kernel, "
            "command line and application on it would pass. Pin them (blindai attest show HOST --write-policy "
            f"writes what a server runs), or leave some free on purpose with unpinned_rtmrs = "
            f"[{', '.join(k[-1] for k in missing)}] (DANGER: that RTMR then accepts any value)"
        )
    if s.unpinned_rtmrs and name != "tdx":
        raise PolicyLoadError(f"[{name}] unpinned_rtmrs only applies to [tdx]")
    if not s.require_crl and name != "sev-snp":
        raise PolicyLoadError(f"[{name}] require_crl only applies to [sev-snp]")
    known_min = {"sgx": {"isv_svn"}, "sev-snp": {"guest_svn", *(f"tcb.{f}" for f in _SNP_TCB_FIELDS)}}.get(name, set())
    unknown_min = set(s.min_svns) - known_min
    if unknown_min:
        raise PolicyLoadError(f"[{name}] has no minimum for {sorted(unknown_min)}; known: {sorted(known_min)}")
    for key in s.exact:
        allowed = spec.numbers
        if key not in allowed:
            raise PolicyLoadError(f"[{name}] {key} is not a pinnable number of {name}; known: {list(allowed)}")


# ---------------------------------------------------------------- loading


def _hex_list(section: str, key: str, value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise PolicyLoadError(f"[{section}] {key} must be a hex string or a non-empty list of them")
    out = tuple(x.lower().removeprefix("0x") for x in items)
    size = TEES[section].measurements[key]
    for x in out:
        if not _HEX.match(x) or len(x) % 2:
            raise PolicyLoadError(f"[{section}] {key}: {x!r} is not hex")
        if len(x) != 2 * size:
            raise PolicyLoadError(f"[{section}] {key}: {x!r} is {len(x) // 2} bytes; it must be {size}")
    return out


def _int(section: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyLoadError(f"[{section}] {key} must be a non-negative integer")
    return value


def _bool(section: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PolicyLoadError(f"[{section}] {key} must be true or false")
    return value


def _section(name: str, raw: Mapping[str, Any]) -> TeePolicy:
    spec = TEES[name]
    known = set(spec.measurements) | set(spec.numbers) | {"allow_debug", "accepted_tcb_status"}
    known |= {"min_isv_svn"} if name == "sgx" else set()
    known |= {"unpinned_rtmrs"} if name == "tdx" else set()
    known |= {"min_tcb", "min_guest_svn", "require_crl"} if name == "sev-snp" else set()
    unknown = set(raw) - known
    if unknown:
        raise PolicyLoadError(f"[{name}] has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    meas = {k: _hex_list(name, k, raw[k]) for k in spec.measurements if k in raw}
    statuses = raw.get("accepted_tcb_status", list(DEFAULT_TCB_STATUS))
    if not isinstance(statuses, list) or not all(isinstance(s, str) for s in statuses):
        raise PolicyLoadError(f"[{name}] accepted_tcb_status must be a list of strings")
    min_svns: dict[str, int] = {}
    exact = {k: _int(name, k, raw[k]) for k in spec.numbers if k in raw}
    if "min_isv_svn" in raw:
        min_svns["isv_svn"] = _int(name, "min_isv_svn", raw["min_isv_svn"])
    unpinned: tuple[int, ...] = ()
    if "unpinned_rtmrs" in raw:
        value = raw["unpinned_rtmrs"]
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise PolicyLoadError("[tdx] unpinned_rtmrs must be a list of RTMR indexes, e.g. [3]")
        unpinned = tuple(value)
    if name == "sev-snp":
        tcb = raw.get("min_tcb", {})
        if not isinstance(tcb, dict) or set(tcb) - set(_SNP_TCB_FIELDS):
            raise PolicyLoadError(f"[sev-snp] min_tcb takes only {', '.join(_SNP_TCB_FIELDS)}")
        min_svns.update({f"tcb.{k}": _int(name, f"min_tcb.{k}", v) for k, v in tcb.items()})
        if "min_guest_svn" in raw:
            min_svns["guest_svn"] = _int(name, "min_guest_svn", raw["min_guest_svn"])
    return TeePolicy(
        measurements=meas,
        allow_debug=_bool(name, "allow_debug", raw.get("allow_debug", False)),
        accepted_tcb_status=tuple(statuses),
        min_svns=min_svns,
        exact=exact,
        unpinned_rtmrs=unpinned,
        require_crl=_bool(name, "require_crl", raw.get("require_crl", True)),
    )


def load_policy(source: str | os.PathLike[str] | Mapping[str, Any]) -> Policy:
    """Load a policy from a TOML file path, TOML text, or an already parsed mapping."""
    if isinstance(source, Mapping):
        raw: Mapping[str, Any] = source
    else:
        text = str(source)
        looks_like_path = isinstance(source, os.PathLike) or ("\n" not in text and "[" not in text and "=" not in text)
        if looks_like_path:
            path = Path(source)
            try:
                text = path.read_text()
            except OSError as exc:
                raise PolicyLoadError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyLoadError(f"policy is not valid TOML: {exc}") from exc
    unknown = set(raw) - set(TEES)
    if unknown:
        raise PolicyLoadError(f"unknown policy sections {sorted(unknown)}; known: {sorted(TEES)}")
    sections = {}
    for name, body in raw.items():
        if not isinstance(body, Mapping):
            raise PolicyLoadError(f"[{name}] must be a table")
        sections[name] = _section(name, body)
    return Policy(sections)


# ---------------------------------------------------------------- validation


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
    if verified.debug and not section.allow_debug and not verified.simulation:
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
    if verified.tee == "sev-snp" and section.require_crl and not verified.crl_checked:
        failures.append(("crl", "none with the evidence", "a current VCEK/VLEK CRL (or require_crl = false)"))
    if failures:
        raise PolicyError(failures)


# ---------------------------------------------------------------- writing


def _pin_everything(v: VerifiedAttestation) -> TeePolicy:
    spec = TEES[v.tee]
    meas: dict[str, tuple[str, ...]] = {
        k: (v.measurements[k].lower(),) for k in spec.measurements if k in v.measurements
    }
    min_svns: dict[str, int] = {}
    exact = {k: v.svns[k] for k in spec.numbers if k in v.svns}
    if v.tee == "sgx":
        min_svns["isv_svn"] = v.svns.get("isv_svn", 0)
        exact.setdefault("isv_prod_id", 0)
    if v.tee == "sev-snp":
        min_svns.update({k: n for k, n in v.svns.items() if k.startswith("tcb.") or k == "guest_svn"})
    return TeePolicy(
        measurements=meas,
        allow_debug=v.debug and not v.simulation,
        accepted_tcb_status=(v.tcb_status,) if v.tcb_status is not None else DEFAULT_TCB_STATUS,
        min_svns=min_svns,
        exact=exact,
        require_crl=True,
    )


def policy_from_attestation(verified: VerifiedAttestation) -> str:
    """TOML text that pins exactly what was seen (``Policy.from_attestation(v).to_toml()``)."""
    return Policy.from_attestation(verified).to_toml()
