"""The front workers' fast path (``--workers N``): small inference requests parsed and decoded in
the workers, run by the main process, must be answered exactly as the main process's own HTTP
server answers them, and must never change how anything else on a connection is read.

The core test is differential: the same raw byte streams (well-formed, pipelined, and the
usual request-smuggling shapes) go to a server with one process (uvicorn reads everything)
and to one with two front workers; the answers, parsed and with the date and model ids
normalised, must be the same, response for response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from blindai.protocol.infer import encode_request
from blindai.server import frames
from blindai.server.http.fast_main import serve_channel
from blindai.server.http.fast_worker import MAX_BODY, parse_head
from blindai.server.http.state import ServerState
from blindai.server.inference import InferenceEngine
from blindai.server.providers import SimulationProvider
from blindai.server.store import ModelStore
from blindai.server.tls import make_identity
from blindai.testing import LocalServer
from tests import onnx_models
from tests.conftest import sim_connect

pytestmark = pytest.mark.xdist_group("front-fast")


# ---------------------------------------------------------------- the head rules (unit)

SDK_HEAD = (
    b"POST /v2/models/abc123/infer HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Type: application/octet-stream\r\n"
    b"Inference-Header-Content-Length: 88\r\nContent-Length: 120\r\nAuthorization: Bearer tok\r\n"
    b"BlindAI-Owner-Tokens: a, b\r\nBlindAI-Model-SHA256: ff"
)


def test_the_sdk_head_is_taken_with_what_the_route_reads() -> None:
    head = parse_head(SDK_HEAD)
    assert head is not None
    assert (head.ref, head.length, head.close, head.header_length) == ("abc123", 120, False, "88")
    assert (head.authorization, head.owner_tokens, head.sha256) == ("Bearer tok", "a, b", "ff")
    versioned = parse_head(SDK_HEAD.replace(b"/infer", b"/versions/1/infer", 1))
    assert versioned is not None and versioned.ref == "abc123"
    closing = parse_head(SDK_HEAD + b"\r\nConnection: close")
    assert closing is not None and closing.close


@pytest.mark.parametrize(
    "change",
    [
        (b"POST ", b"post "),  # methods are case-sensitive
        (b"POST ", b"PUT "),
        (b"HTTP/1.1\r\n", b"HTTP/1.0\r\n"),
        (b"/infer ", b"/infer?x=1 "),  # a query: the route would ignore it, the fast path does not guess
        (b"/abc123/", b"/a%62c/"),  # percent-encoding: Starlette decodes it, the fast path does not
        (b"/abc123/", b"/../"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nContent-Length: 120"),  # duplicates
        (b"Content-Length: 120", b"Content-Length: +120"),
        (b"Content-Length: 120", b"Content-Length: 1_20"),
        (b"Content-Length: 120", b"Content-Length: %d" % (MAX_BODY + 1)),
        (b"Content-Length: 120", b"Transfer-Encoding: chunked"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nTransfer-Encoding: chunked"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nTransfer-Encoding : chunked"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nExpect: 100-continue"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nConnection: Upgrade\r\nUpgrade: h2c"),
        (b"Content-Length: 120", b"Content-Length: 120\r\n more"),  # obsolete line folding
        (b"Content-Length: 120", b"Content-Length: 120\nX-A: 1"),  # a bare LF
        (b"Content-Length: 120", b"Content-Length: 120\rX-A: 1"),  # a bare CR
        (b"Content-Length: 120", b"Content-Length: 1\x0020"),
        (b"Authorization: Bearer tok", b"Authorization: Bearer t\xc3\xb6k"),  # not ASCII
        (b"Content-Length: 120", b""),  # no length at all
    ],
)
def test_anything_unusual_is_left_to_the_main_process(change: tuple[bytes, bytes]) -> None:
    old, new = change
    assert old in SDK_HEAD
    assert parse_head(SDK_HEAD.replace(old, new, 1)) is None


def test_frames_refuse_what_does_not_add_up() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = b"".join(bytes(p) for p in frames.pack({"ref": "m"}, {"x": x}))
    meta, arrays = frames.unpack(payload)
    assert meta == {"ref": "m"} and np.array_equal(arrays["x"], x)
    with pytest.raises(frames.FrameError):
        frames.unpack(payload + b"\0")  # trailing bytes
    with pytest.raises(frames.FrameError):
        frames.unpack(payload[:-1])  # a tensor cut short
    bad = json.dumps({"tensors": [["x", "FP32", [2, 3], 24], ["x", "FP32", [0], 0]]}).encode()
    with pytest.raises(frames.FrameError, match="twice"):
        frames.unpack(len(bad).to_bytes(4, "little") + bad + bytes(24))
    bad = json.dumps({"tensors": [["x", "FP32", [2, 3], 1 << 40]]}).encode()
    with pytest.raises(frames.FrameError):
        frames.unpack(len(bad).to_bytes(4, "little") + bad + bytes(24))
    with pytest.raises(frames.FrameError):
        frames.unpack((1 << 30).to_bytes(4, "little") + b"{}")


# ---------------------------------------------------------------- live servers


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[LocalServer, dict[str, str]]]]:
    """A one-process server and a two-worker server, each with a public and a private model."""
    out: dict[str, tuple[LocalServer, dict[str, str]]] = {}
    started: list[LocalServer] = []
    try:
        for kind, workers in (("one", "1"), ("front", "2")):
            srv = LocalServer(
                "--workers", workers, "--head-timeout", "2", "--body-idle-timeout", "2", log_level="DEBUG"
            )
            started.append(srv.start())
            c = sim_connect(srv)
            public = c.upload_model(onnx_models.mlp(in_dim=4, hidden=8, out_dim=3, seed=5), name="pub", public=True)
            private = c.upload_model(onnx_models.mlp(in_dim=4, hidden=8, out_dim=3, seed=6), name="priv")
            token = c.owner_token(private.model_id)
            assert token is not None
            out[kind] = (srv, {"PUB": public.model_id, "PRIV": private.model_id, "TOKEN": token})
        yield out
    finally:
        for srv in started:
            srv.stop()


def tls_connect(srv: LocalServer, rcvbuf: int | None = None, timeout: float = 10) -> ssl.SSLSocket:
    """A TLS connection to the attested port (``rcvbuf``: a small receive buffer, for clients that do not read)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the channel's attestation is tested elsewhere
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(timeout)
    raw.connect(("127.0.0.1", srv.attested_port))
    sock = ctx.wrap_socket(raw)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(srv: LocalServer, stream: bytes | list[bytes], quiet_s: float = 4.0) -> tuple[bytes, int]:
    """Send ``stream`` on one connection (a list: its parts 0.3 s apart); everything answered
    until the server closes (or is quiet)."""
    with tls_connect(srv) as sock:
        for i, part in enumerate([stream] if isinstance(stream, bytes) else stream):
            if i:
                time.sleep(0.3)
            sock.sendall(part)
        sock.settimeout(quiet_s)
        got = b""
        try:
            while chunk := sock.recv(1 << 16):
                got += chunk
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass
        return got, sock.getsockname()[1]


def responses(raw: bytes, ids: dict[str, str]) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """Each response's status, headers (no date, sorted) and body; model ids replaced by their role."""
    out = []
    while raw:
        end = raw.find(b"\r\n\r\n")
        assert end >= 0, f"an unterminated response head: {raw[:200]!r}"
        lines = raw[:end].decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = sorted((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
        headers = [(k, v) for k, v in headers if k != "date"]
        length = 0 if 100 <= status < 200 else int(dict(headers).get("content-length", "0"))
        body = raw[end + 4 : end + 4 + length]
        for role, value in ids.items():  # lengths change with it: after the split
            body = body.replace(value.encode(), role.encode())
        body = re.sub(rb'"created_at":"[^"]*"', b'"created_at":"T"', body)
        out.append((status, headers, body))
        raw = raw[end + 4 + length :]
    return out


def infer_bytes(ref: str, *, json_inputs: bool = False, extra: str = "", rows: int = 1, name: str = "x") -> bytes:
    x = np.arange(4 * rows, dtype=np.float32).reshape(rows, 4)
    if json_inputs:
        body = json.dumps(
            {
                "id": "r-1",
                "inputs": [{"name": name, "shape": [rows, 4], "datatype": "FP32", "data": x.ravel().tolist()}],
            }
        ).encode()
        head_len = ""
    else:
        chunks, hl = encode_request({name: x}, binary=True)
        body = b"".join(bytes(c) for c in chunks)
        head_len = f"Inference-Header-Content-Length: {hl}\r\n"
    return (
        f"POST /v2/models/{ref}/infer HTTP/1.1\r\nHost: h\r\n{head_len}{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


CLOSE = b"GET /v2/health/live HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


def cases(ids: dict[str, str]) -> dict[str, bytes | list[bytes]]:
    """Streams for one connection. Lists are sent part by part: uvicorn, given a valid request and
    an invalid one in the same read, answers only the invalid one (its parser fails before the
    first request is served), where the front answers both; apart, both answer each."""
    pub, priv, token = ids["PUB"], ids["PRIV"], ids["TOKEN"]
    hidden = infer_bytes(pub)  # a whole request smuggled inside another's body, if the parsers disagreed
    return {
        "binary": infer_bytes(pub) + CLOSE,
        "json in, json out": infer_bytes(pub, json_inputs=True) + CLOSE,
        "pipelined three": infer_bytes(pub) * 3 + CLOSE,
        "by public name": infer_bytes("pub") + CLOSE,
        "private by name, no token": infer_bytes("priv") + CLOSE,
        "private by name, its token": infer_bytes("priv", extra=f"Authorization: Bearer {token}\r\n") + CLOSE,
        "private by id": infer_bytes(priv) + CLOSE,
        "pinned to another model": infer_bytes(pub, extra=f"BlindAI-Model-SHA256: {'0' * 64}\r\n") + CLOSE,
        "unknown model": infer_bytes("nope") + CLOSE,
        "wrong input name": infer_bytes(pub, name="nope") + CLOSE,
        "bad header length": infer_bytes(pub).replace(
            b"Inference-Header-Content-Length: ", b"Inference-Header-Content-Length: x", 1
        )
        + CLOSE,
        "connection close": infer_bytes(pub, extra="Connection: close\r\n") + infer_bytes(pub),
        "fast then CL+TE smuggling": [
            infer_bytes(pub),
            b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n" % pub.encode() + hidden + CLOSE,
        ],
        "duplicate lengths": [
            infer_bytes(pub),
            infer_bytes(pub).replace(b"Content-Length:", b"Content-Length: 4\r\nContent-Length:", 1) + hidden + CLOSE,
        ],
        "folded header": [
            infer_bytes(pub),
            infer_bytes(pub).replace(b"Host: h\r\n", b"Host: h\r\n folded\r\n", 1) + hidden + CLOSE,
        ],
        "bare LF head": [infer_bytes(pub), infer_bytes(pub).replace(b"Host: h\r\n", b"Host: h\n", 1) + CLOSE],
        "HTTP/1.0": [infer_bytes(pub), infer_bytes(pub).replace(b"HTTP/1.1", b"HTTP/1.0", 1) + CLOSE],
        "large body": infer_bytes(pub, rows=MAX_BODY // 16 + 1) + CLOSE,
        "fast then upload route": infer_bytes(pub) + b"GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n" + CLOSE,
    }


def test_the_front_answers_exactly_as_the_main_process(servers: dict[str, tuple[LocalServer, dict[str, str]]]) -> None:
    one, one_ids = servers["one"]
    front, front_ids = servers["front"]
    compared = 0
    for name, stream in cases(one_ids).items():
        expected = responses(exchange(one, stream)[0], one_ids)
        got = responses(exchange(front, cases(front_ids)[name])[0], front_ids)
        assert got == expected, name
        assert expected, name
        compared += len(expected)
    assert compared >= 30


def test_small_inference_requests_never_reach_the_main_process_http_server(
    servers: dict[str, tuple[LocalServer, dict[str, str]]],
) -> None:
    """The SDK's requests are served by the workers (no hand-over logged for their connection);
    a request the fast path does not take is handed over, and answered the same."""
    front, ids = servers["front"]
    raw, fast_port = exchange(
        front, infer_bytes(ids["PUB"]) * 4 + infer_bytes(ids["PUB"], extra="Connection: close\r\n")
    )
    assert [r[0] for r in responses(raw, ids)] == [200] * 5
    raw, piped_port = exchange(front, infer_bytes(ids["PUB"]).replace(b"/infer ", b"/infer?a=1 ", 1) + CLOSE)
    assert [r[0] for r in responses(raw, ids)] == [200, 200]
    deadline = time.monotonic() + 10
    while f"connection from port {piped_port} passed" not in front.log():
        assert time.monotonic() < deadline, "the piped connection was never handed over"
        time.sleep(0.05)
    assert f"connection from port {fast_port} passed" not in front.log()

    c = sim_connect(front)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    direct = sim_connect(servers["one"][0])
    np.testing.assert_array_equal(
        c.run_model("pub", x).output, direct.run_model("pub", x).output
    )  # same weights (same seed) on both servers, so the same rows


def test_slow_heads_and_bodies_are_cut_off_by_the_worker(
    servers: dict[str, tuple[LocalServer, dict[str, str]]],
) -> None:
    front, ids = servers["front"]
    request = infer_bytes(ids["PUB"])
    head_end = request.index(b"\r\n\r\n") + 4
    with tls_connect(front) as sock:  # half a head: 408 within the head timeout (2 s here)
        sock.sendall(request[:20])
        sock.settimeout(10)
        start = time.monotonic()
        got = sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 8
    with tls_connect(front) as sock:  # a head and part of its body: 408 within the body idle timeout
        sock.sendall(request[: head_end + 3])
        sock.settimeout(10)
        got = sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 408") and b"request body timed out" in got


def test_the_front_and_the_main_process_share_one_in_flight_budget() -> None:
    """Bodies a worker holds count in the same budget as the main process's: while three
    connections hold 3 x 60 KB of unfinished bodies in a worker (of a 200 KB budget), a 60 KB
    request that the main process reads waits for room, until the worker cuts the holders off
    (body timeout)."""
    limit, idle = 200_000, 6.0  # the piped exchange alone takes ~2 s: the worker lingers before it closes
    with LocalServer(
        "--workers", "2", "--max-inflight-bytes", str(limit), "--body-idle-timeout", str(idle), log_level="WARNING"
    ) as srv:
        model = sim_connect(srv).upload_model(onnx_models.mlp(in_dim=4, hidden=8, out_dim=3), public=True)
        big = infer_bytes(model.model_id, rows=3800)  # ~60 KB: the fast path's size
        head = parse_head(big[: big.index(b"\r\n\r\n")])
        assert head is not None and 3 * head.length < limit < 4 * head.length
        piped = big.replace(b"/infer ", b"/infer?a=1 ", 1)  # a query: the main process's HTTP server reads it

        start = time.monotonic()
        raw, _ = exchange(srv, piped + CLOSE, quiet_s=10)
        alone = time.monotonic() - start
        assert raw.startswith(b"HTTP/1.1 200") and alone < idle / 2

        holders = [tls_connect(srv) for _ in range(3)]
        try:
            for sock in holders:
                sock.sendall(big[:-100])  # all but the end of the body: the worker holds it
            time.sleep(0.3)
            start = time.monotonic()
            raw, _ = exchange(srv, piped + CLOSE, quiet_s=10)
            waited = time.monotonic() - start
            for sock in holders:
                sock.settimeout(5)
                assert sock.recv(100).startswith(b"HTTP/1.1 408")
        finally:
            for sock in holders:
                sock.close()
        assert raw.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), raw[:200]
        assert waited > idle - 1.0, f"answered in {waited:.2f} s: the worker's bodies were not counted"


def test_many_clients_at_once_each_get_their_own_rows() -> None:
    """Concurrent fast-path callers on both workers: every answer is its own request's."""
    with LocalServer("--workers", "2", log_level="WARNING") as srv:
        model = sim_connect(srv).upload_model(onnx_models.mlp(in_dim=4, hidden=8, out_dim=3, seed=2), public=True)
        ref = onnx_models.mlp(in_dim=4, hidden=8, out_dim=3, seed=2)
        session = ort.InferenceSession(ref.SerializeToString())
        errors: list[str] = []

        def caller(i: int) -> None:
            c = sim_connect(srv)
            rng = np.random.default_rng(i)
            for _ in range(40):
                x = rng.standard_normal((1 + i % 3, 4)).astype(np.float32)
                got = c.run_model(model.model_id, x).output
                if not np.allclose(got, session.run(None, {"x": x})[0], rtol=1e-5):
                    errors.append(f"caller {i} got rows that are not its own")

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


def test_under_sgx_the_default_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gramine does not share memory between enclaves, so the in-flight budget could not be one
    count for the whole server: SGX defaults to no front workers, whatever the core count."""
    from blindai.server import runner
    from blindai.server.tls import make_identity

    monkeypatch.setattr(runner, "machine_cores", lambda: 32)
    forked: list[int] = []
    monkeypatch.setattr(runner, "start_workers", lambda *a, **k: forked.append(1) or ([], []))
    assert runner._start_front(runner.ServerConfig(workers=0), make_identity(["localhost"]), "sgx") is None
    assert forked == []


# ---------------------------------------------------------------- the main process's channel (in-process)


def _channel_state() -> tuple[ServerState, str, str]:
    store = ModelStore()
    ids = []
    for model in (onnx_models.mlp(in_dim=4, hidden=8, out_dim=3, seed=3), onnx_models.gather_rows(4, 1 << 16)):
        data = model.SerializeToString()
        entry, _token = store.add(data, hashlib.sha256(data).hexdigest(), name=None, public=True)
        ids.append(entry.model_id)
    state = ServerState(
        provider=SimulationProvider(), identity=make_identity([]), store=store, engine=InferenceEngine()
    )
    return state, ids[0], ids[1]


async def _read_frames(sock: socket.socket, count: int) -> list[tuple[int, int, bytes]]:
    loop = asyncio.get_running_loop()
    buf, out = b"", []
    while len(out) < count:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 20)
        assert data, f"the channel closed after {len(out)} of {count} frames"
        buf += data
        while len(buf) >= frames.HEADER.size:
            length, kind, rid = frames.HEADER.unpack_from(buf)
            if len(buf) < frames.HEADER.size + length:
                break
            out.append((kind, rid, buf[frames.HEADER.size : frames.HEADER.size + length]))
            buf = buf[frames.HEADER.size + length :]
    return out


def test_the_main_process_answers_every_frame_of_a_read_whole_and_holds_them_until_delivered() -> None:
    """Forty small requests and a 1 MiB answer (written in slices) sent in one write: every
    answer arrives whole and is its own request's; what was sent stays in the budget until the
    worker reports it delivered, and nothing is held once it has."""
    state, mlp_id, gather_id = _channel_state()
    session = ort.InferenceSession(onnx_models.mlp(in_dim=4, hidden=8, out_dim=3, seed=3).SerializeToString())
    table = np.arange(4 * (1 << 16), dtype=np.float32).reshape(4, 1 << 16)
    rng = np.random.default_rng(0)
    inputs = {rid: rng.standard_normal((1 + rid % 3, 4)).astype(np.float32) for rid in range(1, 41)}

    def request(rid: int, ref: str, tensors: dict[str, np.ndarray]) -> bytes:
        payload = frames.pack({"ref": ref, "sha256": None, "tokens": [], "outputs": None}, tensors)
        return b"".join(bytes(p) for p in frames.frame(frames.REQUEST, rid, payload))

    async def main() -> None:
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        served = asyncio.create_task(serve_channel(theirs, state))
        stream = b"".join(request(rid, mlp_id, {"x": x}) for rid, x in inputs.items() if rid <= 20)
        stream += request(100, gather_id, {"idx": np.array([3, 0, 2, 1], np.int64)})
        stream += b"".join(request(rid, mlp_id, {"x": x}) for rid, x in inputs.items() if rid > 20)
        await asyncio.get_running_loop().sock_sendall(mine, stream)
        answers = await _read_frames(mine, 41)
        assert sorted(rid for _k, rid, _p in answers) == [*range(1, 41), 100]
        for kind, rid, payload in answers:
            assert kind == frames.RESULT, payload[:200]
            meta, outputs = frames.unpack(payload)
            if rid == 100:
                assert meta["model"] == gather_id
                np.testing.assert_array_equal(outputs["y"], table[[3, 0, 2, 1]])
            else:
                np.testing.assert_allclose(outputs["y"], session.run(None, {"x": inputs[rid]})[0], rtol=1e-5)
        assert state.budget.used >= 4 << 18  # the 1 MiB answer, sent, not yet reported delivered
        await asyncio.get_running_loop().sock_sendall(
            mine, b"".join(frames.HEADER.pack(0, frames.DELIVERED, rid) for _k, rid, _p in answers)
        )
        for _ in range(100):
            if state.budget.used == 0:
                break
            await asyncio.sleep(0.02)
        assert state.budget.used == 0
        mine.close()
        await asyncio.wait_for(served, 10)

    try:
        asyncio.run(main())
    finally:
        state.engine.close()


def test_a_frame_that_breaks_the_format_closes_the_channel_and_frees_what_it_held() -> None:
    """A worker that sends a frame of unknown kind loses its channel; the answers it had not
    reported delivered leave the budget with it."""
    state, mlp_id, _gather = _channel_state()

    async def main() -> None:
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        served = asyncio.create_task(serve_channel(theirs, state))
        payload = frames.pack(
            {"ref": mlp_id, "sha256": None, "tokens": [], "outputs": None}, {"x": np.ones((2, 4), np.float32)}
        )
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(mine, b"".join(bytes(p) for p in frames.frame(frames.REQUEST, 7, payload)))
        [(kind, rid, _payload)] = await _read_frames(mine, 1)
        assert (kind, rid) == (frames.RESULT, 7)
        assert state.budget.used > 0
        await loop.sock_sendall(mine, frames.HEADER.pack(0, 99, 1))  # no such kind
        await asyncio.wait_for(served, 10)  # the main process closed its end
        assert await asyncio.wait_for(loop.sock_recv(mine, 100), 10) == b""
        assert state.budget.used == 0
        mine.close()

    try:
        asyncio.run(main())
    finally:
        state.engine.close()
