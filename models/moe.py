"""MoE FFN of the zoo: router (with the selection-only correction bias), stacked experts run by
``hysparse_kernels.moe``, optional shared experts, and the load statistics for balancing.

Routing follows the graph's ``MoE`` spec: scores (softmax or sigmoid), the correction bias for
the selection only, group-limited selection (``hysparse_kernels.route``: a group scored by the
sum of its two best biased scores with a bias, by its best score without), the top-k weights
renormalised when ``renormalize`` (Hugging Face ``norm_topk_prob``), then scaled.

With ``expert_parallel.shard_experts`` the stacked experts are sharded over an expert-parallel
group of ranks and the routed rows travel to their experts' ranks and back (``expert_parallel_moe``).

Experts are stored stacked (``experts.gate_up_proj [E, 2I, D]``, split layout: gate rows first;
``experts.down_proj [E, D, I]``); ``models.loading`` maps them to and from the per-expert
Hugging Face names (``mlp.experts.{e}.gate_proj.weight``, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import hysparse_kernels as hk
from hysparse_kernels.ir import Dense, MoE
from .expert_parallel import Dispatch, expert_parallel_moe
from .layers import SwiGLU, compute_dtype


class Router(nn.Module):
    """``weight [E, D]``; ``e_score_correction_bias [E]`` (a buffer: updated by the sign rule, not by gradients)."""

    def __init__(self, spec: MoE, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(spec.num_experts, hidden))
        nn.init.normal_(self.weight, std=0.02)
        if spec.correction_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(spec.num_experts))
        else:
            self.e_score_correction_bias = None


class StackedExperts(nn.Module):
    """``gate_up_proj [E, 2I, D]``, ``down_proj [E, D, I]``; ``expert_group``: the process group
    they are sharded over (``expert_parallel.shard_experts``), None when whole."""

    def __init__(self, spec: MoE, hidden: int):
        super().__init__()
        self.expert_group = None
        E, inter = spec.num_experts, spec.intermediate
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * inter, hidden) * 0.02)
        self.down_proj = nn.Parameter(torch.randn(E, hidden, inter) * 0.02)


class MoEBlock(nn.Module):
    """``forward(x [B, S, D]) -> [B, S, D]``; ``last_load`` holds the tokens per expert of the last call
    (this rank's tokens), ``last_dispatch`` the rows exchanged when the experts are expert-parallel."""

    def __init__(self, spec: MoE, hidden: int):
        super().__init__()
        self.spec = spec
        self.gate = Router(spec, hidden)
        self.experts = StackedExperts(spec, hidden)
        self.shared_experts = SwiGLU(hidden, spec.intermediate * spec.shared_experts) if spec.shared_experts else None
        self.last_load: Tensor | None = None
        self.last_dispatch: Dispatch | None = None

    def forward(self, x: Tensor) -> Tensor:
        s = self.spec
        B, S, D = x.shape
        flat = x.reshape(B * S, D)
        ct = compute_dtype(x.dtype)  # router math in at least float32; float64 stays float64
        logits = flat.to(ct) @ self.gate.weight.to(ct).T
        weights, ids = hk.route(logits, top_k=s.top_k, scoring=s.scoring, bias=self.gate.e_score_correction_bias,
                                n_group=s.n_group, topk_group=s.topk_group, renormalize=s.renormalize,
                                scaling=s.routed_scaling)
        self.last_load = hk.expert_load(ids, s.num_experts).detach()
        w_gate_up, w_down = self.experts.gate_up_proj, self.experts.down_proj
        group = self.experts.expert_group
        if group is not None:  # experts spread over ranks (expert_parallel.shard_experts): DTensors
            out, self.last_dispatch = expert_parallel_moe(flat, w_gate_up.to_local(), w_down.to_local(),
                                                          weights.to(x.dtype), ids, group)
        else:
            out = hk.moe(flat, w_gate_up, w_down, weights.to(x.dtype), ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(B, S, D)

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """Aux-loss-free balancing: move the correction bias by the sign rule from ``last_load``."""
        bias = self.gate.e_score_correction_bias
        if bias is None or self.last_load is None:
            return
        bias.copy_(hk.update_routing_bias(bias, self.last_load, rate))


def ffn_for(spec, hidden: int) -> nn.Module:
    """The FFN of layer ``spec`` (an ``ir.LayerSpec``): a dense ``SwiGLU`` or a ``MoEBlock``."""
    if isinstance(spec.ffn, Dense):
        return SwiGLU(hidden, spec.ffn.intermediate)
    return MoEBlock(spec.ffn, hidden)
