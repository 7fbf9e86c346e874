"""The seed tutorial, end to end: confidential speech-to-text with Wav2vec2 on BlindAI.

    python examples/wav2vec2_hello_world/run.py            # facebook/wav2vec2-base-960h if a hub is reachable
    python examples/wav2vec2_hello_world/run.py --small    # a tiny Wav2Vec2 with random weights (fast; for tests)

Without a reachable model hub, the same architecture is built from its config with random
weights and the output says so: the transcription is then meaningless, the flow is the same.
hello_world.wav was synthesised with espeak-ng ("hello world", 16 kHz mono).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
import wave
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for examples.zoo

from examples.zoo import export_wav2vec2, wav2vec2_argmax, wav2vec2_processor

from blindai.client import BlindAiClient, ModelDatumType
from blindai.demo import cache_dir
from blindai.testing import LocalServer

HUB_ID = "facebook/wav2vec2-base-960h"
HERE = Path(__file__).resolve().parent


def load_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny random-weight model (no download, seconds)")
    parser.add_argument("--audio", type=Path, default=HERE / "hello_world.wav")
    args = parser.parse_args()
    if args.small:
        os.environ["HF_HUB_OFFLINE"] = "1"

    # 1. The model and its processor: real weights when a hub is reachable.
    full_model, real = wav2vec2_argmax(None if args.small else HUB_ID, tiny=args.small)
    processor = None
    if real:
        from transformers import Wav2Vec2Processor

        processor = Wav2Vec2Processor.from_pretrained(HUB_ID)
    with tempfile.TemporaryDirectory(prefix="blindai-w2v-") as tmp_name:
        tmp = Path(tmp_name)
        processor = processor or wav2vec2_processor(tmp)
        label = (
            f"real {HUB_ID} weights"
            if real
            else (
                "RANDOM WEIGHTS (no model hub reachable"
                + (", --small" if args.small else "")
                + "): the text is meaningless"
            )
        )
        print(f"model: Wav2Vec2ForCTC + argmax, {label}")

        audio = load_wav(args.audio)
        input_values = processor(audio, sampling_rate=16000, return_tensors="pt", padding="longest").input_values
        onnx_path = (tmp if not real else cache_dir()) / ("wav2vec2_hello_world.onnx")
        export_wav2vec2(full_model, onnx_path, samples=input_values.shape[1])

        # 2. A local simulation server, attested; then the tutorial's client code.
        with LocalServer(log_level="WARNING") as server:
            client = BlindAiClient()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client.connect_server(
                    "127.0.0.1",
                    simulation=True,
                    untrusted_port=server.unattested_port,
                    attested_port=server.attested_port,
                )
            a = client.connection.attestation
            print(
                f"attested: tee={a.tee} (SIMULATION: no hardware protection), "
                f"measurement={a.measurements['measurement'][:24]}..., TLS key bound to the evidence"
            )
            client.upload_model(
                model=str(onnx_path), shape=input_values.shape, dtype=ModelDatumType.F32, dtype_out=ModelDatumType.I64
            )
            response = client.run_model(input_values.flatten().tolist())
            transcription = processor.batch_decode(torch.tensor(response.output).unsqueeze(0))
            client.close()
        with torch.no_grad():
            local = full_model(input_values)[0].tolist()
        print(f"transcription: {transcription[0]!r}")
        print(f"same ids as local PyTorch: {response.output == local}")
        return 0 if response.output == local else 1


if __name__ == "__main__":
    sys.exit(main())
