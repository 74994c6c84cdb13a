"""Test set-up: Triton's interpreter on machines without a GPU, caches inside the work area,
and the `gpu` marker skipped cleanly where there is no CUDA device."""

import os
import pathlib

import torch

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if not torch.cuda.is_available():
    # Must be set before triton is first imported; kernels then run on numpy (correctness only).
    os.environ.setdefault("TRITON_INTERPRET", "1")
for _var, _sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("HYSPARSE_CACHE", "hysparse")):
    os.environ.setdefault(_var, str(_ROOT / ".cache" / _sub))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Property-based tests (hypothesis): the same examples on every run and machine (derandomize, no
# example database, no deadline: nothing depends on timing); each test sets its max_examples.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "hysparse", derandomize=True, database=None, deadline=None, max_examples=20, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile("hysparse")


# --------------------------------------------------------------------------- several ranks


def _free_port() -> int:
    import socket

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


@pytest.fixture(scope="session")
def run_ranks(tmp_path_factory):
    """``run_ranks(fn, *args, world=2, timeout=120)``: run the module-level function
    ``fn(rank, world, *args)`` on ``world`` spawned processes joined in a gloo group, and return
    each rank's result. A rank that raises fails the test with its traceback; ranks still running
    at the deadline are killed (a hang fails instead of blocking the suite)."""
    import time

    import torch.multiprocessing as mp

    def run(fn, *args, world=2, timeout=120):
        out = tmp_path_factory.mktemp(f"ranks-{fn.__name__}")
        ctx = mp.start_processes(_rank_main, args=(fn, world, _free_port(), str(out), args), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for p in ctx.processes:
                    p.kill()
                raise AssertionError(f"{fn.__name__}: ranks still running after {timeout} s (killed)")
        return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]

    return run
