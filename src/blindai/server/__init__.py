"""The BlindAI server (``pip install blindai[server]``): runs inside the TEE.

onnxruntime 1.29 and later send telemetry from Linux too (Microsoft's 1DS: a device id and an
event cache under ``~/.cache/Microsoft``, process, session and model events uploaded to
Microsoft): from inside a TEE, metadata leaving by a channel nobody attested. It is turned off
here, before any server module imports onnxruntime, where onnxruntime reads the switch (once,
when it starts); an operator who sets ``ORT_DISABLE_TELEMETRY`` themselves decides instead.
"""

import os

if not os.environ.get("ORT_DISABLE_TELEMETRY"):  # unset or empty: off
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
