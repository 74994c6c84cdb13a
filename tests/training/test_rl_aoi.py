"""The AoI update-control environment (dynamics worked out by hand), its classic policies, the
grouped episode collection, and the aoi recipe end to end."""

import json
from types import SimpleNamespace

import pytest
import torch

gym = pytest.importorskip("gymnasium")

from hysparse_kernels.training.rl.envs.aoi import (AoIConfig, AoIEnv, fixed_period, run_policy, sweep,  # noqa: E402
                                                   threshold, zero_wait)
from hysparse_kernels.training.rl.recipes import aoi, get_recipe  # noqa: E402
from hysparse_kernels.training.rl.trainer import RLConfig  # noqa: E402

FIXED = AoIConfig(horizon=8, cost_weight=2.0, erasure=0.0, delays=(2,), delay_probs=(1.0,))


def test_passes_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    check_env(AoIEnv(), skip_render_check=True)


def test_a_threshold_policy_reads_as_one_in_idle_actions():
    policy = aoi.UpdatePolicy()
    # hand-set weights: wait logit 0, transmit logit tanh(tanh(age / 64)) - tanh(tanh(4.5 / 64)),
    # positive from age 5 on
    with torch.no_grad():
        for layer in policy.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        policy.net[0].weight[0, 0] = 1.0
        policy.net[2].weight[0, 0] = 1.0
        policy.net[4].weight[1, 0] = 1.0
        policy.net[4].bias[1] = -float(torch.tanh(torch.tanh(torch.tensor(4.5 / 64))))
    assert aoi.idle_actions(policy, 64) == [0] * 4 + [1] * 60


def test_dynamics_by_hand():
    # delay 2, no erasure, λ = 2, start age 1. Transmit at slot 0, wait, transmit at 2 (idle again).
    env = AoIEnv(FIXED)
    env.reset(seed=0)
    steps = [env.step(a) for a in (1, 0, 1, 1, 0, 0, 0, 0)]
    ages = [info["age"] for *_, info in steps]
    costs = [info["cost"] for *_, info in steps]
    # slot 0: sent (age 1 -> 2); slot 1: arrives with age 2; slot 2: sent, 3; slot 3: busy (ignored,
    # free), arrives: 2; then 3, 4, 5, 6
    assert ages == [2, 2, 3, 2, 3, 4, 5, 6]
    assert costs == [1, 0, 1, 0, 0, 0, 0, 0]
    assert [r for _, r, *_ in steps] == [-(2 + 2), -2, -(3 + 2), -2, -3, -4, -5, -6]
    assert [t for *_, t, _ in steps] == [False] * 7 + [True]
    obs, _ = env.reset(seed=0, options={"age": 5})
    assert obs.tolist() == pytest.approx([5 / 64, 0.0, 0.0]) and env.age == 5
    obs, *_ = env.step(1)
    assert obs.tolist() == pytest.approx([6 / 64, 1.0, 0.5])  # busy, one of two slots in flight


def test_erasure_keeps_the_age_growing():
    env = AoIEnv(AoIConfig(horizon=4, erasure=0.999999, delays=(1,), delay_probs=(1.0,)))
    env.reset(seed=3)
    assert [env.step(1)[4]["age"] for _ in range(4)] == [2, 3, 4, 5]  # every update lost


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="delay_probs"):
        AoIConfig(delays=(1, 2), delay_probs=(0.5, 0.6))
    with pytest.raises(ValueError, match="erasure"):
        AoIConfig(erasure=1.0)
    with pytest.raises(ValueError, match="action"):
        AoIEnv().step(2)
    with pytest.raises(ValueError, match="tau"):
        threshold(0)


def test_classic_policies_by_hand():
    # delay 2, no loss: zero-wait sends at slots 0, 2, 4, 6 -> ages 2, 2, 3, 2, 3, 2, 3, 2
    zw = run_policy(zero_wait, FIXED, episodes=2, trace=True)
    assert zw["ages"] == [2, 2, 3, 2, 3, 2, 3, 2]
    assert zw["aoi"] == pytest.approx(19 / 8) and zw["cost"] == pytest.approx(4 / 8)
    assert zw["reward"] == pytest.approx(-(zw["aoi"] + 2.0 * zw["cost"]))
    # threshold 3 from age 1: wait, wait, send at slot 2 (age 3), arrives at slot 3, ...
    th = run_policy(threshold(3), FIXED, episodes=1, trace=True)
    assert th["ages"] == [2, 3, 4, 2, 3, 4, 2, 3]
    # period 4: sends at slots 0 and 4
    fp = run_policy(fixed_period(4), FIXED, episodes=1, trace=True)
    assert fp["ages"] == [2, 2, 3, 4, 5, 2, 3, 4]
    best, table = sweep(threshold, [1, 2, 3, 4], FIXED, episodes=1, seed=0)
    assert [row["value"] for row in table] == [1, 2, 3, 4]
    assert best == max(table, key=lambda r: r["reward"])["value"]


def test_groups_share_their_start_state():
    policy = aoi.UpdatePolicy()
    batch = aoi.collect(policy, AoIConfig(horizon=20), starts=[3, 17], group_size=4,
                        generator=torch.Generator().manual_seed(0), seed=5)
    assert batch["rewards"].shape == (8, 20) and batch["obs"].shape == (8, 20, 3)
    assert torch.equal(batch["group"], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert batch["obs"][:4, 0, 0].eq(3 / 64).all() and batch["obs"][4:, 0, 0].eq(17 / 64).all()
    # the mask is 1 exactly where the channel was idle; the return counts every slot
    assert torch.equal(batch["mask"], 1 - batch["obs"][..., 1].double())
    torch.testing.assert_close(batch["rewards"], -(batch["ages"] + 10.0 * batch["cost"]))
    assert (batch["cost"] <= batch["mask"]).all()  # a transmission starts only on an idle slot


def test_aoi_recipe_end_to_end(tmp_path):
    recipe = get_recipe("aoi")
    cfg = RLConfig(**{**recipe.overrides, "recipe": "aoi", "task": "aoi", "steps": 3, "prompts_per_step": 2,
                      "group_size": 3, "eval_n": 2})
    out = tmp_path / "aoi"
    summary = recipe.run(SimpleNamespace(out=str(out), resume=False, no_progress=True), recipe, cfg)
    for name in ("config.json", "metrics.jsonl", "curves.png", "aoi.png", "eval.json", "policy.pt"):
        assert (out / name).exists(), name
    report = json.loads((out / "eval.json").read_text())
    assert set(report["baselines"]) == {"zero_wait", "fixed_period", "threshold"}
    best = max(report["sweeps"]["threshold"], key=lambda r: r["reward"])
    assert report["baselines"]["threshold"]["tau"] == best["value"]
    assert summary["after"] == report["after"]["reward"]
    assert len(report["after"]["idle_actions"]) == 64 and set(report["after"]["idle_actions"]) <= {0, 1}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="--out"):
        recipe.run(SimpleNamespace(out=str(out), resume=False, no_progress=True), recipe, cfg)


def test_aoi_cli_errors_are_one_line(tmp_path, capsys):
    from hysparse_kernels import cli

    assert cli.main(["recipe", "run", "aoi", "--out", str(tmp_path / "a"), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["recipe", "run", "aoi", "--out", str(tmp_path / "a"), "--init-from", str(tmp_path)]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert cli.main(["recipe", "run", "aoi", "--task", "lookup", "--out", str(tmp_path / "a")]) == 2
    assert "--task" in capsys.readouterr().err
