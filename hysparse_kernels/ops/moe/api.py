"""Public MoE functions: validate inputs, then call the registered ``hysparse`` ops.

The flow of one MoE layer (DeepSeek-V3 / MiMo-V2-Flash semantics)::

    weights, ids = route(router_logits, top_k=8, scoring="sigmoid", bias=e_bias, n_group=8, topk_group=4)
    out = moe(x, w_gate_up, w_down, weights, ids)            # fused: permute, GEMMs, combine
    # or step by step:
    x_sorted, offsets, inverse = moe_permute(x, ids, E)
    gu = grouped_gemm(x_sorted, w_gate_up, offsets)           # [T*k, 2I]
    h = silu(gu[:, :I]) * gu[:, I:]
    out = moe_unpermute(grouped_gemm(h, w_down, offsets), inverse, weights)
    e_bias = update_routing_bias(e_bias, expert_load(ids, E), rate=1e-3)

``w_gate_up [E, 2I, D]`` is **split**: rows ``[0, I)`` hold the gate projection, rows
``[I, 2I)`` the up projection (not interleaved). ``backend`` is ``None``/``"auto"``,
``"reference"``, ``"tvm"``, ``"triton"`` or ``"cutlass"`` (see ``hysparse_kernels.dispatch``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import checks
from . import ops

_SCORING = ("softmax", "sigmoid")


def _check_ids(expert_ids, T: int | None, like: Tensor) -> None:
    checks.tensor("expert_ids", expert_ids, 2, "[T, top_k]")
    checks.integer("expert_ids", expert_ids)
    checks.same_device("expert_ids", expert_ids, "x", like)
    if T is not None:
        checks.dim_equal("expert_ids", expert_ids.shape[0], T, "tokens T (x.shape[0])")


def _check_weights(weights, expert_ids) -> None:
    checks.tensor("weights", weights, 2, "[T, top_k]")
    checks.floating("weights", weights)
    checks.same_device("weights", weights, "expert_ids", expert_ids)
    if tuple(weights.shape) != tuple(expert_ids.shape):
        raise ValueError(f"weights: expected the shape of expert_ids {tuple(expert_ids.shape)}, got {tuple(weights.shape)}")


def route(router_logits, *, top_k, scoring="softmax", bias=None, n_group=1, topk_group=1, renormalize=True,
          scaling=1.0, backend=None) -> tuple[Tensor, Tensor]:
    """Pick ``top_k`` experts per token and their combine weights (router math in float32).

    * ``scoring="softmax"``: scores = softmax(logits). ``"sigmoid"``: scores = sigmoid(logits).
    * ``bias`` ``[E]`` (``e_score_correction_bias``) is added to the scores **for the selection
      only**; the weights are the unbiased scores of the chosen experts.
    * ``n_group > 1``: experts form ``n_group`` consecutive groups; only the ``topk_group`` best
      groups are eligible. A group's score: with a ``bias``, the sum of its two best biased scores
      (DeepSeek-V3 ``noaux_tc``); without one, its best score (DeepSeek-V2 ``group_limited_greedy``).
    * ``renormalize``: weights divided by their sum over the chosen k; then times ``scaling``
      (a finite number).
    * NaN logits rank above every other expert (ties to the lower id) and give NaN weights
      (with ``renormalize``, all k weights of the token): the ids stay valid.
    * Ties go to the lower expert id.

    Args:
        router_logits: ``[T, E]`` floating.

    Returns:
        weights ``[T, top_k]`` float32 (float64 for float64 logits), expert_ids int32 ``[T, top_k]``,
        best first. The weights carry a gradient to the logits; the ids none.

    Example::

        w, ids = hysparse_kernels.route(torch.randn(5, 64), top_k=8, scoring="sigmoid",
                                        bias=torch.zeros(64), n_group=8, topk_group=4, scaling=2.5)
    """
    checks.tensor("router_logits", router_logits, 2, "[T, E]")
    checks.floating("router_logits", router_logits)
    E = router_logits.shape[1]
    checks.positive_int("top_k", top_k)
    if top_k > E:
        raise ValueError(f"top_k: expected at most the number of experts E = {E}, got {top_k}")
    if scoring not in _SCORING:
        raise ValueError(f"scoring: expected one of {_SCORING}, got {scoring!r}")
    checks.positive_int("n_group", n_group)
    checks.positive_int("topk_group", topk_group)
    if E % n_group:
        raise ValueError(f"n_group: expected a divisor of the number of experts E = {E}, got {n_group}")
    if topk_group > n_group:
        raise ValueError(f"topk_group: expected at most n_group = {n_group}, got {topk_group}")
    if n_group > 1 and top_k > topk_group * (E // n_group):
        raise ValueError(
            f"top_k: expected at most topk_group * experts per group = {topk_group * (E // n_group)}, got {top_k}"
        )
    if bias is not None:
        checks.tensor("bias", bias, 1, "[E]")
        checks.floating("bias", bias)
        checks.dim_equal("bias", bias.shape[0], E, "number of experts E (router_logits.shape[1])")
        checks.same_device("bias", bias, "router_logits", router_logits)
    checks.finite_float("scaling", scaling)
    return ops.route(
        router_logits, top_k, scoring, bias, n_group, topk_group, bool(renormalize), float(scaling), checks.backend_name(backend)
    )


def moe_permute(x, expert_ids, num_experts, *, backend=None) -> tuple[Tensor, Tensor, Tensor]:
    """Group the (token, slot) pairs by expert.

    Args:
        x: ``[T, D]``; expert_ids: int ``[T, k]`` in ``[0, num_experts)``.

    Returns:
        x_sorted ``[T*k, D]`` (row ``r`` is a copy of its token; pairs of one expert are
        consecutive, in token order), expert_offsets int64 ``[E+1]`` (expert ``e`` owns rows
        ``offsets[e]:offsets[e+1]``), inverse int64 ``[T, k]`` (row of pair ``(t, j)``).

    Example::

        xs, off, inv = hysparse_kernels.moe_permute(x, ids, 64)
        assert torch.equal(xs[inv[:, 0]], x)
    """
    checks.tensor("x", x, 2, "[T, D]")
    checks.floating("x", x)
    _check_ids(expert_ids, x.shape[0], x)
    checks.positive_int("num_experts", num_experts)
    return ops.moe_permute(x, expert_ids, num_experts, checks.backend_name(backend))


def moe_unpermute(y_sorted, inverse, weights, *, backend=None) -> Tensor:
    """Weighted combine back to token order: ``out[t] = sum_j weights[t, j] * y_sorted[inverse[t, j]]``.

    Args:
        y_sorted: ``[T*k, D]``; inverse: int64 ``[T, k]`` from ``moe_permute``, rows of y_sorted in
            ``[0, T*k)`` (others raise ``ValueError``); weights: ``[T, k]``.

    Returns:
        ``[T, D]`` in y_sorted's dtype (accumulated in float32). Gradients reach y_sorted and weights.
    """
    checks.tensor("y_sorted", y_sorted, 2, "[T*k, D]")
    checks.floating("y_sorted", y_sorted)
    checks.tensor("inverse", inverse, 2, "[T, k]")
    checks.integer("inverse", inverse)
    checks.same_device("inverse", inverse, "y_sorted", y_sorted)
    _check_weights(weights, inverse)
    checks.dim_equal("y_sorted", y_sorted.shape[0], inverse.numel(), "rows T*k (inverse.numel())")
    return ops.moe_unpermute(y_sorted, inverse.long(), weights, checks.backend_name(backend))


def grouped_gemm(x_sorted, w, expert_offsets, *, backend=None) -> Tensor:
    """Per-expert GEMM over expert-sorted rows: ``y[r] = x_sorted[r] @ w[e].T`` for r in segment e.

    Args:
        x_sorted: ``[M, K]``; w: ``[E, N, K]`` (same dtype); expert_offsets: int ``[E+1]``,
            non-decreasing from 0 to M.

    Returns:
        y ``[M, N]`` in x's dtype (float32 accumulation). Gradients reach x_sorted and w.

    Example::

        y = hysparse_kernels.grouped_gemm(xs, w_gate_up, off)   # [T*k, 2I]
    """
    checks.tensor("x_sorted", x_sorted, 2, "[M, K]")
    checks.tensor("w", w, 3, "[E, N, K]")
    checks.floating("x_sorted", x_sorted)
    checks.same_dtype("w", w, "x_sorted", x_sorted)
    checks.same_device("w", w, "x_sorted", x_sorted)
    checks.dim_equal("w", w.shape[2], x_sorted.shape[1], "hidden size K (x_sorted.shape[1])")
    checks.tensor("expert_offsets", expert_offsets, 1, "[E+1]")
    checks.integer("expert_offsets", expert_offsets)
    checks.same_device("expert_offsets", expert_offsets, "x_sorted", x_sorted)
    checks.dim_equal("expert_offsets", expert_offsets.shape[0], w.shape[0] + 1, "E + 1 (w.shape[0] + 1)")
    return ops.grouped_gemm(x_sorted.contiguous(), w.contiguous(), expert_offsets.long(), checks.backend_name(backend))


def moe(x, w_gate_up, w_down, weights, expert_ids, *, backend=None) -> Tensor:
    """The routed expert MLP: ``out[t] = sum_j weights[t, j] * down_e(SiLU(gate_e x) * up_e x)``.

    Args:
        x: ``[T, D]``.
        w_gate_up: ``[E, 2I, D]``, split layout: rows ``[0, I)`` gate, ``[I, 2I)`` up.
        w_down: ``[E, D, I]``.
        weights: ``[T, k]`` floating (from ``route``); expert_ids: int ``[T, k]`` in ``[0, E)``.

    Returns:
        ``[T, D]`` in x's dtype. Gradients reach x, w_gate_up, w_down and weights.

    Example::

        w, ids = hysparse_kernels.route(x @ w_router.T, top_k=8)
        out = hysparse_kernels.moe(x, w_gate_up, w_down, w, ids)
    """
    checks.tensor("x", x, 2, "[T, D]")
    checks.tensor("w_gate_up", w_gate_up, 3, "[E, 2I, D]")
    checks.tensor("w_down", w_down, 3, "[E, D, I]")
    checks.floating("x", x)
    checks.same_dtype("w_gate_up", w_gate_up, "x", x)
    checks.same_dtype("w_down", w_down, "x", x)
    checks.same_device("w_gate_up", w_gate_up, "x", x)
    checks.same_device("w_down", w_down, "x", x)
    T, D = x.shape
    E, two_i, _ = w_gate_up.shape
    checks.dim_equal("w_gate_up", w_gate_up.shape[2], D, "hidden size D (x.shape[1])")
    checks.dim_equal("w_down", w_down.shape[0], E, "experts E (w_gate_up.shape[0])")
    checks.dim_equal("w_down", w_down.shape[1], D, "hidden size D (x.shape[1])")
    checks.dim_equal("w_gate_up", two_i, 2 * w_down.shape[2], "2 * intermediate size (2 * w_down.shape[2])")
    _check_ids(expert_ids, T, x)
    _check_weights(weights, expert_ids)
    return ops.moe_fwd(
        x.contiguous(), w_gate_up.contiguous(), w_down.contiguous(), weights.contiguous(), expert_ids.contiguous(),
        checks.backend_name(backend),
    )


def expert_load(expert_ids, num_experts) -> Tensor:
    """Tokens routed to each expert: int64 ``[E]`` (for balancing statistics and the bias update).

    ``expert_ids``: int, any shape (usually ``[T, k]`` from ``route``), values in ``[0, E)``.

    Example::

        counts = hysparse_kernels.expert_load(ids, 64)   # counts.sum() == ids.numel()
    """
    checks.tensor("expert_ids", expert_ids)
    checks.integer("expert_ids", expert_ids)
    checks.positive_int("num_experts", num_experts)
    ops.check_expert_ids(expert_ids, num_experts)
    return torch.bincount(expert_ids.reshape(-1).long(), minlength=num_experts)


def update_routing_bias(bias, counts, rate) -> Tensor:
    """Aux-loss-free load balancing, sign rule (DeepSeek-V3): ``bias + rate * sign(mean(counts) - counts)``.

    Under-loaded experts become more likely to be chosen, over-loaded ones less. Returns a new
    tensor; use it as the ``bias`` of ``route``. No gradient flows through it.

    Args:
        bias: ``[E]`` floating; counts: ``[E]`` (from ``expert_load``); rate: positive finite step.
    """
    checks.tensor("bias", bias, 1, "[E]")
    checks.floating("bias", bias)
    checks.tensor("counts", counts, 1, "[E]")
    checks.integer_or_floating("counts", counts)
    checks.dim_equal("counts", counts.shape[0], bias.shape[0], "number of experts E (bias.shape[0])")
    checks.same_device("counts", counts, "bias", bias)
    checks.positive_float("rate", rate, allow_none=False)
    with torch.no_grad():
        load = counts.to(bias.dtype)
        return bias.detach() + rate * torch.sign(load.mean() - load)
