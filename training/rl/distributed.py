"""Data parallelism hooks of the RL trainer: one process here, several under ``torchrun`` later.

The trainer is written against these four functions so ranks can be added without rewriting it:
each rank draws its own prompts and rolls them out with a generator seeded by ``(seed, rank)``,
the model is wrapped by ``wrap_model`` (``DistributedDataParallel`` averages gradients when
``torch.distributed`` is initialised, gloo on CPU), metrics go through ``reduce_metrics`` (the
mean over ranks), and only the main rank writes files.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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

    return DistributedDataParallel(model)


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
