"""torch.library registration of the MoE ops (namespace ``hysparse``).

Each op resolves its backend when it runs (see ``hysparse_kernels.dispatch``). This module imports
no backend: implementations are registered by import path and loaded on first use.

Ops (outputs are new tensors; nothing is mutated):

* ``hysparse::route(router_logits, top_k, scoring, bias?, n_group, topk_group, renormalize,
  scaling, backend) -> (weights, expert_ids)``; differentiable in the weights w.r.t. the logits
  (the ids and the selection bias get no gradient).
* ``hysparse::moe_permute(x, expert_ids, num_experts, backend) -> (x_sorted, expert_offsets, inverse)``
* ``hysparse::moe_unpermute(y_sorted, inverse, weights, backend) -> out``
* ``hysparse::grouped_gemm(x_sorted, w, expert_offsets, backend) -> y_sorted`` and its weight
  gradient ``hysparse::grouped_gemm_wgrad(dy, x_sorted, expert_offsets, num_experts, backend) -> dw``
* ``hysparse::moe_fwd(x, w_gate_up, w_down, weights, expert_ids, backend) -> out`` and
  ``hysparse::moe_bwd(dout, ...) -> (dx, dw_gate_up, dw_down, dweights)``
"""

from __future__ import annotations

import pathlib
from typing import Optional

import torch
from torch import Tensor

from ... import dispatch, tuned

_PKG = "hysparse_kernels.ops.moe"
_REF = f"{_PKG}.reference"
_REFERENCE = {
    "route": "route",
    "moe_permute": "moe_permute",
    "moe_unpermute": "moe_unpermute",
    "grouped_gemm": "grouped_gemm",
    "grouped_gemm_wgrad": "grouped_gemm_wgrad",
    "moe_fwd": "moe",
    "moe_bwd": "moe_bwd",
}
for _op, _fn in _REFERENCE.items():
    dispatch.register(_op, "reference", f"{_REF}:{_fn}")
# The kernel sources whose hash keys each backend's tuned configs of these ops.
_HERE = pathlib.Path(__file__).parent
tuned.register_sources("moe", _REFERENCE, {"tvm": [_HERE / "tvm"], "triton": [_HERE / "triton"]})

# Optimised backends (forward kernels; the backward passes run where a backend has them, else on
# the reference, see `dispatch.backward_backend`).
dispatch.register("moe_fwd", "tvm", f"{_PKG}.tvm.moe:moe")
dispatch.register("grouped_gemm", "tvm", f"{_PKG}.tvm.moe:grouped_gemm")
dispatch.register("moe_fwd", "triton", f"{_PKG}.triton.moe:moe")
dispatch.register("grouped_gemm", "triton", f"{_PKG}.triton.moe:grouped_gemm")
dispatch.register("route", "triton", f"{_PKG}.triton.route:route")
# CUTLASS: 16-bit operands with 16-byte aligned rows; other inputs run on the next backend (Triton).
dispatch.register("grouped_gemm", "cutlass", f"{_PKG}.cutlass.grouped_gemm:grouped_gemm", dtypes=(torch.bfloat16, torch.float16),
                  accepts=f"{_PKG}.cutlass.grouped_gemm:accepts_grouped_gemm")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_expert_ids(expert_ids: Tensor, num_experts: int) -> None:
    """Values of ``expert_ids`` must lie in ``[0, num_experts)`` (checked at run time, not traced)."""
    if expert_ids.numel() and (bool((expert_ids < 0).any()) or bool((expert_ids >= num_experts).any())):
        lo, hi = int(expert_ids.min()), int(expert_ids.max())
        raise ValueError(f"expert_ids: expected ids in [0, {num_experts}), got values in [{lo}, {hi}]")


def check_inverse(inverse: Tensor, rows: int) -> None:
    """Values of ``inverse`` must be rows of ``y_sorted``, ``[0, rows)`` (checked at run time, not
    traced): a negative value would silently read from the end, a large one fail deep in indexing."""
    if inverse.numel() and (bool((inverse < 0).any()) or bool((inverse >= rows).any())):
        lo, hi = int(inverse.min()), int(inverse.max())
        raise ValueError(f"inverse: expected rows of y_sorted in [0, {rows}), got values in [{lo}, {hi}]")


def check_offsets(expert_offsets: Tensor, rows: int) -> None:
    """``expert_offsets`` must start at 0, never decrease and end at the number of rows."""
    off = expert_offsets
    if int(off[0]) != 0 or int(off[-1]) != rows or bool((off[1:] < off[:-1]).any()):
        raise ValueError(
            f"expert_offsets: expected non-decreasing offsets from 0 to {rows} (the rows of x_sorted), "
            f"got {off.tolist() if off.numel() <= 16 else f'[{int(off[0])}, ..., {int(off[-1])}]'}"
        )


# ---------------------------------------------------------------- routing


@torch.library.custom_op("hysparse::route", mutates_args=())
def route(
    router_logits: Tensor, top_k: int, scoring: str, bias: Optional[Tensor], n_group: int, topk_group: int,
    renormalize: bool, scaling: float, backend: str,
) -> tuple[Tensor, Tensor]:
    weights, ids = dispatch.call(
        "route", backend, router_logits.device.type,
        router_logits, top_k, scoring, bias, n_group, topk_group, renormalize, scaling,
    )
    return weights.contiguous(), ids.contiguous()


@route.register_fake
def _(router_logits, top_k, scoring, bias, n_group, topk_group, renormalize, scaling, backend):
    T = router_logits.shape[0]
    return (
        router_logits.new_empty(T, top_k, dtype=_acc(router_logits.dtype)),
        router_logits.new_empty(T, top_k, dtype=torch.int32),
    )


def _route_setup(ctx, inputs, output):
    router_logits, top_k, scoring, bias, n_group, topk_group, renormalize, scaling, backend = inputs
    ctx.save_for_backward(router_logits, output[1])
    ctx.args = (scoring, renormalize, scaling)


def _route_backward(ctx, dweights, dids):
    # w_j = c * p_j / S with p = scores[ids], S = sum_j p_j (S = 1 without renormalisation).
    logits, ids = ctx.saved_tensors
    scoring, renormalize, scaling = ctx.args
    if dweights is None:
        return (None,) * 9
    acc = _acc(logits.dtype)
    lg = logits.to(acc)
    scores = lg.softmax(-1) if scoring == "softmax" else lg.sigmoid()
    idx = ids.long()
    p = scores.gather(1, idx)
    g = dweights.to(acc) * scaling
    if renormalize:
        s = p.sum(-1, keepdim=True)
        dp = g / s - (g * p).sum(-1, keepdim=True) / (s * s)
    else:
        dp = g
    dscores = torch.zeros_like(scores).scatter_add_(1, idx, dp)
    if scoring == "softmax":
        dlogits = scores * (dscores - (scores * dscores).sum(-1, keepdim=True))
    else:
        dlogits = dscores * scores * (1 - scores)
    return dlogits.to(logits.dtype), None, None, None, None, None, None, None, None


route.register_autograd(_route_backward, setup_context=_route_setup)


# ---------------------------------------------------------------- permutation


@torch.library.custom_op("hysparse::moe_permute", mutates_args=())
def moe_permute(x: Tensor, expert_ids: Tensor, num_experts: int, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    check_expert_ids(expert_ids, num_experts)
    xs, off, inv = dispatch.call("moe_permute", backend, x.device.type, x, expert_ids, num_experts)
    return xs.contiguous(), off.contiguous(), inv.contiguous()


@moe_permute.register_fake
def _(x, expert_ids, num_experts, backend):
    T, k = expert_ids.shape
    return (
        x.new_empty(T * k, x.shape[1]),
        x.new_empty(num_experts + 1, dtype=torch.int64),
        x.new_empty(T, k, dtype=torch.int64),
    )


def _permute_setup(ctx, inputs, output):
    ctx.save_for_backward(output[2])


def _permute_backward(ctx, dx_sorted, doffsets, dinverse):
    (inverse,) = ctx.saved_tensors
    if dx_sorted is None:
        return None, None, None, None
    # Each token was copied to k rows: its gradient is the sum of theirs.
    dx = dx_sorted[inverse.reshape(-1)].view(*inverse.shape, -1).sum(1)
    return dx, None, None, None


moe_permute.register_autograd(_permute_backward, setup_context=_permute_setup)


@torch.library.custom_op("hysparse::moe_unpermute", mutates_args=())
def moe_unpermute(y_sorted: Tensor, inverse: Tensor, weights: Tensor, backend: str) -> Tensor:
    check_inverse(inverse, y_sorted.shape[0])
    out = dispatch.call("moe_unpermute", backend, y_sorted.device.type, y_sorted, inverse, weights)
    return out.contiguous()


@moe_unpermute.register_fake
def _(y_sorted, inverse, weights, backend):
    return y_sorted.new_empty(inverse.shape[0], y_sorted.shape[1])


def _unpermute_setup(ctx, inputs, output):
    y_sorted, inverse, weights, backend = inputs
    ctx.save_for_backward(y_sorted, inverse, weights)


def _unpermute_backward(ctx, dout):
    y_sorted, inverse, weights = ctx.saved_tensors
    acc = _acc(y_sorted.dtype)
    flat = inverse.reshape(-1)
    g = dout.to(acc)[:, None, :]  # [T, 1, D]
    dy = torch.zeros(y_sorted.shape, dtype=acc, device=y_sorted.device)
    dy[flat] = (weights.to(acc)[:, :, None] * g).reshape(flat.numel(), -1)
    dweights = (y_sorted[flat].to(acc).view(*inverse.shape, -1) * g).sum(-1)
    return dy.to(y_sorted.dtype), None, dweights.to(weights.dtype), None


moe_unpermute.register_autograd(_unpermute_backward, setup_context=_unpermute_setup)


# ---------------------------------------------------------------- grouped GEMM


@torch.library.custom_op("hysparse::grouped_gemm", mutates_args=())
def grouped_gemm(x_sorted: Tensor, w: Tensor, expert_offsets: Tensor, backend: str) -> Tensor:
    check_offsets(expert_offsets, x_sorted.shape[0])
    y = dispatch.call("grouped_gemm", backend, x_sorted.device.type, x_sorted, w, expert_offsets)
    return y.contiguous()


@grouped_gemm.register_fake
def _(x_sorted, w, expert_offsets, backend):
    return x_sorted.new_empty(x_sorted.shape[0], w.shape[1])


@torch.library.custom_op("hysparse::grouped_gemm_wgrad", mutates_args=())
def grouped_gemm_wgrad(dy: Tensor, x_sorted: Tensor, expert_offsets: Tensor, num_experts: int, backend: str) -> Tensor:
    dw = dispatch.call(
        "grouped_gemm_wgrad", backend, dy.device.type, dy, x_sorted, expert_offsets, num_experts
    )
    return dw.contiguous()


@grouped_gemm_wgrad.register_fake
def _(dy, x_sorted, expert_offsets, num_experts, backend):
    return dy.new_empty(num_experts, dy.shape[1], x_sorted.shape[1])


def _gg_setup(ctx, inputs, output):
    x_sorted, w, expert_offsets, backend = inputs
    ctx.save_for_backward(x_sorted, w, expert_offsets)
    ctx.backend = backend


def _gg_backward(ctx, dy):
    x_sorted, w, offsets = ctx.saved_tensors
    # dx = dy @ w[e] per segment: the same grouped GEMM with w transposed to [E, K, N].
    dx = grouped_gemm(dy.contiguous(), w.transpose(1, 2).contiguous(), offsets,
                      dispatch.backward_backend("grouped_gemm", ctx.backend))
    dw = grouped_gemm_wgrad(dy.contiguous(), x_sorted, offsets, w.shape[0],
                            dispatch.backward_backend("grouped_gemm_wgrad", ctx.backend))
    return dx, dw, None, None


grouped_gemm.register_autograd(_gg_backward, setup_context=_gg_setup)


# ---------------------------------------------------------------- the fused expert MLP


@torch.library.custom_op("hysparse::moe_fwd", mutates_args=())
def moe_fwd(x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor, backend: str) -> Tensor:
    check_expert_ids(expert_ids, w_gate_up.shape[0])
    out = dispatch.call("moe_fwd", backend, x.device.type, x, w_gate_up, w_down, weights, expert_ids)
    return out.contiguous()


@moe_fwd.register_fake
def _(x, w_gate_up, w_down, weights, expert_ids, backend):
    return torch.empty_like(x)


@torch.library.custom_op("hysparse::moe_bwd", mutates_args=())
def moe_bwd(
    dout: Tensor, x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dwgu, dwd, dw = dispatch.call(
        "moe_bwd", backend, x.device.type, dout, x, w_gate_up, w_down, weights, expert_ids
    )
    return dx.contiguous(), dwgu.contiguous(), dwd.contiguous(), dw.contiguous()


@moe_bwd.register_fake
def _(dout, x, w_gate_up, w_down, weights, expert_ids, backend):
    return torch.empty_like(x), torch.empty_like(w_gate_up), torch.empty_like(w_down), torch.empty_like(weights)


def _moe_setup(ctx, inputs, output):
    x, w_gate_up, w_down, weights, expert_ids, backend = inputs
    ctx.save_for_backward(x, w_gate_up, w_down, weights, expert_ids)
    ctx.backend = backend


def _moe_backward(ctx, dout):
    x, w_gate_up, w_down, weights, expert_ids = ctx.saved_tensors
    dx, dwgu, dwd, dw = moe_bwd(
        dout.contiguous(), x, w_gate_up, w_down, weights, expert_ids, dispatch.backward_backend("moe_bwd", ctx.backend)
    )
    return dx, dwgu, dwd, dw, None, None


moe_fwd.register_autograd(_moe_backward, setup_context=_moe_setup)
