"""Parser entry points for fuzzing (hypothesis in the tests, atheris in ``make fuzz``).

Each target feeds untrusted bytes to one parser and lets only the parser's own, declared
error escape; anything else (IndexError, struct.error, RecursionError, ...) is a bug.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable

from blindai.errors import BlindAIError

__all__ = ["TARGETS"]


def _dcap_quote(data: bytes) -> None:
    from blindai.attestation import dcap_abi

    try:
        q = dcap_abi.parse_quote(data)
        dcap_abi.parse_signature_data(q)
    except BlindAIError:
        pass


def _snp_report(data: bytes) -> None:
    from blindai.attestation import snp_abi

    try:
        snp_abi.parse_report(data)
        snp_abi.parse_cert_table(data)
    except BlindAIError:
        pass


def _detect(data: bytes) -> None:
    from blindai.attestation.verify import detect_tee

    with contextlib.suppress(BlindAIError):
        detect_tee(data)


def _simulation(data: bytes) -> None:
    from blindai.attestation import simulation

    with contextlib.suppress(BlindAIError):
        simulation.verify(simulation.parse(data))


def _oip_request(data: bytes) -> None:
    from blindai.protocol import TensorError, decode_request

    split = data[0] if data else 0
    with contextlib.suppress(TensorError):
        decode_request(data[1:], split if split < len(data) and split % 2 else None)


def _oip_json(data: bytes) -> None:
    """Well-formed JSON of any shape: the decoder must answer with TensorError only."""
    from blindai.protocol import TensorError, decode_request

    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return
    with contextlib.suppress(TensorError, RecursionError):
        decode_request(json.dumps({"inputs": obj} if not isinstance(obj, dict) else obj).encode(), None)


def _v06_cbor(data: bytes) -> None:
    """Any bytes as a 0.6 upload, run or delete: only V06Error may come out."""
    from blindai.protocol import v06

    with contextlib.suppress(v06.V06Error):
        v06.check_item_count(data)
    with contextlib.suppress(v06.V06Error):
        v06.read_upload(data, 1 << 20)
    try:
        msg = v06.load_message(data)
        v06.parse_run_inputs(msg, ["x", "y"])
    except v06.V06Error:
        pass


_KEY = None


def _sealed(data: bytes) -> None:
    """The bytes as a sealed file, and as the fields of a well-formed header.

    The second form lets a fuzzer reach every header field at every length (a wrap nonce of
    3 bytes once stopped the server from starting) from an empty corpus, without first having
    to discover the magic, the length prefix and the JSON layout.
    """
    import base64
    import json
    import struct

    from blindai.server import sealing

    global _KEY
    if _KEY is None:
        _KEY = sealing.SealingKey(os.urandom(32), source="fuzz")
    with contextlib.suppress(sealing.SealedFileError):
        sealing.unseal(_KEY, data)
    parts = data.split(b"\x00", 4) + [b""] * 4
    names = ("wrap_nonce", "wrapped_key", "data_nonce")
    fields = {k: base64.b64encode(v).decode() for k, v in zip(names, parts[1:4], strict=True)}
    header = json.dumps({"id": parts[0].decode("latin-1"), "meta": {}, **fields}).encode()
    with contextlib.suppress(sealing.SealedFileError):
        sealing.unseal(_KEY, sealing.MAGIC + struct.pack("<I", len(header)) + header + parts[4])


def _ratls(data: bytes) -> None:
    from blindai.attestation import ratls

    with contextlib.suppress(BlindAIError):
        ratls.check_ratls_binding(data)


def _onnx_split(data: bytes) -> None:
    """The upload walker (server/onnxsplit.py): refuses framing with its own error, never crashes."""
    from blindai.server.errors import UnsupportedModel
    from blindai.server.onnxsplit import split_model

    with contextlib.suppress(UnsupportedModel):
        split_model(data, min_moved=1)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "dcap_quote": _dcap_quote,
    "snp_report": _snp_report,
    "detect": _detect,
    "simulation": _simulation,
    "oip_request": _oip_request,
    "oip_json": _oip_json,
    "v06_cbor": _v06_cbor,
    "sealed_file": _sealed,
    "ratls_cert": _ratls,
    "onnx_split": _onnx_split,
}
