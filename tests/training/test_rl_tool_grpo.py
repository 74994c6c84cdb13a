"""Tool-GRPO: the toolmix task (per-episode tool names, disjoint name pools, tools), the format
gate, per-call tool rewards and the gated reward (against numbers worked out by hand), the reward
hook on hand-written rollouts, the tool-use metrics, and a few steps end to end."""

import json
from types import SimpleNamespace

import pytest
import torch

from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.rl.recipes import get_recipe, tool_grpo
from hysparse_kernels.training.rl.rollout import collate
from hysparse_kernels.training.rl.tasks import get_task
from hysparse_kernels.training.rl.tasks.mixed import ROLES, name_pool

TASK = get_task("toolmix", 0)


def pick(domain: str, hops: int | None = None):
    return next(e for e in TASK.examples("train") if e.meta["domain"] == domain
                and (hops is None or (e.meta["hops"] == hops and e.meta["answerable"])))


def test_name_pools_are_disjoint_and_episodes_describe_their_tools():
    train, held = set(name_pool("train")), set(name_pool("heldout"))
    assert train and held and not train & held
    with pytest.raises(ValueError, match="names"):
        name_pool("other")
    other = get_task("toolmix", 0, names="heldout")
    for a, b in zip(TASK.examples("heldout", 20), other.examples("heldout", 20)):
        assert a.prompt.split("\n", 1)[1] == b.prompt.split("\n", 1)[1]  # same question
        assert set(a.meta["tools"]) <= train and set(b.meta["tools"]) <= held
        assert sorted(a.meta["tools"].values()) == sorted(ROLES)
        header = a.prompt.splitlines()[0]
        assert header == "tools: " + " ".join(f"{n}={r}" for n, r in a.meta["tools"].items())
        assert list(a.meta["tools"].values()) == list(ROLES)  # fixed role order, names drawn
    names = {tuple(sorted(e.meta["tools"])) for e in TASK.examples("train", 50)}
    assert len(names) > 40  # drawn per episode
    doms = [e.meta["domain"] for e in TASK.examples("heldout", 10)]
    assert doms == ["arith", "lookup"] * 5


def test_tools_and_demonstrations():
    ex = pick("arith")
    calc, rev, search = (TASK.tool_name(ex, r) for r in ("calculator", "reverse", "search"))
    assert TASK.observe(ex, f"call: {calc} 12*3+1\n") == "> 37\n"
    assert TASK.observe(ex, f"call: {rev} abc\n") == "> cba\n"
    assert TASK.observe(ex, "call: zzzq 1+1\n") == "> error: no tool zzzq\n"
    assert TASK.observe(ex, f"call: {calc} two\n") == "> error: not an expression\n"
    assert TASK.observe(ex, "answer: 3\n") is None
    lk = pick("lookup", 2)
    q = f"{lk.meta['start']} {lk.meta['path'][0]}"
    assert TASK.observe(lk, f"call: {TASK.tool_name(lk, 'search')} {q}\n") == TASK.lookup.tool_output(q)
    for e in (ex, lk):
        segs = TASK.demonstration(e)
        text = "".join(s.text for s in segs[1:])
        assert TASK.verify(e, text).outcome == "correct"
        turns = [s.text for s in segs if s.model]
        assert tool_grpo.format_ok(turns)
        assert all(TASK.call_score(e, t) == 3 for t in turns[:-1])


def test_format_gate_by_hand():
    assert tool_grpo.format_ok(["call: kev 1+2\n", "answer: 3\n"])
    assert tool_grpo.format_ok(["answer: 3\n"])  # answering without tools is well formed
    assert not tool_grpo.format_ok(["call: kev 1+2\n"])  # no answer
    assert not tool_grpo.format_ok(["kev 1+2\n", "answer: 3\n"])  # not a call
    assert not tool_grpo.format_ok(["answer: 3\n", "answer: 3\n"])  # two answers
    assert not tool_grpo.format_ok(["answer:\n"]) and not tool_grpo.format_ok([])


def test_call_score_and_rewards_by_hand():
    ex = pick("arith")
    calc, search = TASK.tool_name(ex, "calculator"), TASK.tool_name(ex, "search")
    assert TASK.call_score(ex, "search: 1+2\n") == 0  # not a call
    assert TASK.call_score(ex, "call: zzzq 1+2\n") == 1  # parses, no such tool
    assert TASK.call_score(ex, f"call: {calc} one plus two\n") == 2  # tool exists, arguments invalid
    assert TASK.call_score(ex, f"call: {calc} 1+2\n") == 3
    assert TASK.call_score(ex, f"call: {search} 1+2\n") == 2  # search wants a person and a relation
    assert tool_grpo.tool_reward([]) == 0.0
    assert tool_grpo.tool_reward([3, 1]) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="scores"):
        tool_grpo.tool_reward([4])
    # R = F (1·acc + 0.25·R_tool·(1 - acc))
    assert tool_grpo.tool_grpo_reward(True, True, 0.5) == 1.0  # correct: the fixed score, no tool credit
    assert tool_grpo.tool_grpo_reward(True, False, 4 / 6) == pytest.approx(0.25 * 4 / 6)
    assert tool_grpo.tool_grpo_reward(False, True, 1.0) == 0.0  # the gate
    assert tool_grpo.tool_grpo_reward(True, False, 1.0, lam_acc=8, lam_tool=2) == 2.0


def test_reward_hook_and_tool_metrics_on_rollouts(rollout_of):
    ex = pick("arith")
    calc, rev = TASK.tool_name(ex, "calculator"), TASK.tool_name(ex, "reverse")
    expr = f"{ex.meta['a']}{ex.meta['op']}{ex.meta['b']}"
    right = [(f"call: {calc} {expr}\n", TASK.observe(ex, f"call: {calc} {expr}\n")), (f"answer: {ex.answer}\n", None)]
    distracted = [(f"call: {rev} {expr}\n", TASK.observe(ex, f"call: {rev} {expr}\n")),
                  ("call: zzzq 1\n", "> error: no tool zzzq\n"), ("answer: 100000\n", None)]
    broken = [(f"call: {calc} {expr}\n", TASK.observe(ex, f"call: {calc} {expr}\n")), ("I think 5\n", None)]
    rollouts = [rollout_of(ex.prompt, t) for t in (right, distracted, broken)]
    tok = ByteTokenizer()
    verdicts = [TASK.verify(ex, tok.decode(r.tokens)) for r in rollouts]
    assert [v.outcome for v in verdicts] == ["correct", "wrong", "invalid"]
    batch = collate(rollouts, tok.pad)
    ctx = SimpleNamespace(task=TASK, examples=[ex] * 3, rollouts=rollouts, verdicts=verdicts, batch=batch, metrics={})
    rewards = tool_grpo.ToolRewards()(ctx)
    # right: 1; distracted: gate passes, calls 3 and 1 -> R_tool 4/6 -> 0.25 * 4/6; broken: gate fails
    torch.testing.assert_close(rewards.sum(-1), torch.tensor([1.0, 0.25 * 4 / 6, 0.0], dtype=torch.float64))
    assert ctx.metrics["format_ok"] == pytest.approx(2 / 3) and ctx.metrics["tool_calls"] == pytest.approx(4 / 3)
    m = TASK.rollout_metrics([ex] * 3, rollouts, verdicts)
    assert m["calls_arith_calculator"] == pytest.approx(2 / 3) and m["calls_arith_reverse"] == pytest.approx(1 / 3)
    assert m["calls_arith_unknown"] == pytest.approx(1 / 3) and m["used_arith_search"] == 0.0
    assert "calls_lookup_search" not in m and m["format_ok"] == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                            "ignore::hysparse_kernels.tuned.TunedConfigWarning")
def test_tool_grpo_run_end_to_end(tmp_path):
    """Two steps on a tiny random model through the recipe's run: every file, the tool metrics
    in eval.json (both name pools) and metrics.jsonl."""
    from hysparse_kernels.models import save_pretrained
    from hysparse_kernels.training.rl.policy import build_policy
    from hysparse_kernels.training.rl.trainer import RLConfig

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        init = tmp_path / "init"
        save_pretrained(build_policy("tiny-mimo-7b", seed=0), init)
        recipe = get_recipe("tool_grpo")
        cfg = RLConfig(**{**recipe.overrides, "recipe": "tool_grpo", "task": "toolmix", "init_from": str(init),
                          "steps": 2, "prompts_per_step": 2, "group_size": 3, "eval_n": 4, "eval_samples": 1})
        out = tmp_path / "run"
        summary = recipe.run(SimpleNamespace(out=str(out), resume=False, no_progress=True), recipe, cfg)
    finally:
        torch.set_num_threads(n)
    for name in ("config.json", "metrics.jsonl", "curves.png", "eval.json", "final"):
        assert (out / name).exists(), name
    report = json.loads((out / "eval.json").read_text())
    for r in (report["before"], report["after"], report["heldout_names"]["before"], report["heldout_names"]["after"]):
        assert {"success_arith", "success_lookup", "format_ok", "calls_arith_calculator", "calls_lookup_search",
                "calls_lookup_reverse"} <= set(r)
    assert summary["heldout_names_after"] == report["heldout_names"]["after"]["success"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"format_ok", "tool_reward", "tool_calls"} <= set(r) for r in rows)
