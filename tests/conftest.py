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
def _one_thread_when_marked(request):
    """``@pytest.mark.one_thread``: tiny models gain nothing from a second intra-op thread and wait
    on a preempted one when the machine is busy."""
    if request.node.get_closest_marker("one_thread") is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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


@pytest.fixture(scope="session")
def run_ranks(tmp_path_factory):
    """``run_ranks(fn, *args, world=2, timeout=120)``: run the module-level function
    ``fn(rank, world, *args)`` on ``world`` spawned processes joined in a gloo group, and return
    each rank's result (``spawned_ranks.run``). A rank that raises fails the test with its
    traceback; ranks still running at the deadline are killed (a hang fails instead of blocking
    the suite)."""
    from spawned_ranks import run

    def run_in_tmp(fn, *args, world=2, timeout=120):
        return run(fn, *args, world=world, timeout=timeout, out=tmp_path_factory.mktemp(f"ranks-{fn.__name__}"))

    return run_in_tmp
