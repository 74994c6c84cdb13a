"""Model configs in Hugging Face terms, and the registry of named flavors.

``ModelConfig`` holds a model's ``config.json`` values (MiMo-V2-Flash's key names where they
exist: ``hybrid_layer_pattern``, ``swa_num_attention_heads``, ``add_swa_attention_sink_bias``,
``attention_value_scale``, ``n_routed_experts``, ...; HySparse's sparse layers add
``layer_types`` entries ``"sparse_attention"`` and the ``sparse_*`` keys). It converts both ways:
``from_hf_config(dict)`` / ``to_hf_config()``, and ``to_graph()`` / ``from_graph(graph)`` with the
IR, which is what models are built from. The named flavors are the IR's presets.

``from_hf_config`` reads what published ``config.json`` files really hold: ``null`` means the
default, missing MTP fields take the model type's published default (``MODEL_TYPE_DEFAULTS``),
keys the model does not use are ignored with one logged line naming them, and keys that would
change the architecture in a way the zoo does not build (another activation, RoPE scaling, QK
norm, sinks on full-attention layers, ...) are refused with the key named.

Example::

    cfg = get_config("mimo-v2-flash")
    cfg.to_hf_config()["swa_num_key_value_heads"]     # 8
    graph = ModelConfig.from_hf_config(hf_dict).to_graph()
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

from hysparse_kernels import ir

log = logging.getLogger("hysparse_kernels.models")

KINDS = {"full_attention": "F", "sliding_attention": "W", "sparse_attention": "S"}
LETTER_TO_KIND = {v: k for k, v in KINDS.items()}
SCORING_FUNCS = ("softmax", "sigmoid")
# DeepSeek's names: "greedy" plain top-k (groups ignored); "group_limited_greedy" (DeepSeek-V2)
# groups scored by their best score; "noaux_tc" (DeepSeek-V3) a selection bias, groups scored by
# the sum of their two best biased scores.
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
MTP_LAYOUTS = ir.graph.MTP_LAYOUTS

# What a published config.json of a model type leaves out and the model has (its README / model
# card), and how its checkpoint names the MTP blocks.
MODEL_TYPE_DEFAULTS = {
    # MiMo-V2-Flash: 3 MTP blocks, each SWA attention with a dense FFN (not in config.json).
    "mimo_v2_flash": {"num_nextn_predict_layers": 3, "mtp_layer_type": "sliding_attention", "mtp_layout": "mimo-v2"},
    # MiMo-7B: one MTP block, a full-attention Qwen2 decoder block; Qwen2 attention has q/k/v biases.
    "mimo": {"num_nextn_predict_layers": 1, "mtp_layer_type": "full_attention", "mtp_layout": "mimo",
             "attention_bias": True},
    "qwen2": {"attention_bias": True},
}
# Keys every Hugging Face config carries that say nothing about the architecture.
BOOKKEEPING_KEYS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "auto_map", "_name_or_path",
    "name", "name_or_path", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "initializer_range",
    "max_position_embeddings", "attention_dropout", "hidden_dropout", "output_hidden_states", "output_attentions",
    "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "tokenizer_class", "num_hidden_layers", "hybrid_layer_pattern", "mlp_layer_types", "first_k_dense_replace",
    "layernorm_epsilon", "sliding_window_size", "rope_parameters", "use_sliding_window", "max_window_layers",
    "hidden_act", "rope_scaling", "add_full_attention_sink_bias", "use_qk_norm", "qk_layernorm", "mlp_bias",
    "attention_projection_layout",
})
# The longest context a config may describe (2**20 tokens): a sparse layer selecting more than
# this many keys (sparse_topk * sparse_block_size) only walks padding.
MAX_POSITIONS = 2 ** 20


def _int(name: str, value, *, minimum: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"config.{name}: expected an int{' or null' if optional else ''}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"config.{name}: expected an int >= {minimum}, got {value}")


def _number(name: str, value, *, low: float = 0.0, high: float = math.inf, low_inclusive: bool = False,
            optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"config.{name}: expected a number, got {type(value).__name__} {value!r}")
    above = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and above and value <= high):
        bound = f"{'[' if low_inclusive else '('}{low}, {high}{']' if math.isfinite(high) else ')'}"
        raise ValueError(f"config.{name}: expected a finite number in {bound}, got {value}")


def _bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"config.{name}: expected true or false, got {type(value).__name__} {value!r}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"config.{name}: expected one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    v_head_dim: int
    partial_rotary_factor: float = 1.0
    rope_theta: float = 10000.0
    attention_bias: bool = False
    attention_value_scale: float = 1.0
    swa_num_attention_heads: int | None = None
    swa_num_key_value_heads: int | None = None
    swa_head_dim: int | None = None
    swa_v_head_dim: int | None = None
    swa_rope_theta: float | None = None
    sliding_window: int | None = None
    add_swa_attention_sink_bias: bool = False
    sparse_topk: int | None = None
    sparse_block_size: int | None = None
    sparse_window: int | None = None
    sparse_attention_sink_bias: bool = False
    intermediate_size: int = 0
    moe_layer_freq: tuple[int, ...] = ()
    n_routed_experts: int | None = None
    num_experts_per_tok: int | None = None
    moe_intermediate_size: int | None = None
    scoring_func: str = "softmax"
    topk_method: str = "greedy"
    n_group: int = 1
    topk_group: int = 1
    n_shared_experts: int = 0
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    num_nextn_predict_layers: int = 0
    mtp_layer_type: str = "sliding_attention"
    mtp_layout: str = "deepseek"
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-6
    name: str = field(default="", compare=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every value a model could not be built or run with; the error names the key
        (``config.<key>``), what was expected and what came."""
        for key in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "v_head_dim"):
            _int(key, getattr(self, key))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"config.num_attention_heads: expected a multiple of num_key_value_heads "
                             f"({self.num_key_value_heads}), got {self.num_attention_heads}")
        if not isinstance(self.layer_types, tuple) or not self.layer_types:
            raise ValueError(f"config.layer_types: expected a non-empty list, got {self.layer_types!r}")
        for t in self.layer_types:
            _choice("layer_types", t, tuple(KINDS))
        _number("partial_rotary_factor", self.partial_rotary_factor, high=1.0, low_inclusive=True)
        _number("rope_theta", self.rope_theta)
        _number("attention_value_scale", self.attention_value_scale)
        for key in ("swa_num_attention_heads", "swa_num_key_value_heads", "swa_head_dim", "swa_v_head_dim"):
            _int(key, getattr(self, key), optional=True)
        _number("swa_rope_theta", self.swa_rope_theta, optional=True)
        for key in ("attention_bias", "add_swa_attention_sink_bias", "sparse_attention_sink_bias", "tie_word_embeddings",
                    "norm_topk_prob"):
            _bool(key, getattr(self, key))
        _number("rms_norm_eps", self.rms_norm_eps, high=0.1)
        _int("num_nextn_predict_layers", self.num_nextn_predict_layers, minimum=0)
        _choice("mtp_layer_type", self.mtp_layer_type, tuple(KINDS))
        _choice("mtp_layout", self.mtp_layout, MTP_LAYOUTS)
        kinds = set(self.layer_types) | ({self.mtp_layer_type} if self.num_nextn_predict_layers else set())
        _int("sliding_window", self.sliding_window, optional="sliding_attention" not in kinds)
        for key in ("sparse_topk", "sparse_block_size"):
            _int(key, getattr(self, key), optional="sparse_attention" not in kinds)
        _int("sparse_window", self.sparse_window, optional=True)
        if self.sparse_block_size is not None and self.sparse_block_size & (self.sparse_block_size - 1):
            raise ValueError(f"config.sparse_block_size: expected a power of two, got {self.sparse_block_size}")
        if self.sparse_topk is not None and self.sparse_topk * (self.sparse_block_size or 1) > MAX_POSITIONS:
            raise ValueError(f"config.sparse_topk: expected sparse_topk * sparse_block_size <= {MAX_POSITIONS} keys "
                             f"(the longest context), got {self.sparse_topk} * {self.sparse_block_size}")
        _int("intermediate_size", self.intermediate_size, minimum=0)
        if self.moe_layer_freq and (len(self.moe_layer_freq) != len(self.layer_types)
                                    or any(f not in (0, 1) or isinstance(f, bool) for f in self.moe_layer_freq)):
            raise ValueError(f"config.moe_layer_freq: expected {len(self.layer_types)} entries of 0 or 1 (one per layer), "
                             f"got {list(self.moe_layer_freq)}")
        _int("n_routed_experts", self.n_routed_experts, optional=True)
        moe = self.n_routed_experts is not None
        _int("num_experts_per_tok", self.num_experts_per_tok, optional=not moe)
        _int("moe_intermediate_size", self.moe_intermediate_size, optional=not moe)
        if moe and self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(f"config.num_experts_per_tok: expected at most n_routed_experts ({self.n_routed_experts}), "
                             f"got {self.num_experts_per_tok}")
        _choice("scoring_func", self.scoring_func, SCORING_FUNCS)
        _choice("topk_method", self.topk_method, TOPK_METHODS)
        _int("n_group", self.n_group)
        _int("topk_group", self.topk_group)
        _int("n_shared_experts", self.n_shared_experts, minimum=0)
        _number("routed_scaling_factor", self.routed_scaling_factor)

    # ------------------------------------------------------------------ Hugging Face config.json

    def to_hf_config(self) -> dict:
        """``config.json`` values (MiMo's ``hybrid_layer_pattern`` too when there is no sparse layer)."""
        out = {"model_type": "hysparse", "architectures": ["HySparseForCausalLM"], "_name_or_path": self.name,
               "num_hidden_layers": len(self.layer_types)}
        for f in dataclasses.fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if "sparse_attention" not in self.layer_types:
            out["hybrid_layer_pattern"] = [0 if t == "full_attention" else 1 for t in self.layer_types]
        return out

    @classmethod
    def from_hf_config(cls, config: dict, name: str = "") -> "ModelConfig":
        """Read a ``config.json`` dict (ours, MiMo-V2-Flash's, MiMo-7B's, Qwen2/Llama-style).

        * layers: ``layer_types``, or MiMo's ``hybrid_layer_pattern`` (0 full, 1 SWA), or
          ``num_hidden_layers`` full layers; MoE layers: ``moe_layer_freq`` (a list, or DeepSeek's
          int with ``first_k_dense_replace``) or ``mlp_layer_types`` ("dense"/"sparse").
        * ``null`` values mean the default (MiMo-V2-Flash stores ``n_shared_experts: null``,
          ``routed_scaling_factor: null``); keys the config leaves out take the model type's
          published defaults (``MODEL_TYPE_DEFAULTS``: MTP blocks, their type and layout).
        * RoPE: ``rope_theta`` / ``swa_rope_theta`` / ``partial_rotary_factor``, or transformers'
          ``rope_parameters`` (flat or per layer type). Norm epsilon: ``rms_norm_eps`` or
          ``layernorm_epsilon``.
        * Keys the model does not use are ignored with one logged line naming them; keys that
          would make a different architecture than the one built are refused (``ValueError``
          naming the key).
        """
        if not isinstance(config, dict):
            raise TypeError(f"config: expected a dict of config.json values, got {type(config).__name__}")
        model_type = config.get("model_type")
        _refuse_unsupported(config)
        values = {k: v for k, v in config.items() if v is not None}
        for key, default in MODEL_TYPE_DEFAULTS.get(model_type, {}).items():
            values.setdefault(key, default)
        _read_rope_parameters(values)
        _read_norm_eps(values)
        if "layer_types" not in values:
            if "hybrid_layer_pattern" in values:
                values["layer_types"] = ["full_attention" if p == 0 else "sliding_attention" for p in values["hybrid_layer_pattern"]]
            elif "num_hidden_layers" in values:
                values["layer_types"] = ["full_attention"] * values["num_hidden_layers"]
            else:
                raise ValueError("config: expected layer_types, hybrid_layer_pattern or num_hidden_layers")
        if not isinstance(values["layer_types"], (list, tuple)):
            raise ValueError(f"config.layer_types: expected a list, got {values['layer_types']!r}")
        bad = sorted(set(values["layer_types"]) - set(KINDS))
        if bad:
            raise ValueError(f"config.layer_types: expected entries of {sorted(KINDS)}, got {bad}")
        if "num_hidden_layers" in values and values["num_hidden_layers"] != len(values["layer_types"]):
            raise ValueError(f"config.num_hidden_layers: expected {len(values['layer_types'])} (the layer pattern's length), "
                             f"got {values['num_hidden_layers']}")
        if "num_attention_heads" in values:
            values.setdefault("num_key_value_heads", values["num_attention_heads"])  # Hugging Face's default: no GQA
        missing = [k for k in ("vocab_size", "hidden_size", "num_attention_heads") if k not in values]
        if missing:
            raise ValueError(f"config: missing required keys {missing}")
        if "head_dim" not in values:
            _int("hidden_size", values["hidden_size"])
            _int("num_attention_heads", values["num_attention_heads"])
            if values["hidden_size"] % values["num_attention_heads"]:
                raise ValueError(f"config.num_attention_heads: expected a divisor of hidden_size ({values['hidden_size']}) "
                                 f"when head_dim is not given, got {values['num_attention_heads']}")
            values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
        values.setdefault("v_head_dim", values["head_dim"])
        n_layers = len(values["layer_types"])
        if isinstance(values.get("moe_layer_freq"), int) and not isinstance(values["moe_layer_freq"], bool):
            n = values["moe_layer_freq"]  # DeepSeek style: every n-th layer from first_k_dense_replace is MoE
            first = values.get("first_k_dense_replace", 0)
            values["moe_layer_freq"] = [int(i >= first and (i - first) % max(n, 1) == 0) for i in range(n_layers)]
        elif "moe_layer_freq" not in values and "mlp_layer_types" in values and "n_routed_experts" in values:
            values["moe_layer_freq"] = [int(t == "sparse") for t in values["mlp_layer_types"]]
        if "sliding_window_size" in values and values.get("sliding_window", values["sliding_window_size"]) != values["sliding_window_size"]:
            raise ValueError(f"config.sliding_window_size: expected the same window as sliding_window "
                             f"({values['sliding_window']}), got {values['sliding_window_size']}")
        values.setdefault("sliding_window", values.get("sliding_window_size"))
        if model_type in ("mimo_v2_flash", "mimo_v2") and "sliding_window_size" in values:
            # MiMo-V2's own config.json counts the keys *before* the query (its SGLang reference and
            # transformers' port attend to sliding_window_size previous tokens plus the query); the
            # zoo's window counts the query too. Configs without sliding_window_size (ours,
            # transformers' format) already count it.
            _int("sliding_window_size", values["sliding_window_size"])
            values["sliding_window"] = values["sliding_window_size"] + 1
        if values.get("use_sliding_window") is False and "sliding_attention" not in values["layer_types"]:
            values.pop("sliding_window", None)  # Qwen2 records a window it does not use
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = sorted(k for k in values if k not in known and k not in BOOKKEEPING_KEYS and not k.startswith("_"))
        if ignored:
            log.warning("config.json: ignoring keys the model does not use: %s", ", ".join(ignored))
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known and v is not None}
        kwargs["name"] = name or config.get("name") or config.get("_name_or_path") or ""
        return cls(**kwargs)

    # ------------------------------------------------------------------ IR

    def _dims(self, prefix: str) -> ir.AttentionDims:
        get = lambda key, default: getattr(self, f"{prefix}{key}") if getattr(self, f"{prefix}{key}", None) is not None else default  # noqa: E731
        qk = get("head_dim", self.head_dim)
        return ir.AttentionDims(
            q_heads=get("num_attention_heads", self.num_attention_heads),
            kv_heads=get("num_key_value_heads", self.num_key_value_heads),
            qk_dim=qk, v_dim=get("v_head_dim", self.v_head_dim), rope_dim=int(round(qk * self.partial_rotary_factor)),
            value_scale=self.attention_value_scale, rope_theta=get("rope_theta", self.rope_theta),
            qkv_bias=self.attention_bias,
        )

    def to_graph(self) -> ir.ModelGraph:
        kinds = [KINDS[t] for t in self.layer_types]
        dense = ir.Dense(self.intermediate_size) if self.intermediate_size else None
        moe = None
        if self.n_routed_experts:
            grouped = self.topk_method != "greedy"  # plain greedy top-k ignores the groups
            moe = ir.MoE(self.n_routed_experts, self.num_experts_per_tok, self.moe_intermediate_size,
                         scoring=self.scoring_func, n_group=self.n_group if grouped else 1,
                         topk_group=self.topk_group if grouped else 1, shared_experts=self.n_shared_experts,
                         correction_bias=self.topk_method == "noaux_tc", routed_scaling=self.routed_scaling_factor,
                         renormalize=self.norm_topk_prob)
        freq = self.moe_layer_freq or tuple(int(moe is not None) for _ in kinds)
        ffn = [moe if f else dense for f in freq]
        if any(f is None for f in ffn):
            raise ValueError("config: a layer has neither a dense FFN (intermediate_size) nor MoE (n_routed_experts)")
        patterns = {"F": ir.Full()}
        if self.sliding_window:
            patterns["W"] = ir.SlidingWindow(window=self.sliding_window, sink=self.add_swa_attention_sink_bias)
        if "S" in kinds:
            patterns["S"] = ir.OracleSparse(topk=self.sparse_topk, block_size=self.sparse_block_size,
                                            window=self.sparse_window, sink=self.sparse_attention_sink_bias)
        attention = {"F": self._dims(""), "W": self._dims("swa_"), "S": self._dims("")}
        mtp = None
        if self.num_nextn_predict_layers:
            letter = KINDS[self.mtp_layer_type]
            if letter not in patterns:
                raise ValueError(f"config.mtp_layer_type: {self.mtp_layer_type!r} needs sliding_window, which is not set")
            mtp = ir.MTPSpec(self.num_nextn_predict_layers, patterns[letter], dense or moe, attention[letter],
                             layout=self.mtp_layout)
        return ir.build_graph(kinds, hidden=self.hidden_size, vocab=self.vocab_size, attention=attention, ffn=ffn,
                              patterns=patterns, mtp=mtp, tie_embeddings=self.tie_word_embeddings,
                              norm_eps=self.rms_norm_eps, name=self.name)

    @classmethod
    def from_graph(cls, graph: ir.ModelGraph) -> "ModelConfig":
        """The config of a graph whose layers of one kind share their geometry (every zoo graph)."""
        first = {}
        for layer in graph.layers:
            first.setdefault(layer.pattern.letter, layer)
        full = first.get("F") or first.get("S") or next(iter(first.values()))
        swa, sparse = first.get("W"), first.get("S")
        moe = next((layer.ffn for layer in graph.layers if isinstance(layer.ffn, ir.MoE)), None)
        dense = next((layer.ffn for layer in graph.layers if isinstance(layer.ffn, ir.Dense)), None)
        if dense is None and graph.mtp is not None and isinstance(graph.mtp.ffn, ir.Dense):
            dense = graph.mtp.ffn
        kw = dict(
            vocab_size=graph.vocab, hidden_size=graph.hidden,
            layer_types=tuple(LETTER_TO_KIND[layer.pattern.letter] for layer in graph.layers),
            num_attention_heads=full.q_heads, num_key_value_heads=full.kv_heads, head_dim=full.qk_dim,
            v_head_dim=full.v_dim, partial_rotary_factor=full.rope_dim / full.qk_dim, rope_theta=full.rope_theta,
            attention_bias=full.qkv_bias, attention_value_scale=full.value_scale,
            intermediate_size=dense.intermediate if dense else 0,
            moe_layer_freq=tuple(int(isinstance(layer.ffn, ir.MoE)) for layer in graph.layers) if moe else (),
            tie_word_embeddings=graph.tie_embeddings, rms_norm_eps=graph.norm_eps, name=graph.name,
        )
        if swa is not None:
            kw.update(swa_num_attention_heads=swa.q_heads, swa_num_key_value_heads=swa.kv_heads, swa_head_dim=swa.qk_dim,
                      swa_v_head_dim=swa.v_dim, swa_rope_theta=swa.rope_theta, sliding_window=swa.pattern.window,
                      add_swa_attention_sink_bias=swa.pattern.sink)
        if sparse is not None:
            p = sparse.pattern
            kw.update(sparse_topk=p.topk, sparse_block_size=p.block_size, sparse_window=p.window,
                      sparse_attention_sink_bias=p.sink)
        if moe is not None:
            kw.update(n_routed_experts=moe.num_experts, num_experts_per_tok=moe.top_k, moe_intermediate_size=moe.intermediate,
                      scoring_func=moe.scoring, n_group=moe.n_group, topk_group=moe.topk_group,
                      topk_method="noaux_tc" if moe.correction_bias else "group_limited_greedy" if moe.n_group > 1 else "greedy",
                      n_shared_experts=moe.shared_experts, routed_scaling_factor=moe.routed_scaling,
                      norm_topk_prob=moe.renormalize)
        if graph.mtp is not None:
            kw.update(num_nextn_predict_layers=graph.mtp.num_layers, mtp_layer_type=LETTER_TO_KIND[graph.mtp.pattern.letter],
                      mtp_layout=graph.mtp.layout)
            if swa is None and graph.mtp.pattern.letter == "W":
                kw.update(sliding_window=graph.mtp.pattern.window, add_swa_attention_sink_bias=graph.mtp.pattern.sink)
        return cls(**kw)


def _refuse_unsupported(config: dict) -> None:
    """Keys whose value would make another architecture than the one the zoo builds."""
    def refuse(key, expected):
        raise ValueError(f"config.{key}: expected {expected} (the zoo builds no other), got {config[key]!r}")

    if config.get("hidden_act") not in (None, "silu", "swish"):
        refuse("hidden_act", "'silu'")
    rope_scaling = config.get("rope_scaling")
    if rope_scaling is not None and not (isinstance(rope_scaling, dict)
                                         and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default"):
        refuse("rope_scaling", "null (plain RoPE)")
    for key in ("add_full_attention_sink_bias", "use_qk_norm", "qk_layernorm", "mlp_bias"):
        if config.get(key) not in (None, False):
            refuse(key, "false")
    if config.get("use_sliding_window") not in (None, False):
        refuse("use_sliding_window", "false (Qwen2's per-layer window is not built; use layer_types)")
    if config.get("attention_projection_layout") not in (None, "separate", "split"):
        refuse("attention_projection_layout", "separate q/k/v projections")


def _read_rope_parameters(values: dict) -> None:
    """transformers' ``rope_parameters`` (flat, or per layer type) -> rope_theta / swa_rope_theta /
    partial_rotary_factor, unless those keys are given."""
    rope = values.get("rope_parameters")
    if not isinstance(rope, dict):
        return
    full = rope.get("full_attention", rope)
    swa = rope.get("sliding_attention")
    for source, theta_key in ((full, "rope_theta"), (swa, "swa_rope_theta")):
        if not isinstance(source, dict):
            continue
        if source.get("rope_type", source.get("type", "default")) != "default":
            raise ValueError(f"config.rope_parameters: expected rope_type 'default' (plain RoPE), got {source!r}")
        if source.get("rope_theta") is not None:
            values.setdefault(theta_key, source["rope_theta"])
        if source.get("partial_rotary_factor") is not None:
            values.setdefault("partial_rotary_factor", source["partial_rotary_factor"])


def _read_norm_eps(values: dict) -> None:
    """``rms_norm_eps`` or ``layernorm_epsilon`` (MiMo-V2's name; vLLM reads it) -> rms_norm_eps."""
    if "layernorm_epsilon" in values:
        if "rms_norm_eps" in values and values["rms_norm_eps"] != values["layernorm_epsilon"]:
            raise ValueError(f"config.layernorm_epsilon: expected the same value as rms_norm_eps "
                             f"({values['rms_norm_eps']}), got {values['layernorm_epsilon']}")
        values["rms_norm_eps"] = values["layernorm_epsilon"]


def list_models() -> list[str]:
    """Names of the zoo's flavors (full-size and their ``tiny-*`` twins)."""
    return ir.list_graphs()


def get_config(name: str) -> ModelConfig:
    """The config of a named flavor."""
    return ModelConfig.from_graph(ir.get_graph(name))
