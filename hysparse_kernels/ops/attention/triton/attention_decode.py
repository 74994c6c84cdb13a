"""Triton decode (``Sq = 1``) and speculative verification (``Sq = 1 + draft``) over padded KV
caches with per-sequence lengths: split-KV flash-decoding for full and sliding-window attention
with a sink. (Sparse decode gathers only ``k`` blocks and lives in ``sparse_attention.py``.)

Kernel chain: ``_decode_split_kernel`` + ``_decode_combine_kernel`` -> ``attention_decode``.

* Split: one program per (cache chunk, batch x KV head). Its rows are the ``G * Sq`` (query head,
  new token) pairs of the KV group, so every K/V tile is read once per group. Row ``(g, i)`` sits
  at key position ``cache_seqlens[b] - Sq + i``. Tiles before the window of the group's first
  token and after the sequence's end are skipped. Writes a partial output normalised within the
  chunk and its log2-sum-exp (``-inf`` for an empty chunk).
* Combine: one program per (batch, query head, token): merges the chunks' partials with the sink
  as one more logit: ``lse = log(exp(sink) + sum_s exp(lse_s))``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import check_dtype, dot_in_fp32, dot_precision, head_block, interpreted, launch, next_pow2
from .attention import LOG2E, _fwd_tiles


@triton.heuristics({"DOT_F32": lambda a: dot_in_fp32(a["Q"].dtype)})
@triton.jit
def _decode_split_kernel(
    Q, K, V, SEQLENS, O_PART, LSE_PART,
    Sq, Smax, Hq, Hkv, window, qk_scale, chunk, n_splits,
    DQK: tl.constexpr, DV: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
):
    # Q [B, Hq, Sq, DQK]; K/V [B, Hkv, Smax, D]; SEQLENS [B] int32;
    # O_PART [B, Hq, Sq, n_splits, DV] fp32; LSE_PART [B, Hq, Sq, n_splits] fp32 (log2 units).
    split = tl.program_id(0)
    bkv = tl.program_id(1)
    b = bkv // Hkv
    hkv = bkv % Hkv
    G = Hq // Hkv
    o_r = tl.arange(0, BLOCK_M)  # row r = (g, i) = (r // Sq, r % Sq)
    m_r = o_r < G * Sq
    g = o_r // Sq
    i = o_r % Sq
    h = hkv * G + g
    q_rows = (b * Hq + h).to(tl.int64) * Sq + i
    o_dqk = tl.arange(0, BLOCK_DQK)
    o_dv = tl.arange(0, BLOCK_DV)
    seqlen = tl.load(SEQLENS + b).to(tl.int32)
    q_pos = seqlen - Sq + i
    kv_row = (b * Hkv + hkv).to(tl.int64) * Smax

    lo = split * chunk
    hi = tl.minimum(lo + chunk, seqlen)
    if HAS_WINDOW:
        # the earliest key any row of the group can see, rounded down to a tile
        first = tl.maximum(seqlen - Sq - window + 1, 0)
        lo = tl.maximum(lo, (first // BLOCK_N) * BLOCK_N)
    b_q = tl.load(Q + q_rows[:, None] * DQK + o_dqk[None, :], mask=m_r[:, None] & (o_dqk[None, :] < DQK), other=0.0)
    if DOT_F32:
        b_q = b_q.to(tl.float32)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # Keys >= hi are masked as out of range (hi is passed as the length); causal per row.
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, b_q, K + kv_row * DQK, V + kv_row * DV, LSE_PART, m_r, lo, hi, hi,
                               q_pos, qk_scale, window, DQK, DV, True, True, HAS_WINDOW, False, BLOCK_N, BLOCK_DQK,
                               BLOCK_DV, DOT_F32, PREC)
    seen = l_i != 0.0  # 0: nothing seen in this chunk (NaN stays NaN)
    l_safe = tl.where(seen, l_i, 1.0)
    part = q_rows * n_splits + split
    tl.store(O_PART + part[:, None] * DV + o_dv[None, :], acc / l_safe[:, None], mask=m_r[:, None] & (o_dv[None, :] < DV))
    tl.store(LSE_PART + part, tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf")), mask=m_r)


@triton.jit
def _decode_combine_kernel(
    O_PART, LSE_PART, SINK, OUT, LSE, Hq, Sq, n_splits,
    DV: tl.constexpr, HAS_SINK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # One program per row (b, h, i) of OUT [B, Hq, Sq, DV] / LSE [B, Hq, Sq].
    row = tl.program_id(0).to(tl.int64)
    h = (row // Sq) % Hq
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < n_splits
    o_dv = tl.arange(0, BLOCK_DV)
    lse_s = tl.load(LSE_PART + row * n_splits + o_s, mask=m_s, other=float("-inf"))  # [BLOCK_S] log2 units
    m = tl.max(lse_s, 0)
    if HAS_SINK:
        sink = tl.load(SINK + h).to(tl.float32) * 1.4426950408889634
        m = tl.maximum(m, sink)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse_s - m_safe)  # weight of each chunk
    denom = tl.sum(w, 0)
    if HAS_SINK:
        denom += tl.math.exp2(sink - m_safe)
    parts = tl.load(O_PART + (row * n_splits + o_s[:, None]) * DV + o_dv[None, :],
                    mask=m_s[:, None] & (o_dv[None, :] < DV), other=0.0)  # [BLOCK_S, BLOCK_DV]
    seen = denom != 0.0  # 0: the row saw nothing (NaN stays NaN)
    d_safe = tl.where(seen, denom, 1.0)
    out = tl.sum(parts * w[:, None], 0) / d_safe
    tl.store(OUT + row * DV + o_dv, out.to(OUT.dtype.element_ty), mask=o_dv < DV)
    tl.store(LSE + row, tl.where(seen, (m_safe + tl.math.log2(d_safe)) * 0.6931471805599453, float("-inf")))


def num_splits(batch_kv_heads: int, smax: int, block_n: int) -> int:
    """How many cache chunks to split over: enough programs to fill a GPU (about 2 waves of 132
    SMs) without chunks shorter than 4 tiles. Under the interpreter: up to 3, to exercise the merge."""
    tiles = triton.cdiv(max(smax, 1), block_n)
    if interpreted():
        return max(1, min(3, tiles))
    want = triton.cdiv(264, max(batch_kv_heads, 1))
    return max(1, min(want, triton.cdiv(tiles, 4)))


def attention_decode(q, k_cache, v_cache, cache_seqlens, sink, window, scale):
    """Decode attention (see ``_attention_decode``); a failing tuned config falls back (``config.launch``)."""
    return _attention_decode(q, k_cache, v_cache, cache_seqlens, sink, window, scale)


def _attention_decode(q, k_cache, v_cache, cache_seqlens, sink, window, scale):
    """Triton ``hysparse::attention_decode``: ``(out [B, Hq, Sq, Dv], lse [B, Hq, Sq] fp32)``.

    q ``[B, Hq, Sq, Dqk]`` (Sq = 1, or 1 + draft tokens), caches ``[B, Hkv, Smax, D]`` holding
    ``cache_seqlens[b]`` valid keys (the new tokens included); causal, optional window and sink.

    Example::

        out, lse = attention_decode(q, k_cache, v_cache, lens, None, None, q.shape[-1] ** -0.5)
    """
    check_dtype("q", q)
    q, k_cache, v_cache = q.contiguous(), k_cache.contiguous(), v_cache.contiguous()
    B, Hq, Sq, Dqk = q.shape
    Hkv, Smax, Dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    group = Hq // Hkv

    def run(cfg):
        block_m = max(cfg.block_m, next_pow2(group * Sq))
        splits = num_splits(B * Hkv, Smax, cfg.block_n)
        chunk = triton.cdiv(triton.cdiv(Smax, splits), cfg.block_n) * cfg.block_n
        seqlens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        o_part = torch.empty(B, Hq, Sq, splits, Dv, dtype=torch.float32, device=q.device)
        lse_part = torch.empty(B, Hq, Sq, splits, dtype=torch.float32, device=q.device)
        out = torch.empty(B, Hq, Sq, Dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, Hq, Sq, dtype=torch.float32, device=q.device)
        if B * Hq * Sq == 0:
            return out, lse
        _decode_split_kernel[(splits, B * Hkv)](
            q, k_cache, v_cache, seqlens, o_part, lse_part,
            Sq, Smax, Hq, Hkv, window if window is not None else 0, scale * LOG2E, chunk, splits,
            DQK=Dqk, DV=Dv, HAS_WINDOW=window is not None, BLOCK_M=block_m, BLOCK_N=cfg.block_n,
            BLOCK_DQK=head_block(Dqk), BLOCK_DV=head_block(Dv), PREC=dot_precision(q.dtype), **cfg.launch(),
        )
        _decode_combine_kernel[(B * Hq * Sq,)](
            o_part, lse_part, sink.contiguous() if sink is not None else lse, out, lse, Hq, Sq, splits,
            DV=Dv, HAS_SINK=sink is not None, BLOCK_S=max(2, next_pow2(splits)), BLOCK_DV=head_block(Dv),
        )
        return out, lse

    return launch("decode", {"dqk": Dqk, "dv": Dv, "sq": Sq, "sk": Smax, "group": group}, run)
