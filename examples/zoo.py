"""Model builders shared by the examples, tests and benchmarks (needs ``blindai[examples]``).

Loading code for hub models stays real (``from_pretrained`` on a local folder or
a hub id when one is reachable); when no weights are available the same
architecture is built from its config with random weights, and callers say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .export import export_onnx, quiet_transformers

__all__ = [
    "WAV2VEC2_VOCAB",
    "resnet_classifier",
    "export_wav2vec2",
    "wav2vec2_argmax",
    "RESNET50",
    "wav2vec2_processor",
]

# The 32-symbol character vocabulary of facebook/wav2vec2-base-960h.
WAV2VEC2_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]

TINY_WAV2VEC2 = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32),
    conv_stride=(5, 4, 2),
    conv_kernel=(10, 8, 4),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


def wav2vec2_processor(workdir: Path) -> Any:
    """A Wav2Vec2Processor from a local vocab file: the feature extractor plus CTC tokenizer."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    vocab = workdir / "vocab.json"
    vocab.write_text(json.dumps({tok: i for i, tok in enumerate(WAV2VEC2_VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab))
    features = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    return Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer)


def wav2vec2_argmax(pretrained: str | None = None, *, tiny: bool = False, seed: int = 0) -> tuple[Any, bool]:
    """The seed's model: Wav2Vec2ForCTC followed by an argmax layer.

    Returns ``(module, real_weights)``. ``pretrained`` is a local folder or hub id;
    without it (or when loading fails, e.g. no hub) the architecture is built from
    its config with random weights.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    quiet_transformers()
    model = None
    if pretrained is not None:
        try:
            model = Wav2Vec2ForCTC.from_pretrained(pretrained)
        except (OSError, ValueError):
            model = None
    real = model is not None
    if model is None:
        torch.manual_seed(seed)
        cfg = Wav2Vec2Config(vocab_size=len(WAV2VEC2_VOCAB), **(TINY_WAV2VEC2 if tiny else {}))
        model = Wav2Vec2ForCTC(cfg)

    class ArgmaxLayer(torch.nn.Module):
        def forward(self, outputs: Any) -> Any:
            return torch.argmax(outputs.logits, dim=-1)

    return torch.nn.Sequential(model, ArgmaxLayer()).eval(), real


def export_wav2vec2(module: Any, path: Path, samples: int = 16000) -> bytes:
    import torch

    return export_onnx(
        module,
        (torch.zeros(1, samples),),
        input_names=["input_values"],
        output_names=["ids"],
        dynamic_axes={"input_values": {0: "batch", 1: "samples"}, "ids": {0: "batch", 1: "frames"}},
        path=path,
    )


RESNET50 = {
    "depths": (3, 4, 6, 3),
    "hidden_sizes": (256, 512, 1024, 2048),
    "layer_type": "bottleneck",
    "num_labels": 1000,
}


def resnet_classifier(
    *,
    depths: tuple[int, ...] = (1, 1),
    hidden_sizes: tuple[int, ...] = (16, 32),
    num_labels: int = 10,
    layer_type: str = "basic",
    seed: int = 0,
    embedding_size: int | None = None,
) -> Any:
    """A ResNet image classifier from a transformers config (random weights); see RESNET50 for ResNet-50."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    quiet_transformers()
    torch.manual_seed(seed)
    cfg = ResNetConfig(
        depths=list(depths),
        hidden_sizes=list(hidden_sizes),
        embedding_size=embedding_size or (64 if layer_type == "bottleneck" else hidden_sizes[0]),
        num_labels=num_labels,
        layer_type=layer_type,
    )
    model = ResNetForImageClassification(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).logits

    return Logits().eval()
