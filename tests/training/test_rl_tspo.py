"""TSPO: turn returns and turn-level advantages, the variance metrics (against numbers worked out
by hand), and the first-occurrence reward on hand-written rollouts."""

import math
from types import SimpleNamespace

import pytest
import torch

from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.rl.algos import AdvantageInput, AlgoConfig, get_advantage
from hysparse_kernels.training.rl.recipes import tspo
from hysparse_kernels.training.rl.rollout import collate
from hysparse_kernels.training.rl.tasks import get_task

TASK = get_task("lookup", 0)

# Three rollouts of one group. Token layout: turn 0 (2 model tokens, 1 observation token),
# turn 1 (1 model token, 1 observation token), turn 2 (1 model token); row 2 stops after turn 1.
MASK = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 0]], dtype=torch.float64)
TURNS = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 2], [0, 0, 0, 1, -1, -1]])
# row 0: FOLR 0.5 on turn 1, outcome 1 on turn 2; row 1: FOLR only; row 2: nothing
REWARDS = torch.tensor([[0, 0, 0, 0.5, 0, 1], [0, 0, 0, 0.5, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float64)


def test_turn_returns_by_hand():
    G, has = tspo.turn_returns(REWARDS, MASK, TURNS)
    torch.testing.assert_close(G, torch.tensor([[1.5, 1.5, 1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    assert has.tolist() == [[True, True, True], [True, True, True], [True, True, False]]


def test_turn_level_advantage_by_hand():
    # turns 0 and 1: returns 1.5, 0.5, 0 -> mean 2/3, unbiased std sqrt((25 + 1 + 16) / 36 / 2) = sqrt(21) / 6
    # turn 2: only rows 0 and 1 have it: returns 1, 0 -> mean 0.5, std sqrt(1/2)
    s = math.sqrt(21) / 6
    a0, a1, a2 = (1.5 - 2 / 3) / s, (0.5 - 2 / 3) / s, (0 - 2 / 3) / s
    b = 0.5 / math.sqrt(0.5)
    want = torch.tensor([[a0, a0, 0, a0, 0, b], [a1, a1, 0, a1, 0, -b], [a2, a2, 0, a2, 0, 0]], dtype=torch.float64)
    inp = AdvantageInput(REWARDS, MASK, torch.tensor([0, 0, 0]), turn_ids=TURNS)
    got = get_advantage("tspo_turn")(inp, AlgoConfig(advantage="tspo_turn", std_eps=0.0))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # GRPO would give each row one advantage; a group with equal returns at every turn gets none
    same = AdvantageInput(torch.tensor([[0, 0, 1.0]] * 2, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64),
                          torch.tensor([4, 4]), turn_ids=torch.tensor([[0, 1, 1]] * 2))
    assert float(get_advantage("tspo_turn")(same, AlgoConfig()).abs().sum()) == 0.0
    with pytest.raises(ValueError, match="turn_ids"):
        get_advantage("tspo_turn")(AdvantageInput(REWARDS, MASK, torch.tensor([0, 0, 0])), AlgoConfig())


def test_variance_stats_by_hand():
    # group 0: 1, 1 (variance 0); group 1: 0, 0.5 (unbiased variance 0.125)
    var, zero = tspo.variance_stats(torch.tensor([1.0, 1.0, 0.0, 0.5]), torch.tensor([0, 0, 1, 1]))
    assert var == pytest.approx(0.0625) and zero == 0.5


def test_first_occurrence_reward_on_rollouts(rollout_of):
    ex = next(e for e in TASK.examples("train") if e.meta["answerable"] and e.meta["hops"] == 2
              and not TASK.gold_in(e, TASK.tool_output(f"{e.meta['start']} {e.meta['path'][0]}")))
    start, (r1, r2), chain = ex.meta["start"], ex.meta["path"], ex.meta["chain"]
    wrong = next(p for p in TASK.base.entities if p != ex.answer)
    hop1 = (f"search: {start} {r1}\n", TASK.tool_output(f"{start} {r1}"))
    hop2 = (f"search: {chain[1]} {r2}\n", TASK.tool_output(f"{chain[1]} {r2}"))
    assert TASK.gold_in(ex, hop2[1])
    rollouts = [rollout_of(ex.prompt, t) for t in ([hop1, hop2, (f"answer: {ex.answer}\n", None)],  # found, right
                                                   [hop1, hop2, (f"answer: {wrong}\n", None)],  # found, then wrong
                                                   [hop1, (f"answer: {wrong}\n", None)])]  # never found
    tok = ByteTokenizer()
    verdicts = [TASK.verify(ex, tok.decode(r.tokens)) for r in rollouts]
    assert [v.outcome for v in verdicts] == ["correct", "wrong", "wrong"]
    batch = collate(rollouts, tok.pad)
    ctx = SimpleNamespace(task=TASK, examples=[ex] * 3, rollouts=rollouts, verdicts=verdicts, batch=batch,
                          config=SimpleNamespace(group_size=3), step_ids=None, extra={}, metrics={})
    rewards = tspo.FolrRewards(lam=0.5)(ctx)
    torch.testing.assert_close(rewards.sum(-1), torch.tensor([1.5, 0.5, 0.0], dtype=torch.float64))
    # the FOLR sits on the last model token of turn 1 (the search that retrieved the answer)
    mask, tid = batch["response_mask"], batch["turn_ids"]
    for i in (0, 1):
        last_of_turn1 = int(((tid[i] == 1) & (mask[i] > 0)).nonzero().max())
        assert float(rewards[i, last_of_turn1]) == 0.5
    # outcome alone: 1, 0, 0 (variance 1/3); with FOLR: 1.5, 0.5, 0 (variance 7/12)
    assert ctx.metrics["outcome_reward_var"] == pytest.approx(1 / 3)
    assert ctx.metrics["reward_var"] == pytest.approx(7 / 12)
    assert ctx.metrics["zero_var_groups"] == 0.0 and ctx.metrics["folr_rate"] == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                            "ignore::hysparse_kernels.tuned.TunedConfigWarning")
def test_tspo_run_end_to_end(tmp_path):
    """A few steps on a tiny random model through the recipe's overrides and hook: every file, the
    variance metrics per step."""
    import json

    from hysparse_kernels.models import save_pretrained
    from hysparse_kernels.training.rl.policy import build_policy
    from hysparse_kernels.training.rl.recipes import get_recipe
    from hysparse_kernels.training.rl.trainer import RLConfig, train_rl

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        init = tmp_path / "init"
        save_pretrained(build_policy("tiny-mimo-7b", seed=0), init)
        recipe = get_recipe("tspo")
        cfg = RLConfig(**{**recipe.overrides, "recipe": "tspo", "task": "lookup", "steps": 2, "prompts_per_step": 2,
                          "group_size": 3, "eval_n": 3, "eval_samples": 1})
        train_rl(cfg, tmp_path / "run", init=str(init), rewards=recipe.rewards, progress=False, recipe_name="tspo")
    finally:
        torch.set_num_threads(n)
    out = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "curves.png", "eval.json", "final"):
        assert (out / name).exists(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = ("reward_var", "zero_var_groups", "outcome_reward_var", "outcome_zero_var_groups", "folr_rate")
    assert len(rows) == 2 and all(k in r for r in rows for k in keys)
    assert all(0 <= r["zero_var_groups"] <= 1 for r in rows)
