"""Attacks before and after a request: connections, request heads, response encoding, load-time memory.

Each attack was run against the server before its fix and won (numbers in docs/threat-model.md):
half-open request heads and silent TLS handshakes were never closed, endless header lines became
server memory, JSON responses were encoded outside every budget, and a model of a few hundred
bytes held hundreds of MiB once onnxruntime had folded its constants. Real server, real TLS;
memory is read from /proc/PID/status, open descriptors from /proc/PID/fd.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import ssl
import time
from collections.abc import Iterator, Sequence

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from blindai.errors import ServerError
from blindai.testing import LocalServer
from tests.conftest import sim_connect
from tests.hostile.test_resource_attacks import FLAGS, RSS_HEADROOM, proc_status, read_response

MiB = 1 << 20
HEAD_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 40
CONNECTION_FLAGS = (
    *FLAGS,
    "--head-timeout", str(HEAD_TIMEOUT_S),
    "--handshake-timeout", str(HEAD_TIMEOUT_S),
    "--max-head-bytes", "16k",
    "--max-connections", str(MAX_CONNECTIONS),
    "--max-json-response-bytes", "1m",
)  # fmt: skip


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closed ``sock`` (EOF, or a reset) within ``within_s``; reads what it sent first."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
    return False


class Server:
    def __init__(self, srv: LocalServer, cert_pem: str) -> None:
        self.srv = srv
        self.cert_pem = cert_pem
        assert srv.proc is not None
        self.pid = srv.proc.pid

    def ctx(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=self.cert_pem)
        ctx.check_hostname = False
        return ctx

    def tls(self) -> ssl.SSLSocket:
        return self.ctx().wrap_socket(socket.create_connection(("127.0.0.1", self.srv.attested_port), timeout=10))

    def plain(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.srv.unattested_port), timeout=10)

    def health(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.srv.unattested_port}/health", timeout=5).status_code


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with LocalServer(*CONNECTION_FLAGS) as srv:
        with sim_connect(srv) as conn:
            yield Server(srv, conn.certificate_pem)
        assert srv.proc is not None and srv.proc.poll() is None, srv.log()[-3000:]
        assert "internal server error" not in srv.log().lower()


def _settle(server: Server, fds: int, within_s: float) -> int:
    deadline = time.monotonic() + within_s
    while open_fds(server.pid) > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    return open_fds(server.pid)


def test_half_open_heads_and_silent_handshakes_are_closed(server: Server) -> None:
    base = open_fds(server.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(15):  # TLS done, request head never finished
            t = server.tls()
            t.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\n")
            socks.append(t)
        for _ in range(15):  # the evidence port: same, in plain HTTP
            p = server.plain()
            p.sendall(b"GET /health HTTP/1.1\r\n")
            socks.append(p)
        for _ in range(15):  # a TLS record header, then silence: the handshake never ends
            r = socket.create_connection(("127.0.0.1", server.srv.attested_port), timeout=10)
            r.sendall(b"\x16\x03\x01")
            socks.append(r)
        for _ in range(15):  # connected, nothing sent at all
            socks.append(server.plain())
        time.sleep(0.3)
        assert open_fds(server.pid) >= base + 30  # the server holds them now
        first = socks[0]
        status, body = read_response(first, timeout=HEAD_TIMEOUT_S + 5)  # type: ignore[arg-type]
        assert status == 408 and b"request head" in body
        still_open = [s for s in socks if not closed_by_server(s, HEAD_TIMEOUT_S + 5)]
        assert not still_open, f"{len(still_open)} of {len(socks)} connections were never closed by the server"
        assert _settle(server, base + 2, 5) <= base + 2
    finally:
        for s in socks:
            s.close()
    assert server.health() == 200


def test_endless_header_lines_get_431_and_cost_no_memory(server: Server) -> None:
    before = proc_status(server.pid)["VmRSS"]
    sock = server.tls()
    sent = 0
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Filler: " + b"a" * 8000 + b"\r\n"
        while sent < 32 * MiB:
            sock.sendall(line)
            sent += len(line)
    status, body = read_response(sock, timeout=5)
    sock.close()
    assert status == 431 and b"16384 bytes" in body
    # (A closing TLS connection still reads until the peer's close_notify or --handshake-timeout:
    # what it reads is dropped, as the memory shows.)
    assert proc_status(server.pid)["VmRSS"] - before < 16 * MiB
    assert server.health() == 200


def test_connections_beyond_the_limit_are_closed_at_once(server: Server) -> None:
    base = open_fds(server.pid)
    socks = [server.plain() for _ in range(MAX_CONNECTIONS + 30)]
    try:
        time.sleep(0.3)
        refused = sum(closed_by_server(s, 0.2) for s in socks)
        assert refused >= 25, f"only {refused} connections above the limit of {MAX_CONNECTIONS} were closed"
        assert open_fds(server.pid) <= base + MAX_CONNECTIONS + 5
    finally:
        for s in socks:
            s.close()
    _settle(server, base + 2, 5)
    assert server.health() == 200


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"the hard open-file limit here ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        with LocalServer() as srv:
            assert srv.proc is not None
            with open(f"/proc/{srv.proc.pid}/limits") as f:
                limits = f.read()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
    assert line.split()[3] == str(hard), line


# ------------------------------------------------------------------ responses


def filled(value: float = 1.5) -> bytes:
    """y = ConstantOfShape(shape): a request of a few bytes whose output is as large as it asks."""
    s = helper.make_tensor_value_info("shape", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    node = helper.make_node(
        "ConstantOfShape", ["shape"], ["y"], value=numpy_helper.from_array(np.array([value], np.float32))
    )
    m = helper.make_model(helper.make_graph([node], "fill", [s], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def test_json_outputs_are_bounded_before_encoding_and_binary_ones_are_not(server: Server) -> None:
    with sim_connect(server.srv) as conn:
        model_id = conn.upload_model(filled(), name="fill").model_id
        before = proc_status(server.pid)["VmHWM"]
        with httpx.Client(
            base_url=f"https://127.0.0.1:{server.srv.attested_port}", verify=conn.ssl_context(), timeout=60
        ) as c:

            def ask(n: int, binary: bool) -> httpx.Response:
                body = {
                    "inputs": [{"name": "shape", "shape": [1], "datatype": "INT64", "data": [n]}],
                    "parameters": {"binary_data_output": binary},
                }
                return c.post(f"/v2/models/{model_id}/infer", content=json.dumps(body))

            small = ask(1000, False)
            assert small.status_code == 200 and small.json()["outputs"][0]["data"] == [1.5] * 1000
            for _ in range(3):  # each would be ~25 MB of JSON text and ~40 MB of Python floats
                big = ask(1_000_000, False)
                assert big.status_code == 400, big.text
                error = big.json()["error"]
                assert "binary_data_output" in error and "--max-json-response-bytes" in error
            assert proc_status(server.pid)["VmHWM"] - before < 24 * MiB
        # The same output in binary is served (4 MB, the --max-output-bytes of FLAGS).
        out = conn.run_model(model_id, {"shape": np.array([1_000_000], np.int64)})
        assert out.output.shape == (1_000_000,) and float(out.output[-1]) == 1.5
        conn.delete_model(model_id)


# ------------------------------------------------------------------ load-time memory


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], n: int, sparse: Sequence[onnx.SparseTensorProto] = ()
) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    g.sparse_initializer.extend(sparse)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def folded_bomb(n: int, op: str = "ConstantOfShape") -> bytes:
    """A few hundred bytes whose constant-only node onnxruntime computes at load: n floats, kept."""
    inits = [
        numpy_helper.from_array(np.array([n], np.int64), "shp"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
    ]
    if op == "ConstantOfShape":
        make = helper.make_node(
            "ConstantOfShape", ["shp"], ["big"], value=numpy_helper.from_array(np.array([1.0], np.float32))
        )
    else:
        make = helper.make_node(op, ["one", "shp"], ["big"])
    return _model([make, helper.make_node("Add", ["x", "big"], ["y"])], inits, n)


def sparse_bomb(n: int) -> bytes:
    values = numpy_helper.from_array(np.array([1.0], np.float32), "big")
    indices = numpy_helper.from_array(np.array([0], np.int64), "big_idx")
    return _model(
        [helper.make_node("Add", ["x", "big"], ["y"])], [], n, [helper.make_sparse_tensor(values, indices, [n])]
    )


def unknown_size_constant() -> bytes:
    """NonZero of a constant: computed at load, and no shape inference can say how large it is
    (nor can vetting compute it: the constant is above the size whose values it computes)."""
    inits = [numpy_helper.from_array(np.array([1 << 16], np.int64), "shape")]
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["c"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("NonZero", ["c"], ["nz"]),
        helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["nzf"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    return _model(nodes, inits, 4)


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        (lambda: folded_bomb(64 << 20), 413, "once onnxruntime has loaded it"),  # 256 MiB > --max-model-bytes 24m
        (lambda: folded_bomb(64 << 20, "Expand"), 413, "once onnxruntime has loaded it"),
        (lambda: sparse_bomb(64 << 20), 413, "sparse tensors made dense"),
        (lambda: folded_bomb(1 << 20), 507, "--max-store-bytes"),  # 4 MiB: a model, but not in a 2m store
        (unknown_size_constant, 422, "cannot be inferred"),
    ],
    ids=["constant-of-shape", "expand", "sparse", "store-limit", "unknown-size"],
)
def test_models_that_grow_at_load_are_refused_before_loading(server: Server, model, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    data = model()
    assert len(data) < 1024
    with sim_connect(server.srv) as conn:  # vetting's first-use costs (imports, schema lists: ~15 MB) paid first
        conn.delete_model(conn.upload_model(folded_bomb(16)).model_id)
    before = proc_status(server.pid)["VmHWM"]
    with sim_connect(server.srv) as conn:
        with pytest.raises(ServerError) as err:
            conn.upload_model(data)
        assert err.value.status == status and words in str(err.value), str(err.value)
        assert not [m for m in conn.list_models() if m.size == len(data)]
    assert proc_status(server.pid)["VmHWM"] - before < 16 * MiB


def test_a_model_that_folds_little_still_loads_and_runs(server: Server) -> None:
    with sim_connect(server.srv) as conn:
        up = conn.upload_model(folded_bomb(1024))  # 4 KiB folded: counted, well inside the limits
        out = conn.run_model(up.model_id, {"x": np.full(1024, 2.0, np.float32)})
        assert np.array_equal(out.output, np.full(1024, 3.0, np.float32))
        conn.delete_model(up.model_id)


# ------------------------------------------------------------------ responses nobody reads, 0.6 messages, the manifest


def test_unread_responses_stay_in_the_budget_and_are_cut_off(server: Server) -> None:
    """Requests of ~150 bytes for 4 MB binary outputs, never read (two pipelined per connection):
    76 of them would hold 304 MB in transport buffers once the budget had been given back, as
    30 MB responses did in the red team's run (+1 GiB). Now each response holds its share of
    --max-inflight-bytes until the client has taken it, and a client that takes nothing is cut off."""
    with sim_connect(server.srv) as conn:
        model_id = conn.upload_model(filled(), name="fill-unread").model_id
        body = json.dumps(
            {
                "inputs": [{"name": "shape", "shape": [1], "datatype": "INT64", "data": [1_000_000]}],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        request = (
            f"POST /v2/models/{model_id}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        before = proc_status(server.pid)["VmHWM"]
        base = open_fds(server.pid)
        socks = []
        try:
            for _ in range(MAX_CONNECTIONS - 2):
                s = server.tls()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(request + request)
                socks.append(s)
            time.sleep(3)
            # the bound of the other resource attacks: twice the 64 MiB budget of FLAGS
            assert proc_status(server.pid)["VmHWM"] - before < RSS_HEADROOM
            # Cut off after --body-idle-timeout (1 s) without progress, or answered 503 at once when
            # the budget was full (those connections then idle like any other keep-alive one).
            deadline = time.monotonic() + 10
            while open_fds(server.pid) > base + len(socks) // 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert open_fds(server.pid) <= base + len(socks) // 2, "responses nobody reads keep their connections"
        finally:
            for s in socks:
                s.close()
        assert conn.run_model(model_id, {"shape": np.array([10], np.int64)}).output.shape == (10,)
        conn.delete_model(model_id)
    assert server.health() == 200


def test_a_v06_message_of_many_small_items_is_refused_before_decoding(server: Server) -> None:
    import cbor2

    body = cbor2.dumps({"model_id": "x", "inputs": [0] * 2_000_000})
    with (
        sim_connect(server.srv) as conn,
        httpx.Client(
            base_url=f"https://127.0.0.1:{server.srv.attested_port}", verify=conn.ssl_context(), timeout=60
        ) as c,
    ):
        r = c.post("/run", content=body, headers={"Content-Type": "application/cbor"})
    assert r.status_code == 413 and b"CBOR items" in r.content


def test_a_manifest_the_store_could_not_read_back_is_never_written(tmp_path: object) -> None:
    from blindai.server import sealing

    key = sealing.SealingKey(os.urandom(16), source="test")
    with pytest.raises(sealing.StoreError, match="--max-models"):
        sealing.seal(key, "manifest", {"models": {f"{i:032x}": {"sha256": "0" * 64} for i in range(12_000)}}, b"")
