"""MOPD: the mixed task, the per-token advantage and the ratio mask (against numbers worked out by
hand), teacher routing by domain, the loss mask reaching the loss, and a few steps end to end."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.rl.algos import AdvantageInput, AlgoConfig, get_advantage
from hysparse_kernels.training.rl.recipes import get_recipe, mopd
from hysparse_kernels.training.rl.rollout import collate
from hysparse_kernels.training.rl.tasks import get_task


def test_mixed_task_interleaves_domains():
    mixed, arith, lookup = get_task("mixed", 0), get_task("arith30", 0), get_task("lookup", 0)
    held = mixed.examples("heldout", 8)
    assert [e.meta["domain"] for e in held] == ["arith", "lookup"] * 4
    assert [e.prompt for e in held[0::2]] == [e.prompt for e in arith.examples("heldout", 4)]
    assert [e.prompt for e in held[1::2]] == [e.prompt for e in lookup.examples("heldout", 4)]
    lk = held[1]
    q = f"{lk.meta['start']} {lk.meta['path'][0]}"
    assert mixed.observe(lk, f"search: {q}\n") == lookup.tool_output(q)
    assert mixed.observe(held[0], "answer: 1\n") is None
    assert mixed.verify(held[0], f"answer: {held[0].answer}\n").success
    assert not set(e.id for e in mixed.examples("train")) & set(e.id for e in mixed.examples("heldout"))


def test_mopd_advantage_by_hand():
    # one group of two rollouts, 3 positions; row 1 has 2 model tokens
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    rewards = torch.tensor([[0, 0, 1.0], [0, 0, 0]], dtype=torch.float64)  # outcome 1 and 0
    teacher = torch.tensor([[-0.5, -1.0, -0.1], [-2.0, -0.3, -9.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -1.0, -0.6], [-1.0, -0.3, -9.0]], dtype=torch.float64)
    # GRPO: mean 0.5, unbiased std sqrt(0.5) -> +-0.5 / sqrt(0.5) = +-1/sqrt(2)
    g = 1 / math.sqrt(2)
    want = torch.tensor([[0.5 + 0.5 * g, 0.0 + 0.5 * g, 0.5 + 0.5 * g], [-1.0 - 0.5 * g, 0.0 - 0.5 * g, 0.0]],
                        dtype=torch.float64)
    inp = AdvantageInput(rewards, mask, torch.tensor([0, 0]),
                         extra={"teacher_logprobs": teacher, "old_logprobs": old, "alpha": 0.5})
    got = get_advantage("mopd")(inp, AlgoConfig(advantage="mopd", std_eps=0.0))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # α = 0: pure distillation; the teacher term carries no gradient
    teacher.requires_grad_(True)
    pure = get_advantage("mopd")(AdvantageInput(rewards, mask, torch.tensor([0, 0]), extra={
        "teacher_logprobs": teacher, "old_logprobs": old, "alpha": 0.0}), AlgoConfig(advantage="mopd"))
    torch.testing.assert_close(pure, torch.tensor([[0.5, 0.0, 0.5], [-1.0, 0.0, 0.0]], dtype=torch.float64))
    assert not pure.requires_grad
    with pytest.raises(ValueError, match="teacher_logprobs"):
        get_advantage("mopd")(AdvantageInput(rewards, mask, torch.tensor([0, 0])), AlgoConfig())
    with pytest.raises(ValueError, match="old_logprobs"):
        get_advantage("mopd")(AdvantageInput(rewards, mask, torch.tensor([0, 0]), extra={
            "teacher_logprobs": teacher, "old_logprobs": old[:, :2]}), AlgoConfig())


def test_ratio_mask_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.float64)
    old = torch.tensor([[0.0, math.log(10) - 1e-9, math.log(10) + 1e-6, math.log(0.09), 5.0]], dtype=torch.float64)
    rollout = torch.zeros(1, 5, dtype=torch.float64)  # ratios 1, ~10 (kept), >10, 0.09, padding
    assert mopd.ratio_mask(old, rollout, mask).tolist() == [[1, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="low/high"):
        mopd.ratio_mask(old, rollout, mask, low=2.0)


V = ByteTokenizer.vocab_size


class ConstantModel(torch.nn.Module):
    """Float32 logits that put probability ``p`` on token ``tok`` everywhere, the rest uniform."""

    def __init__(self, tok: int, p: float):
        super().__init__()
        self.logits = torch.full((V,), math.log((1 - p) / (V - 1)))
        self.logits[tok] = math.log(p)

    def forward(self, ids):
        return self.logits.expand(*ids.shape, V).clone()


def test_teachers_routed_by_domain_and_loss_mask(rollout_of):
    task = get_task("mixed", 0)
    ar, lk = task.examples("train", 2)
    rollouts = [rollout_of(ar.prompt, [(f"answer: {ar.answer}\n", None)]),
                rollout_of(lk.prompt, [("answer: unknown\n", None)])]
    tok = ByteTokenizer()
    batch = collate(rollouts, tok.pad)
    a_id = tok.encode("a")[0]
    teachers = {"arith": ConstantModel(a_id, 0.5), "lookup": ConstantModel(a_id, 0.25)}
    lp = mopd.teacher_logprobs(teachers, ["arith", "lookup"], batch, 1.0, 1.0)
    resp, m = batch["response"], batch["response_mask"]
    for i, p in ((0, 0.5), (1, 0.25)):
        want = torch.where(resp[i] == a_id, math.log(p), math.log((1 - p) / (V - 1))) * m[i]
        torch.testing.assert_close(lp[i], want.double(), rtol=0, atol=1e-5)  # float32 log-softmax
    # the hook: old log-probs from the context, the sampler's (-1 per token, conftest) in the batch
    old = batch["old_logprobs"].clone()
    old[0, 0] = old[0, 0] + math.log(20)  # ratio 20: dropped
    verdicts = [task.verify(e, tok.decode(r.tokens)) for e, r in zip((ar, lk), rollouts)]
    ctx = SimpleNamespace(examples=[ar, lk], batch=batch, config=SimpleNamespace(temperature=1.0, top_p=1.0),
                          old_logprobs=old, verdicts=verdicts, extra={}, metrics={}, loss_mask=None)
    rewards = mopd.MopdRewards(teachers)(ctx)
    torch.testing.assert_close(rewards.sum(-1), torch.tensor([1.0, 0.0], dtype=torch.float64))
    want_mask = m.clone()
    want_mask[0, 0] = 0
    assert torch.equal(ctx.loss_mask, want_mask)
    assert ctx.metrics["is_masked"] == pytest.approx(1 / float(m.sum()))
    torch.testing.assert_close(ctx.extra["teacher_logprobs"], lp)
    with pytest.raises(ValueError, match="teachers"):
        mopd.teacher_logprobs({"arith": teachers["arith"]}, ["arith", "lookup"], batch, 1.0, 1.0)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                            "ignore::hysparse_kernels.tuned.TunedConfigWarning")
def test_mopd_run_end_to_end(tmp_path):
    """Two steps on a tiny random model with two tiny teachers: every file, the teacher terms
    per step, the teachers' held-out scores and the student's ratios in eval.json."""
    from hysparse_kernels.models import save_pretrained
    from hysparse_kernels.training.rl.policy import build_policy
    from hysparse_kernels.training.rl.trainer import RLConfig

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = {}
        for name, seed in (("init", 0), ("arith", 1), ("lookup", 2)):
            paths[name] = tmp_path / name
            save_pretrained(build_policy("tiny-mimo-7b", seed=seed), paths[name])
        recipe = get_recipe("mopd")
        cfg = RLConfig(**{**recipe.overrides, "recipe": "mopd", "task": "mixed", "init_from": str(paths["init"]),
                          "steps": 2, "prompts_per_step": 2, "group_size": 3, "eval_n": 4, "eval_samples": 1})
        out = tmp_path / "run"
        summary = recipe.run(SimpleNamespace(out=str(out), resume=False, no_progress=True), recipe, cfg,
                             teachers={"arith": paths["arith"], "lookup": paths["lookup"]})
    finally:
        torch.set_num_threads(n)
    for name in ("config.json", "metrics.jsonl", "curves.png", "eval.json", "final"):
        assert (out / name).exists(), name
    report = json.loads((out / "eval.json").read_text())
    for d in ("arith", "lookup"):
        t = report["teachers"][d]
        assert t["success"] == t["eval"][f"success_{d}"] and f"success_{d}" in report["after"]
        assert summary[f"ratio_{d}"] == t["student_ratio"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("is_masked" in r for r in rows)
    assert json.loads((out / "config.json").read_text())["advantage"] == "mopd"
