"""Tool-GRPO (AdaReasoner): a format-gated reward for tool use, on tasks where some tools help and
others do not, with tool names drawn anew for every episode.

On the ``toolmix`` task (arithmetic and lookup questions; a calculator, a search tool and a
``reverse`` distractor, offered under per-episode names described in the prompt), rollout i is
a sequence of turns: tool calls ``call: NAME ARGS`` and a final ``answer: X``::

    F_i      = 1 if every turn but the last is a parsable call and the last (only) one is the
               answer, else 0                                              (the format gate)
    c_i,k    = (1[call parses] + 1[NAME is one of the episode's tools]
                + 1[ARGS valid for that tool]) / 3                         (call k's tool reward)
    R_tool,i = mean_k c_i,k   (0 without calls)
    R_acc,i  = 1[o_i correct]
    R_i      = F_i · (λ_acc · R_acc,i + λ_tool · R_tool,i · (1 - R_acc,i))
    A_i      = (R_i - mean(R)) / (std(R) + eps)                          (GRPO, per group)
    J(θ)     = GRPO's objective with these A_i (clip 0.2, 1/|o_i|, k3 KL β = 0.04)

λ_acc = 1 (the fixed score of a correct answer), λ_tool = 0.25. The paper writes
``R = R_format·(λ_tool·R_tool + λ_acc·R_acc)`` with ``R_tool`` 0–4 per call (structure, name,
argument names, argument content); its reference code gives a correct answer a fixed 8 and a
wrong one the mean per-call tool reward (at most 2), so tool credit counts only when the answer
is wrong: that is the form above (8 : 2 is λ_acc : λ_tool), with three checks per call since a
text call has no named arguments. Argument validity: an integer expression (calculator), a
person and a relation of the fact base (search), anything non-empty (reverse), so a valid call
to the distractor earns tool credit too; only the answer tells tools that help from tools that
do not.

Departures from GRPO with the outcome reward (``grpo --task toolmix --init-from`` the same warm
start, the baseline): the format gate and the tool credit on wrong answers; same task, tools and
settings. The warm start is ``sft`` on ``toolmix`` for up to 800 steps (the default 400 leave it
unable to copy tool names), ended early once sampled dev success reaches 0.35.

``eval.json`` (on ``toolmix`` held-out questions, tool names from the training pool) has, for
``before`` and ``after``, ``success_arith`` / ``success_lookup`` and per domain and tool role
``calls_<domain>_<role>`` (calls per episode) and ``used_<domain>_<role>`` (share of episodes
calling it), roles ``calculator``, ``search``, ``reverse`` and ``unknown`` (a name not offered);
``format_ok`` (share passing the gate), ``tool_reward`` and ``tool_grpo_reward`` (mean R_tool
and R); and ``heldout_names``: the same metrics for the start and final checkpoints with tool
names from the held-out pool (never seen in training).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..algos import outcome_rewards
from . import Recipe, register_recipe

LAMBDA_ACC = 1.0
LAMBDA_TOOL = 0.25
SFT_STEPS = 800  # the toolmix warm start: reading names from the tool list takes more than the default 400


def format_ok(turn_texts: list[str]) -> bool:
    """The format gate ``F``: ``ToolMix.well_formed`` (every turn but the last a parsable call, the
    last and only answer ``answer: X``)."""
    from ..tasks.mixed import ToolMix

    return ToolMix.well_formed(turn_texts)


def tool_reward(scores: list[int]) -> float:
    """``R_tool``: the mean per-call score (each 0..3) over 3; 0 without calls."""
    if any(not 0 <= s <= 3 for s in scores):
        raise ValueError(f"scores: expected per-call scores in 0..3, got {scores}")
    return sum(scores) / (3 * len(scores)) if scores else 0.0


def tool_grpo_reward(gate: bool, correct: bool, r_tool: float, lam_acc: float = LAMBDA_ACC,
                     lam_tool: float = LAMBDA_TOOL) -> float:
    """``R = F · (λ_acc · R_acc + λ_tool · R_tool · (1 - R_acc))`` (module docstring)."""
    acc = float(correct)
    return float(gate) * (lam_acc * acc + lam_tool * r_tool * (1.0 - acc))


def episode_reward(task, example, turn_texts: list[str], correct: bool) -> tuple[float, bool, float]:
    """``(R, F, R_tool)`` of one rollout of a ``toolmix`` episode."""
    gate = format_ok(turn_texts)
    scores = [task.call_score(example, t) for t in turn_texts[:-1]]
    r_tool = tool_reward(scores)
    return tool_grpo_reward(gate, correct, r_tool), gate, r_tool


class ToolRewards:
    """The recipe's ``rewards`` hook: ``R_i`` on each rollout's last model token; logs the gate
    pass rate, mean tool reward and calls per rollout."""

    def __call__(self, ctx) -> Tensor:
        rows = [episode_reward(ctx.task, e, r.turn_texts, v.success)
                for e, r, v in zip(ctx.examples, ctx.rollouts, ctx.verdicts)]
        n = max(1, len(rows))
        ctx.metrics.update({"format_ok": sum(g for _, g, _ in rows) / n, "tool_reward": sum(t for _, _, t in rows) / n,
                            "tool_calls": sum(len(ctx.task.turn_calls(e, r.turn_texts))
                                              for e, r in zip(ctx.examples, ctx.rollouts)) / n})
        scores = torch.tensor([r for r, _, _ in rows], dtype=torch.float64)
        return outcome_rewards(scores, ctx.batch["response_mask"].double())


def judge_for(task):
    """An ``evaluate`` judge adding ``tool_reward`` (mean ``R_tool``) and ``tool_grpo_reward``
    (mean ``R``)."""

    def judge(examples, rollouts, verdicts) -> dict:
        rows = [episode_reward(task, e, r.turn_texts, v.success) for e, r, v in zip(examples, rollouts, verdicts)]
        n = max(1, len(rows))
        return {"tool_reward": sum(t for _, _, t in rows) / n, "tool_grpo_reward": sum(r for r, _, _ in rows) / n}

    return judge


def heldout_names_eval(model_dir, cfg) -> dict:
    """The held-out evaluation of checkpoint ``model_dir`` on ``toolmix`` with tool names from the
    held-out pool (same questions, settings and generator seed as ``eval.json``)."""
    from hysparse_kernels.models import load_pretrained
    from ..evaluate import evaluate
    from ..tasks import get_task

    task = get_task("toolmix", cfg.task_seed, names="heldout")
    return evaluate(load_pretrained(model_dir), task, split=cfg.eval_split, n=cfg.eval_n, temperature=cfg.temperature,
                    top_p=cfg.top_p, samples=cfg.eval_samples, judge=judge_for(task))


def run(args, recipe, cfg) -> dict:
    """The RL loop with the Tool-GRPO reward, then the held-out-name evaluation of the start and
    final checkpoints into ``eval.json``."""
    from pathlib import Path

    from .. import runs
    from ..tasks import get_task
    from ..trainer import resolve_init, train_rl

    out = Path(args.out)
    init = resolve_init(cfg, progress=not args.no_progress)
    summary = train_rl(cfg, out, init=init, rewards=ToolRewards(), resume=args.resume, progress=not args.no_progress,
                       recipe_name=recipe.name, eval_judge=judge_for(get_task(cfg.task, cfg.task_seed)))
    if "stopped_at" in summary:
        return summary
    report = runs.read_json(out / "eval.json")
    report["heldout_names"] = {"before": heldout_names_eval(init, cfg), "after": heldout_names_eval(out / "final", cfg)}
    runs.write_json(out / "eval.json", report)
    return {**summary, "heldout_names_before": report["heldout_names"]["before"]["success"],
            "heldout_names_after": report["heldout_names"]["after"]["success"]}


RECIPE = register_recipe(Recipe(
    name="tool_grpo",
    summary="Tool-GRPO: format gate x (1 if correct, else 0.25 x mean per-call tool reward), per-episode tool names",
    overrides=dict(advantage="grpo", loss="ppo_clip", aggregation="seq-mean-token-mean", eps_low=0.2, eps_high=0.2,
                   kl_coef=0.04, sft_steps=SFT_STEPS),
    tasks=("toolmix",),
    run=run,
    module=__name__,
))
