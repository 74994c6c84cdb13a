"""Data-parallel hooks of the RL trainer under a real two-rank gloo process group."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hysparse_kernels.training.rl import distributed


def _worker(rank: int, world: int, init: str, results):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        got = distributed.reduce_metrics({"step": 3, "reward": float(rank), "name": "x", "flag": True})
        model = distributed.wrap_model(torch.nn.Linear(2, 1))
        results[rank] = (got, distributed.rank_and_world(), distributed.rank_seed(5), type(model).__name__,
                         type(distributed.unwrap(model)).__name__, distributed.is_main())
    finally:
        dist.destroy_process_group()


def test_metrics_are_averaged_and_seeds_differ_across_ranks(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", results), nprocs=2, join=True)
        r = dict(results)
    for rank in (0, 1):
        got, rw, _, wrapped, inner, main = r[rank]
        assert got["reward"] == pytest.approx(0.5) and got["step"] == 3 and got["name"] == "x" and got["flag"] is True
        assert rw == (rank, 2) and wrapped == "DistributedDataParallel" and inner == "Linear" and main == (rank == 0)
    assert r[0][2] != r[1][2]


def test_single_process_is_the_identity():
    assert distributed.rank_and_world() == (0, 1)
    m = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(m) is m and distributed.unwrap(m) is m
    assert distributed.reduce_metrics({"a": 1.0}) == {"a": 1.0}
    assert distributed.rank_seed(7) == 7
