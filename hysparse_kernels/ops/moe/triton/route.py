"""Triton routing kernel: scores (softmax or sigmoid), selection bias, group limit, top-k, weight
renormalisation and scaling in one pass over each token's logits (see ``reference.route`` for the
semantics; ties go to the lower expert id).

One program handles ``BLOCK_T`` tokens; a row of ``E`` logits (padded to a power of two) stays in
registers. Top-k is k rounds of (arg-max with ties to the left, mask it out): k is small (8) and E
at most a few hundred, so this beats a sort. A group's score is the sum of its two best biased
scores with a bias (DeepSeek-V3), its best score without: the ``[BLOCK_T, E]`` tile is viewed as
``[BLOCK_T, n_group, E / n_group]``, so with groups E must be a power of two here (it is in the
models: 64, 256).
NaN logits (or biases) rank first and give NaN weights, as in the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _route_kernel(
    p_logits, p_bias, p_w, p_ids, T, E, stride_l, scaling,
    TOP_K: tl.constexpr, K_P2: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, N_GROUP: tl.constexpr,
    TOPK_GROUP: tl.constexpr, RENORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    o_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    o_e = tl.arange(0, BLOCK_E)
    m_t = o_t < T
    m_e = o_e < E
    b_l = tl.load(p_logits + o_t[:, None].to(tl.int64) * stride_l + o_e[None, :], mask=m_t[:, None] & m_e[None, :],
                  other=0.0).to(ACC)  # [BLOCK_T, BLOCK_E]; rows past T read zeros (finite, never stored)
    b_l = tl.where(m_e[None, :], b_l, float("-inf"))  # padded experts: probability 0
    if SIGMOID:
        scores = 1.0 / (1.0 + tl.exp(-b_l))
    else:
        b_max = tl.max(b_l, axis=1)
        num = tl.exp(b_l - b_max[:, None])
        scores = num / tl.sum(num, axis=1)[:, None]
    scores = tl.where(m_e[None, :], scores, 0.0)
    choice = scores
    if HAS_BIAS:
        # The bias moves the selection only; weights are read from `scores`.
        choice = choice + tl.load(p_bias + o_e, mask=m_e, other=0.0).to(ACC)[None, :]
    # NaN ranks above every number (as in the reference's sort), ties to the lower id: as +inf
    # here, so the arg-max never meets a NaN; its weight stays the NaN score.
    choice = tl.where(choice == choice, choice, float("inf"))
    choice = tl.where(m_e[None, :], choice, float("-inf"))
    if N_GROUP > 1:
        PER: tl.constexpr = BLOCK_E // N_GROUP
        grouped = tl.reshape(choice, (BLOCK_T, N_GROUP, PER))
        o_in = tl.arange(0, PER)[None, None, :]
        best = tl.max(grouped, axis=2)
        best_at = tl.argmax(grouped, axis=2, tie_break_left=True)
        if HAS_BIAS and PER > 1:  # with a bias: the two best; without: the best alone
            second = tl.max(tl.where(o_in == best_at[:, :, None], float("-inf"), grouped), axis=2)
            gscore = best + second  # [BLOCK_T, N_GROUP]
        else:
            gscore = best
        o_g = tl.arange(0, N_GROUP)[None, :]
        keep = tl.zeros((BLOCK_T, N_GROUP), dtype=tl.int1)
        for _ in tl.static_range(TOPK_GROUP):
            g = tl.argmax(gscore, axis=1, tie_break_left=True)
            pick = o_g == g[:, None]
            keep = keep | pick
            gscore = tl.where(pick, float("-inf"), gscore)
        allowed = tl.reshape(tl.broadcast_to(keep[:, :, None], (BLOCK_T, N_GROUP, PER)), (BLOCK_T, BLOCK_E))
        choice = tl.where(allowed, choice, float("-inf"))
    o_k = tl.arange(0, K_P2)[None, :]  # k padded to a power of two; the extra slots stay 0, unstored
    ids = tl.zeros((BLOCK_T, K_P2), dtype=tl.int32)
    w = tl.zeros((BLOCK_T, K_P2), dtype=ACC)
    for j in tl.static_range(TOP_K):
        sel = tl.argmax(choice, axis=1, tie_break_left=True)  # [BLOCK_T]
        hit = o_e[None, :] == sel[:, None]
        s_sel = tl.sum(tl.where(hit, scores, 0.0), axis=1)
        ids = tl.where(o_k == j, sel[:, None].to(tl.int32), ids)
        w = tl.where(o_k == j, s_sel[:, None], w)
        choice = tl.where(hit, float("-inf"), choice)
    if RENORM:
        w = w / tl.sum(w, axis=1)[:, None]
    w = w * scaling
    o_out = o_t[:, None] * TOP_K + o_k
    m_out = m_t[:, None] & (o_k < TOP_K)
    tl.store(p_w + o_out, w, mask=m_out)
    tl.store(p_ids + o_out, ids, mask=m_out)


def route(router_logits: Tensor, top_k: int, scoring: str, bias: Tensor | None, n_group: int, topk_group: int,
          renormalize: bool, scaling: float) -> tuple[Tensor, Tensor]:
    """Top-k routing in one kernel (see ``api.route``); weights float32 (float64 for float64 logits)."""
    T, E = router_logits.shape
    if n_group > 1 and E & (E - 1):
        raise ValueError(f"router_logits: the triton routing kernel needs E a power of two with n_group > 1, got E = {E}")
    acc = torch.float64 if router_logits.dtype == torch.float64 else torch.float32
    w = torch.empty(T, top_k, dtype=acc, device=router_logits.device)
    ids = torch.empty(T, top_k, dtype=torch.int32, device=router_logits.device)
    if T == 0:
        return w, ids
    logits = router_logits.contiguous()
    block_e = triton.next_power_of_2(E)
    block_t = max(1, min(16, 4096 // block_e))
    _route_kernel[(triton.cdiv(T, block_t),)](
        logits, bias if bias is not None else logits, w, ids, T, E, logits.stride(0), float(scaling),
        TOP_K=top_k, K_P2=triton.next_power_of_2(top_k), SIGMOID=scoring == "sigmoid", HAS_BIAS=bias is not None, N_GROUP=n_group,
        TOPK_GROUP=topk_group, RENORM=renormalize, BLOCK_T=block_t, BLOCK_E=block_e,
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
    )
    return w, ids
