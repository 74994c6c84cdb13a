"""Model graphs: layers with their attention pattern, head geometry and FFN; MTP; the model.

Everything here is a frozen dataclass of plain values (no torch), checked on construction, so a
graph can be hashed, compared, written to JSON and read back exactly.

Example::

    >>> from hysparse_kernels.ir import Dense, build_graph, AttentionDims
    >>> g = build_graph("F SSS F", hidden=64, vocab=512,
    ...                 attention=AttentionDims(q_heads=4, kv_heads=2, qk_dim=16), ffn=Dense(128))
    >>> [layer.pattern.kind for layer in g.layers]
    ['full', 'sparse', 'sparse', 'sparse', 'full']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from .patterns import BY_LETTER, Full, OracleSparse, Pattern, SlidingWindow, _check_bool, _check_int, check_pattern

ACTIVATIONS = ("swiglu",)
SCORINGS = ("softmax", "sigmoid")
# How a checkpoint lays out an MTP block (names and the order of the two halves of the input
# projection); see ``MTPSpec``.
MTP_LAYOUTS = ("deepseek", "mimo-v2", "mimo")


def _check_number(name: str, value, *, positive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value}")


@dataclass(frozen=True)
class Dense:
    """Dense gated FFN: ``down(act(gate(x)) * up(x))``, ``intermediate`` wide."""

    intermediate: int
    activation: str = "swiglu"

    kind = "dense"

    def __post_init__(self):
        _check_int("Dense.intermediate", self.intermediate)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Dense.activation: expected one of {ACTIVATIONS}, got {self.activation!r}")

    def describe(self) -> str:
        return f"dense {self.intermediate}"


@dataclass(frozen=True)
class MoE:
    """Mixture of experts: ``num_experts`` gated FFNs of ``intermediate`` each, ``top_k`` per token.

    ``scoring``: "softmax" or "sigmoid"; ``correction_bias``: a selection-only per-expert bias
    (aux-loss-free balancing); ``n_group``/``topk_group``: group-limited routing;
    ``shared_experts``: always-on experts of ``intermediate`` each; ``routed_scaling``: factor
    applied to the routed weights; ``renormalize``: the top-k weights are divided by their sum
    before the scaling (Hugging Face ``norm_topk_prob``).

    Group-limited routing scores a group by the sum of its two best biased scores when there is
    a correction bias (DeepSeek-V3 ``noaux_tc``) and by its best score when there is none
    (DeepSeek-V2 ``group_limited_greedy``).
    """

    num_experts: int
    top_k: int
    intermediate: int
    scoring: str = "softmax"
    n_group: int = 1
    topk_group: int = 1
    shared_experts: int = 0
    correction_bias: bool = False
    routed_scaling: float = 1.0
    renormalize: bool = True

    kind = "moe"

    def __post_init__(self):
        _check_int("MoE.num_experts", self.num_experts)
        _check_int("MoE.top_k", self.top_k)
        _check_int("MoE.intermediate", self.intermediate)
        _check_int("MoE.n_group", self.n_group)
        _check_int("MoE.topk_group", self.topk_group)
        _check_int("MoE.shared_experts", self.shared_experts, minimum=0)
        _check_bool("MoE.correction_bias", self.correction_bias)
        _check_bool("MoE.renormalize", self.renormalize)
        _check_number("MoE.routed_scaling", self.routed_scaling)
        if self.top_k > self.num_experts:
            raise ValueError(f"MoE.top_k: expected <= num_experts ({self.num_experts}), got {self.top_k}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"MoE.scoring: expected one of {SCORINGS}, got {self.scoring!r}")
        if self.num_experts % self.n_group:
            raise ValueError(f"MoE.n_group: expected a divisor of num_experts ({self.num_experts}), got {self.n_group}")
        if self.topk_group > self.n_group:
            raise ValueError(f"MoE.topk_group: expected <= n_group ({self.n_group}), got {self.topk_group}")

    def describe(self) -> str:
        shared = f"+{self.shared_experts}sh" if self.shared_experts else ""
        return f"moe {self.top_k}/{self.num_experts}x{self.intermediate}{shared}"


FFN = Union[Dense, MoE]


def _check_ffn(name: str, value) -> None:
    if not isinstance(value, (Dense, MoE)):
        raise TypeError(f"{name}: expected Dense or MoE, got {type(value).__name__}")


@dataclass(frozen=True)
class AttentionDims:
    """Head geometry of an attention block, shared by LayerSpec and MTPSpec.

    ``qk_dim`` (Dqk) and ``v_dim`` (Dv, default Dqk) per head; RoPE on the first ``rope_dim``
    dims of q and k (default all of Dqk); ``value_scale`` multiplies V (MiMo-V2-Flash: 0.707).
    """

    q_heads: int
    kv_heads: int
    qk_dim: int
    v_dim: int | None = None
    rope_dim: int | None = None
    value_scale: float = 1.0
    rope_theta: float = 10000.0
    qkv_bias: bool = False

    def __post_init__(self):
        if self.v_dim is None:
            object.__setattr__(self, "v_dim", self.qk_dim)
        if self.rope_dim is None:
            object.__setattr__(self, "rope_dim", self.qk_dim)
        _check_dims(type(self).__name__, self)


def _check_dims(owner: str, spec) -> None:
    for name in ("q_heads", "kv_heads", "qk_dim", "v_dim"):
        _check_int(f"{owner}.{name}", getattr(spec, name))
    _check_int(f"{owner}.rope_dim", spec.rope_dim, minimum=0)
    if spec.q_heads % spec.kv_heads:
        raise ValueError(f"{owner}.q_heads: expected a multiple of kv_heads ({spec.kv_heads}), got {spec.q_heads}")
    if spec.rope_dim > spec.qk_dim or spec.rope_dim % 2:
        raise ValueError(f"{owner}.rope_dim: expected an even number <= qk_dim ({spec.qk_dim}), got {spec.rope_dim}")
    _check_number(f"{owner}.value_scale", spec.value_scale)
    _check_number(f"{owner}.rope_theta", spec.rope_theta)
    _check_bool(f"{owner}.qkv_bias", spec.qkv_bias)


_DIM_FIELDS = ("q_heads", "kv_heads", "qk_dim", "v_dim", "rope_dim", "value_scale", "rope_theta", "qkv_bias")


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer: ``index``, attention ``pattern`` and head geometry, and its ``ffn``.

    For an ``OracleSparse`` layer, ``kv_heads``/``qk_dim``/``v_dim`` describe both the full
    layer's cache it reads (``validate`` checks they match) and its own sliding-window branch.
    """

    index: int
    pattern: Pattern
    q_heads: int
    kv_heads: int
    qk_dim: int
    v_dim: int
    rope_dim: int
    ffn: FFN
    value_scale: float = 1.0
    rope_theta: float = 10000.0
    qkv_bias: bool = False

    def __post_init__(self):
        _check_int("LayerSpec.index", self.index, minimum=0)
        check_pattern(f"layer {self.index}: pattern", self.pattern)
        _check_dims(f"layer {self.index}", self)
        _check_ffn(f"layer {self.index}: ffn", self.ffn)

    @property
    def dims(self) -> AttentionDims:
        return AttentionDims(**{k: getattr(self, k) for k in _DIM_FIELDS})


@dataclass(frozen=True)
class MTPSpec:
    """Multi-token-prediction blocks: ``num_layers`` chained blocks, each
    ``proj(concat(norm(emb(t+1)), norm(h)))`` -> one attention block (``pattern``, ``attention``
    geometry) -> ``ffn`` -> norm; embedding and LM head are shared with the main model.

    ``layout``: how a checkpoint stores a block (``models.mtp`` has the names):

    * ``"deepseek"``: ``enorm``/``hnorm``/``eh_proj`` with ``concat(emb, hidden)`` (DeepSeek-V3's
      order), then ``input_layernorm``, ``self_attn``, ``post_attention_layernorm``, ``mlp``,
      ``final_layernorm`` under ``model.mtp.layers.{k}``;
    * ``"mimo-v2"`` (MiMo-V2-Flash): the same, with the second norm named ``pre_mlp_layernorm``;
    * ``"mimo"`` (MiMo-7B): ``token_layernorm``/``hidden_layernorm``/``input_proj`` with
      ``concat(hidden, emb)`` (the reverse order), then a Qwen2 decoder block and
      ``final_layernorm`` under ``model.mtp_layers.{k}``.
    """

    num_layers: int
    pattern: Pattern
    ffn: FFN
    attention: AttentionDims
    layout: str = "deepseek"

    def __post_init__(self):
        _check_int("MTPSpec.num_layers", self.num_layers)
        check_pattern("MTPSpec.pattern", self.pattern)
        if isinstance(self.pattern, OracleSparse):
            raise ValueError("MTPSpec.pattern: expected Full or SlidingWindow (an MTP block has no full layer to "
                             "select for it), got OracleSparse")
        _check_ffn("MTPSpec.ffn", self.ffn)
        if not isinstance(self.attention, AttentionDims):
            raise TypeError(f"MTPSpec.attention: expected AttentionDims, got {type(self.attention).__name__}")
        if self.layout not in MTP_LAYOUTS:
            raise ValueError(f"MTPSpec.layout: expected one of {MTP_LAYOUTS}, got {self.layout!r}")


@dataclass(frozen=True)
class ModelGraph:
    """A decoder-only model: ``layers`` (indices 0..n-1 in order), ``vocab``, ``hidden``, ``mtp``.

    ``tie_embeddings``: the LM head shares the embedding matrix. ``norm_eps``: the epsilon of
    every RMSNorm. ``name`` and ``notes``: for display only (two graphs that differ only there
    are equal).
    """

    layers: tuple[LayerSpec, ...]
    vocab: int
    hidden: int
    mtp: MTPSpec | None = None
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    name: str = field(default="", compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "notes", tuple(self.notes))
        if not self.layers:
            raise ValueError("ModelGraph.layers: expected at least one layer, got none")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerSpec):
                raise TypeError(f"ModelGraph.layers[{i}]: expected LayerSpec, got {type(layer).__name__}")
            if layer.index != i:
                raise ValueError(f"ModelGraph.layers[{i}]: expected index {i}, got {layer.index}")
        _check_int("ModelGraph.vocab", self.vocab)
        _check_int("ModelGraph.hidden", self.hidden)
        if self.mtp is not None and not isinstance(self.mtp, MTPSpec):
            raise TypeError(f"ModelGraph.mtp: expected MTPSpec or None, got {type(self.mtp).__name__}")
        _check_bool("ModelGraph.tie_embeddings", self.tie_embeddings)
        _check_number("ModelGraph.norm_eps", self.norm_eps)
        if not self.norm_eps < 1:
            raise ValueError(f"ModelGraph.norm_eps: expected a small positive number (< 1), got {self.norm_eps}")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def pattern_string(self) -> str:
        """Layer letters, a space before each full layer: ``"F SSS F SSS"``."""
        out = []
        for layer in self.layers:
            if layer.pattern.letter == "F" and out:
                out.append(" ")
            out.append(layer.pattern.letter)
        return "".join(out)


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def parse_pattern(pattern: str) -> list[str]:
    """``"F SSS F SSS"`` -> ``["F", "S", "S", "S", "F", "S", "S", "S"]``.

    Letters: ``F`` full, ``W`` sliding window, ``S`` HySparse oracle-sparse; whitespace groups
    layers for reading and is ignored.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern: expected a str like 'F SSS F SSS', got {type(pattern).__name__}")
    letters = [c for c in pattern if not c.isspace()]
    bad = sorted({c for c in letters if c not in BY_LETTER})
    if bad:
        raise ValueError(f"pattern: expected letters {sorted(BY_LETTER)} (F full, W sliding window, S sparse), got {bad} in {pattern!r}")
    if not letters:
        raise ValueError("pattern: expected at least one layer letter, got an empty pattern")
    return letters


def hybrid_layer_pattern_kinds(hybrid_layer_pattern: Sequence[int], *, swa_letter: str = "W") -> list[str]:
    """MiMo's ``hybrid_layer_pattern`` list (0 = full/global, 1 = sliding window) -> layer letters."""
    out = []
    for i, v in enumerate(hybrid_layer_pattern):
        if v not in (0, 1) or isinstance(v, bool):
            raise ValueError(f"hybrid_layer_pattern[{i}]: expected 0 (full) or 1 (sliding window), got {v!r}")
        out.append("F" if v == 0 else swa_letter)
    if not out:
        raise ValueError("hybrid_layer_pattern: expected at least one layer, got an empty list")
    return out


def hybrid_kinds(num_layers: int, sparse_per_full: int, *, last_full: bool = True, letter: str = "S") -> list[str]:
    """A 1 : ``sparse_per_full`` layout: layer i is full when ``i % (sparse_per_full + 1) == 0``,
    and the last layer is forced full with ``last_full``.

    >>> "".join(hybrid_kinds(13, 11))
    'FSSSSSSSSSSSF'
    """
    _check_int("num_layers", num_layers)
    _check_int("sparse_per_full", sparse_per_full, minimum=0)
    kinds = ["F" if i % (sparse_per_full + 1) == 0 else letter for i in range(num_layers)]
    if last_full:
        kinds[-1] = "F"
    return kinds


def build_graph(
    kinds: str | Sequence[str],
    *,
    hidden: int,
    vocab: int,
    attention: AttentionDims | Mapping[str, AttentionDims],
    ffn: FFN | Sequence[FFN],
    patterns: Mapping[str, Pattern] | None = None,
    mtp: MTPSpec | None = None,
    tie_embeddings: bool = False,
    norm_eps: float = 1e-6,
    name: str = "",
    notes: Sequence[str] = (),
) -> ModelGraph:
    """Build a ModelGraph from plain values (what a model config holds).

    ``kinds``: a pattern string (``"F SSS F SSS"``) or a list of letters F/W/S.
    ``attention``: one AttentionDims for every layer, or a mapping letter -> AttentionDims
    (e.g. MiMo-V2-Flash: ``{"F": global_dims, "W": swa_dims}``).
    ``ffn``: one FFN for every layer or one per layer. ``patterns``: letter -> pattern instance
    (defaults: ``Full()``, ``SlidingWindow()``, ``OracleSparse()``).
    """
    letters = parse_pattern(kinds) if isinstance(kinds, str) else list(kinds)
    bad = sorted({k for k in letters if k not in BY_LETTER})
    if bad:
        raise ValueError(f"kinds: expected letters {sorted(BY_LETTER)}, got {bad}")
    chosen = {"F": Full(), "W": SlidingWindow(), "S": OracleSparse()}
    for letter, pat in (patterns or {}).items():
        if letter not in BY_LETTER:
            raise ValueError(f"patterns: expected keys {sorted(BY_LETTER)}, got {letter!r}")
        if not isinstance(pat, BY_LETTER[letter]):
            raise TypeError(f"patterns[{letter!r}]: expected {BY_LETTER[letter].__name__}, got {type(pat).__name__}")
        chosen[letter] = pat
    if isinstance(ffn, (Dense, MoE)):
        ffns = [ffn] * len(letters)
    else:
        ffns = list(ffn)
        if len(ffns) != len(letters):
            raise ValueError(f"ffn: expected one FFN or {len(letters)} (one per layer), got {len(ffns)}")
    layers = []
    for i, letter in enumerate(letters):
        if isinstance(attention, AttentionDims):
            dims = attention
        else:
            if letter not in attention and not (letter == "S" and "F" in attention):
                raise ValueError(f"attention: no AttentionDims for layer kind {letter!r} (layer {i}); got keys {sorted(attention)}")
            # A sparse layer reads its full layer's cache: same geometry unless given its own.
            dims = attention.get(letter) or attention["F"]
        layers.append(LayerSpec(index=i, pattern=chosen[letter], ffn=ffns[i],
                                **{k: getattr(dims, k) for k in _DIM_FIELDS}))
    return ModelGraph(tuple(layers), vocab=vocab, hidden=hidden, mtp=mtp, tie_embeddings=tie_embeddings,
                      norm_eps=norm_eps, name=name, notes=tuple(notes))


def from_pattern(pattern: str, **kwargs) -> ModelGraph:
    """``build_graph`` from a pattern string, e.g. ``from_pattern("F SSS F SSS", hidden=..., ...)``."""
    return build_graph(parse_pattern(pattern), **kwargs)


def from_hybrid_layer_pattern(hybrid_layer_pattern: Sequence[int], **kwargs) -> ModelGraph:
    """``build_graph`` from MiMo's ``hybrid_layer_pattern`` list (0 full, 1 sliding window)."""
    return build_graph(hybrid_layer_pattern_kinds(hybrid_layer_pattern), **kwargs)
