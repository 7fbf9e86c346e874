"""Runs inside .venv06 with the OFFICIAL BlindAI 0.6.3 client: upload, run with numpy, delete.

The package's __init__ also imports its audio API (openai-whisper), unrelated to the wire
protocol; the client module itself is loaded unchanged from the installed wheel.
Usage: python official_client_flow.py HOST UNATTESTED_PORT ATTESTED_PORT MODEL.onnx INPUT.npy OUT.npy
"""

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

spec = importlib.util.find_spec("blindai")  # without running the package __init__
assert spec is not None and spec.submodule_search_locations
pkg = types.ModuleType("blindai")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["blindai"] = pkg
from blindai import client  # noqa: E402  (the official 0.6.3 client module)

host, unattested, attested, model_path, input_path, out_path = sys.argv[1:7]
version = client.app_version
conn = client.connect(
    host,
    unattested_server_port=int(unattested),
    attested_server_port=int(attested),
    model_management_port=int(attested),
    hazmat_http_on_unattested_port=True,
    simulation_mode=True,
)
up = conn.upload_model(model_path, model_name=Path(model_path).name)
x = np.load(input_path)
res = conn.run_model(model_id=up.model_id, input_tensors=x)
out = res.output[0].as_numpy()
np.save(out_path, out)
by_hash = conn.run_model(
    model_hash=up.hash.hex(),
    input_tensors=[x.flatten().tolist()],
    dtypes=[client.ModelDatumType.F32],
    shapes=[list(x.shape)],
)
assert np.array_equal(by_hash.output[0].as_numpy(), out)
conn.delete_model(up.model_id)
try:
    conn.run_model(model_id=up.model_id, input_tensors=x)
    deleted = False
except Exception:  # requests.HTTPError: 404 after delete
    deleted = True
conn.close()
print(
    json.dumps(
        {
            "version": version,
            "model_id": up.model_id,
            "hash": up.hash.hex(),
            "deleted": deleted,
            "shape": list(out.shape),
        }
    )
)
