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


# --------------------------------------------------------------------------- the trainer on 2 ranks

SMALL = dict(task="arith", prompts_per_step=2, group_size=3, eval_n=2, eval_samples=1, minibatches=1, lr=1e-2,
             warmup=1, kl_coef=0.04, entropy_coef=0.01)
AGGREGATIONS = ("seq-mean-token-mean", "token-mean")  # token-mean: ranks hold different token counts


def _digits_reward(ctx):
    """A reward a random model earns sometimes: the share of its tokens that are digits."""
    from hysparse_kernels.training.rl.algos import outcome_rewards

    scores = torch.tensor([sum(48 <= t <= 57 for t in r.tokens) / max(1, len(r.tokens)) for r in ctx.rollouts],
                          dtype=torch.float64)
    return outcome_rewards(scores, ctx.batch["response_mask"].double())


def _trainer_rank(rank, world, init):
    """Two steps of the trainer for each aggregation: this rank's rollouts and the weights after each step."""
    from hysparse_kernels.training.rl.trainer import RLConfig, Trainer

    torch.set_num_threads(1)
    got = {}
    for aggregation in AGGREGATIONS:
        trainer = Trainer(RLConfig(**SMALL, aggregation=aggregation), init, _digits_reward)
        steps = []
        for step in range(2):
            collected = trainer.collect(step)
            collected.pop("metrics")
            trainer.update(step, **collected)
            steps.append({"collected": collected,
                          "weights": {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}})
        got[aggregation] = steps
    return got


@pytest.fixture(scope="module")
def init64(tmp_path_factory):
    from hysparse_kernels.models import save_pretrained
    from hysparse_kernels.training.rl.policy import build_policy

    path = tmp_path_factory.mktemp("init64") / "model"
    save_pretrained(build_policy("tiny-mimo-7b", seed=0).double(), path)
    return str(path)


@pytest.fixture(scope="module")
def trained(run_ranks, init64):
    """Both aggregations on one pair of spawned ranks (starting ranks costs more than the steps)."""
    return run_ranks(_trainer_rank, init64, timeout=300)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_two_ranks_update_as_one_process_on_the_union_of_their_rollouts(trained, init64, aggregation):
    """Each rank rolls out its own prompts; after every step the weights of both ranks equal those
    of one process updated on the union of both ranks' rollouts (float64)."""
    from hysparse_kernels.training.rl.trainer import RLConfig, Trainer

    ranks = [r[aggregation] for r in trained]
    one = Trainer(RLConfig(**SMALL, aggregation=aggregation), init64, _digits_reward)
    for step in range(2):
        parts = [r[step]["collected"] for r in ranks]
        assert [x.tokens for x in parts[0]["rollouts"]] != [x.tokens for x in parts[1]["rollouts"]]
        shift = max(parts[0]["groups"]) + 1
        union = {k: parts[0][k] + (parts[1][k] if k != "groups" else [g + shift for g in parts[1][k]]) for k in parts[0]}
        one.update(step, **union)
        for r in ranks:
            for k, v in one.policy.state_dict().items():
                torch.testing.assert_close(r[step]["weights"][k], v, rtol=1e-10, atol=1e-12, msg=k)



def _resume_rank(rank, world, init, out):
    """On 2 ranks: a 2-step run, and one stopped after step 1 then resumed; the metrics of both."""
    from pathlib import Path

    from hysparse_kernels.training.rl import runs
    from hysparse_kernels.training.rl.trainer import TIMING_KEYS, RLConfig, train_rl

    torch.set_num_threads(1)
    cfg = RLConfig(**{**SMALL, "steps": 2, "checkpoint_every": 1})
    train_rl(cfg, Path(out) / "whole", init=init, rewards=_digits_reward, progress=False)
    train_rl(cfg, Path(out) / "cut", init=init, rewards=_digits_reward, progress=False, stop_after=1)
    train_rl(cfg, Path(out) / "cut", init=init, rewards=_digits_reward, progress=False, resume=True)
    if rank:
        return None
    return [[{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in runs.read_metrics(Path(out) / name / "metrics.jsonl")]
            for name in ("whole", "cut")]


@pytest.mark.slow  # three runs with evaluations on 2 ranks
def test_two_ranks_resume_to_the_uninterrupted_metrics(run_ranks, init64, tmp_path):
    whole, cut = run_ranks(_resume_rank, init64, str(tmp_path), timeout=300)[0]
    assert [r["step"] for r in whole] == [0, 1]
    assert whole == cut


@pytest.mark.slow  # torchrun processes
def test_recipe_run_with_nproc_runs_on_two_ranks(init64, tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "grpo"
    cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", "grpo", "--out", str(out), "--task", "arith",
           "--steps", "2", "--init-from", init64, "--eval-n", "2", "--no-progress", "--nproc", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HYSPARSE_BACKEND": "reference"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(json.loads(proc.stdout[proc.stdout.index("{"):])) >= {"before", "after", "out"}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert (out / "final").is_dir() and (out / "eval.json").is_file() and (out / "curves.png").is_file()
