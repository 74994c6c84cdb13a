"""Functions on several spawned processes joined in a gloo group (the ``run_ranks`` fixture).

A module of its own, not ``conftest``: spawned children unpickle ``_rank_main`` by its module's
name, and ``conftest`` names several modules in one test session.
"""

import os
import pathlib
import socket
import time

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, fn, world, port, out_dir, args):
    """One spawned rank: join a gloo group of ``world``, run ``fn(rank, world, *args)``, save its result."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, pathlib.Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run(fn, *args, world: int, timeout: float, out: pathlib.Path) -> list:
    """Run ``fn(rank, world, *args)`` on ``world`` spawned ranks; their results (saved under ``out``) by rank."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_rank_main, args=(fn, world, _free_port(), str(out), args), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"{fn.__name__}: ranks still running after {timeout} s (killed)")
    return [torch.load(pathlib.Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]
