"""Configs of the audio models: the RVQ tokenizer and the MiMo-Audio-style LM, the text vocabulary
they share, and the named flavors.

MiMo-Audio (24 kHz audio, 25 Hz frames, 8 RVQ codebooks of 1024, 1024, 128 x 6; patches of 4
frames fed to MiMo-7B at 6.25 Hz; a 16-layer patch decoder with the delay pattern 0..7) is the
``mimo-audio-7b`` flavor. ``tiny-mimo-audio`` keeps its structure (25 Hz frames, 8 codebooks,
patches of 4, delays 0..7, loss weights) at sizes a CPU trains in minutes: 8 kHz audio,
codebooks of 128, 128, 32 x 6, the tiny MiMo-7B twin of the zoo as backbone, 64-wide patch
encoder/decoder.

Text: UTF-8 bytes 0..255, ``BOS``/``EOS``/``PAD`` 256..258 (as the pretraining corpus of
``hysparse_kernels.training``), then the audio markers of MiMo-Audio: ``<|sosp|>``/``<|eosp|>``
around an audio span, ``<|empty|>`` as the text of an audio patch, ``<|sostm|>``/``<|eostm|>``
around a stream and ``<|eot|>``.

Example::

    cfg = get_audio_config("tiny-mimo-audio")
    cfg.codebook_sizes, cfg.delay_steps        # (128, 128, 32, 32, 32, 32, 32, 32), 11
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hysparse_kernels import ir

BOS, EOS, PAD = 256, 257, 258
SOSP, EOSP, EMPTY, SOSTM, EOSTM, EOT = 259, 260, 261, 262, 263, 264
TEXT_VOCAB = 265
SPECIAL_NAMES = {BOS: "<bos>", EOS: "<eos>", PAD: "<pad>", SOSP: "<|sosp|>", EOSP: "<|eosp|>", EMPTY: "<|empty|>",
                 SOSTM: "<|sostm|>", EOSTM: "<|eostm|>", EOT: "<|eot|>"}


def encode_text(text: str) -> list[int]:
    """UTF-8 bytes of ``text`` as token ids."""
    return list(text.encode("utf-8"))


def decode_text(ids) -> str:
    """Bytes back to text; special tokens are written by name (``<|eosp|>``)."""
    out, run = [], bytearray()
    for i in ids:
        i = int(i)
        if 0 <= i < 256:
            run.append(i)
            continue
        out.append(run.decode("utf-8", errors="replace"))
        run = bytearray()
        out.append(SPECIAL_NAMES.get(i, f"<{i}>"))
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def _check_positive_ints(name: str, values, length: int | None = None) -> None:
    if not isinstance(values, tuple) or not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name}: expected a non-empty tuple of positive ints, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name}: expected {length} entries, got {len(values)}")


@dataclass(frozen=True)
class TokenizerConfig:
    """The audio tokenizer: STFT magnitudes at ``sample_rate / hop`` Hz, a convolutional encoder
    that downsamples by ``prod(downsample)`` to the frame rate, RVQ with ``codebook_sizes``, and a
    mirrored decoder that predicts magnitude and phase for an inverse STFT (Vocos-style head)."""

    sample_rate: int = 8000
    n_fft: int = 256
    hop: int = 80
    downsample: tuple[int, ...] = (2, 2)
    channels: int = 128
    res_blocks: int = 2
    latent: int = 64
    codebook_sizes: tuple[int, ...] = (128, 128, 32, 32, 32, 32, 32, 32)
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0
    # MiMo-Audio weighs its commitment loss 1; here, with 1, the encoder's outputs collapsed onto
    # the first codebook's codes and the other seven levels carried nothing (measured: the mel
    # distance did not improve past one level); 0.1 keeps the residual levels useful
    commitment_weight: float = 0.1
    n_mels: int = 40

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop", "channels", "res_blocks", "latent", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenizerConfig.{name}: expected a positive int, got {value!r}")
        _check_positive_ints("TokenizerConfig.downsample", self.downsample)
        _check_positive_ints("TokenizerConfig.codebook_sizes", self.codebook_sizes)
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"TokenizerConfig.ema_decay: expected a number in (0, 1), got {self.ema_decay}")
        if self.hop > self.n_fft:
            raise ValueError(f"TokenizerConfig.hop: expected <= n_fft ({self.n_fft}), got {self.hop}")

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per token frame (320 at 8 kHz: 25 Hz)."""
        return self.hop * math.prod(self.downsample)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def bits_per_second(self, levels: int | None = None) -> float:
        """Bit rate of the first ``levels`` codebooks (all by default) at the frame rate."""
        sizes = self.codebook_sizes[: levels or self.num_codebooks]
        return self.frame_rate * sum(math.log2(k) for k in sizes)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "TokenizerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"tokenizer config: unknown keys {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class AudioLMConfig:
    """The audio LM around a zoo backbone (names as MiMo-Audio's config where it has them).

    ``codebook_sizes``: RVQ codes per channel; the LM's vocabulary of channel ``c`` is
    ``codebook_sizes[c] + 1``, the last id meaning "empty" (a text position, or a delayed slot).
    ``group_size`` frames form a patch; ``delay_pattern[c]`` is channel ``c``'s delay in the
    patch decoder. ``input_local_*`` size the patch encoder (bidirectional inside a patch when
    ``input_full_attention``), ``local_*`` the causal patch decoder. Loss weights as MiMo-Audio
    (text 100, RVQ 12, 8, 6, 4, 2, 2, 1, 1), normalised by their sum.
    """

    backbone: str = "tiny-mimo-7b"
    codebook_sizes: tuple[int, ...] = (128, 128, 32, 32, 32, 32, 32, 32)
    group_size: int = 4
    delay_pattern: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    input_local_dim: int = 64
    input_local_layers: int = 2
    input_full_attention: bool = True
    local_dim: int = 64
    local_layers: int = 2
    local_attn_heads: int = 4
    local_ffn_dim: int = 256
    text_loss_weight: float = 100.0
    audio_loss_weights: tuple[float, ...] = (12.0, 8.0, 6.0, 4.0, 2.0, 2.0, 1.0, 1.0)
    norm_eps: float = 1e-6  # RMSNorm epsilon of the backbone and both local Transformers
    name: str = ""

    def __post_init__(self):
        _check_positive_ints("AudioLMConfig.codebook_sizes", self.codebook_sizes)
        C = len(self.codebook_sizes)
        if (not isinstance(self.delay_pattern, tuple) or len(self.delay_pattern) != C
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in self.delay_pattern)):
            raise ValueError(f"AudioLMConfig.delay_pattern: expected {C} non-negative ints, got {self.delay_pattern!r}")
        if len(self.audio_loss_weights) != C or any(w < 0 for w in self.audio_loss_weights):
            raise ValueError(f"AudioLMConfig.audio_loss_weights: expected {C} non-negative numbers, got {self.audio_loss_weights!r}")
        for name in ("group_size", "input_local_dim", "input_local_layers", "local_dim", "local_layers", "local_attn_heads",
                     "local_ffn_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AudioLMConfig.{name}: expected a positive int, got {value!r}")
        for name in ("input_local_dim", "local_dim"):
            if getattr(self, name) % self.local_attn_heads:
                raise ValueError(f"AudioLMConfig.{name}: expected a multiple of local_attn_heads ({self.local_attn_heads}), "
                                 f"got {getattr(self, name)}")
        if not 0 < self.norm_eps < 1:
            raise ValueError(f"AudioLMConfig.norm_eps: expected a number in (0, 1), got {self.norm_eps!r}")
        if self.backbone not in ir.list_graphs():
            raise ValueError(f"AudioLMConfig.backbone: expected one of {ir.list_graphs()}, got {self.backbone!r}")

    @property
    def num_channels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """Per-channel LM vocabulary: the codes plus the empty id."""
        return tuple(k + 1 for k in self.codebook_sizes)

    @property
    def empty_ids(self) -> tuple[int, ...]:
        return tuple(self.codebook_sizes)

    @property
    def delay_steps(self) -> int:
        """Local decoder steps per patch: ``group_size + max(delay_pattern)`` (11 for 4 and 0..7)."""
        return self.group_size + max(self.delay_pattern)

    def backbone_graph(self) -> ir.ModelGraph:
        """The zoo graph ``backbone`` without MTP blocks (MiMo-Audio uses the plain decoder)."""
        graph = ir.get_graph(self.backbone)
        if graph.vocab < TEXT_VOCAB:
            raise ValueError(f"AudioLMConfig.backbone: vocabulary {graph.vocab} is smaller than the text vocabulary {TEXT_VOCAB}")
        return dataclasses.replace(graph, mtp=None, norm_eps=self.norm_eps, name=f"{graph.name}-audio-backbone")

    def _local_graph(self, dim: int, layers: int, ffn: int, name: str) -> ir.ModelGraph:
        dims = ir.AttentionDims(q_heads=self.local_attn_heads, kv_heads=self.local_attn_heads,
                                qk_dim=dim // self.local_attn_heads, qkv_bias=True)
        # vocab 1: the local transformers have no token embedding or head of their own
        return ir.build_graph("F" * layers, hidden=dim, vocab=1, attention=dims, ffn=ir.Dense(ffn), name=name)

    def patch_encoder_graph(self) -> ir.ModelGraph:
        """The patch encoder's layers as a graph (bidirectional inside a patch; Qwen2 layers, FFN 4x)."""
        return self._local_graph(self.input_local_dim, self.input_local_layers, 4 * self.input_local_dim, "patch-encoder")

    def patch_decoder_graph(self) -> ir.ModelGraph:
        """The patch decoder's layers as a graph (causal over the ``delay_steps`` local steps)."""
        return self._local_graph(self.local_dim, self.local_layers, self.local_ffn_dim, "patch-decoder")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "AudioLMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"audio LM config: unknown keys {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


AUDIO_PRESETS = {
    "tiny-mimo-audio": AudioLMConfig(name="tiny-mimo-audio"),
    # MiMo-Audio-7B: MiMo-7B backbone; patch encoder 6 layers d1024; patch decoder 16 layers d1024,
    # 64 heads, FFN 4096; codebooks 1024, 1024, 128 x 6 (+1 empty id each); delays 0..7.
    "mimo-audio-7b": AudioLMConfig(
        backbone="mimo-7b", codebook_sizes=(1024, 1024, 128, 128, 128, 128, 128, 128), input_local_dim=1024,
        input_local_layers=6, local_dim=1024, local_layers=16, local_attn_heads=64, local_ffn_dim=4096, norm_eps=1e-5,
        name="mimo-audio-7b"),
}

TOKENIZER_PRESETS = {
    "tiny-mimo-audio-tokenizer": TokenizerConfig(),
}


def list_audio_models() -> list[str]:
    return list(AUDIO_PRESETS)


def get_audio_config(name: str) -> AudioLMConfig:
    """The config of a named audio LM flavor (``list_audio_models()``)."""
    if name not in AUDIO_PRESETS:
        raise KeyError(f"audio model: expected one of {list(AUDIO_PRESETS)}, got {name!r}")
    return AUDIO_PRESETS[name]
