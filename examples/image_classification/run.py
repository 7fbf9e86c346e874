"""Confidential image classification with a ResNet built from a transformers config.

    python examples/image_classification/run.py            # ResNet-50 architecture (random weights)
    python examples/image_classification/run.py --small    # a 2-stage ResNet (fast; for tests)

The weights are random (no model hub here): the classes are meaningless, the compute and
the flow are those of the real model. The image is a synthetic 224x224 picture.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for examples.zoo

from examples.export import export_onnx
from examples.zoo import RESNET50, resnet_classifier

import blindai
from blindai.testing import LocalServer


def synthetic_image() -> np.ndarray:
    """A 224x224 RGB picture (rings and gradients), normalised like ImageNet inputs."""
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    r = np.sin(12 * np.hypot(xx - 0.5, yy - 0.5))
    img = np.stack([r, xx, yy]).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return ((img * 0.5 + 0.5 - mean) / std)[None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    if args.small:
        model = resnet_classifier(depths=(1, 1), hidden_sizes=(16, 32), num_labels=10)
    else:
        model = resnet_classifier(**RESNET50)  # type: ignore[arg-type]
    print(f"model: ResNet from a transformers config, {'small' if args.small else 'ResNet-50'}, RANDOM WEIGHTS")
    with tempfile.TemporaryDirectory(prefix="blindai-resnet-") as tmp:
        path = Path(tmp) / "resnet.onnx"
        export_onnx(
            model,
            (torch.zeros(1, 3, 224, 224),),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            path=path,
        )
        image = synthetic_image()
        with LocalServer(log_level="WARNING") as server:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                conn = blindai.connect(
                    "127.0.0.1",
                    simulation=True,
                    attested_port=server.attested_port,
                    unattested_port=server.unattested_port,
                )
            with conn:
                a = conn.attestation
                print(f"attested: tee={a.tee} (SIMULATION: no hardware protection), TLS key bound to the evidence")
                info = conn.upload_model(path, name="resnet")
                logits = conn.run_model(info.model_id, image, model_sha256=info.sha256).output[0]
    with torch.no_grad():
        local = model(torch.from_numpy(image))[0].numpy()
    top = np.argsort(-logits)[:5]
    print("top-5 classes: " + ", ".join(f"{int(i)} ({logits[i]:.3f})" for i in top))
    same = bool(np.allclose(logits, local, rtol=1e-3, atol=1e-3))
    print(f"same logits as local PyTorch: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
