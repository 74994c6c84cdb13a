"""Training on several processes with PyTorch's own distributed engine (``torchrun``).

``torchrun --nproc-per-node N -m hysparse_kernels.training.pretrain ...`` starts N processes;
each calls ``setup``, which joins the process group (backend from the device: gloo for CPU
tensors, nccl for CUDA ones) and describes the ranks with a ``DeviceMesh``:

* ``dp`` (data parallel, all ``N`` ranks): every rank trains on its own part of each global
  batch; gradients are averaged over ranks, by FSDP2 (``fully_shard``: parameters, gradients and
  optimizer state sharded, each decoder block gathered for its forward and backward) or by DDP
  (a full replica per rank, gradients all-reduced).
* ``ep`` (expert parallel, ``ep`` ranks, a divisor of ``N``): the routed experts of each MoE layer
  are split over ``ep`` ranks (``models.expert_parallel``); tokens travel to their experts.
  The mesh of the experts is 2-D, ``("edp", "ep")`` of shape ``(N / ep, ep)``: FSDP shards each
  rank's experts over ``edp``, the ranks that hold the same experts.

Without ``torchrun`` (no ``RANK`` / ``WORLD_SIZE`` in the environment) ``setup`` returns a
one-process ``Parallel`` and nothing distributed happens.

Gradients equal those of one process over the whole batch: the loss of each rank is a mean over
its equal share of the batch, DDP and FSDP divide the summed gradients by ``N``, and the experts'
FSDP (over only ``N / ep`` ranks, their tokens already gathered from the ``ep`` group by the
all-to-all) is told to divide by ``N`` too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

DATA_PARALLEL = ("fsdp", "ddp")


@dataclass
class Parallel:
    """Where this process stands: ``rank`` of ``world`` ranks on ``device``; ``data_parallel``
    (``fsdp`` / ``ddp``) and ``expert_parallel`` (ranks per expert group); the meshes (None in one
    process): ``dp_mesh`` 1-D over all ranks, ``expert_mesh`` 2-D ``("edp", "ep")`` when
    ``expert_parallel > 1``. ``owns_group``: ``setup`` created the process group (``teardown``
    destroys it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    data_parallel: str = "fsdp"
    expert_parallel: int = 1
    dp_mesh: object = None
    expert_mesh: object = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """True when a process group is in use (any number of ranks, one included)."""
        return self.dp_mesh is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, metrics, plots and the files of a checkpoint's folder."""
        return self.rank == 0


def launched() -> bool:
    """True in a process started by ``torchrun`` (or with its environment: ``RANK``, ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend_for(device: torch.device) -> str:
    """gloo for CPU tensors; with CUDA, nccl for CUDA tensors and gloo for the CPU ones."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def setup(data_parallel: str = "fsdp", expert_parallel: int = 1) -> Parallel:
    """Join the process group ``torchrun`` describes (or use the one already initialised) and build
    the meshes; one process without either. The device is ``cuda:LOCAL_RANK`` where CUDA is
    available, else the CPU."""
    if data_parallel not in DATA_PARALLEL:
        raise ValueError(f"--data-parallel: expected one of {DATA_PARALLEL}, got {data_parallel!r}")
    if isinstance(expert_parallel, bool) or not isinstance(expert_parallel, int) or expert_parallel < 1:
        raise ValueError(f"--expert-parallel: expected a positive int, got {expert_parallel!r}")
    if not dist.is_initialized() and not launched():
        if expert_parallel > 1:
            raise ValueError(f"--expert-parallel: {expert_parallel} ranks per expert group needs several processes "
                             f"(start with torchrun --nproc-per-node N, or --nproc N)")
        return Parallel(data_parallel=data_parallel)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend_for(device))
    rank, world = dist.get_rank(), dist.get_world_size()
    if world % expert_parallel:
        raise ValueError(f"--expert-parallel: expected a divisor of the {world} ranks, got {expert_parallel}")
    if expert_parallel > 1 and data_parallel != "fsdp":
        raise ValueError("--expert-parallel: expert parallelism composes with --data-parallel fsdp only "
                         f"(got {data_parallel}); the experts' gradients are reduced by FSDP")
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    dp_mesh = DeviceMesh.from_group(dist.group.WORLD, device.type, mesh_dim_names=("dp",))
    expert_mesh = None
    if expert_parallel > 1:
        expert_mesh = init_device_mesh(device.type, (world // expert_parallel, expert_parallel),
                                       mesh_dim_names=("edp", "ep"))
    return Parallel(rank, world, local_rank, device, data_parallel, expert_parallel, dp_mesh, expert_mesh, owns)


def teardown(par: Parallel) -> None:
    """Leave the process group if ``setup`` created it."""
    if par.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder layers and MTP blocks of a zoo model: the units FSDP gathers one at a time."""
    layers = list(model.model.layers)
    mtp = getattr(model.model, "mtp", None)
    return layers + (list(mtp.layers) if mtp is not None else [])


def parallelize(root: nn.Module, model: nn.Module, par: Parallel) -> nn.Module:
    """Spread ``root`` (a module whose forward runs ``model`` and returns the losses) over the ranks.

    ``expert_parallel > 1``: the experts of each MoE block are sharded over the ``ep`` ranks and
    FSDP-sharded over ``edp``. Then FSDP2 (``fully_shard`` on each block, then on ``root``; the
    embedding, final norm and LM head form the root's group) or DDP. Returns the module to call
    (``root`` itself under FSDP2; the DDP wrapper under DDP). Call before building the optimizer.
    """
    if not par.distributed:
        return root
    if par.data_parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(root, device_ids=[par.device.index] if par.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    from hysparse_kernels.models.expert_parallel import shard_experts
    from hysparse_kernels.models.moe import MoEBlock

    ignored: set = set()
    if par.expert_mesh is not None:
        shard_experts(model, par.expert_mesh["ep"])
    edp = par.world // par.expert_parallel
    for block in blocks(model):
        if par.expert_mesh is not None and isinstance(block.mlp, MoEBlock):
            experts = block.mlp.experts
            if edp > 1:
                fully_shard(experts, mesh=par.expert_mesh["edp"])
                # Each rank's expert gradients already sum the ep group's tokens: divide by all N ranks.
                experts.set_gradient_divide_factor(float(par.world))
            else:
                # Every rank holds other experts: nothing to reduce, only the mean over N ranks to take.
                # (FSDP over a one-rank mesh is not used: it skips or doubles the division there.)
                for p in experts.parameters():
                    ignored.add(p)
                    p.register_hook(_divide_by(par.world))
        fully_shard(block, mesh=par.dp_mesh, ignored_params=ignored or None)
    fully_shard(root, mesh=par.dp_mesh, ignored_params=ignored or None)
    return root


def _divide_by(n: int):
    def hook(grad: Tensor) -> Tensor:
        return grad / n

    return hook


def clip_grad_norm_(params: list[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters that may be DTensors on different meshes
    (FSDP's data-parallel mesh and the experts' 2-D mesh): the norm of each mesh's gradients is
    reduced over its ranks, then they combine into the total norm every rank agrees on."""
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    by_mesh: dict[object, list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_mesh.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
    norms = []
    for group in by_mesh.values():
        norm = get_total_norm([p.grad for p in group])
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    for group in by_mesh.values():  # one foreach per mesh: DTensor ops do not mix meshes
        clip_grads_with_norm_(group, max_norm, total)
    return total


def all_reduce_sum_(tensors: list[Tensor], par: Parallel) -> None:
    """Sum each tensor over all ranks, in place (one collective for all of them)."""
    if not par.distributed or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    start = 0
    for t in tensors:
        t.copy_(flat[start:start + t.numel()].view_as(t).to(t.dtype))
        start += t.numel()


def mean_over_ranks(values: list[float], par: Parallel) -> list[float]:
    """The mean over ranks of each value (every rank gets the same list; identity in one process)."""
    if not par.distributed or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / par.world).tolist()


def barrier(par: Parallel) -> None:
    if par.distributed:
        dist.barrier()
