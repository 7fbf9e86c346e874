"""The seed tutorial's client code, unchanged, against `blindai serve --simulation`.

The model is the tutorial's: Wav2Vec2ForCTC plus an argmax layer, exported with
torch.onnx.export; built from a small Wav2Vec2Config with random weights (no hub
here). The ids the server returns must equal local PyTorch's, and decode with a
Wav2Vec2CTCTokenizer built from a local vocab file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from examples.zoo import export_wav2vec2, wav2vec2_argmax, wav2vec2_processor

from blindai.testing import LocalServer

pytestmark = pytest.mark.slow

# Verbatim from the seed article (the upload line is the original tutorial's).
SEED_UPLOAD = """
from blindai.client import BlindAiClient, ModelDatumType

# Launch client
client = BlindAiClient()

client.connect_server(addr="localhost", simulation=True)

client.upload_model(model="./wav2vec2_hello_world.onnx", shape=input_values.shape, dtype=ModelDatumType.F32, dtype_out=ModelDatumType.I64)
"""

SEED_RUN = """
from blindai.client import BlindAiClient

# Load the client
client = BlindAiClient()
client.connect_server("localhost", simulation=True)

# Get prediction
response = client.run_model(input_values.flatten().tolist())
"""

SEED_DECODE = "transcription = processor.batch_decode(torch.tensor(response.output).unsqueeze(0))"


def _ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.fixture()
def default_port_server() -> Iterator[LocalServer]:
    if not _ports_free(50051, 50052):
        pytest.skip("the tutorial uses the default ports 50051/50052, which another program holds here")
    with LocalServer(attested_port=50051, unattested_port=50052) as srv:
        yield srv


def test_seed_tutorial_runs_unchanged(default_port_server: LocalServer, tmp_path: Path) -> None:
    full_model, real = wav2vec2_argmax(tiny=True)
    assert not real
    processor = wav2vec2_processor(tmp_path)
    t = np.linspace(0, 1, 16000, dtype=np.float32)
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)
    input_values = processor(audio, sampling_rate=16000, return_tensors="pt", padding="longest").input_values

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        export_wav2vec2(full_model, tmp_path / "wav2vec2_hello_world.onnx")
        ns: dict[str, object] = {"input_values": input_values, "processor": processor, "torch": torch}
        with pytest.warns(UserWarning, match="SIMULATION"):
            exec(SEED_UPLOAD, ns)
            exec(SEED_RUN, ns)
        exec(SEED_DECODE, ns)
    finally:
        os.chdir(cwd)

    response = ns["response"]
    with torch.no_grad():
        expected = full_model(input_values)[0].tolist()
    assert response.output == expected  # type: ignore[attr-defined]
    assert all(isinstance(i, int) for i in response.output)  # type: ignore[attr-defined]
    assert ns["transcription"] == processor.batch_decode(torch.tensor([expected]))
    assert isinstance(ns["transcription"], list) and isinstance(ns["transcription"][0], str)
