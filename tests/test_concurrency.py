"""Per-model scheduling and dynamic batching (server/inference.py), with real onnxruntime; none timed.

Gates (threading.Event) hold runs open so the tests see what runs at once instead of
measuring how long anything takes; speed is measured in benchmarks/, not here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest

from blindai.server.errors import CoreError, InputRejected
from blindai.server.inference import InferenceEngine, LoadedModel
from blindai.server.rowwise import rows_mixed
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect


def load(model: onnx.ModelProto, **kwargs: Any) -> LoadedModel:
    """As the store loads it with batching on: the graph analysed for rows that mix (rowwise.py)."""
    loaded = LoadedModel(model.SerializeToString(), narrow_now=True, rows_mixed=rows_mixed(model), **kwargs)
    loaded.wait_rows_probe()
    return loaded


class Gated:
    """Wraps a model's run: records each call (session used, rows) and holds it until opened."""

    def __init__(self, model: LoadedModel, *, open_: bool = False) -> None:
        self.model, self.gate = model, threading.Event()
        self.first_gate: threading.Event | None = None  # when set: the first call waits on this one instead
        if open_:
            self.gate.set()
        self.calls: list[tuple[bool, int]] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        real = model.run

        def run(feed: dict[str, Any], names: list[str], options: Any = None, *, wide: bool = True) -> Any:
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.calls.append((wide, next(iter(feed.values())).shape[0]))
                gate = self.first_gate if self.first_gate is not None and len(self.calls) == 1 else self.gate
            try:
                assert gate.wait(30), "gate never opened"
                return real(feed, names, options, wide=wide)
            finally:
                with self._lock:
                    self.running -= 1

        model.run = run  # type: ignore[method-assign]


async def until(predicate: Any) -> None:
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


def test_one_model_never_waits_on_another() -> None:
    slow = Gated(load(onnx_models.mlp(), concurrency=1))
    fast = load(onnx_models.mlp(seed=1), concurrency=1)
    engine = InferenceEngine()
    x = np.ones((1, 16), np.float32)

    async def main() -> None:
        # More blocked runs of the slow model than the machine has cores, and than its threads.
        blocked = [asyncio.create_task(engine.infer(slow.model, {"x": x}, None)) for _ in range(8)]
        await until(lambda: slow.running == 1)
        out = await asyncio.wait_for(engine.infer(fast, {"x": x}, None), 30)
        np.testing.assert_allclose(out["y"], fast.session.run(None, {"x": x})[0], rtol=1e-6)
        assert not any(t.done() for t in blocked), "the slow model's runs were meant to be held"
        slow.gate.set()
        await asyncio.gather(*blocked)

    asyncio.run(main())
    assert slow.most == 1  # concurrency 1: one run at a time, as pinned


def test_queue_moves_runs_from_wide_to_narrow_within_the_slots() -> None:
    g = Gated(load(onnx_models.mlp(), concurrency=3, intra_op_threads=3))
    assert g.model.narrow is not None
    engine = InferenceEngine()
    xs = [np.full((1, 16), i, np.float32) for i in range(7)]

    async def main() -> list[dict[str, Any]]:
        first = asyncio.create_task(engine.infer(g.model, {"x": xs[0]}, None))
        await until(lambda: g.running == 1)
        rest = [asyncio.create_task(engine.infer(g.model, {"x": x}, None)) for x in xs[1:]]
        await asyncio.sleep(0.2)
        # A wide run holds every core: nothing runs beside it, however long the queue.
        assert g.running == 1 and g.calls == [(True, 1)]
        g.gate.set()
        return await asyncio.gather(first, *rest)

    outs = asyncio.run(main())
    assert g.most <= 3
    assert g.calls[0] == (True, 1) and any(not wide for wide, _ in g.calls[1:])
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_allclose(out["y"], g.model.session.run(None, {"x": x})[0], rtol=1e-5)


def test_narrow_slots_fill_up_to_the_concurrency() -> None:
    g = Gated(load(onnx_models.mlp(), concurrency=3, intra_op_threads=3))
    g.first_gate = threading.Event()
    engine = InferenceEngine()
    x = np.ones((1, 16), np.float32)

    async def main() -> None:
        tasks = [asyncio.create_task(engine.infer(g.model, {"x": x}, None)) for _ in range(6)]
        await until(lambda: g.running == 1)
        assert g.calls == [(True, 1)]
        # The wide run ends; the five queued start on the narrow session, three at once (the slots).
        assert g.first_gate is not None
        g.first_gate.set()
        await until(lambda: g.running == 3)
        await asyncio.sleep(0.2)
        assert g.running == 3 and len(g.calls) == 4
        g.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert g.most == 3
    assert [wide for wide, _ in g.calls] == [True] + [False] * 5


def test_batchable_only_when_outputs_share_the_batch_dimension() -> None:
    assert load(onnx_models.mlp()).batchable
    assert load(onnx_models.two_in_two_out()).batchable
    assert not load(onnx_models.column_sum()).batchable
    assert not load(onnx_models.fixed_shape_model()).batchable


def run_all(engine: InferenceEngine, model: LoadedModel, requests: list[tuple[dict[str, Any], Any]]) -> list[Any]:
    async def one(feed: dict[str, Any], names: Any) -> Any:
        try:
            return await engine.infer(model, feed, names)
        except CoreError as exc:
            return exc

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(f, n) for f, n in requests))

    return asyncio.run(main())


def test_batched_callers_each_get_exactly_their_own_rows() -> None:
    g = Gated(load(onnx_models.mlp(), concurrency=1), open_=True)
    engine = InferenceEngine(batch_window_ms=300)
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.standard_normal((1 + i % 3, 16)).astype(np.float32)} for i in range(24)]
    outs = run_all(engine, g.model, [(f, None) for f in feeds])
    for f, out in zip(feeds, outs, strict=True):
        want = g.model.session.run(None, f)[0]
        assert out["y"].shape == want.shape
        np.testing.assert_allclose(out["y"], want, rtol=1e-5, atol=1e-6)
        assert out["y"].base is None  # its own array, not a view of the batch
    assert len(g.calls) < len(feeds), "requests arriving together were meant to run as batches"
    assert max(rows for _w, rows in g.calls) > 3


def test_batches_never_mix_requested_outputs_or_shapes() -> None:
    g = Gated(load(onnx_models.two_in_two_out(), concurrency=1), open_=True)
    engine = InferenceEngine(batch_window_ms=300)
    rng = np.random.default_rng(3)
    reqs: list[tuple[dict[str, Any], Any]] = []
    for i in range(12):
        a, b = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
        reqs.append(({"a": a, "b": b}, [["sum"], ["idx"], None][i % 3]))
    outs = run_all(engine, g.model, reqs)
    for (feed, names), out in zip(reqs, outs, strict=True):
        want_names = names or ["sum", "idx", "greater"]
        assert sorted(out) == sorted(want_names)
        for n, v in zip(want_names, g.model.session.run(want_names, feed), strict=True):
            np.testing.assert_array_equal(out[n], v)
    assert len(g.calls) <= 6  # three signatures, batched (at most a second window each)


def test_a_request_that_breaks_its_batch_fails_alone() -> None:
    model = load(onnx_models.gather_rows(), concurrency=1)
    engine = InferenceEngine(batch_window_ms=300)
    reqs: list[tuple[dict[str, Any], Any]] = [({"idx": np.array([i % 10, (i + 1) % 10])}, None) for i in range(8)]
    reqs[5] = ({"idx": np.array([99])}, None)
    outs = run_all(engine, model, reqs)
    for i, out in enumerate(outs):
        if i == 5:
            assert isinstance(out, InputRejected)
        else:
            np.testing.assert_array_equal(out["y"], model.session.run(None, reqs[i][0])[0])


def test_models_not_batchable_run_alone() -> None:
    g = Gated(load(onnx_models.column_sum(), concurrency=1), open_=True)
    engine = InferenceEngine(batch_window_ms=300)
    feeds = [{"x": np.full((2, 3), i, np.float32)} for i in range(4)]
    outs = run_all(engine, g.model, [(f, None) for f in feeds])
    assert len(g.calls) == 4
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], np.full(3, 2 * i, np.float32))


@pytest.fixture(scope="module")
def batching_server() -> Iterator[LocalServer]:
    with LocalServer("--batch-window-ms", "20", "--model-concurrency", "2", log_level="WARNING") as srv:
        yield srv


def test_live_server_with_batching_and_concurrency(batching_server: LocalServer) -> None:
    owner = sim_connect(batching_server)
    info = owner.upload_model(onnx_models.mlp(), name="batched")
    ref = load(onnx_models.mlp())
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((1 + i % 2, 16)).astype(np.float32) for i in range(12)]
    results: list[Any] = [None] * len(xs)

    def client(i: int) -> None:
        c = sim_connect(batching_server)
        try:
            results[i] = c.run_model(info.model_id, xs[i]).output
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, ref.session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    owner.close()


def test_front_workers_share_one_key_and_one_store() -> None:
    """--workers 2: connections land on both worker processes, all see the attested key, one store serves all."""
    import json
    import re
    import socket
    import ssl

    import httpx
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    with LocalServer("--workers", "2", log_level="DEBUG") as srv:
        workers = json.loads(srv.ready_file.read_text())["workers"]
        assert len(workers) == 2 and srv.proc is not None and srv.proc.pid not in workers
        doc = httpx.get(f"http://127.0.0.1:{srv.unattested_port}/attestation").json()
        attested = x509.load_pem_x509_certificate(doc["certificate"].encode()).public_bytes(Encoding.DER)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # we compare the certificate ourselves
        local_ports = []
        for _ in range(16):
            with socket.create_connection(("127.0.0.1", srv.attested_port)) as raw, ctx.wrap_socket(raw) as tls:
                assert tls.getpeercert(binary_form=True) == attested
                local_ports.append(tls.getsockname()[1])
        seen: dict[int, int] = {}
        for _ in range(200):
            seen = {
                int(m[2]): int(m[1]) for m in re.finditer(r"front worker (\d+): connection from port (\d+)", srv.log())
            }
            if all(p in seen for p in local_ports):
                break
            threading.Event().wait(0.05)
        assert {seen[p] for p in local_ports} == set(workers)

        # An early answer (unknown model) while a large body is still arriving reaches the client
        # through the worker instead of a reset: the worker lingers as the server itself would.
        statuses: list[int] = []

        def early() -> None:
            with httpx.Client(base_url=f"https://127.0.0.1:{srv.attested_port}", verify=ctx, timeout=30) as h:
                for _ in range(3):
                    statuses.append(
                        h.post("/v2/models/no-such-model/infer", content=b"{" + b" " * (16 << 20)).status_code
                    )

        posters = [threading.Thread(target=early) for _ in range(8)]
        for t in posters:
            t.start()
        for t in posters:
            t.join()
        assert statuses == [404] * 24

        # An upload through one connection (one worker), runs through new connections (any worker).
        owner = sim_connect(srv)
        info = owner.upload_model(onnx_models.mlp(), name="front")
        ref = load(onnx_models.mlp())
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        for _ in range(6):
            c = sim_connect(srv)
            np.testing.assert_allclose(
                c.run_model(info.model_id, x).output, ref.session.run(None, {"x": x})[0], rtol=1e-5
            )
            c.close()
        owner.close()
