"""Open Inference Protocol conformance, checked with an independent client: tritonclient[http].

tritonclient trusts exactly the certificate that blindai.connect attested: the FAQ's recipe
(``ssl_options={"ca_certs": <the attested certificate>, "server_hostname": "blindai-srv"}``)
against a default ``blindai serve``, and ``Connection.ssl_context()`` as the context factory.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

import blindai
from blindai.testing import LocalServer
from tests import onnx_models

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, blindai.Connection]]:
    with LocalServer() as srv:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn = blindai.connect("127.0.0.1", simulation=True, **srv.connect_kwargs())
        ca = Path(tmp_path_factory.mktemp("ca")) / "attested.pem"
        ca.write_text(conn.certificate_pem)
        client = httpclient.InferenceServerClient(
            url=f"127.0.0.1:{srv.attested_port}",
            ssl=True,
            ssl_options={"ca_certs": str(ca), "server_hostname": "blindai-srv"},
        )
        yield client, conn
        client.close()
        conn.close()


def test_recipes_refuse_an_interceptor_and_send_it_nothing(
    triton: tuple[object, blindai.Connection], tmp_path: Path
) -> None:
    from tests.fakes.attacker import ChannelAttacker, Plan

    _, conn = triton
    ca = tmp_path / "attested.pem"
    ca.write_text(conn.certificate_pem)
    attacker = ChannelAttacker(conn.attested_port, Plan(terminate_from=0))
    url = f"127.0.0.1:{attacker.port}"
    try:
        by_file = httpclient.InferenceServerClient(
            url=url, ssl=True, ssl_options={"ca_certs": str(ca), "server_hostname": "blindai-srv"}
        )
        by_context = httpclient.InferenceServerClient(
            url=url, ssl=True, ssl_context_factory=lambda **_: conn.ssl_context(), insecure=True
        )
        for client in (by_file, by_context):
            with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
                client.is_server_live()
            client.close()
        assert attacker.terminate_attempts >= 2 and bytes(attacker.plaintext) == b""
    finally:
        attacker.close()


def test_ssl_context_recipe_works(triton: tuple[object, blindai.Connection]) -> None:
    _, conn = triton
    client = httpclient.InferenceServerClient(
        url=f"127.0.0.1:{conn.attested_port}",
        ssl=True,
        ssl_context_factory=lambda **_: conn.ssl_context(),
        insecure=True,
    )
    assert client.is_server_live()
    client.close()


def test_server_metadata_and_health(triton: tuple[object, blindai.Connection]) -> None:
    client, _ = triton
    assert client.is_server_live() and client.is_server_ready()  # type: ignore[attr-defined]
    meta = client.get_server_metadata()  # type: ignore[attr-defined]
    assert meta["name"] == "blindai" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata(triton: tuple[object, blindai.Connection]) -> None:
    client, conn = triton
    info = conn.upload_model(onnx_models.two_in_two_out())
    assert client.is_model_ready(info.model_id)  # type: ignore[attr-defined]
    meta = client.get_model_metadata(info.model_id)  # type: ignore[attr-defined]
    assert meta["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("sum", "FP32"),
        ("idx", "INT64"),
        ("greater", "BOOL"),
    ]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize(
    ("onnx_type", "np_type", "oip"),
    [
        (TensorProto.FLOAT, np.float32, "FP32"),
        (TensorProto.DOUBLE, np.float64, "FP64"),
        (TensorProto.FLOAT16, np.float16, "FP16"),
        (TensorProto.INT64, np.int64, "INT64"),
        (TensorProto.INT32, np.int32, "INT32"),
        (TensorProto.UINT8, np.uint8, "UINT8"),
        (TensorProto.INT8, np.int8, "INT8"),
    ],
)
def test_infer_datatypes(
    triton: tuple[object, blindai.Connection], binary: bool, onnx_type: int, np_type: type, oip: str
) -> None:
    client, conn = triton
    info = conn.upload_model(onnx_models.scale_model(onnx_type, factor=2))
    x = (np.arange(12) % 7).astype(np_type).reshape(3, 4)
    inp = httpclient.InferInput("x", list(x.shape), oip)
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    res = client.infer(info.model_id, [inp], outputs=[out])  # type: ignore[attr-defined]
    y = res.as_numpy("y")
    assert y.dtype == np_type
    np.testing.assert_array_equal(y, x * np_type(2))


def test_mixed_binary_outputs_and_bool(triton: tuple[object, blindai.Connection]) -> None:
    client, conn = triton
    info = conn.upload_model(onnx_models.two_in_two_out())
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    ins = [httpclient.InferInput("a", [2, 3], "FP32"), httpclient.InferInput("b", [2, 3], "FP32")]
    ins[0].set_data_from_numpy(a, binary_data=True)
    ins[1].set_data_from_numpy(b, binary_data=False)
    outs = [
        httpclient.InferRequestedOutput("greater", binary_data=True),
        httpclient.InferRequestedOutput("idx", binary_data=False),
    ]
    res = client.infer(info.model_id, ins, outputs=outs)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(res.as_numpy("greater"), a > b)
    np.testing.assert_array_equal(res.as_numpy("idx"), a.argmax(1))
    assert res.as_numpy("sum") is None  # only what was asked for


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bytes_tensors(triton: tuple[object, blindai.Connection], binary: bool) -> None:
    client, conn = triton
    info = conn.upload_model(onnx_models.string_identity())
    text = np.array(["confidential", "données", ""], dtype=object)
    inp = httpclient.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    res = client.infer(
        info.model_id,
        [inp],  # type: ignore[attr-defined]
        outputs=[httpclient.InferRequestedOutput("same", binary_data=binary)],
    )
    got = [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("same")]
    assert got == ["confidential", "données", ""]


def test_errors_reach_tritonclient(triton: tuple[object, blindai.Connection]) -> None:
    client, conn = triton
    info = conn.upload_model(onnx_models.fixed_shape_model())
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(np.ones((2, 4), np.float32))
    with pytest.raises(InferenceServerException, match="dimension 1 must be 3"):
        client.infer(info.model_id, [inp])  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException, match="no model"):
        client.get_model_metadata("does-not-exist")  # type: ignore[attr-defined]
