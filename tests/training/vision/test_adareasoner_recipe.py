"""`hysparse recipe run adareasoner` end to end on tiny settings, and a Tool-GRPO step on a
hand-made group whose rewards differ."""

import json

import pytest
import torch

from hysparse_kernels import cli
from hysparse_kernels.models.vision.multimodal import VisionConfig, VisionLM, save_vision_lm
from hysparse_kernels.training.rl.trainer import RLConfig
from hysparse_kernels.training.vision.agent import ToolGRPO, evaluate
from hysparse_kernels.training.vision.episodes import make_episodes
from hysparse_kernels.training.vision.rollout import Limits

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning"), pytest.mark.one_thread]


def test_tool_grpo_step_updates_and_reports():
    torch.manual_seed(0)
    model = VisionLM(VisionConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RLConfig(group_size=2, prompts_per_step=2, minibatches=1, lr=1e-3, warmup=1)
    rl = ToolGRPO(model, cfg, Limits(max_new_tokens=8, max_total_tokens=16, max_turns=2))
    m = rl.step(0, make_episodes(("maze", "jigsaw"), "train", 1), torch.Generator().manual_seed(0))
    assert {"reward", "success", "format_ok", "tool_reward", "pg_loss", "grad_norm"} <= set(m)
    # all-zero rewards give zero advantages: the PPO loss and its gradient are 0, the weights unmoved
    assert m["reward"] == 0.0 and m["grad_norm"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ev = evaluate(model, make_episodes(("maze",), "test", 2), Limits(max_new_tokens=8, max_total_tokens=16))
    assert ev["n"] == 2 and 0.0 <= ev["success"] <= 1.0 and "success_greedy_maze" in ev and "calls_maze_planner" in ev


@pytest.mark.slow
def test_recipe_runs_end_to_end(tmp_path, capsys):
    init = tmp_path / "init"
    torch.manual_seed(0)
    save_vision_lm(VisionLM(VisionConfig()), init)
    out = tmp_path / "run"
    assert cli.main(["recipe", "run", "adareasoner", "--out", str(out), "--quick", "--init-from", str(init),
                     "--steps", "1", "--eval-n", "1", "--no-progress", "--set", "prompts_per_step=2",
                     "--set", "group_size=2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"tools", "unseen", "notools", "out"}
    for name in ("config.json", "metrics.jsonl", "curves.png", "eval.json", "grid.png", "final/vision.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "eval.json").read_text())
    for ck in ("before", "after"):
        for cond in ("tools", "unseen", "notools"):
            assert report[ck][cond]["n"] == 3 and "success_greedy" in report[ck][cond]
    assert report["after"]["notools"]["calls_maze_planner"] == 0.0  # nothing offered: any call is unknown


def test_recipe_refuses_resume(tmp_path, capsys):
    assert cli.main(["recipe", "run", "adareasoner", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
