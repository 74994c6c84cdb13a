"""Triton sparse attention over selected KV blocks of a shared cache (HySparse), prefill and decode.

Kernel chain: ``_sparse_fwd_kernel`` -> ``sparse_attention_fwd`` / ``sparse_attention_decode``.

One program per (block of ``BLOCK_Q`` consecutive queries, batch x KV head). Its rows are
``(query, head)`` pairs: the ``G = Hq / Hkv`` heads of the KV group share the group's index lists
(``indices [B, Hkv, Sq, k]``), and ``BLOCK_Q`` neighbouring queries share the **union** of their
lists: each gathered K/V block is loaded once per program, and a row keeps only the blocks its
own query selected (a per-row mask from its list), so the result is exactly per-query sparse
attention. Oracle selections of neighbouring queries overlap heavily (local blocks, early
"sink" blocks), so the union is close to ``k`` blocks while the rows fill a tensor-core tile
(64 rows: wgmma on sm90). With ``BLOCK_Q = 1`` (decode, or ``G >= 16``) it is one query per
program. Which ``BLOCK_Q`` is fastest depends on the overlap of real selections and was not
measured (no GPU): the autotuner's search space holds both shapes.

A block appearing twice counts once (later copies are skipped), ``-1`` entries are pads, keys
after the query's position are masked (causal inside its own block), and the sink is folded
into the running max and denominator as in the dense forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import MIN_BLOCK, check_dtype, dot_in_fp32, dot_precision, head_block, launch, next_pow2
from .attention import _masked_pv

LOG2E = 1.4426950408889634


@triton.jit
def _block_is_new(p_idx, t, idx, BLOCK_K: tl.constexpr):
    """True when entry ``t`` of an index list holds a real block (not a -1 pad) that no earlier
    entry lists: the list is read back from memory, up to BLOCK_K >= t entries."""
    o_t = tl.arange(0, BLOCK_K)
    earlier = tl.load(p_idx + o_t, mask=o_t < t, other=-1)
    dup = tl.sum(tl.where((earlier == idx) & (o_t < t), 1, 0), 0)
    return (idx >= 0) & (dup == 0)


@triton.heuristics({"DOT_F32": lambda a: dot_in_fp32(a["Q"].dtype)})
@triton.jit
def _sparse_fwd_kernel(
    Q, K, V, IDX, SEQLENS, SINK, OUT, LSE,
    Sq, Sk, Hq, Hkv, n_sel, qk_scale,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_SIZE: tl.constexpr, HAS_SINK: tl.constexpr,
    DECODE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    # Q [B, Hq, Sq, DQK], K [B, Hkv, Sk, DQK], V [B, Hkv, Sk, DV], IDX [B, Hkv, Sq, n_sel] int32,
    # SEQLENS [B] (DECODE: query i sits at SEQLENS[b] - Sq + i; else at Sk - Sq + i),
    # OUT [B, Hq, Sq, DV], LSE [B, Hq, Sq] fp32.
    # Rows: r = qi * G + g for the BLOCK_Q queries i0 + qi and the G heads of the KV group.
    pid_q = tl.program_id(0)
    bkv = tl.program_id(1)
    b = bkv // Hkv
    hkv = bkv % Hkv
    G = Hq // Hkv
    i0 = pid_q * BLOCK_Q
    n_q = tl.minimum(BLOCK_Q, Sq - i0)
    o_r = tl.arange(0, BLOCK_M)
    qi = o_r // G
    i = i0 + qi
    m_r = (qi < n_q) & (o_r < BLOCK_Q * G)
    h = hkv * G + o_r % G
    o_dqk = tl.arange(0, BLOCK_DQK)
    o_dv = tl.arange(0, BLOCK_DV)
    o_n = tl.arange(0, BLOCK_SIZE)
    o_k = tl.arange(0, BLOCK_K)
    q_rows = (b * Hq + h).to(tl.int64) * Sq + i  # [BLOCK_M] row ids in [B*Hq*Sq]
    kv_row = (b * Hkv + hkv).to(tl.int64) * Sk
    if DECODE:
        pos = tl.load(SEQLENS + b).to(tl.int32) - Sq + i
    else:
        pos = Sk - Sq + i

    b_q = tl.load(Q + q_rows[:, None] * DQK + o_dqk[None, :], mask=m_r[:, None] & (o_dqk[None, :] < DQK), other=0.0)
    if DOT_F32:
        b_q = b_q.to(tl.float32)
    if HAS_SINK:
        m_i = tl.load(SINK + h, mask=m_r, other=0.0).to(tl.float32) * 1.4426950408889634
        l_i = tl.where(m_i == m_i, 1.0, m_i)  # a NaN sink makes the head's rows NaN
    else:
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    # The index lists of the block's queries, back to back: [n_q * n_sel] entries from p_idx.
    p_idx = IDX + ((b * Hkv + hkv).to(tl.int64) * Sq + i0) * n_sel
    # Each row's own list [BLOCK_M, BLOCK_K] (-2 where absent) decides which union blocks it sees.
    row_lists = tl.load(p_idx + qi[:, None] * n_sel + o_k[None, :], mask=m_r[:, None] & (o_k[None, :] < n_sel),
                        other=-2)
    for e in range(0, n_q * n_sel):
        idx = tl.load(p_idx + e)
        # union of the lists: skip -1 pads and blocks an earlier entry already brought in
        if _block_is_new(p_idx, e, idx, BLOCK_L):
            chosen = tl.max((row_lists == idx).to(tl.int32), 1) > 0  # [BLOCK_M] did the row's query pick it
            o_key = idx * BLOCK_SIZE + o_n
            in_range = o_key < Sk
            vis = chosen[:, None] & in_range[None, :] & (o_key[None, :] <= pos[:, None])
            # gathered K^T block [BLOCK_DQK, BLOCK_SIZE]
            b_kt = tl.load(K + (kv_row + o_key[None, :]) * DQK + o_dqk[:, None],
                           mask=in_range[None, :] & (o_dqk[:, None] < DQK), other=0.0)
            if DOT_F32:
                b_kt = b_kt.to(tl.float32)
            s = tl.dot(b_q, b_kt, input_precision=PREC) * qk_scale  # [BLOCK_M, BLOCK_SIZE] log2 units
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            b_v = tl.load(V + (kv_row + o_key[:, None]) * DV + o_dv[None, :],
                          mask=in_range[:, None] & (o_dv[None, :] < DV), other=0.0)
            # rows that did not pick the block, and keys after a row's query, must not meet V
            acc = _masked_pv(acc, p, vis, b_v, DOT_F32, PREC, BLOCK_SIZE)
            m_i = m_new

    seen = l_i != 0.0  # 0: the row saw nothing (NaN stays NaN)
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(OUT + q_rows[:, None] * DV + o_dv[None, :], out.to(OUT.dtype.element_ty),
             mask=m_r[:, None] & (o_dv[None, :] < DV))
    tl.store(LSE + q_rows, lse, mask=m_r)


def check_block_size(block_size: int) -> None:
    if block_size < MIN_BLOCK:
        raise ValueError(f"block_size: the triton sparse kernels need block_size >= {MIN_BLOCK} (tl.dot), got {block_size}")


def _launch_sparse(q, k, v, indices, block_size, sink, scale, cache_seqlens=None):
    check_dtype("q", q)
    check_block_size(block_size)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    indices = indices.to(torch.int32).contiguous()
    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    n_sel = indices.shape[-1]
    group = Hq // Hkv

    def run(cfg):
        out = torch.empty(B, Hq, Sq, Dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, Hq, Sq, dtype=torch.float32, device=q.device)
        seqlens = cache_seqlens.to(torch.int32).contiguous() if cache_seqlens is not None else indices
        # Queries per program: fill cfg.block_m rows with whole KV groups (at least one query).
        block_q = min(max(1, cfg.block_m // next_pow2(group)), next_pow2(Sq))
        block_m = max(16, next_pow2(block_q * group))
        grid = (triton.cdiv(Sq, block_q), B * Hkv)
        if Sq == 0 or B * Hkv == 0:
            return out, lse
        _sparse_fwd_kernel[grid](
            q, k, v, indices, seqlens, sink.contiguous() if sink is not None else lse, out, lse,
            Sq, Sk, Hq, Hkv, n_sel, scale * LOG2E,
            DQK=Dqk, DV=Dv, BLOCK_SIZE=block_size, HAS_SINK=sink is not None, DECODE=cache_seqlens is not None,
            BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_K=max(16, next_pow2(n_sel)),
            BLOCK_L=max(16, next_pow2(block_q * n_sel)), BLOCK_DQK=head_block(Dqk), BLOCK_DV=head_block(Dv),
            PREC=dot_precision(q.dtype), **cfg.launch(),
        )
        return out, lse

    return launch("sparse_attention", {"dqk": Dqk, "dv": Dv, "sq": Sq, "sk": Sk, "group": group}, run)


def sparse_attention_fwd(q, k, v, indices, block_size, sink, scale):
    """Triton ``hysparse::sparse_attention_fwd``: ``(out [B, Hq, Sq, Dv], lse [B, Hq, Sq] fp32)``.

    indices ``[B, Hkv, Sq, k]`` int32 block ids (``-1`` pads) shared by each KV group's heads.

    Example::

        out, lse = sparse_attention_fwd(q, k, v, idx, 64, None, q.shape[-1] ** -0.5)

    Blocks smaller than ``MIN_BLOCK`` (16) are not accepted: dispatch runs them elsewhere.
    """
    return _launch_sparse(q, k, v, indices, block_size, sink, scale)


def sparse_attention_decode(q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, scale):
    """Triton ``hysparse::sparse_attention_decode``: decode queries over selected cache blocks.

    q ``[B, Hq, Sq, Dqk]`` (Sq = 1 or 1 + draft tokens), caches ``[B, Hkv, Smax, D]`` with
    ``cache_seqlens [B]`` valid keys. The selected keys are few (k blocks), so one program per
    (query, KV group) suffices; no split over the cache is needed. Blocks smaller than
    ``MIN_BLOCK`` (16) are not accepted: dispatch runs them elsewhere.
    """
    return _launch_sparse(q, k_cache, v_cache, indices, block_size, sink, scale, cache_seqlens=cache_seqlens)


def accepts_sparse_attention_fwd(q, k, v, indices, block_size, sink, scale) -> bool:
    """Blocks of at least ``MIN_BLOCK`` keys."""
    return block_size >= MIN_BLOCK


def accepts_sparse_attention_decode(q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, scale) -> bool:
    """Blocks of at least ``MIN_BLOCK`` keys."""
    return block_size >= MIN_BLOCK
