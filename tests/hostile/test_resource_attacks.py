"""Unauthenticated resource attacks against one live server (real TLS): memory, stalls, budgets, tenants.

Each attack is sized in megabytes against small limits given as flags, so the suite stays fast; the
server's memory is read from /proc/PID/status (VmRSS, VmHWM) and the evidence port's /health is
probed throughout: it must keep answering within 100 ms while the attested port is attacked.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import blindai
from blindai.testing import LocalServer, held_memory
from tests import onnx_models
from tests.conftest import sim_connect

MiB = 1 << 20
# Small limits, so that each attack needs megabytes, not gigabytes.
FLAGS = (
    "--max-request-bytes", "24m",
    "--max-model-bytes", "24m",
    "--max-store-bytes", "2m",
    "--max-inflight-bytes", "64m",
    "--max-concurrent-uploads", "2",
    "--body-idle-timeout", "1",
    "--body-min-rate", "256k",
    "--body-timeout", "6",
    "--max-inference-memory", "128m",
    "--max-output-bytes", "4m",
)  # fmt: skip
# The server's peak (VmHWM) may exceed its resting size by at most this, whatever the attacks do:
# twice the --max-inflight-bytes above (what requests may hold, and allocator slack).
RSS_HEADROOM = 128 * MiB
HEALTH_LIMIT_S = 0.100
HEADER = "Inference-Header-Content-Length"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, and Held: what the server holds, memfds included (`held_memory`)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    out["Held"] = held_memory(pid)
    return out


@dataclass
class Target:
    srv: LocalServer
    cert_pem: str
    base_rss: int
    string_model: str
    float_model: str
    health_s: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.srv.proc is not None
        return self.srv.proc.pid

    def ctx(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=self.cert_pem)
        ctx.check_hostname = False
        return ctx

    def tls_socket(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.srv.attested_port), timeout=30)
        return self.ctx().wrap_socket(raw)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"https://127.0.0.1:{self.srv.attested_port}", verify=self.ctx(), timeout=60)

    def hwm(self) -> int:
        return proc_status(self.pid)["VmHWM"]

    def alive(self) -> None:
        assert self.srv.proc is not None and self.srv.proc.poll() is None, self.srv.log()[-3000:]
        assert httpx.get(f"http://127.0.0.1:{self.srv.unattested_port}/health", timeout=5).status_code == 200


def read_response(sock: ssl.SSLSocket, timeout: float) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (or (0, b"") if the server closed without one)."""
    sock.settimeout(timeout)
    out = body = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in out:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        head, _, body = out.partition(b"\r\n\r\n")
        length = (
            int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length" in head.lower() else 0
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    if not out.startswith(b"HTTP/1.1 "):
        return 0, b""
    return int(out[9:12]), body


def head(path: str, length: int, extra: str = "", method: str = "POST") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


PROBE = """
import sys, time, httpx
with httpx.Client(base_url=sys.argv[1], timeout=30) as c:
    c.get("/health")
    print("ready", flush=True)
    while True:
        t = time.perf_counter()
        assert c.get("/health").status_code == 200
        print(time.perf_counter() - t, flush=True)
        time.sleep(0.02)
"""


@contextlib.contextmanager
def health_probe(target: Target) -> Iterator[list[float]]:
    """Times GET /health on the evidence port every 20 ms on a kept-alive connection.

    From a process of its own, so that what is timed is the server, not this process's
    attacker threads competing with the probe for the interpreter.
    """
    url = f"http://127.0.0.1:{target.srv.unattested_port}"
    proc = subprocess.Popen([sys.executable, "-c", PROBE, url], stdout=subprocess.PIPE, text=True)
    times: list[float] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield times
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        times.extend(float(line) for line in out.split())
        target.health_s.extend(times)


def assert_health_fast(times: list[float]) -> None:
    assert times, "no /health probe completed"
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    # One probe in a hundred may lose its turn to the other engineers' processes on a shared
    # machine; a stall of the server itself shows in every probe taken during the attack.
    assert p99 < HEALTH_LIMIT_S and ordered[-1] < 1.0, (p99, ordered[-5:])


def string_expand_model() -> onnx.ModelProto:
    """One string, repeated by Expand to a shape the caller chooses: memory outside the arena."""
    x = helper.make_tensor_value_info("text", TensorProto.STRING, [1])
    s = helper.make_tensor_value_info("shape", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("many", TensorProto.STRING, None)
    g = helper.make_graph([helper.make_node("Expand", ["text", "shape"], ["many"])], "strbomb", [x, s], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with LocalServer(*FLAGS) as srv:
        with sim_connect(srv) as conn:
            s = conn.upload_model(onnx_models.string_identity(), name="strings")
            f = conn.upload_model(onnx_models.scale_model(shape=["N"]), name="floats")
            conn.run_model(f.model_id, np.ones(4, np.float32))
            t = Target(srv, conn.certificate_pem, proc_status(srv.proc.pid)["VmRSS"], s.model_id, f.model_id)  # type: ignore[union-attr]
        yield t
        t.alive()
        assert "internal server error" not in srv.log().lower()


def test_declared_lengths_cost_no_memory_and_silent_bodies_get_408(target: Target) -> None:
    paths = [
        ("POST", f"/v2/models/{target.float_model}/infer", 24 * MiB),
        ("POST", "/v1/models", 24 * MiB),
        ("POST", "/upload", 40 * MiB),
    ]
    socks = []
    with health_probe(target) as times:
        for i in range(16):
            method, path, length = paths[i % 3]
            s = target.tls_socket()
            s.sendall(head(path, length, method=method) + b"{")
            socks.append(s)
        # A replacement without its owner token is refused before a byte of its body is read.
        with target.tls_socket() as s:
            s.sendall(head(f"/v1/models/{target.float_model}", 24 * MiB, method="PUT"))
            assert read_response(s, 5)[0] == 401
        time.sleep(0.5)
        grown = proc_status(target.pid)["Held"] - target.base_rss
        t = time.perf_counter()
        statuses = [read_response(s, 10)[0] for s in socks]
        waited = time.perf_counter() - t
    for s in socks:
        s.close()
    assert grown < 32 * MiB, f"16 silent requests declaring {16 * 24} MiB took {grown >> 20} MiB"
    assert target.hwm() < target.base_rss + RSS_HEADROOM
    assert set(statuses) <= {408, 503}, statuses
    assert statuses.count(408) >= 8, statuses
    assert waited < 8
    assert_health_fast(times)
    target.alive()


def test_slow_body_gets_408_and_its_memory_back(target: Target) -> None:
    s = target.tls_socket()
    s.sendall(head(f"/v2/models/{target.float_model}/infer", 8 * MiB))
    t = time.perf_counter()
    status = 0
    sent = 0
    while time.perf_counter() - t < 15:  # 1 kB every 0.2 s: far below --body-min-rate
        try:
            s.sendall(b"x" * 1024)
            sent += 1024
        except OSError:
            break
        if select.select([s], [], [], 0)[0]:  # the server answered (and stopped reading)
            break
        time.sleep(0.2)
    status, body = read_response(s, 5)
    s.close()
    assert status == 408, (status, body)
    assert b"too slowly" in body or b"deadline" in body
    assert time.perf_counter() - t < 8
    target.alive()


def test_concurrent_uploads_are_bounded_and_a_real_upload_waits_its_turn(target: Target) -> None:
    holders = []
    for _ in range(2):
        s = target.tls_socket()
        s.sendall(head("/v1/models", 10 * MiB))
        holders.append(s)
    time.sleep(0.2)
    t = time.perf_counter()
    with sim_connect(target.srv) as conn:
        info = conn.upload_model(onnx_models.mlp(seed=71))
        waited = time.perf_counter() - t
        assert conn.run_model(info.model_id, np.ones((1, 16), np.float32)).output.shape == (1, 4)
        conn.delete_model(info.model_id)
    statuses = [read_response(s, 10)[0] for s in holders]
    for s in holders:
        s.close()
    assert statuses == [408, 408]
    assert waited > 0.5, "the third upload did not wait for a slot: no limit on concurrent uploads"


def test_inflight_byte_budget_is_server_wide(target: Target) -> None:
    """Two bodies of 22 MiB held open (a byte every 0.3 s keeps them within the rate), then a third."""
    chunk = b"\0" * MiB
    holders = []
    for _ in range(2):
        s = target.tls_socket()
        s.sendall(head(f"/v2/models/{target.float_model}/infer", 23 * MiB))
        for _ in range(22):
            s.sendall(chunk)
        holders.append(s)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.3):
            for s in holders:
                with contextlib.suppress(OSError):
                    s.sendall(b"\0")

    th = threading.Thread(target=trickle, daemon=True)
    th.start()
    try:
        time.sleep(0.3)
        with target.client() as c:
            t = time.perf_counter()
            body = b"\0" * (22 * MiB)
            r = c.post(f"/v2/models/{target.float_model}/infer", content=body)
            waited = time.perf_counter() - t
        assert r.status_code == 503 and "in flight" in r.json()["error"], r.text[:300]
        assert waited >= 0.9  # it waited (--body-idle-timeout) for room before giving up
        assert target.hwm() < target.base_rss + RSS_HEADROOM
    finally:
        stop.set()
        th.join()
        for s in holders:
            s.close()
    target.alive()


def deep_json(depth: int) -> bytes:
    return b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":' + b"[" * depth + b"]" * depth + b"}]}"


def wide_json(size: int) -> bytes:
    inner = b"[[]," * (size // 4) + b"[]]"
    return b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":' + inner + b"}]}"


def test_json_to_a_missing_model_costs_nothing(target: Target) -> None:
    body = wide_json(16 * MiB)
    with target.client() as c, health_probe(target) as times:
        t = time.perf_counter()
        r = c.post("/v2/models/no-such-model/infer", content=body)
        took = time.perf_counter() - t
    assert r.status_code == 404 and "no model" in r.json()["error"]
    assert target.hwm() < target.base_rss + RSS_HEADROOM
    assert took < 5
    assert_health_fast(times)


def test_big_json_is_refused_and_deep_json_is_a_400(target: Target) -> None:
    with target.client() as c, health_probe(target) as times:
        r = c.post(f"/v2/models/{target.float_model}/infer", content=wide_json(16 * MiB))
        assert r.status_code == 413 and "binary" in r.json()["error"], r.text
        r = c.post(f"/v2/models/{target.float_model}/infer", content=deep_json(100_000))
        assert r.status_code == 400 and "nest" in r.json()["error"], r.text
        ok = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}
        r = c.post(f"/v2/models/{target.float_model}/infer", content=json.dumps(ok).encode())
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    assert target.hwm() < target.base_rss + RSS_HEADROOM
    assert_health_fast(times)


def bytes_body(count: int, item: bytes) -> tuple[bytes, int]:
    blob = (struct.pack("<I", len(item)) + item) * count
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [count], "parameters": {"binary_data_size": len(blob)}}
            ]
        }
    ).encode()
    return header + blob, len(header)


def test_many_small_strings_are_refused_before_they_are_decoded(target: Target) -> None:
    body, hlen = bytes_body(4 * MiB, b"a")  # 20 MiB of one-byte strings: ~50 bytes each once decoded
    with target.client() as c, health_probe(target) as times:
        r = c.post(
            f"/v2/models/{target.string_model}/infer",
            content=body,
            headers={"Inference-Header-Content-Length": str(hlen)},
        )
    assert r.status_code in (413, 503), r.text[:300]
    assert "memory" in r.json()["error"]
    assert target.hwm() < target.base_rss + RSS_HEADROOM
    assert_health_fast(times)
    with sim_connect(target.srv) as conn:  # a fair string request still works
        out = conn.run_model(target.string_model, np.array([b"hello", b"world"], dtype=object)).output
        assert list(out) == [b"hello", b"world"]


def test_string_outputs_count_against_the_output_cap(target: Target) -> None:
    with sim_connect(target.srv) as conn:
        with pytest.raises(blindai.ServerError, match="outputs of") as err:
            conn.run_model(target.string_model, np.array([b"x" * (5 * MiB)], dtype=object))
        assert err.value.status == 507


def test_string_growing_graphs_are_refused_at_upload(target: Target) -> None:
    with sim_connect(target.srv) as conn, pytest.raises(blindai.InvalidInputError, match="Expand") as err:
        conn.upload_model(string_expand_model())
    assert err.value.status == 422
    assert target.hwm() < target.base_rss + RSS_HEADROOM


def test_replace_counts_against_the_store_budget(target: Target) -> None:
    with sim_connect(target.srv) as conn:
        info = conn.upload_model(onnx_models.mlp(seed=72))
        with pytest.raises(blindai.ServerError, match="store limit") as err:
            conn.replace_model(info.model_id, onnx_models.mlp(in_dim=512, hidden=1536, seed=73))  # ~3 MB
        assert err.value.status == 507
        assert conn.get_model(info.model_id).sha256 == info.sha256
        conn.delete_model(info.model_id)


def test_tenants_see_only_their_models_and_names_resolve_per_owner(target: Target) -> None:
    x = np.ones((1, 16), np.float32)
    with sim_connect(target.srv) as alice, sim_connect(target.srv) as mallory, sim_connect(target.srv) as anon:
        a = alice.upload_model(onnx_models.mlp(seed=74), name="shared-name")
        m = mallory.upload_model(onnx_models.mlp(seed=75), name="shared-name")
        assert [i.model_id for i in alice.list_models()] == [a.model_id]
        assert [i.model_id for i in mallory.list_models()] == [m.model_id]
        assert anon.list_models() == []
        # By name, with the owner token: each tenant gets its own model, never a 409.
        with target.client() as c:
            for info, conn in ((a, alice), (m, mallory)):
                token = conn.owner_token(info.model_id)
                r = c.get("/v1/models/shared-name", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200 and r.json()["model_id"] == info.model_id, r.text
            # Without a token a private model's name resolves to nothing.
            assert c.get("/v1/models/shared-name").status_code == 404
        # The id stays a capability: whoever knows it may run the model.
        assert anon.run_model(a.model_id, x).output.shape == (1, 4)
        # A public model is listed for everyone, and found by name.
        p = alice.upload_model(onnx_models.mlp(seed=76), name="public-one", public=True)
        assert [i.model_id for i in anon.list_models()] == [p.model_id]
        assert anon.get_model("public-one").model_id == p.model_id
        assert {i.model_id for i in alice.list_models()} == {a.model_id, p.model_id}
        for conn, info in ((alice, a), (mallory, m), (alice, p)):
            conn.delete_model(info.model_id)


def test_a_legitimate_client_is_served_while_every_attack_runs(target: Target) -> None:
    """The attacks above, looping from eight threads, while a real client uploads and runs 100 inferences.

    Left out of the mix: bodies sent at full rate and held open, which fill --max-inflight-bytes
    by design (a budget that a paying client can fill; others then get 503: see docs/threat-model.md).
    """
    stop = threading.Event()
    seen: dict[str, list[int]] = {}
    missing = wide_json(16 * MiB)
    strings, strings_hlen = bytes_body(4 * MiB, b"a")
    deep = deep_json(100_000)

    def silent(i: int) -> int:
        infer = f"/v2/models/{target.float_model}/infer"
        path, length = [("/v1/models", 24 * MiB), ("/upload", 40 * MiB), (infer, 24 * MiB)][i % 3]
        with target.tls_socket() as s:
            s.sendall(head(path, length) + b"{")
            return read_response(s, 10)[0]

    def trickle(_i: int) -> int:
        with target.tls_socket() as s:
            s.sendall(head(f"/v2/models/{target.float_model}/infer", 8 * MiB))
            while not select.select([s], [], [], 0.2)[0]:
                s.sendall(b"x" * 512)
            return read_response(s, 10)[0]

    def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        with target.client() as c:
            return c.post(path, content=body, headers=headers or {}).status_code

    attacks = {
        "silent": (silent, {408, 503}),
        "trickle": (trickle, {408}),
        "json to a missing model": (lambda _i: post("/v2/models/none/infer", missing), {404}),
        "big json": (lambda _i: post(f"/v2/models/{target.float_model}/infer", missing), {413}),
        "deep json": (lambda _i: post(f"/v2/models/{target.float_model}/infer", deep), {400}),
        "tiny strings": (
            lambda _i: post(f"/v2/models/{target.string_model}/infer", strings, {HEADER: str(strings_hlen)}),
            {413},
        ),
        "string bomb model": (
            lambda _i: post("/v1/models", string_expand_model().SerializeToString()),
            {422},
        ),
    }

    def attacker(name: str) -> None:
        fn, _ = attacks[name]
        i = 0
        while not stop.is_set():
            seen.setdefault(name, []).append(fn(i))
            i += 1

    threads = [threading.Thread(target=attacker, args=(n,), daemon=True) for n in attacks]
    threads.append(threading.Thread(target=attacker, args=("silent",), daemon=True))
    rss: list[int] = []

    def sample() -> None:
        while not stop.wait(0.05):
            rss.append(proc_status(target.pid)["Held"])

    threads.append(threading.Thread(target=sample, daemon=True))
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    t0 = time.perf_counter()
    with health_probe(target) as times:
        for th in threads:
            th.start()
        try:
            time.sleep(1.5)  # the attacks are under way
            with sim_connect(target.srv) as conn:
                info = conn.upload_model(onnx_models.mlp(seed=77))
                first = conn.run_model(info.model_id, x).output
                for _ in range(99):
                    np.testing.assert_array_equal(conn.run_model(info.model_id, x).output, first)
                conn.delete_model(info.model_id)
            legit_s = time.perf_counter() - t0
        finally:
            stop.set()
            for th in threads:
                th.join(30)
    for name, (_, allowed) in attacks.items():
        assert seen.get(name), f"attack {name!r} never completed"
        assert set(seen[name]) <= allowed, (name, sorted(set(seen[name])))
    hwm = target.hwm()
    print(
        f"\nlegitimate upload + 100 inferences: {legit_s:.1f} s under attack; attacks completed: "
        f"{ {k: len(v) for k, v in seen.items()} }; /health p50 {sorted(times)[len(times) // 2] * 1e3:.1f} ms, "
        f"max {max(times) * 1e3:.1f} ms over {len(times)} probes; RSS base {target.base_rss >> 20} MiB, "
        f"max sampled {max(rss) >> 20} MiB, VmHWM {hwm >> 20} MiB (bound {(target.base_rss + RSS_HEADROOM) >> 20} MiB)"
    )
    assert max(hwm, *rss) < target.base_rss + RSS_HEADROOM
    assert_health_fast(times)
    target.alive()


def _string_graph(nodes: list[onnx.NodeProto], extra_inputs: list[onnx.ValueInfoProto]) -> bytes:
    x = helper.make_tensor_value_info("t", TensorProto.STRING, [1])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, None)
    g = helper.make_graph(nodes, "g", [x, *extra_inputs], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


N = helper.make_tensor_value_info("n", TensorProto.INT64, [1])
GROWING = {
    "Tile": ([helper.make_node("Tile", ["t", "n"], ["y"])], [N]),
    "Gather": ([helper.make_node("Gather", ["t", "n"], ["y"])], [N]),
    "Concat": ([helper.make_node("Identity", ["t"], ["u"]), helper.make_node("Concat", ["t", "u"], ["y"], axis=0)], []),
    "Where": (
        [helper.make_node("Where", ["c", "t", "t"], ["y"])],
        [helper.make_tensor_value_info("c", TensorProto.BOOL, None)],
    ),
}


@pytest.mark.parametrize("op", sorted(GROWING))
def test_vetting_refuses_every_operator_that_can_grow_strings(op: str) -> None:
    from blindai.server.errors import UnsupportedModel
    from blindai.server.vetting import vet_model

    nodes, inputs = GROWING[op]
    with pytest.raises(UnsupportedModel, match=op):
        vet_model(_string_graph(nodes, inputs))
    vet_model(_string_graph([helper.make_node("Identity", ["t"], ["y"])], []))  # moving strings is fine
