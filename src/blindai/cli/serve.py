"""``blindai serve``: flags to a `ServerConfig`, then the runner."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import _CliError


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.http.connections import ConnectionLimits
    from ..server.runner import ServerConfig, run_server
    from ..server.store import StoreLimits

    tee = "simulation" if args.simulation else args.tee
    if args.simulation and args.tee not in ("auto", "simulation"):
        raise _CliError(f"--simulation and --tee {args.tee} contradict each other")
    for flag, value, least in (
        ("--model-concurrency", args.model_concurrency, 0),
        ("--intra-op-threads", args.intra_op_threads, 0),
        ("--batch-window-ms", args.batch_window_ms, 0),
        ("--max-batch-rows", args.max_batch_rows, 1),
        ("--workers", args.workers, 0),
    ):
        if value < least:
            raise _CliError(f"{flag} must be at least {least}")
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
            batching=args.batch_window_ms > 0,
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
        model_memory=args.model_memory,
        v06_routes=not args.no_v06_routes,
        max_output_bytes=args.max_output_bytes,
    )
    config.body_limits = _body_limits(args)
    config.connection_limits = ConnectionLimits(
        head_timeout_s=args.head_timeout,
        handshake_timeout_s=args.handshake_timeout,
        max_head_bytes=args.max_head_bytes,
        max_connections=args.max_connections,
    )
    return run_server(config)


def _body_limits(args: argparse.Namespace) -> Any:
    """The body flags of `serve`; an in-flight budget of 0 is sized to the machine by the runner."""
    from ..server.http.bodies import BodyLimits

    return BodyLimits(
        idle_timeout_s=args.body_idle_timeout,
        min_rate=args.body_min_rate,
        total_timeout_s=args.body_timeout,
        max_concurrent_uploads=args.max_concurrent_uploads,
        max_inflight_bytes=args.max_inflight_bytes or 0,
        max_json_bytes=args.max_json_bytes,
        max_json_response_bytes=args.max_json_response_bytes,
    )
