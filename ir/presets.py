"""Graphs of the named models, built from plain values, so ``hysparse ir MODEL`` works on its own.

The model zoo (``hysparse_kernels.models``) owns the configs; its config dataclass builds its
graph through the same ``build_graph``. The values here follow the published descriptions; where
a value is not published it is an assumption, listed in the graph's ``notes`` and below:

* hysparse-7b: dense FFN 11008 and vocab 151680 are MiMo-7B's (the 7B HySparse model is
  described as the same dense 7B backbone); 36 layers at 1 full : 3 sparse with the last layer
  full gives full layers 0, 4, ..., 32 and 35 (10 full, 26 sparse).
* hysparse-80b-a3b: 49 layers at 1 : 11 with the last layer full (5 full), hidden 2048, attention
  64 query / 4 KV heads with QK 192 / V 128 (the follow-up paper's baseline). With these dims the
  KV plan gives the follow-up paper's FP8 figures at 1M tokens: 6.72 GB, and 12.09 GB for the
  hybrid-SWA twin (1 full : 5 SWA-128). Assumed: 512 experts of 512 (Qwen3-Next-80B-A3B's expert
  size; solved from "80B total" it would be 500), top-8, no shared expert, vocab 151680,
  sigmoid routing with correction bias as in MiMo-V2-Flash. That gives 81.8B total (2.2% over
  80B) and 3.48B active without embedding and LM head (2.20B of it attention), 3.79B with the
  LM head: the name's "A3B" is a rounded figure these assumptions do not reach exactly.
* mimo-v2-flash reproduces 309B total: 308.8B without MTP, 309.8B with its 3 MTP blocks, and 15B
  active (14.8B: one embedding row and the LM head counted, MTP not). Full-attention layers use
  rope_theta 5,000,000, SWA layers 10,000 (the published config.json); RMSNorm epsilon 1e-5.
* mimo-v2-flash: the published ``hybrid_layer_pattern`` (layer 0 global, 4 SWA, then 5 SWA : 1
  global, last layer global: 9 global, 39 SWA); MTP blocks are SWA with a dense FFN of 16384
  (3 of them, not listed in config.json: the model card's figure), stored with MiMo-V2's names.
  The SWA window is 129 in the zoo's convention (the query and the 128 keys before it):
  config.json's ``sliding_window_size: 128`` counts the keys before the query, as its SGLang
  reference and transformers' implementation read it (vLLM's MiMo-V2 code passes 128 as a window
  that includes the query, one key fewer); a test checks our logits against transformers'.
* mimo-7b: the published config.json (Qwen2 attention with qkv bias, rope_theta 640,000, vocab
  151680, RMSNorm epsilon 1e-5) and one full-attention MTP block with MiMo-7B's names and
  concat order.
"""

from __future__ import annotations

from typing import Callable

from .graph import AttentionDims, Dense, ModelGraph, MoE, MTPSpec, build_graph, hybrid_kinds
from .patterns import Full, OracleSparse, SlidingWindow

MIMO_V2_FLASH_HYBRID_LAYER_PATTERN = (0, 1, 1, 1, 1, 0) + (1, 1, 1, 1, 1, 0) * 7


def hysparse_7b(*, tiny: bool = False) -> ModelGraph:
    if tiny:
        dims = AttentionDims(q_heads=4, kv_heads=2, qk_dim=16)
        sparse = OracleSparse(topk=2, block_size=16, window=16, sink=True)
        return build_graph(hybrid_kinds(8, 3), hidden=64, vocab=512, attention=dims, ffn=Dense(172),
                           patterns={"S": sparse}, name="tiny-hysparse-7b",
                           notes=("tiny twin of hysparse-7b: same 1:3 layout with the last layer full",))
    dims = AttentionDims(q_heads=32, kv_heads=8, qk_dim=128)
    sparse = OracleSparse(topk=16, block_size=64, window=128, sink=True, gate="sigmoid")
    return build_graph(hybrid_kinds(36, 3), hidden=4096, vocab=151680, attention=dims, ffn=Dense(11008),
                       patterns={"S": sparse}, name="hysparse-7b",
                       notes=("assumed: dense FFN 11008 and vocab 151680 (MiMo-7B's)",))


def hysparse_80b_a3b(*, tiny: bool = False) -> ModelGraph:
    if tiny:
        dims = AttentionDims(q_heads=8, kv_heads=2, qk_dim=16)
        moe = MoE(num_experts=8, top_k=2, intermediate=32, scoring="sigmoid", correction_bias=True)
        sparse = OracleSparse(topk=2, block_size=16, window=16, sink=True)
        return build_graph(hybrid_kinds(13, 11), hidden=64, vocab=512, attention=dims, ffn=moe,
                           patterns={"S": sparse}, name="tiny-hysparse-80b-a3b",
                           notes=("tiny twin of hysparse-80b-a3b: 1:11 with the last layer full",))
    dims = AttentionDims(q_heads=64, kv_heads=4, qk_dim=192, v_dim=128)
    moe = MoE(num_experts=512, top_k=8, intermediate=512, scoring="sigmoid", correction_bias=True)
    sparse = OracleSparse(topk=16, block_size=64, window=128, sink=True, gate="sigmoid")
    return build_graph(hybrid_kinds(49, 11), hidden=2048, vocab=151680, attention=dims, ffn=moe,
                       patterns={"S": sparse}, name="hysparse-80b-a3b",
                       notes=("attention QK 192 / V 128, 64 query and 4 KV heads, hidden 2048 (follow-up paper)",
                              "assumed: 512 experts of 512 (Qwen3-Next-80B-A3B's size), top-8, no shared expert, "
                              "vocab 151680: 81.8B total",
                              "active without embedding and LM head 3.48B (attention 2.20B): 'A3B' is rounded, "
                              "not reached exactly under these assumptions"))


def mimo_v2_flash(*, tiny: bool = False) -> ModelGraph:
    if tiny:
        pattern = (0, 1, 1, 1, 1, 0)
        h, v = 64, 512
        full = AttentionDims(q_heads=4, kv_heads=1, qk_dim=24, v_dim=16, rope_dim=8, value_scale=0.707,
                             rope_theta=5e6)
        swa = AttentionDims(q_heads=4, kv_heads=2, qk_dim=24, v_dim=16, rope_dim=8, value_scale=0.707)
        window, dense, moe = 16, Dense(128), MoE(8, 2, 32, scoring="sigmoid", correction_bias=True)
        mtp_layers, name = 3, "tiny-mimo-v2-flash"
    else:
        pattern = MIMO_V2_FLASH_HYBRID_LAYER_PATTERN
        h, v = 4096, 152576
        full = AttentionDims(q_heads=64, kv_heads=4, qk_dim=192, v_dim=128, rope_dim=64, value_scale=0.707,
                             rope_theta=5e6)
        swa = AttentionDims(q_heads=64, kv_heads=8, qk_dim=192, v_dim=128, rope_dim=64, value_scale=0.707,
                            rope_theta=1e4)
        # 129: the query and the 128 keys before it (config.json's sliding_window 128 counts the keys before it)
        window, dense, moe = 129, Dense(16384), MoE(256, 8, 2048, scoring="sigmoid", correction_bias=True)
        mtp_layers, name = 3, "mimo-v2-flash"
    kinds = ["F" if p == 0 else "W" for p in pattern]
    ffn = [dense] + [moe] * (len(kinds) - 1)
    swa_pattern = SlidingWindow(window=window, sink=True)
    mtp = MTPSpec(mtp_layers, swa_pattern, dense, swa, layout="mimo-v2")
    return build_graph(kinds, hidden=h, vocab=v, attention={"F": full, "W": swa}, ffn=ffn,
                       patterns={"F": Full(), "W": swa_pattern}, mtp=mtp, norm_eps=1e-5, name=name,
                       notes=("layer pattern, head geometry and rope thetas from the published config.json",
                              "SWA window 129 = the query + config.json's 128 keys before it",
                              "3 MTP blocks (SWA, dense FFN): the model card's figure, not in config.json"))


def mimo_7b(*, tiny: bool = False) -> ModelGraph:
    if tiny:
        dims = AttentionDims(q_heads=4, kv_heads=2, qk_dim=16, qkv_bias=True)
        ffn, n, h, v, name = Dense(172), 4, 64, 512, "tiny-mimo-7b"
    else:
        dims = AttentionDims(q_heads=32, kv_heads=8, qk_dim=128, qkv_bias=True, rope_theta=640000.0)
        ffn, n, h, v, name = Dense(11008), 36, 4096, 151680, "mimo-7b"
    mtp = MTPSpec(1, Full(), ffn, dims, layout="mimo")
    return build_graph("F" * n, hidden=h, vocab=v, attention=dims, ffn=ffn, mtp=mtp, norm_eps=1e-5, name=name,
                       notes=("from the published config.json; one full-attention MTP block, MiMo-7B's layout",))


PRESETS: dict[str, Callable[[], ModelGraph]] = {
    "hysparse-7b": hysparse_7b,
    "hysparse-80b-a3b": hysparse_80b_a3b,
    "mimo-v2-flash": mimo_v2_flash,
    "mimo-7b": mimo_7b,
    "tiny-hysparse-7b": lambda: hysparse_7b(tiny=True),
    "tiny-hysparse-80b-a3b": lambda: hysparse_80b_a3b(tiny=True),
    "tiny-mimo-v2-flash": lambda: mimo_v2_flash(tiny=True),
    "tiny-mimo-7b": lambda: mimo_7b(tiny=True),
}

# Published sizes (total, active) the counts must reproduce within 3%. HySparse-80B-A3B's "A3B"
# is a name, not a count: its active size is stated in the graph's notes (3.48B), not checked here.
PUBLISHED = {
    "mimo-v2-flash": {"total": 309e9, "active": 15e9},
    "hysparse-80b-a3b": {"total": 80e9},
}


def list_graphs() -> list[str]:
    return list(PRESETS)


def get_graph(name: str) -> ModelGraph:
    """The graph of a named model (``list_graphs()``)."""
    if name not in PRESETS:
        raise KeyError(f"model: expected one of {list(PRESETS)}, got {name!r}")
    return PRESETS[name]()
