"""Triton forward of full / sliding-window attention with a learnable sink, and the HySparse
block-score flag.

Kernel chain: ``_attn_fwd_kernel`` -> ``attention_fwd`` / ``attention_with_block_scores``
(launchers registered as backend ``triton``).

One program per (query block of ``BLOCK_M`` rows, query head): FlashAttention-2 online softmax
over the KV tiles the block can see. GQA: the program reads KV head ``h // group``. Queries are
bottom-right aligned (row ``i`` sits at key position ``Sk - Sq + i``). The visible KV range of
the block is split into masked edge tiles and an unmasked interior: with a window the tiles
entirely before the window are never visited (not merely masked). Logits are kept in log2 units
(``qk_scale = scale * log2(e)``) so the exponentials are ``exp2``.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from .config import MIN_BLOCK, check_dtype, dot_in_fp32, dot_precision, head_block, launch

LOG2E = 1.4426950408889634


@triton.jit
def _kv_range(m0, Sq, Sk, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """KV tiles a query block [m0, m0 + BLOCK_M) needs: ``[lo, full_lo)`` masked, ``[full_lo,
    full_hi)`` unmasked, ``[full_hi, hi)`` masked. All bounds but ``hi`` are multiples of BLOCK_N.
    Divisions see non-negative values only (Triton's ``//`` truncates toward zero)."""
    p_lo = Sk - Sq + m0  # key position of the block's first row
    p_hi = Sk - Sq + tl.minimum(m0 + BLOCK_M, Sq) - 1  # ... of its last valid row
    hi = Sk
    full_hi = (Sk // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(Sk, tl.maximum(p_hi + 1, 0))
        full_hi = tl.minimum(full_hi, (tl.maximum(p_lo + 1, 0) // BLOCK_N) * BLOCK_N)
    lo = 0
    full_lo = 0
    if HAS_WINDOW:
        lo = (tl.maximum(p_lo - window + 1, 0) // BLOCK_N) * BLOCK_N
        full_lo = ((tl.maximum(p_hi - window + 1, 0) + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _masked_pv(acc, p, vis, b_v, DOT_F32: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """``acc + P @ V`` for a tile where some rows cannot see some keys (``vis [BLOCK_M, BLOCK_N]``).

    Their probability is 0, but 0 * NaN (an unwritten cache slot, a future key) is NaN, so the
    dot multiplies only the finite values of V. The rare tile that holds NaN or +-inf then adds,
    key by key, the IEEE products ``p * v`` of its non-finite values over the pairs that see them
    (NaN, +-inf; 0 * inf = NaN for a visible key of probability 0), as the reference does. The
    loop is small code and no dot: a fallback like that must not cost the common path registers
    or shared memory (four extra 0/1 dots had made the sm_90 kernel 10x larger, 229 KB of shared
    memory)."""
    v32 = b_v.to(tl.float32)
    finite = tl.abs(v32) < float("inf")  # false for NaN and +-inf
    b_vf = tl.where(finite, b_v, 0.0).to(b_v.dtype)
    # [BLOCK_M, BLOCK_N] @ [BLOCK_N, BLOCK_DV] -> [BLOCK_M, BLOCK_DV]; P in the input dtype on
    # the GPU (tensor-core dot), fp32 under the interpreter.
    if DOT_F32:
        acc = tl.dot(p, b_vf.to(tl.float32), acc, input_precision=PREC)
    else:
        acc = tl.dot(p.to(b_v.dtype), b_vf, acc, input_precision=PREC)
    if tl.sum(tl.sum(tl.where(finite, 0, 1), 1), 0) > 0:
        o_n = tl.arange(0, BLOCK_N)
        for j in range(0, BLOCK_N):
            at_j = o_n == j
            v_j = tl.sum(tl.where(at_j[:, None], v32, 0.0), 0)  # [BLOCK_DV] row j of the tile
            p_j = tl.sum(tl.where(at_j[None, :], p, 0.0), 1)  # [BLOCK_M] its probabilities
            vis_j = tl.sum(tl.where(at_j[None, :] & vis, 1, 0), 1) > 0  # [BLOCK_M] who sees it
            bad_j = (v_j != v_j) | (tl.abs(v_j) == float("inf"))
            acc = acc + tl.where(vis_j[:, None] & bad_j[None, :], p_j[:, None] * v_j[None, :], 0.0)
    return acc


@triton.jit
def _fwd_tiles(acc, m_i, l_i, b_q, p_k, p_v, p_tmax, m_m, lo, hi, Sk, q_pos, qk_scale, window,
               DQK: tl.constexpr, DV: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, SCORES: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    """Online softmax over KV tiles [lo, hi). ``p_k``/``p_v`` point at the KV head's rows; with
    SCORES each tile's row max (log2 units) is stored at ``p_tmax + tile`` for the valid rows ``m_m``."""
    o_n = tl.arange(0, BLOCK_N)
    o_dqk = tl.arange(0, BLOCK_DQK)
    o_dv = tl.arange(0, BLOCK_DV)
    for start_n in range(lo, hi, BLOCK_N):
        o_k = start_n + o_n
        m_k = o_k < Sk
        # K^T tile [BLOCK_DQK, BLOCK_N]; padded head-dim columns load as 0 and add nothing.
        b_kt = tl.load(p_k + o_k[None, :] * DQK + o_dqk[:, None], mask=m_k[None, :] & (o_dqk[:, None] < DQK), other=0.0)
        if DOT_F32:
            b_kt = b_kt.to(tl.float32)
        # [BLOCK_M, BLOCK_DQK] @ [BLOCK_DQK, BLOCK_N] -> [BLOCK_M, BLOCK_N] logits in log2 units
        s = tl.dot(b_q, b_kt, input_precision=PREC) * qk_scale
        if MASKED:
            vis = m_k[None, :] & (q_pos[:, None] == q_pos[:, None])  # [BLOCK_M, BLOCK_N]
            if CAUSAL:
                vis = vis & (o_k[None, :] <= q_pos[:, None])
            if HAS_WINDOW:
                vis = vis & (o_k[None, :] > q_pos[:, None] - window)
            s = tl.where(vis, s, float("-inf"))
        t_max = tl.max(s, 1)
        if SCORES:
            tl.store(p_tmax + start_n // BLOCK_N, t_max, mask=m_m)
        m_new = tl.maximum(m_i, t_max)
        # A row that has seen nothing keeps m = -inf; exponentiate against 0 so no NaN appears.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        b_v = tl.load(p_v + o_k[:, None] * DV + o_dv[None, :], mask=m_k[:, None] & (o_dv[None, :] < DV), other=0.0)
        if MASKED:
            acc = _masked_pv(acc, p, vis, b_v, DOT_F32, PREC, BLOCK_N)
        else:
            # every row sees every key of the tile: [BLOCK_M, BLOCK_N] @ [BLOCK_N, BLOCK_DV];
            # P in the input dtype on the GPU (tensor-core dot), fp32 under the interpreter.
            if DOT_F32:
                acc = tl.dot(p, b_v.to(tl.float32), acc, input_precision=PREC)
            else:
                acc = tl.dot(p.to(b_v.dtype), b_v, acc, input_precision=PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.heuristics({"DOT_F32": lambda a: dot_in_fp32(a["Q"].dtype)})
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, SINK, OUT, LSE, TMAX, SCORES_OUT, LENS,
    Sq, Sk, Hq, Hkv, window, qk_scale, n_blocks,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_SINK: tl.constexpr, SCORES: tl.constexpr, RAGGED: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    # Q [B, Hq, Sq, DQK], K [B, Hkv, Sk, DQK], V [B, Hkv, Sk, DV], OUT [B, Hq, Sq, DV],
    # LSE [B, Hq, Sq] fp32; with SCORES: TMAX [B, Hq, Sq, n_blocks] fp32 scratch and
    # SCORES_OUT [B, Hkv, Sq, n_blocks] fp32 (zero-initialised, max-reduced over the group).
    # RAGGED: LENS [B] int32, sequence b holds its first LENS[b] keys of the padded cache (its
    # queries sit at LENS[b] - Sq + i); slots past them are never loaded.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hkv = h // (Hq // Hkv)
    m0 = pid_m * BLOCK_M
    o_m = m0 + tl.arange(0, BLOCK_M)
    m_m = o_m < Sq
    o_dqk = tl.arange(0, BLOCK_DQK)
    o_dv = tl.arange(0, BLOCK_DV)
    q_row = (b * Hq + h).to(tl.int64) * Sq
    kv_row = (b * Hkv + hkv).to(tl.int64) * Sk
    p_k = K + kv_row * DQK
    p_v = V + kv_row * DV
    n_keys = Sk  # keys of this sequence: the whole cache, or its own length
    if RAGGED:
        n_keys = tl.load(LENS + b).to(tl.int32)

    b_q = tl.load(Q + (q_row + o_m[:, None]) * DQK + o_dqk[None, :], mask=m_m[:, None] & (o_dqk[None, :] < DQK), other=0.0)
    if DOT_F32:
        b_q = b_q.to(tl.float32)
    q_pos = n_keys - Sq + o_m
    p_tmax = TMAX + (q_row + o_m) * n_blocks

    if HAS_SINK:
        # The sink is a logit of its own: it starts the running max and contributes exp(0) = 1.
        sink = tl.load(SINK + h).to(tl.float32) * 1.4426950408889634
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + sink
        l_i = tl.where(m_i == m_i, 1.0, m_i)  # a NaN sink makes the head's rows NaN
    else:
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    lo, full_lo, full_hi, hi = _kv_range(m0, Sq, n_keys, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, b_q, p_k, p_v, p_tmax, m_m, lo, full_lo, n_keys, q_pos, qk_scale, window,
                               DQK, DV, True, CAUSAL, HAS_WINDOW, SCORES, BLOCK_N, BLOCK_DQK, BLOCK_DV, DOT_F32, PREC)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, b_q, p_k, p_v, p_tmax, m_m, full_lo, full_hi, n_keys, q_pos, qk_scale, window,
                               DQK, DV, False, CAUSAL, HAS_WINDOW, SCORES, BLOCK_N, BLOCK_DQK, BLOCK_DV, DOT_F32, PREC)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, b_q, p_k, p_v, p_tmax, m_m, full_hi, hi, n_keys, q_pos, qk_scale, window,
                               DQK, DV, True, CAUSAL, HAS_WINDOW, SCORES, BLOCK_N, BLOCK_DQK, BLOCK_DV, DOT_F32, PREC)

    seen = l_i != 0.0  # 0: the row saw nothing (NaN compares unequal: it stays NaN)
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]  # rows that saw nothing have acc = 0 -> out = 0
    lse2 = tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf"))  # log2 units
    tl.store(OUT + (q_row + o_m[:, None]) * DV + o_dv[None, :], out.to(OUT.dtype.element_ty),
             mask=m_m[:, None] & (o_dv[None, :] < DV))
    tl.store(LSE + q_row + o_m, lse2 * 0.6931471805599453, mask=m_m)

    if SCORES:
        # Second, light pass over this program's own tile maxima (block = KV tile):
        # score = exp(tile_max - lse) = exp(tile_max - m_final) / l_final, max over the group's heads.
        # A block counts when the row sees one of its keys (by position: a NaN row's maxima are
        # unreliable; its lse is NaN and so are its scores). The max over heads runs on the
        # fp32 bits as int32 (SCORES_OUT is int32): for scores >= 0 the orders agree, and a
        # (positive) NaN is above every number, so it wins like in the reference's amax.
        tl.debug_barrier()  # the maxima were stored by other threads of this program
        p_scores = SCORES_OUT + ((b * Hkv + hkv).to(tl.int64) * Sq + o_m) * n_blocks
        for t in range(lo // BLOCK_N, tl.cdiv(hi, BLOCK_N)):
            t_max = tl.load(p_tmax + t, mask=m_m, other=float("-inf"))
            ok = seen & (t * BLOCK_N < n_keys)
            if CAUSAL:
                ok = ok & (t * BLOCK_N <= q_pos)
            score = tl.abs(tl.where(ok, tl.math.exp2(tl.where(ok, t_max - lse2, 0.0)), 0.0))
            tl.atomic_max(p_scores + t, score.to(tl.int32, bitcast=True), mask=m_m)


def _launch_fwd(q, k, v, sink, causal, window, scale, block_size=None, cache_seqlens=None):
    check_dtype("q", q)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    op = "attention_fwd" if block_size is None else "attention_with_block_scores"

    def run(cfg):
        block_n = cfg.block_n
        if block_size is not None:
            if block_size < MIN_BLOCK:
                raise ValueError(f"block_size: the triton block-score kernel needs block_size >= {MIN_BLOCK}, got {block_size}")
            block_n = block_size  # block = KV tile: the tile's row max is the block's row max
        out = torch.empty(B, Hq, Sq, Dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, Hq, Sq, dtype=torch.float32, device=q.device)
        n_blocks = triton.cdiv(Sk, block_n) if block_size is not None else 1
        if block_size is not None:
            tmax = torch.empty(B, Hq, Sq, n_blocks, dtype=torch.float32, device=q.device)
            scores = torch.zeros(B, Hkv, Sq, n_blocks, dtype=torch.int32, device=q.device)  # fp32 bits
        else:
            tmax = scores = lse  # unused (SCORES=False), any fp32 pointer
        sink_arg = sink.contiguous() if sink is not None else lse
        lens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous() if cache_seqlens is not None else lse
        grid = (triton.cdiv(Sq, cfg.block_m), B * Hq)
        _attn_fwd_kernel[grid](
            q, k, v, sink_arg, out, lse, tmax, scores, lens,
            Sq, Sk, Hq, Hkv, window if window is not None else 0, scale * LOG2E, n_blocks,
            DQK=Dqk, DV=Dv, CAUSAL=bool(causal), HAS_WINDOW=window is not None, HAS_SINK=sink is not None,
            SCORES=block_size is not None, RAGGED=cache_seqlens is not None, BLOCK_M=cfg.block_m, BLOCK_N=block_n,
            BLOCK_DQK=head_block(Dqk), BLOCK_DV=head_block(Dv), PREC=dot_precision(q.dtype), **cfg.launch(),
        )
        return out, lse, (scores.view(torch.float32) if block_size is not None else None)

    return launch(op, {"dqk": Dqk, "dv": Dv, "sq": Sq, "sk": Sk, "group": Hq // Hkv, "block_size": block_size}, run)


def attention_fwd(q, k, v, sink, causal, window, scale):
    """Triton forward of ``hysparse::attention_fwd``: ``(out [B, Hq, Sq, Dv], lse [B, Hq, Sq] fp32)``.

    Example::

        out, lse = attention_fwd(q, k, v, None, True, 16, q.shape[-1] ** -0.5)
    """
    out, lse, _ = _launch_fwd(q, k, v, sink, causal, window, scale)
    return out, lse


def attention_with_block_scores(q, k, v, block_size, causal, scale, cache_seqlens=None):
    """Triton forward with HySparse block scores ``[B, Hkv, Sq, ceil(Sk / block_size)]`` fp32.

    The KV tile is the block; memory beyond the outputs is one fp32 tile maximum per (query head,
    query, block): ``1 / block_size`` of a score matrix, never ``S x S``. Blocks smaller than
    ``MIN_BLOCK`` (16, the smallest ``tl.dot`` tile) are not accepted: dispatch runs them
    elsewhere. ``cache_seqlens`` (int ``[B]``, optional): sequence b of a padded cache holds its
    first ``cache_seqlens[b]`` keys, its queries sit at ``cache_seqlens[b] - Sq + i``; blocks past
    its keys score 0.
    """
    return _launch_fwd(q, k, v, None, causal, None, scale, block_size=block_size, cache_seqlens=cache_seqlens)


def accepts_attention_with_block_scores(q, k, v, block_size, causal, scale, cache_seqlens=None) -> bool:
    """Blocks of at least ``MIN_BLOCK`` keys (the block is the KV tile of a ``tl.dot``); per-
    sequence lengths (``cache_seqlens``) are taken."""
    return block_size >= MIN_BLOCK
