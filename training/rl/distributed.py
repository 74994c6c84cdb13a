"""Data parallelism hooks of the RL trainer: one process here, several under ``torchrun`` later.

The trainer is written against these four functions so ranks can be added without rewriting it:
each rank draws its own prompts and rolls them out with a generator seeded by ``(seed, rank)``,
the model is wrapped by ``wrap_model`` (``DistributedDataParallel`` averages gradients when
``torch.distributed`` is initialised, gloo on CPU), metrics go through ``reduce_metrics`` (the
mean over ranks), and only the main rank writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """True in a process started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup() -> bool:
    """Join the process group ``torchrun`` describes when launched by it and none is initialised
    yet (gloo, or nccl with CUDA); returns True when this call created it (``teardown`` ends it)."""
    if not launched() or dist.is_initialized():
        return False
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return True


def teardown(owned: bool) -> None:
    if owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def wrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module the optimizer steps through: DDP over the ranks when there are several."""
    if rank_and_world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # The MTP blocks take no part in the policy's forward: their parameters get no gradient.
    return DistributedDataParallel(model, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def reduce_metrics(metrics: dict) -> dict:
    """Mean over ranks of every numeric metric (identity on one process). Every rank must call it
    with the same keys."""
    if rank_and_world()[1] == 1:
        return dict(metrics)
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    out = dict(metrics)
    out.update({k: float(v) / dist.get_world_size() for k, v in zip(keys, values.tolist())})
    return out


def rank_seed(seed: int) -> int:
    """The generator seed of this rank's prompts and rollouts."""
    return seed + 1_000_003 * rank_and_world()[0]


def step_seed(seed: int, step: int) -> int:
    """The seed of this rank's generator at ``step`` when there are several ranks."""
    return rank_seed(seed) + 7_919 * (step + 1)


def share_of_global(units: float) -> float:
    """``units * world / sum over ranks of units``: the weight that turns this rank's mean over
    its ``units`` (rows or tokens of a minibatch) into its part of the mean over every rank's,
    once DDP divides the summed gradients by ``world`` (1.0 in one process)."""
    world = rank_and_world()[1]
    if world == 1:
        return 1.0
    total = torch.tensor([float(units)], dtype=torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(units) * world / float(total) if float(total) > 0 else 0.0
