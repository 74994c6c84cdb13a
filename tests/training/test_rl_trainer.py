"""The RL loop: metrics per step, atomic checkpoints, exact resume, dynamic sampling, the
recipe reward hook, and the run directory's files."""

import json

import pytest
import torch

from hysparse_kernels.models import save_pretrained
from hysparse_kernels.training import checkpoint
from hysparse_kernels.training.rl import runs
from hysparse_kernels.training.rl.policy import build_policy
from hysparse_kernels.training.rl.trainer import TIMING_KEYS, RLConfig, train_rl

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning"), pytest.mark.one_thread]

@pytest.fixture(scope="module")
def init(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "model"
    save_pretrained(build_policy("tiny-mimo-7b", seed=0), path)
    return str(path)


def digits_reward(ctx):
    """A reward a random model can earn sometimes: the share of its tokens that are digits."""
    scores = torch.tensor([sum(48 <= t <= 57 for t in r.tokens) / max(1, len(r.tokens)) for r in ctx.rollouts],
                          dtype=torch.float64)
    from hysparse_kernels.training.rl.algos import outcome_rewards

    return outcome_rewards(scores, ctx.batch["response_mask"].double())


SMALL = dict(task="arith", steps=3, prompts_per_step=2, group_size=4, eval_n=4, eval_samples=1, checkpoint_every=2,
             minibatches=2, lr=1e-3, warmup=1, kl_coef=0.04, entropy_coef=0.01)


def rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in runs.read_metrics(path / "metrics.jsonl")]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, init):
    cfg = RLConfig(**SMALL)
    full = train_rl(cfg, tmp_path / "a", init=init, rewards=digits_reward, progress=False)
    part = train_rl(cfg, tmp_path / "b", init=init, rewards=digits_reward, progress=False, stop_after=2)
    assert part == {"stopped_at": 2}
    # a crash during step 3 leaves a metrics line the checkpoint (step 2) has not seen
    runs.append_metrics(tmp_path / "b" / "metrics.jsonl", {"step": 2, "reward": -1.0})
    resumed = train_rl(cfg, tmp_path / "b", init=init, rewards=digits_reward, progress=False, resume=True)
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["step"] for r in b] == [0, 1, 2]
    assert a == b  # every metric, bit for bit (timings aside)
    assert resumed["after"] == full["after"]
    assert a[-1]["kl"] > 0 and a[0]["grad_norm"] > 0  # the policy moved
    eval_a = json.loads((tmp_path / "a" / "eval.json").read_text())
    eval_b = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert eval_a == eval_b


def test_run_directory_files_and_metrics(tmp_path, init):
    out = tmp_path / "run"
    train_rl(RLConfig(**{**SMALL, "steps": 2}), out, init=init, rewards=digits_reward, progress=False, recipe_name="grpo")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "curves.png", "eval.json", "checkpoints", "final"} <= names
    assert (out / "curves.png").stat().st_size > 5000
    assert checkpoint.latest(out).name == "step-000002"
    report = json.loads((out / "eval.json").read_text())
    assert report["recipe"] == "grpo" and report["task"] == "arith" and report["metric"] == "success"
    assert report["n_eval"] == 4 and set(report["before"]) >= {"success", "success_greedy", "reward"}
    assert report["after"]["n"] == 4
    first = runs.read_metrics(out / "metrics.jsonl")[0]
    for key in ("reward", "success", "kl", "entropy", "response_len", "clip_frac", "tokens_per_s", "t_rollout",
                "t_logprob", "t_backward", "t_optimizer"):
        assert key in first, key
    assert json.loads((out / "config.json").read_text())["init"] == init


def test_resume_refuses_other_settings_and_fresh_runs_refuse_old_checkpoints(tmp_path, init):
    out = tmp_path / "run"
    train_rl(RLConfig(**{**SMALL, "steps": 2}), out, init=init, rewards=digits_reward, progress=False, stop_after=2)
    with pytest.raises(ValueError, match="--resume: .* other settings .*lr"):
        train_rl(RLConfig(**{**SMALL, "steps": 2, "lr": 5e-3}), out, init=init, rewards=digits_reward, progress=False,
                 resume=True)
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        train_rl(RLConfig(**{**SMALL, "steps": 2}), out, init=init, rewards=digits_reward, progress=False)


def test_resume_skips_a_damaged_checkpoint(tmp_path, init):
    """A checkpoint cut short is skipped (with a warning) and the run resumes from the one before."""
    from hysparse_kernels.training.checkpoint import CheckpointWarning

    cfg = RLConfig(**{**SMALL, "checkpoint_every": 1})
    train_rl(cfg, tmp_path / "a", init=init, rewards=digits_reward, progress=False)
    train_rl(cfg, tmp_path / "b", init=init, rewards=digits_reward, progress=False, stop_after=2)
    damaged = tmp_path / "b" / "checkpoints" / "step-000002" / "trainer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.warns(CheckpointWarning, match="step-000002"):
        train_rl(cfg, tmp_path / "b", init=init, rewards=digits_reward, progress=False, resume=True)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_dynamic_sampling_keeps_only_groups_with_signal(tmp_path, init):
    out = tmp_path / "dapo"
    cfg = RLConfig(**{**SMALL, "steps": 2, "kl_coef": 0.0, "dynamic_sampling": True, "max_sampling_rounds": 2,
                      "aggregation": "token-mean", "eps_high": 0.28})
    # reward 1 for rollouts of the first prompt only: its groups have no variance and are dropped
    def first_prompt_only(ctx):
        from hysparse_kernels.training.rl.algos import outcome_rewards

        first = ctx.examples[0].id
        scores = torch.tensor([float(e.id == first and i % 2 == 0) for i, e in enumerate(ctx.examples)], dtype=torch.float64)
        return outcome_rewards(scores, ctx.batch["response_mask"].double())

    train_rl(cfg, out, init=init, rewards=first_prompt_only, progress=False)
    for r in runs.read_metrics(out / "metrics.jsonl"):
        assert r["sampling_rounds"] >= 1 and r["kept_rollouts"] % 4 == 0


def test_speculative_rollouts_train_too(tmp_path, init):
    out = tmp_path / "spec"
    train_rl(RLConfig(**{**SMALL, "steps": 1, "num_draft": 1}), out, init=init, rewards=digits_reward, progress=False)
    row = runs.read_metrics(out / "metrics.jsonl")[0]
    assert 1.0 <= row["acceptance_length"] <= 2.0 and row["logprob_gap"] < 1e-3


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="group_size: expected a positive int"):
        RLConfig(group_size=0).validate()
    with pytest.raises(ValueError, match="loss: expected one of"):
        RLConfig(loss="ppo").validate()
    with pytest.raises(ValueError, match="temperature: expected > 0"):
        RLConfig(temperature=0).validate()


def test_set_overrides_typed_fields_after_quick_and_names_bad_input():
    import argparse

    from hysparse_kernels.training.rl import cli
    from hysparse_kernels.training.rl.recipes import get_recipe

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["run", "grpo", "--out", "x", "--quick", "--set", "lr=1e-3", "--set", "kl_coef=0",
                              "--set", "eval_split=dev", "--set", "dual_clip=none", "--set", "dynamic_sampling=true"])
    cfg = cli.build_config(get_recipe("grpo"), args)
    assert (cfg.lr, cfg.kl_coef, cfg.eval_split, cfg.dual_clip, cfg.dynamic_sampling) == (1e-3, 0.0, "dev", None, True)
    assert cfg.steps == 45 and cfg.prompts_per_step == 32  # --quick (grpo's own batch) still applies underneath
    other = cli.build_config(get_recipe("faithrl"), parser.parse_args(["run", "faithrl", "--out", "x", "--quick"]))
    assert other.prompts_per_step == 16  # the other recipes keep the shared --quick batch
    pinned = cli.build_config(get_recipe("grpo"), parser.parse_args(["run", "grpo", "--out", "x", "--quick", "--set",
                                                                     "prompts_per_step=16"]))
    assert pinned.prompts_per_step == 16 and pinned.steps == 45  # recipes_compare's like-for-like grpo arm
    assert cli.parse_settings(["group-size=4"]) == {"group_size": 4}
    for bad, message in ((["lr"], "expected KEY=VALUE"), (["no_such=1"], "expected a field of RLConfig"),
                         (["steps=many"], "--set steps: expected a value of type int"),
                         (["dynamic_sampling=maybe"], "--set dynamic_sampling: expected a value of type bool")):
        with pytest.raises(ValueError, match=message):
            cli.parse_settings(bad)
    with pytest.raises(ValueError, match="eval_split: expected 'dev'"):
        RLConfig(eval_split="train").validate()
