"""MoE expert parallelism: the experts of each MoE layer sharded over an expert-parallel group of
ranks, tokens sent to the ranks that hold their experts and back with ``all_to_all_single``.

With ``P`` ranks in the group and ``E`` experts, rank ``p`` holds experts ``[p*L, (p+1)*L)``
(``L = E / P``): the stacked weights ``experts.gate_up_proj [E, 2I, D]`` and
``experts.down_proj [E, D, I]`` become ``DTensor`` s sharded on dim 0 over the group's
``DeviceMesh`` and ``experts.expert_group`` names the group (``shard_experts``), so a distributed checkpoint stores them under their global
shapes and loads them on any number of ranks. The router stays whole on every rank.

One MoE call (``expert_parallel_moe``) on each rank, for its own tokens ``x [T, D]``:

1. ``hk.moe_permute`` groups the ``T * k`` (token, slot) rows by expert; the rows for the experts
   of rank ``p`` are one contiguous run (experts are numbered rank by rank).
2. The rows per expert are exchanged first (``all_to_all_single`` of ``[E]`` counts), so every
   rank knows how many rows it sends to and receives from each other rank.
3. ``all_to_all_single`` sends the rows (autograd-aware: its backward is the reverse exchange).
4. The received rows run through ``hk.moe`` with this rank's ``L`` experts (each row one slot of
   weight 1 to its local expert), i.e. the same grouped-GEMM kernels as one process uses.
5. The outputs go back by the reverse ``all_to_all_single`` and ``hk.moe_unpermute`` combines them
   with the routing weights in token order.

The backward runs the same path in reverse, so expert gradients collect the contributions of the
tokens of every rank in the group and the router's gradient those of this rank's tokens. A rank
may receive no rows for some (or all) of its experts: their gradient is then zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_to_all_single as all_to_all_autograd

import hysparse_kernels as hk
from hysparse_kernels.ir import MoE

__all__ = ["Dispatch", "expert_parallel_moe", "shard_experts"]


@dataclass(frozen=True)
class Dispatch:
    """Rows one call exchanged: ``sent[p]`` rows of this rank's (token, slot) pairs went to rank
    ``p``, ``received[p]`` rows came from rank ``p`` (the entry of this rank itself is a local copy).
    Each row is ``hidden`` values of ``element_size`` bytes, sent out and back in the forward and
    once more each way in the backward."""

    sent: tuple[int, ...]
    received: tuple[int, ...]
    rank: int
    hidden: int
    element_size: int

    def bytes_sent(self, *, include_self: bool = False) -> int:
        """Bytes this rank sends in the forward dispatch and combine (the backward sends as many again)."""
        rows_out = sum(n for p, n in enumerate(self.sent) if include_self or p != self.rank)
        rows_back = sum(n for p, n in enumerate(self.received) if include_self or p != self.rank)
        return (rows_out + rows_back) * self.hidden * self.element_size


def expert_parallel_moe(x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor,
                        group=None) -> tuple[Tensor, Dispatch]:
    """The routed expert MLP of ``hk.moe`` with the experts spread over the ranks of ``group``.

    Args:
        x: ``[T, D]`` this rank's tokens.
        w_gate_up: ``[L, 2I, D]`` and w_down ``[L, D, I]``: this rank's ``L`` experts, global ids
            ``rank * L + j`` (split layout as in ``hk.moe``).
        weights: ``[T, k]`` combine weights; expert_ids: int ``[T, k]`` global ids in ``[0, L * P)``.
        group: the expert-parallel process group (default: the whole world).

    Returns:
        ``(out [T, D], Dispatch)``: ``out`` equals ``hk.moe(x, W_gate_up, W_down, weights, expert_ids)``
        with the full stacked weights; gradients reach x, weights and this rank's expert weights.
    """
    P, rank = dist.get_world_size(group), dist.get_rank(group)
    L, T, D = w_gate_up.shape[0], x.shape[0], x.shape[1]
    if w_down.shape[0] != L:
        raise ValueError(f"w_down: expected {L} local experts (w_gate_up.shape[0]), got {w_down.shape[0]}")
    E = L * P
    x_sorted, offsets, inverse = hk.moe_permute(x, expert_ids, E)  # [T*k, D], [E+1], [T, k]
    counts = offsets.diff()  # [E] rows per global expert, experts of rank p at [p*L, (p+1)*L)
    recv_counts = torch.empty_like(counts)  # [P*L]: from rank p, rows for each of my L experts
    dist.all_to_all_single(recv_counts, counts, group=group)
    sent = counts.view(P, L).sum(1).tolist()
    received = recv_counts.view(P, L).sum(1).tolist()
    rows = x_sorted.new_empty(sum(received), D)
    rows = all_to_all_autograd(rows, x_sorted, received, sent, group=group)  # by source rank, then local expert
    local_ids = torch.repeat_interleave(torch.arange(L, device=x.device).repeat(P), recv_counts.to(x.device))
    ones = torch.ones(rows.shape[0], 1, dtype=x.dtype, device=x.device)
    y = hk.moe(rows, w_gate_up, w_down, ones, local_ids[:, None].to(torch.int32))  # [R, D]
    back = y.new_empty(T * expert_ids.shape[1], D)
    back = all_to_all_autograd(back, y, sent, received, group=group)  # rows in x_sorted's order
    out = hk.moe_unpermute(back, inverse, weights)
    return out, Dispatch(tuple(sent), tuple(received), rank, D, x.element_size())


def shard_experts(model: nn.Module, ep_mesh) -> list[nn.Module]:
    """Shard the stacked experts of every MoE block of ``model`` over the 1-D ``DeviceMesh`` ``ep_mesh``
    (dim 0, expert by expert); the values are taken from the group's first rank. Returns the
    ``StackedExperts`` modules it sharded. The number of experts must be a multiple of the mesh size."""
    from torch.distributed.tensor import Shard, distribute_tensor

    if ep_mesh.ndim != 1:
        raise ValueError(f"ep_mesh: expected a 1-D DeviceMesh, got {ep_mesh.ndim} dimensions")
    P = ep_mesh.size()
    done = []
    for name, block in model.named_modules():
        if not (isinstance(getattr(block, "spec", None), MoE) and hasattr(block, "experts")):
            continue  # a MoE block (models.moe.MoEBlock) is the module with an ir.MoE spec and experts
        E = block.spec.num_experts
        if E % P:
            raise ValueError(f"expert parallel size: expected a divisor of {name}'s {E} experts, got {P}")
        experts = block.experts
        for pname, p in list(experts.named_parameters(recurse=False)):
            sharded = distribute_tensor(p.detach(), ep_mesh, [Shard(0)])
            experts.register_parameter(pname, nn.Parameter(sharded, requires_grad=p.requires_grad))
        experts.expert_group = ep_mesh.get_group()
        done.append(experts)
    return done
