"""Prometheus metrics: opt-in, on their own listener, operational counts only (nothing a tenant sent)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

import blindai
from blindai.testing import LocalServer
from tests import onnx_models


@pytest.fixture(scope="module", params=["1", "2"], ids=["one process", "front workers"])
def srv(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    # With front workers, inference requests are answered through the workers' fast path: counted the same.
    with LocalServer("--metrics-port", "0", "--workers", request.param) as s:
        yield s


def _scrape(srv: LocalServer) -> str:
    port = srv.ready["metrics_port"]
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_metrics_are_off_unless_asked() -> None:
    with LocalServer() as plain:
        assert plain.ready["metrics_port"] is None
        assert httpx.get(f"http://127.0.0.1:{plain.unattested_port}/metrics").status_code == 404


def test_counts_latencies_queue_errors_and_memory_without_tenant_data(srv: LocalServer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blindai.SimulationModeWarning)
        conn = blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs())
    secret_name = "patient-records-model"
    info = conn.upload_model(onnx_models.mlp(hidden=48), name=secret_name)
    for _ in range(3):
        conn.run_model(info.model_id, np.ones((7, 16), np.float32))
    with pytest.raises(blindai.ModelNotFoundError):
        conn.run_model("no-such-model", {"x": np.ones((1, 16), np.float32)})
    text = _scrape(srv)
    infer = 'blindai_requests_total{port="attested",route="/v2/models/{ref}/infer",status="200"} 3.0'
    assert infer in text, text
    assert 'route="/v2/models/{ref}/infer",status="404"' in text
    assert 'blindai_request_seconds_count{port="attested",route="/v2/models/{ref}/infer"}' in text
    assert 'blindai_requests_in_progress{port="attested",route="/v2/models/{ref}/infer"} 0.0' in text
    assert 'blindai_model_uploads_total{outcome="accepted"} 1.0' in text
    assert 'blindai_errors_total{status="404"}' in text
    assert 'route="/attestation"' in text and "process_resident_memory_bytes" in text
    assert "blindai_models 1.0" in text
    for leaked in (info.model_id, secret_name, info.sha256, "no-such-model", "[7, 16]", "7,16"):
        assert leaked not in text, leaked
    conn.delete_model(info.model_id)
    conn.close()


def test_the_metrics_listener_is_local_and_separate(srv: LocalServer) -> None:
    port = srv.ready["metrics_port"]
    assert port not in (srv.attested_port, srv.unattested_port)
    assert "127.0.0.1" in srv.log() and f":{port}/metrics" in srv.log()
