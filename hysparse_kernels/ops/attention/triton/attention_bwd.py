"""Triton backward of full / sliding-window attention with a learnable sink.

Kernel chain: ``_attn_bwd_dq_kernel`` and ``_attn_bwd_dkdv_kernel`` -> ``attention_bwd``.

FlashAttention-2 backward by recomputation from the saved ``lse``:

* ``delta_i = sum_d dout_id * out_id - dlse_i`` (one fused torch reduction, the "preprocess"),
* ``p = exp(s - lse)``, ``dp = dout @ v^T``, ``ds = p * (dp - delta)`` (so ``dlse`` is honoured),
* ``dq = scale * ds @ k``: one program per (query block, query head) over its visible KV tiles;
* ``dk = scale * ds^T @ q``, ``dv = p^T @ dout``: one program per (KV tile, KV head) looping over
  the group's query heads and the query blocks that see the tile. Every output element has one
  writer: no atomics, deterministic.
* ``dsink_h = sum_i p_sink_i * (dlse_i - D_i) = -sum_i exp(sink_h - lse_i) * delta_i`` (torch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import check_dtype, dot_in_fp32, dot_precision, head_block, launch
from .attention import LOG2E, _kv_range


@triton.jit
def _dq_tiles(dq, b_q, b_do, lse2, delta, p_k, p_v, lo, hi, Sk, q_pos, qk_scale, window,
              DQK: tl.constexpr, DV: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
              DOT_F32: tl.constexpr, PREC: tl.constexpr):
    o_n = tl.arange(0, BLOCK_N)
    o_dqk = tl.arange(0, BLOCK_DQK)
    o_dv = tl.arange(0, BLOCK_DV)
    for start_n in range(lo, hi, BLOCK_N):
        o_k = start_n + o_n
        m_k = o_k < Sk
        b_k = tl.load(p_k + o_k[:, None] * DQK + o_dqk[None, :], mask=m_k[:, None] & (o_dqk[None, :] < DQK), other=0.0)
        b_vt = tl.load(p_v + o_k[None, :] * DV + o_dv[:, None], mask=m_k[None, :] & (o_dv[:, None] < DV), other=0.0)
        if DOT_F32:
            b_k = b_k.to(tl.float32)
            b_vt = b_vt.to(tl.float32)
        s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * qk_scale  # [BLOCK_M, BLOCK_N] log2 units
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            vis = m_k[None, :]
            if CAUSAL:
                vis = vis & (o_k[None, :] <= q_pos[:, None])
            if HAS_WINDOW:
                vis = vis & (o_k[None, :] > q_pos[:, None] - window)
            p = tl.where(vis, p, 0.0)
        dp = tl.dot(b_do, b_vt, input_precision=PREC)  # [BLOCK_M, BLOCK_DV] @ [BLOCK_DV, BLOCK_N]
        ds = p * (dp - delta[:, None])
        # [BLOCK_M, BLOCK_N] @ [BLOCK_N, BLOCK_DQK] -> [BLOCK_M, BLOCK_DQK]
        dq = tl.dot(ds.to(b_k.dtype), b_k, dq, input_precision=PREC)
    return dq


@triton.heuristics({"DOT_F32": lambda a: dot_in_fp32(a["Q"].dtype)})
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    Sq, Sk, Hq, Hkv, window, qk_scale, scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    PREC: tl.constexpr, DOT_F32: tl.constexpr,
):
    # Q, DQ [B, Hq, Sq, DQK]; DO [B, Hq, Sq, DV]; LSE, DELTA [B, Hq, Sq] fp32; K/V as in the forward.
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
    m_q = m_m[:, None] & (o_dqk[None, :] < DQK)
    b_q = tl.load(Q + (q_row + o_m[:, None]) * DQK + o_dqk[None, :], mask=m_q, other=0.0)
    b_do = tl.load(DO + (q_row + o_m[:, None]) * DV + o_dv[None, :], mask=m_m[:, None] & (o_dv[None, :] < DV), other=0.0)
    if DOT_F32:
        b_q = b_q.to(tl.float32)
        b_do = b_do.to(tl.float32)
    lse = tl.load(LSE + q_row + o_m, mask=m_m, other=float("-inf"))
    # A row that saw no key (lse = -inf) has p = 0 everywhere: exp2(s - inf) = 0.
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + q_row + o_m, mask=m_m, other=0.0)
    q_pos = Sk - Sq + o_m
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _kv_range(m0, Sq, Sk, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    dq = _dq_tiles(dq, b_q, b_do, lse2, delta, K + kv_row * DQK, V + kv_row * DV, lo, full_lo, Sk, q_pos, qk_scale,
                   window, DQK, DV, True, CAUSAL, HAS_WINDOW, BLOCK_N, BLOCK_DQK, BLOCK_DV, DOT_F32, PREC)
    dq = _dq_tiles(dq, b_q, b_do, lse2, delta, K + kv_row * DQK, V + kv_row * DV, full_lo, full_hi, Sk, q_pos,
                   qk_scale, window, DQK, DV, False, CAUSAL, HAS_WINDOW, BLOCK_N, BLOCK_DQK, BLOCK_DV, DOT_F32, PREC)
    dq = _dq_tiles(dq, b_q, b_do, lse2, delta, K + kv_row * DQK, V + kv_row * DV, full_hi, hi, Sk, q_pos, qk_scale,
                   window, DQK, DV, True, CAUSAL, HAS_WINDOW, BLOCK_N, BLOCK_DQK, BLOCK_DV, DOT_F32, PREC)
    tl.store(DQ + (q_row + o_m[:, None]) * DQK + o_dqk[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=m_q)


@triton.heuristics({"DOT_F32": lambda a: dot_in_fp32(a["Q"].dtype)})
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV_OUT,
    Sq, Sk, Hq, Hkv, window, qk_scale, scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    PREC: tl.constexpr, DOT_F32: tl.constexpr,
):
    # One program per (KV tile, batch x KV head); DK [B, Hkv, Sk, DQK], DV_OUT [B, Hkv, Sk, DV].
    pid_n = tl.program_id(0)
    bkv = tl.program_id(1)
    b = bkv // Hkv
    hkv = bkv % Hkv
    G = Hq // Hkv
    n0 = pid_n * BLOCK_N
    o_k = n0 + tl.arange(0, BLOCK_N)
    m_k = o_k < Sk
    o_dqk = tl.arange(0, BLOCK_DQK)
    o_dv = tl.arange(0, BLOCK_DV)
    o_mm = tl.arange(0, BLOCK_M)
    kv_row = (b * Hkv + hkv).to(tl.int64) * Sk
    m_kd = m_k[:, None] & (o_dqk[None, :] < DQK)
    m_vd = m_k[:, None] & (o_dv[None, :] < DV)
    b_k = tl.load(K + (kv_row + o_k[:, None]) * DQK + o_dqk[None, :], mask=m_kd, other=0.0)
    b_v = tl.load(V + (kv_row + o_k[:, None]) * DV + o_dv[None, :], mask=m_vd, other=0.0)
    if DOT_F32:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    # Query rows that can see a key of this tile: pos_i >= n0 (causal) and
    # pos_i <= n0 + BLOCK_N - 1 + window - 1 (window); pos_i = Sk - Sq + i.
    i_lo = 0
    i_hi = Sq
    if CAUSAL:
        i_lo = tl.maximum(n0 - (Sk - Sq), 0)
    if HAS_WINDOW:
        i_hi = tl.minimum(Sq, tl.maximum(n0 + BLOCK_N + window - 1 - (Sk - Sq), 0))
    i_lo = (i_lo // BLOCK_M) * BLOCK_M
    for g in range(0, G):
        h = hkv * G + g
        q_row = (b * Hq + h).to(tl.int64) * Sq
        for m0 in range(i_lo, i_hi, BLOCK_M):
            o_m = m0 + o_mm
            m_m = o_m < Sq
            b_qt = tl.load(Q + (q_row + o_m[None, :]) * DQK + o_dqk[:, None], mask=m_m[None, :] & (o_dqk[:, None] < DQK),
                           other=0.0)  # [BLOCK_DQK, BLOCK_M]
            b_dot = tl.load(DO + (q_row + o_m[None, :]) * DV + o_dv[:, None], mask=m_m[None, :] & (o_dv[:, None] < DV),
                            other=0.0)  # [BLOCK_DV, BLOCK_M]
            if DOT_F32:
                b_qt = b_qt.to(tl.float32)
                b_dot = b_dot.to(tl.float32)
            lse = tl.load(LSE + q_row + o_m, mask=m_m, other=float("-inf"))
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
            delta = tl.load(DELTA + q_row + o_m, mask=m_m, other=0.0)
            # s^T [BLOCK_N, BLOCK_M] = K [BLOCK_N, BLOCK_DQK] @ Q^T [BLOCK_DQK, BLOCK_M]
            st = tl.dot(b_k, b_qt, input_precision=PREC) * qk_scale
            pt = tl.math.exp2(st - lse2[None, :])
            vis = m_k[:, None] & m_m[None, :]
            q_pos = Sk - Sq + o_m
            if CAUSAL:
                vis = vis & (o_k[:, None] <= q_pos[None, :])
            if HAS_WINDOW:
                vis = vis & (o_k[:, None] > q_pos[None, :] - window)
            pt = tl.where(vis, pt, 0.0)
            # dV += P^T [BLOCK_N, BLOCK_M] @ dO [BLOCK_M, BLOCK_DV]
            dv = tl.dot(pt.to(b_dot.dtype), tl.trans(b_dot), dv, input_precision=PREC)
            dpt = tl.dot(b_v, b_dot, input_precision=PREC)  # [BLOCK_N, BLOCK_DV] @ [BLOCK_DV, BLOCK_M]
            dst = pt * (dpt - delta[None, :])
            # dK += dS^T [BLOCK_N, BLOCK_M] @ Q [BLOCK_M, BLOCK_DQK]
            dk = tl.dot(dst.to(b_qt.dtype), tl.trans(b_qt), dk, input_precision=PREC)
    tl.store(DK + (kv_row + o_k[:, None]) * DQK + o_dqk[None, :], (dk * scale).to(DK.dtype.element_ty), mask=m_kd)
    tl.store(DV_OUT + (kv_row + o_k[:, None]) * DV + o_dv[None, :], dv.to(DV_OUT.dtype.element_ty), mask=m_vd)


def softmax_delta(dout, out, dlse):
    """``delta = rowsum(dout * out) - dlse`` in fp32 ``[B, Hq, Sq]`` (the FA2 preprocess)."""
    return (dout.float() * out.float()).sum(-1) - dlse.float()


def sink_grad(sink, lse, delta):
    """``dsink_h = sum_{b,i} p_sink * (dlse - D) = -sum_{b,i} exp(sink_h - lse) * delta`` ``[Hq]``."""
    p_sink = torch.exp(sink.float()[None, :, None] - lse.float())
    return -(p_sink * delta).sum(dim=(0, 2)).to(sink.dtype)


def attention_bwd(dout, dlse, q, k, v, sink, out, lse, causal, window, scale):
    """Triton ``hysparse::attention_bwd``: ``(dq, dk, dv, dsink)``; dsink is None without a sink.

    Example::

        dq, dk, dv, dsink = attention_bwd(dout, dlse, q, k, v, sink, out, lse, True, None, scale)
    """
    check_dtype("q", q)
    q, k, v, dout = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous()
    lse = lse.float().contiguous()
    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    delta = softmax_delta(dout, out, dlse).contiguous()

    def run(cfg):
        dq = torch.empty_like(q)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        common = dict(
            DQK=Dqk, DV=Dv, CAUSAL=bool(causal), HAS_WINDOW=window is not None, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, BLOCK_DQK=head_block(Dqk), BLOCK_DV=head_block(Dv), PREC=dot_precision(q.dtype),
            **cfg.launch(),
        )
        w = window if window is not None else 0
        if Sq and Sk and B * Hq:
            _attn_bwd_dq_kernel[(triton.cdiv(Sq, cfg.block_m), B * Hq)](
                q, k, v, dout, lse, delta, dq, Sq, Sk, Hq, Hkv, w, scale * LOG2E, scale, **common)
            _attn_bwd_dkdv_kernel[(triton.cdiv(Sk, cfg.block_n), B * Hkv)](
                q, k, v, dout, lse, delta, dk, dv, Sq, Sk, Hq, Hkv, w, scale * LOG2E, scale, **common)
        else:
            dq.zero_(), dk.zero_(), dv.zero_()
        dsink = sink_grad(sink, lse, delta) if sink is not None else None
        return dq, dk, dv, dsink

    return launch("attention_bwd", {"dqk": Dqk, "dv": Dv, "sq": Sq, "sk": Sk, "group": Hq // Hkv}, run)
