"""FaithRL: the geometric reward, THS, the step verifier, the step-modulated advantage (each
against numbers worked out by hand), the reward hook on real rollouts, and a run end to end."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from hysparse_kernels.models import save_pretrained
from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.rl.algos import AdvantageInput, AlgoConfig, get_advantage
from hysparse_kernels.training.rl.policy import build_policy
from hysparse_kernels.training.rl.recipes import faithrl, get_recipe
from hysparse_kernels.training.rl.rollout import collate
from hysparse_kernels.training.rl.tasks import get_task

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning")

TASK = get_task("lookup", 0)


def pick(answerable: bool, hops: int):
    return next(e for e in TASK.examples("train") if e.meta["answerable"] == answerable and e.meta["hops"] == hops)


def test_geometric_reward_by_hand():
    got = faithrl.geometric_scores(["correct", "wrong", "abstain", "invalid"], x0=0.5, y0=0.25)
    torch.testing.assert_close(got, torch.tensor([0.25, -0.5, 0.0, -0.5], dtype=torch.float64))


def test_ths_by_hand():
    # x1 = 0.6, y1 = 0.1 against x0 = 0.5, y0 = 0.25: (0.6 * 0.25 - 0.1 * 0.5) / 0.25 = 0.4
    assert faithrl.ths(0.6, 0.1, 0.5, 0.25) == pytest.approx(0.4, abs=1e-12)
    assert faithrl.ths(0.5, 0.25, 0.5, 0.25) == pytest.approx(0.0, abs=1e-12)  # the start scores 0
    assert faithrl.ths(1.0, 0.0, 0.5, 0.25) == pytest.approx(1.0, abs=1e-12)  # all correct scores 1
    # expected geometric reward = y0 * THS: rates 0.6 / 0.1 / 0.3 give 0.6 * 0.25 - 0.1 * 0.5 = 0.1
    assert 0.6 * 0.25 - 0.1 * 0.5 == pytest.approx(0.25 * faithrl.ths(0.6, 0.1, 0.5, 0.25))
    with pytest.raises(ValueError, match="y0"):
        faithrl.ths(0.5, 0.1, 0.5, 0.0)
    assert faithrl.hallucination_rate({"rate_wrong": 0.2, "rate_invalid": 0.05, "rate_abstain": 0.3}) == 0.25


def test_step_verifier_on_hand_written_rollouts():
    ex = pick(True, 3)
    start, (r1, r2, r3) = ex.meta["start"], ex.meta["path"]
    a, b = ex.meta["chain"][1], ex.meta["chain"][2]
    answer = f"answer: {ex.answer}\n"
    # the demonstration: every step supported, the answer is no step
    assert TASK.judge_steps(ex, [f"search: {start} {r1}\n", f"search: {a} {r2}\n", f"search: {b} {r3}\n", answer]) == \
        [True, True, True, None]
    # a person the base does not give for the previous query (here: the start again) is unsupported
    other = next(p for p in TASK.base.entities if p not in (a, start) and not TASK.base.check(start, r1, p))
    assert TASK.judge_steps(ex, [f"search: {start} {r1}\n", f"search: {other} {r2}\n", answer]) == [True, False, None]
    # step 1 must start from the question's person
    assert TASK.judge_steps(ex, [f"search: {a} {r1}\n", answer]) == [False, None]
    # a repeated step is a near-duplicate: unsupported; so is a line that is no search
    assert TASK.judge_steps(ex, [f"search: {start} {r1}\n", f"search: {start} {r1}\n", "hmm\n", answer]) == \
        [True, False, False, None]
    # unparsable lines that differ in one character are near-duplicates (difflib ratio > 0.8)
    assert TASK.judge_steps(ex, ["think about it\n", "think about it!\n"]) == [False, False]


def test_step_verifier_flags_a_person_invented_after_none():
    ex = pick(False, 2)
    hop = ex.meta["missing_hop"]
    assert hop == 0 or hop == 1
    start, path, chain = ex.meta["start"], ex.meta["path"], ex.meta["chain"]
    turns = [f"search: {chain[i]} {path[i]}\n" for i in range(hop + 1)]
    invented = next(p for p in TASK.base.entities if p != chain[hop])
    labels = TASK.judge_steps(ex, turns + [f"search: {invented} {path[-1]}\n", "answer: unknown\n"])
    assert labels == [True] * (hop + 1) + [False, None]


def test_faithrl_advantage_by_hand():
    # one group of two rollouts, scores y0 = 0.25 (correct) and -x0 = -0.5 (wrong): mean -0.125,
    # unbiased std sqrt(2 * 0.375^2) = 0.53033, A = +-0.375 / 0.53033 = +-1/sqrt(2)
    # tokens per row: step 0 (2 tokens), step 1 (1 token), answer (1 token), padding
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.float64)
    rewards = torch.zeros(2, 5, dtype=torch.float64)
    rewards[0, 3], rewards[1, 3] = 0.25, -0.5
    step_ids = torch.tensor([[0, 0, 1, -1, -1], [0, 0, 1, -1, -1]])
    supported = torch.tensor([[1, 0], [1, 0]])  # step 0 supported, step 1 not, in both rows
    inp = AdvantageInput(rewards, mask, torch.tensor([0, 0]), step_ids=step_ids,
                         extra={"step_supported": supported, "alpha": 0.75})
    got = get_advantage("faithrl")(inp, AlgoConfig(advantage="faithrl", std_eps=0.0))
    a = 1 / math.sqrt(2)
    want = torch.tensor([[a, a, 0.75 * a, a, 0],  # A > 0: the unsupported step is damped
                         [-0.75 * a, -0.75 * a, -a, -a, 0]],  # A <= 0: the supported step is damped
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # without step ids it is GRPO; labels missing or misshapen are named
    plain = AdvantageInput(rewards, mask, torch.tensor([0, 0]))
    torch.testing.assert_close(get_advantage("faithrl")(plain, AlgoConfig()), get_advantage("grpo")(plain, AlgoConfig()))
    with pytest.raises(ValueError, match="step_supported"):
        get_advantage("faithrl")(AdvantageInput(rewards, mask, torch.tensor([0, 0]), step_ids=step_ids), AlgoConfig())
    with pytest.raises(ValueError, match="step_supported"):
        get_advantage("faithrl")(AdvantageInput(rewards, mask, torch.tensor([0, 0]), step_ids=step_ids,
                                                extra={"step_supported": torch.ones(3, 2)}), AlgoConfig())


def test_reward_hook_on_rollouts(rollout_of):
    ex = pick(True, 2)
    start, (r1, r2), chain = ex.meta["start"], ex.meta["path"], ex.meta["chain"]
    wrong = next(p for p in TASK.base.entities if p != ex.answer)
    good = [(f"search: {start} {r1}\n", TASK.tool_output(f"{start} {r1}")),
            (f"search: {chain[1]} {r2}\n", TASK.tool_output(f"{chain[1]} {r2}")), (f"answer: {ex.answer}\n", None)]
    bad = [(f"search: {start} {r1}\n", TASK.tool_output(f"{start} {r1}")), (f"answer: {wrong}\n", None)]
    shy = [(f"search: {start} {r1}\n", TASK.tool_output(f"{start} {r1}")), ("answer: unknown\n", None)]
    rollouts = [rollout_of(ex.prompt, t) for t in (good, bad, shy)]
    tok = ByteTokenizer()
    verdicts = [TASK.verify(ex, tok.decode(r.tokens)) for r in rollouts]
    assert [v.outcome for v in verdicts] == ["correct", "wrong", "abstain"]
    batch = collate(rollouts, tok.pad)
    ctx = SimpleNamespace(task=TASK, examples=[ex] * 3, rollouts=rollouts, verdicts=verdicts, batch=batch,
                          step_ids=None, extra={}, metrics={})
    rewards = faithrl.FaithRewards(x0=0.5, y0=0.2)(ctx)
    torch.testing.assert_close(rewards.sum(-1), torch.tensor([0.2, -0.5, 0.0], dtype=torch.float64))
    last = (batch["response_mask"] * torch.arange(1, batch["response_mask"].shape[1] + 1)).argmax(-1)
    assert all(rewards[i, last[i]] == rewards[i].sum() for i in range(3))
    # step ids: the search turns' model tokens; -1 on observations, answers and padding
    sid, m, tid = ctx.step_ids, batch["response_mask"], batch["turn_ids"]
    assert ((sid >= 0) == ((m > 0) & (tid >= 0) & (tid < torch.tensor([2, 1, 1])[:, None]))).all()
    assert torch.equal(ctx.extra["step_supported"], torch.tensor([[1, 1, -1], [1, -1, -1], [1, -1, -1]]))
    assert ctx.metrics["step_faithfulness"] == 1.0 and ctx.metrics["steps"] == pytest.approx(4 / 3)
    assert ctx.metrics["rate_hallucination"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="x0/y0"):
        faithrl.FaithRewards(x0=0.5, y0=0.0)


def test_add_ths_to_a_report():
    report = {"before": {"rate_correct": 0.5, "rate_wrong": 0.2, "rate_invalid": 0.05, "rate_abstain": 0.25},
              "after": {"rate_correct": 0.6, "rate_wrong": 0.1, "rate_invalid": 0.0, "rate_abstain": 0.3}}
    out = faithrl.add_ths(report, {"x0": 0.5, "y0": 0.25})
    assert out["before"]["ths"] == pytest.approx(0.0) and out["after"]["ths"] == pytest.approx(0.4)
    assert out["after"]["rate_hallucination"] == pytest.approx(0.1) and out["reference"]["y0"] == 0.25


def test_faithrl_run_end_to_end(tmp_path):
    """A few steps on a tiny random model: every file, x0 / y0 measured, THS and step
    faithfulness in eval.json, per-step faithfulness in metrics.jsonl, and resume."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        init = tmp_path / "init"
        save_pretrained(build_policy("tiny-mimo-7b", seed=0), init)
        recipe = get_recipe("faithrl")
        from hysparse_kernels.training.rl.trainer import RLConfig

        cfg = RLConfig(**{**recipe.overrides, "recipe": "faithrl", "task": "lookup", "init_from": str(init), "steps": 2,
                          "prompts_per_step": 2, "group_size": 3, "eval_n": 3, "eval_samples": 1, "checkpoint_every": 1})
        out = tmp_path / "run"
        args = SimpleNamespace(out=str(out), resume=False, no_progress=True)
        summary = recipe.run(args, recipe, cfg)
    finally:
        torch.set_num_threads(n)
    for name in ("config.json", "metrics.jsonl", "curves.png", "eval.json", "final", "reference.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "eval.json").read_text())
    ref = report["reference"]
    assert ref["split"] == "dev" and 0 < ref["x0"] <= 1 and 0 < ref["y0"] <= 1
    for key in ("before", "after"):
        r = report[key]
        assert r["ths"] == pytest.approx(faithrl.ths(r["rate_correct"], r["rate_hallucination"], ref["x0"], ref["y0"]))
        assert 0 <= r["step_faithfulness"] <= 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all("step_faithfulness" in r for r in rows)
    assert json.loads((out / "config.json").read_text())["advantage"] == "faithrl"
    assert summary["ths_after"] == pytest.approx(report["after"]["ths"])
