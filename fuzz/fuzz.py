"""atheris harness for BlindAI's parsers. `make fuzz` (long) or `make fuzz-short` (bounded, as in CI).

    python fuzz/fuzz.py TARGET [libFuzzer options, e.g. -max_total_time=60 corpus_dir]

Targets: see fuzz/targets.py TARGETS. `make fuzz` writes each crash to fuzz/crashes/TARGET/:
commit it there (tests/hostile/test_fuzz_regressions.py replays every file, and later runs start
from them), then fix the parser.
"""

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["blindai"]):
    # Imported here so that coverage guides the fuzzer through them (targets import lazily).
    from targets import TARGETS  # fuzz/ is this script's folder, first on sys.path

    import blindai.attestation.dcap_abi
    import blindai.attestation.ratls
    import blindai.attestation.simulation
    import blindai.attestation.snp_abi
    import blindai.attestation.verify
    import blindai.protocol.infer
    import blindai.protocol.tensors
    import blindai.protocol.v06
    import blindai.server.sealing  # noqa: F401


SEED_FOR = {
    "dcap_quote": ["sgx", "tdx"],
    "detect": ["sgx", "tdx", "snp", "sim"],
    "snp_report": ["snp"],
    "simulation": ["sim"],
    "sealed_file": ["sealed"],
    "v06_cbor": ["v06"],
    "oip_request": ["oip"],
    "oip_json": ["oip"],
}


def seed_corpus(target: str, args: list[str]) -> None:
    """Valid inputs from the FAKE PKIs (no recorded evidence is committed) into an empty corpus folder."""
    folders = [Path(a) for a in args if not a.startswith("-")]
    if not folders or any(folders[0].iterdir()):
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fakes.seeds import valid_inputs

    seeds = valid_inputs()
    for name in SEED_FOR.get(target, []):
        (folders[0] / f"seed-{name}").write_bytes(seeds[name])


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: fuzz.py TARGET [libFuzzer args]; targets: {', '.join(TARGETS)}")
    target = TARGETS[sys.argv[1]]
    seed_corpus(sys.argv[1], sys.argv[2:])
    atheris.Setup([sys.argv[0], "-max_len=8192", *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
