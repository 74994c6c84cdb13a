"""Counting passes: parameters (total and active) and FLOPs per token (prefill and decode).

Conventions (they decide whether a published figure is reproduced):

* Attention of a full or SWA layer: q, k, v, o projections (+ q/k/v biases when ``qkv_bias``),
  + a per-head sink when the pattern has one.
* A HySparse sparse layer: its own q and o; the sparse branch has no K/V projection (it reads
  the full layer's cache); the SWA branch has its own k and v; two gates of one scalar per
  query head (``hidden -> q_heads`` each; one gate without a SWA branch); a sink per head for
  each branch that has one. The SWA branch shares the sparse branch's q.
* FFN: gated (gate, up, down: ``3 * hidden * intermediate``); MoE adds the router
  (``hidden * num_experts``), the correction bias (``num_experts``) and shared experts.
* Norms: two RMSNorm weights per layer, a final one.
* Embedding ``vocab * hidden``, LM head the same unless tied.
* MTP block: two input norms, ``proj`` (``2 * hidden -> hidden``), an attention block with its
  two norms, its FFN, a final norm; embedding and head shared (not counted again).
* ``total``: everything including MTP. ``active``: what one token of the main model touches:
  its one embedding row, the whole LM head, attention, dense FFN, router, shared experts and
  ``top_k`` experts, norms; MTP excluded (it runs only for drafting). This is the convention
  under which DeepSeek-V3's "37B activated" comes out (36.6B; with the whole embedding table
  37.5B). ``active_non_embedding`` drops the embedding row and the LM head (the convention of
  model names like "A3B").
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import AttentionDims, Dense, LayerSpec, ModelGraph, MoE
from .patterns import OracleSparse


def attention_params(hidden: int, dims: AttentionDims | LayerSpec, pattern) -> int:
    """Parameters of one attention block of ``pattern`` with head geometry ``dims``."""
    q = hidden * dims.q_heads * dims.qk_dim
    k = hidden * dims.kv_heads * dims.qk_dim
    v = hidden * dims.kv_heads * dims.v_dim
    o = dims.q_heads * dims.v_dim * hidden
    bias_q = dims.q_heads * dims.qk_dim if dims.qkv_bias else 0
    bias_kv = dims.kv_heads * (dims.qk_dim + dims.v_dim) if dims.qkv_bias else 0
    if isinstance(pattern, OracleSparse):
        has_swa = pattern.window is not None
        kv = (k + v + bias_kv) if has_swa else 0
        gates = (2 if has_swa else 1) * hidden * dims.q_heads
        sinks = dims.q_heads * (1 + has_swa) if pattern.sink else 0
        return q + bias_q + kv + o + gates + sinks
    sinks = dims.q_heads if getattr(pattern, "sink", False) else 0
    return q + k + v + o + bias_q + bias_kv + sinks


def ffn_params(hidden: int, ffn) -> tuple[int, int]:
    """(total, active per token) parameters of a Dense or MoE FFN."""
    if isinstance(ffn, Dense):
        n = 3 * hidden * ffn.intermediate
        return n, n
    assert isinstance(ffn, MoE)
    expert = 3 * hidden * ffn.intermediate
    fixed = hidden * ffn.num_experts + (ffn.num_experts if ffn.correction_bias else 0) + ffn.shared_experts * expert
    return fixed + ffn.num_experts * expert, fixed + ffn.top_k * expert


@dataclass(frozen=True)
class ParamCount:
    """Parameter totals; ``parts`` breaks ``total`` down (embedding, lm_head, attention,
    ffn_dense, experts (routed + shared), router, norms, mtp)."""

    total: int
    active: int
    active_non_embedding: int
    embedding: int
    lm_head: int
    parts: tuple[tuple[str, int], ...]

    def part(self, name: str) -> int:
        return dict(self.parts)[name]


def param_count(graph: ModelGraph) -> ParamCount:
    """Total and active parameters of ``graph`` (conventions in the module docstring).

    Example::

        pc = param_count(get_graph("mimo-v2-flash"))
        pc.total, pc.active      # 309.8e9 (3 MTP blocks included), 14.8e9
    """
    h = graph.hidden
    embedding = graph.vocab * h
    lm_head = 0 if graph.tie_embeddings else graph.vocab * h
    attention = ffn_dense = experts = router = 0
    active = 0  # without embedding and LM head
    for layer in graph.layers:
        a = attention_params(h, layer, layer.pattern)
        attention += a
        total_f, active_f = ffn_params(h, layer.ffn)
        if isinstance(layer.ffn, MoE):
            r = h * layer.ffn.num_experts + (layer.ffn.num_experts if layer.ffn.correction_bias else 0)
            router += r
            experts += total_f - r
        else:
            ffn_dense += total_f
        active += a + active_f + 2 * h
    norms = 2 * h * graph.num_layers + h
    active += h
    # The LM head is used whole by every token (the embedding matrix itself when tied); the
    # embedding table contributes one row.
    head_and_row = graph.vocab * h + (0 if graph.tie_embeddings else h)
    mtp = 0
    if graph.mtp is not None:
        m = graph.mtp
        per_block = 2 * h + 2 * h * h + attention_params(h, m.attention, m.pattern) + 2 * h + ffn_params(h, m.ffn)[0] + h
        mtp = m.num_layers * per_block
    parts = (("embedding", embedding), ("lm_head", lm_head), ("attention", attention), ("ffn_dense", ffn_dense),
             ("experts", experts), ("router", router), ("norms", norms), ("mtp", mtp))
    return ParamCount(sum(n for _, n in parts), active + head_and_row, active, embedding, lm_head, parts)


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------


def _mean_visible(seq_len: int, cap: int | None) -> float:
    """Mean over queries i = 1..seq_len of min(i, cap) (keys a causal query sees, capped)."""
    if cap is None or cap >= seq_len:
        return (seq_len + 1) / 2
    # queries 1..cap see i keys, the rest see cap keys
    return (cap * (cap + 1) / 2 + (seq_len - cap) * cap) / seq_len


@dataclass(frozen=True)
class FlopsPerToken:
    """FLOPs per token: ``matmul`` (2 x active non-embedding weights + LM head), and attention
    score/value FLOPs (``2 * q_heads * (Dqk + Dv)`` per visible key) averaged over a prefill of
    ``seq_len`` tokens or for one decode step at context ``seq_len``."""

    seq_len: int
    matmul: int
    attention_prefill: float
    attention_decode: float

    @property
    def prefill(self) -> float:
        return self.matmul + self.attention_prefill

    @property
    def decode(self) -> float:
        return self.matmul + self.attention_decode


def flops_per_token(graph: ModelGraph, seq_len: int) -> FlopsPerToken:
    """FLOPs per token for prefill (mean over ``seq_len`` causal positions) and for decode at
    context ``seq_len``. Sparse layers count ``topk * block_size`` keys for their sparse branch
    plus their window; the full layer's block scores come out of its own attention pass and
    top-k selection is not counted (both are O(blocks), not O(keys x dims))."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
    pc = param_count(graph)
    matmul = 2 * (pc.active_non_embedding + graph.vocab * graph.hidden)
    pre = dec = 0.0
    for layer in graph.layers:
        per_key = 2 * layer.q_heads * (layer.qk_dim + layer.v_dim)
        pat = layer.pattern
        if pat.kind == "full":
            caps = [None]
        elif pat.kind == "swa":
            caps = [pat.window]
        else:
            caps = [pat.selected_tokens] + ([pat.window] if pat.window is not None else [])
        for cap in caps:
            pre += per_key * _mean_visible(seq_len, cap)
            dec += per_key * (seq_len if cap is None else min(cap, seq_len))
    return FlopsPerToken(seq_len, matmul, pre, dec)
