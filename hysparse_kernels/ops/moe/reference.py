"""Pure-PyTorch MoE oracle: readable, one expert at a time, float64-capable.

This is the ground truth the Triton, TVM and CUTLASS kernels are measured against, not a fast
path. Optimised code never imports this module.

Conventions (shared by every backend):

* Routing math runs in float32 (float64 when the logits are float64, for the float64 checks);
  weights come back in that dtype, expert ids as int32 ``[T, k]``.
* ``moe_permute`` orders the ``T * k`` (token, slot) pairs by expert with a *stable* sort of the
  flattened ids, so inside an expert's segment the pairs keep token order. ``expert_offsets``
  (int64 ``[E + 1]``) delimits the segments; ``inverse`` (int64 ``[T, k]``) gives, for pair
  ``(t, j)``, its row in the sorted order.
* ``w_gate_up [E, 2I, D]`` is **split**, not interleaved: rows ``[0, I)`` are the gate
  projection, rows ``[I, 2I)`` the up projection (the Hugging Face / vLLM ``w13`` layout).
  ``h = SiLU(x @ gate.T) * (x @ up.T)``, ``y = h @ w_down[e].T``.
* Products accumulate in float32 (float64 for float64 inputs); the hidden ``h`` is rounded to
  the input dtype before the down projection, as a low-precision kernel stores it; the weighted
  combine accumulates in float32 and the output takes the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- routing


def route(router_logits: Tensor, top_k: int, scoring: str, bias: Tensor | None, n_group: int, topk_group: int,
          renormalize: bool, scaling: float) -> tuple[Tensor, Tensor]:
    """Top-k routing (softmax or sigmoid scores, optional selection bias and group limit).

    router_logits ``[T, E]`` -> (weights ``[T, k]`` float32/float64, expert_ids int32 ``[T, k]``).
    Ties go to the lower expert id (``torch.topk`` on these sizes is stable; we also sort by
    (score desc, id asc) explicitly to not rely on it).
    """
    dt = acc_dtype(router_logits.dtype)
    logits = router_logits.to(dt)
    T, E = logits.shape
    scores = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
    # The bias moves the selection only; the weights are read from the unbiased scores.
    choice = scores + bias.to(dt) if bias is not None else scores
    if n_group > 1:
        per_group = E // n_group
        grouped = choice.view(T, n_group, per_group)
        if bias is not None:
            # With a selection bias (DeepSeek-V3 noaux_tc): the sum of the group's two best biased
            # scores (one when a group has one expert).
            group_score = grouped.topk(min(2, per_group), dim=-1).values.sum(-1)  # [T, n_group]
        else:
            # Without one (DeepSeek-V2 group_limited_greedy, DeepSeek-V3's gate without bias, vLLM
            # grouped_topk): the group's best score.
            group_score = grouped.amax(-1)  # [T, n_group]
        keep_groups = _topk_ids(group_score, topk_group)  # [T, topk_group]
        group_mask = torch.zeros(T, n_group, dtype=torch.bool, device=logits.device)
        group_mask.scatter_(1, keep_groups, True)
        expert_mask = group_mask[:, :, None].expand(T, n_group, per_group).reshape(T, E)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    ids = _topk_ids(choice, top_k)  # [T, k] int64
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    weights = weights * scaling
    return weights.contiguous(), ids.to(torch.int32).contiguous()


def _topk_ids(values: Tensor, k: int) -> Tensor:
    """Indices of the k largest entries per row, by value descending then index ascending."""
    # A stable descending sort keeps equal values in index order: ties go to the lower index.
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]


def expert_load(expert_ids: Tensor, num_experts: int) -> Tensor:
    """Tokens routed to each expert: int64 ``[E]``."""
    return torch.bincount(expert_ids.reshape(-1).long(), minlength=num_experts)


def update_routing_bias(bias: Tensor, counts: Tensor, rate: float) -> Tensor:
    """Aux-loss-free balancing (sign rule): under-loaded experts' bias goes up by ``rate``,
    over-loaded ones' down by ``rate``, those exactly at the mean stay."""
    load = counts.to(bias.dtype)
    return bias + rate * torch.sign(load.mean() - load)


# ---------------------------------------------------------------- permutation


def moe_permute(x: Tensor, expert_ids: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """x ``[T, D]``, expert_ids ``[T, k]`` -> x_sorted ``[T*k, D]``, offsets ``[E+1]``, inverse ``[T, k]``."""
    T, k = expert_ids.shape
    flat = expert_ids.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices  # sorted row r holds pair order[r]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(flat, minlength=num_experts)
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = counts.cumsum(0)
    x_sorted = x[order // k]
    return x_sorted.contiguous(), offsets, inverse.view(T, k)


def moe_unpermute(y_sorted: Tensor, inverse: Tensor, weights: Tensor) -> Tensor:
    """out[t] = sum_j weights[t, j] * y_sorted[inverse[t, j]]: ``[T, D]`` in y's dtype."""
    T, k = inverse.shape
    acc = acc_dtype(y_sorted.dtype)
    out = torch.zeros(T, y_sorted.shape[1], dtype=acc, device=y_sorted.device)
    for j in range(k):
        out += weights[:, j, None].to(acc) * y_sorted[inverse[:, j]].to(acc)
    return out.to(y_sorted.dtype)


# ---------------------------------------------------------------- grouped GEMM


def grouped_gemm(x_sorted: Tensor, w: Tensor, expert_offsets: Tensor) -> Tensor:
    """y[r] = x_sorted[r] @ w[e].T for the rows r of expert e's segment: ``[M, N]``."""
    acc = acc_dtype(x_sorted.dtype)
    y = torch.zeros(x_sorted.shape[0], w.shape[1], dtype=x_sorted.dtype, device=x_sorted.device)
    bounds = expert_offsets.tolist()
    for e in range(w.shape[0]):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            y[lo:hi] = (x_sorted[lo:hi].to(acc) @ w[e].to(acc).T).to(x_sorted.dtype)
    return y


def grouped_gemm_wgrad(dy: Tensor, x_sorted: Tensor, expert_offsets: Tensor, num_experts: int) -> Tensor:
    """dw[e] = dy[seg e].T @ x_sorted[seg e]: ``[E, N, K]`` (zeros for empty experts)."""
    acc = acc_dtype(x_sorted.dtype)
    dw = torch.zeros(num_experts, dy.shape[1], x_sorted.shape[1], dtype=x_sorted.dtype, device=x_sorted.device)
    bounds = expert_offsets.tolist()
    for e in range(num_experts):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            dw[e] = (dy[lo:hi].to(acc).T @ x_sorted[lo:hi].to(acc)).to(x_sorted.dtype)
    return dw


# ---------------------------------------------------------------- the expert MLP


def _expert_mlp(xe: Tensor, w_gate_up_e: Tensor, w_down_e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One expert on its rows ``[n, D]``: returns (gate, up, y) in the accumulation dtype."""
    acc = acc_dtype(xe.dtype)
    inter = w_down_e.shape[1]
    gu = xe.to(acc) @ w_gate_up_e.to(acc).T  # [n, 2I]
    gate, up = gu[:, :inter], gu[:, inter:]
    h = (F.silu(gate) * up).to(xe.dtype).to(acc)  # stored in the input dtype, as a kernel would
    y = h @ w_down_e.to(acc).T  # [n, D]
    return gate, up, y


def moe(x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor) -> Tensor:
    """out[t] = sum_j weights[t, j] * MLP_{ids[t, j]}(x[t]), one expert at a time: ``[T, D]``."""
    acc = acc_dtype(x.dtype)
    out = torch.zeros(x.shape, dtype=acc, device=x.device)
    for e in range(w_gate_up.shape[0]):
        tok, slot = (expert_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        _, _, y = _expert_mlp(x[tok], w_gate_up[e], w_down[e])
        out.index_add_(0, tok, weights[tok, slot, None].to(acc) * y)
    return out.to(x.dtype)


def moe_bwd(dout: Tensor, x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor):
    """Gradients of ``moe`` w.r.t. x, w_gate_up, w_down and weights (recomputes the forward).

    Per expert, with g = x Wg^T, u = x Wu^T, h = SiLU(g) u, y = h Wd^T, out += w y:
    dy = w dout; dw = <dout, y>; dh = dy Wd; dWd = dy^T h; dg = dh u SiLU'(g); du = dh SiLU(g);
    dx += [dg du] Wgu; dWgu = [dg du]^T x.
    """
    acc = acc_dtype(x.dtype)
    dx = torch.zeros(x.shape, dtype=acc, device=x.device)
    dwgu = torch.zeros(w_gate_up.shape, dtype=acc, device=x.device)
    dwd = torch.zeros(w_down.shape, dtype=acc, device=x.device)
    dweights = torch.zeros(weights.shape, dtype=acc, device=x.device)
    g_out = dout.to(acc)
    for e in range(w_gate_up.shape[0]):
        tok, slot = (expert_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        xe = x[tok].to(acc)
        gate, up, y = _expert_mlp(x[tok], w_gate_up[e], w_down[e])
        h = (F.silu(gate) * up).to(x.dtype).to(acc)
        we = weights[tok, slot].to(acc)
        dweights[tok, slot] = (g_out[tok] * y).sum(-1)
        dy = we[:, None] * g_out[tok]
        dwd[e] = dy.T @ h
        dh = dy @ w_down[e].to(acc)
        sig = torch.sigmoid(gate)
        dgate = dh * up * sig * (1 + gate * (1 - sig))
        dup = dh * gate * sig
        dgu = torch.cat([dgate, dup], dim=1)  # [n, 2I]
        dwgu[e] = dgu.T @ xe
        dx.index_add_(0, tok, dgu @ w_gate_up[e].to(acc))
    return dx.to(x.dtype), dwgu.to(w_gate_up.dtype), dwd.to(w_down.dtype), dweights.to(weights.dtype)
