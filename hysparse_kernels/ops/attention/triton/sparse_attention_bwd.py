"""Triton backward of sparse attention over selected blocks of a shared KV cache.

Kernel chain: ``_sparse_bwd_kernel`` -> ``sparse_attention_bwd``.

One program per (block of queries, batch x KV head), rows = (query, head) pairs over the union
of the queries' selected blocks, exactly like the forward (``sparse_attention.py``). It recomputes ``p = exp(s - lse)`` on each selected block, keeps ``dq`` in registers and
scatters the block's ``dk = scale * ds^T q`` and ``dv = p^T dout`` into fp32 copies of the cache
gradients with ``tl.atomic_add``: many queries select the same block, and the selection is data
dependent, so a one-writer-per-block schedule would need an inverted index first. The result is
therefore **not bitwise deterministic** (fp32 addition order varies between runs); it is exact up
to fp32 rounding. ``delta = rowsum(dout * out) - dlse`` and ``dsink`` are computed as in
``attention_bwd.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_bwd import sink_grad, softmax_delta
from .config import MIN_BLOCK, check_dtype, dot_in_fp32, dot_precision, head_block, launch, next_pow2
from .sparse_attention import LOG2E, _block_is_new, check_block_size


@triton.heuristics({"DOT_F32": lambda a: dot_in_fp32(a["Q"].dtype)})
@triton.jit
def _sparse_bwd_kernel(
    Q, K, V, DO, LSE, DELTA, IDX, DQ, DK32, DV32,
    Sq, Sk, Hq, Hkv, n_sel, qk_scale, scale,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    PREC: tl.constexpr, DOT_F32: tl.constexpr,
):
    # Q, DQ [B, Hq, Sq, DQK]; DO [B, Hq, Sq, DV]; LSE, DELTA [B, Hq, Sq] fp32;
    # DK32 [B, Hkv, Sk, DQK] and DV32 [B, Hkv, Sk, DV] fp32, zero-initialised, accumulated atomically.
    # Rows r = qi * G + g: BLOCK_Q queries x the G heads of the KV group, as in the forward.
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
    q_rows = (b * Hq + h).to(tl.int64) * Sq + i
    kv_row = (b * Hkv + hkv).to(tl.int64) * Sk
    pos = Sk - Sq + i
    m_q = m_r[:, None] & (o_dqk[None, :] < DQK)
    b_q = tl.load(Q + q_rows[:, None] * DQK + o_dqk[None, :], mask=m_q, other=0.0)
    b_do = tl.load(DO + q_rows[:, None] * DV + o_dv[None, :], mask=m_r[:, None] & (o_dv[None, :] < DV), other=0.0)
    if DOT_F32:
        b_q = b_q.to(tl.float32)
        b_do = b_do.to(tl.float32)
    lse = tl.load(LSE + q_rows, mask=m_r, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)  # no key seen -> p = 0
    delta = tl.load(DELTA + q_rows, mask=m_r, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)

    p_idx = IDX + ((b * Hkv + hkv).to(tl.int64) * Sq + i0) * n_sel
    row_lists = tl.load(p_idx + qi[:, None] * n_sel + o_k[None, :], mask=m_r[:, None] & (o_k[None, :] < n_sel),
                        other=-2)
    for e in range(0, n_q * n_sel):
        idx = tl.load(p_idx + e)
        if _block_is_new(p_idx, e, idx, BLOCK_L):  # union of the queries' lists, as in the forward
            chosen = tl.max((row_lists == idx).to(tl.int32), 1) > 0
            o_key = idx * BLOCK_SIZE + o_n
            in_range = o_key < Sk
            vis = chosen[:, None] & in_range[None, :] & (o_key[None, :] <= pos[:, None])  # [BLOCK_M, BLOCK_SIZE]
            m_kd = in_range[:, None] & (o_dqk[None, :] < DQK)
            m_vd = in_range[:, None] & (o_dv[None, :] < DV)
            b_k = tl.load(K + (kv_row + o_key[:, None]) * DQK + o_dqk[None, :], mask=m_kd, other=0.0)
            b_v = tl.load(V + (kv_row + o_key[:, None]) * DV + o_dv[None, :], mask=m_vd, other=0.0)
            if DOT_F32:
                b_k = b_k.to(tl.float32)
                b_v = b_v.to(tl.float32)
            s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * qk_scale  # [BLOCK_M, BLOCK_SIZE]
            p = tl.where(vis, tl.math.exp2(s - lse2[:, None]), 0.0)
            dp = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)  # [BLOCK_M, BLOCK_SIZE]
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(b_k.dtype), b_k, dq, input_precision=PREC)  # [BLOCK_M, BLOCK_DQK]
            # [BLOCK_SIZE, BLOCK_M] @ [BLOCK_M, D]: the program's share of the block's dk / dv
            dk_blk = tl.dot(tl.trans(ds.to(b_q.dtype)), b_q, input_precision=PREC) * scale
            dv_blk = tl.dot(tl.trans(p.to(b_do.dtype)), b_do, input_precision=PREC)
            tl.atomic_add(DK32 + (kv_row + o_key[:, None]) * DQK + o_dqk[None, :], dk_blk, mask=m_kd)
            tl.atomic_add(DV32 + (kv_row + o_key[:, None]) * DV + o_dv[None, :], dv_blk, mask=m_vd)
    tl.store(DQ + q_rows[:, None] * DQK + o_dqk[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=m_q)


def sparse_attention_bwd(dout, dlse, q, k, v, indices, sink, out, lse, block_size, scale):
    """Triton ``hysparse::sparse_attention_bwd``: ``(dq, dk, dv, dsink)``, dk/dv over the whole cache
    (zero outside the selected blocks); dsink is None without a sink.

    Example::

        dq, dk, dv, dsink = sparse_attention_bwd(dout, dlse, q, k, v, idx, None, out, lse, 64, scale)

    Blocks smaller than ``MIN_BLOCK`` (16) are not accepted: dispatch runs them elsewhere.
    """
    check_dtype("q", q)
    check_block_size(block_size)
    q, k, v, dout = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous()
    indices = indices.to(torch.int32).contiguous()
    lse = lse.float().contiguous()
    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    n_sel = indices.shape[-1]
    group = Hq // Hkv
    delta = softmax_delta(dout, out, dlse).contiguous()

    def run(cfg):
        dq = torch.zeros_like(q)
        dk32 = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv32 = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        block_q = min(max(1, cfg.block_m // next_pow2(group)), next_pow2(Sq))
        if Sq and B * Hkv:
            _sparse_bwd_kernel[(triton.cdiv(Sq, block_q), B * Hkv)](
                q, k, v, dout, lse, delta, indices, dq, dk32, dv32,
                Sq, Sk, Hq, Hkv, n_sel, scale * LOG2E, scale,
                DQK=Dqk, DV=Dv, BLOCK_SIZE=block_size, BLOCK_Q=block_q, BLOCK_M=max(16, next_pow2(block_q * group)),
                BLOCK_K=max(16, next_pow2(n_sel)), BLOCK_L=max(16, next_pow2(block_q * n_sel)),
                BLOCK_DQK=head_block(Dqk), BLOCK_DV=head_block(Dv), PREC=dot_precision(q.dtype), **cfg.launch(),
            )
        dsink = sink_grad(sink, lse, delta) if sink is not None else None
        return dq, dk32.to(k.dtype), dv32.to(v.dtype), dsink

    return launch("sparse_attention_bwd", {"dqk": Dqk, "dv": Dv, "sq": Sq, "sk": Sk, "group": group}, run)


def accepts_sparse_attention_bwd(dout, dlse, q, k, v, indices, sink, out, lse, block_size, scale) -> bool:
    """Blocks of at least ``MIN_BLOCK`` keys."""
    return block_size >= MIN_BLOCK
