"""FaithRL (arXiv 2602.03507): a geometric reward that prices hallucinations against abstention,
and advantages modulated by whether each reasoning step is supported by the evidence.

On the lookup task (questions some of which cannot be answered; ``answer: unknown`` abstains):

    x0, y0 = correct and hallucination rates of the starting checkpoint on the dev split (step 0)
    r_i    = y0  if o_i is correct,   0 if it abstains,   -x0 otherwise (a hallucination)
    A_i    = (r_i - mean(r)) / (std(r) + eps)                          (GRPO, per group)
    A'_t   = A_i · m_t,   m_t = α  if A_i > 0 and token t lies in an unsupported step
                               α  if A_i <= 0 and token t lies in a supported step
                               1  otherwise (answer tokens included),   α = 0.75
    J(θ)   = GRPO's objective with A'_t in place of A_i (clip, 1/|o_i|, k3 KL)
    THS    = (x1·y0 - y1·x0) / y0                   (truthful helpfulness; E[r] = y0 · THS)

Steps: the model's turns before its answer, numbered by order; ``LookupQA.judge_steps`` checks
each against the fact base (step k's query must name the person the base gives for step k-1's
query, step 1 the question's start person; a near-duplicate of an earlier step, difflib ratio >
0.8, is unsupported). "Hallucination" is every outcome that is neither correct nor an abstention
(a wrong name, or no parsable answer).

Departures from GRPO (``grpo`` recipe): the reward (GRPO: 1 correct, 0 otherwise, so a wrong
answer costs no more than abstaining) and the step modulation of the advantage; everything else
(PPO clip 0.2, seq-mean-token-mean, k3 KL with β = 0.04) is GRPO's, so a run compares with a
``grpo`` run of the same seed on the reward and advantage alone. The paper trains without KL and
adds a length penalty above 500 tokens; neither is used here (responses are under 120 tokens).

``eval.json`` gains ``reference`` (x0, y0 and the dev split they come from) and, for ``before``
and ``after``, ``rate_hallucination``, ``ths`` and ``step_faithfulness`` (supported steps /
steps over the sampled held-out rollouts).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..algos import AdvantageInput, AlgoConfig, grpo_advantage, outcome_rewards, register_advantage
from . import Recipe, register_recipe

ALPHA = 0.75
MIN_RATE = 0.01  # x0, y0 floor: a start with no hallucination (y0 = 0) would leave THS undefined


def hallucination_rate(rates: dict) -> float:
    """Share of outcomes that are neither correct nor abstentions, from ``rate_<outcome>`` keys."""
    return rates.get("rate_wrong", 0.0) + rates.get("rate_invalid", 0.0)


def ths(x1: float, y1: float, x0: float, y0: float) -> float:
    """Truthful-helpfulness score ``(x1·y0 - y1·x0) / y0`` of correct rate ``x1`` and hallucination
    rate ``y1`` against the start's ``x0``, ``y0`` (0 at the start, 1 for all correct)."""
    if y0 <= 0:
        raise ValueError(f"y0: expected a hallucination rate > 0, got {y0}")
    return (x1 * y0 - y1 * x0) / y0


def geometric_scores(outcomes: list[str], x0: float, y0: float) -> Tensor:
    """``[N]`` float64: ``y0`` for ``correct``, 0 for ``abstain``, ``-x0`` for anything else."""
    return torch.tensor([y0 if o == "correct" else 0.0 if o == "abstain" else -x0 for o in outcomes],
                        dtype=torch.float64)


@register_advantage("faithrl")
def faithrl_advantage(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:
    """GRPO advantages ``[N, L]`` scaled per token by ``m_t`` (module docstring). Needs
    ``inp.step_ids [N, L]`` (-1 outside steps) and ``inp.extra["step_supported"]``: ``[N, S]``
    (1 supported, 0 unsupported, -1 padding) indexed by step id; ``inp.extra["alpha"]`` overrides
    α. Without step ids it is plain GRPO."""
    adv = grpo_advantage(inp, cfg)
    if inp.step_ids is None:
        return adv
    alpha = float(inp.extra.get("alpha", ALPHA))
    labels = inp.extra.get("step_supported")
    if labels is None:
        raise ValueError("extra['step_supported']: expected an [N, S] tensor of step labels with step_ids, got none")
    labels = torch.as_tensor(labels)
    if labels.dim() != 2 or labels.shape[0] != adv.shape[0]:
        raise ValueError(f"extra['step_supported']: expected shape [{adv.shape[0]}, S], got {tuple(labels.shape)}")
    sid = inp.step_ids.long()
    in_step = sid >= 0
    if labels.shape[1] == 0:
        return adv
    if int(sid.max()) >= labels.shape[1]:
        raise ValueError(f"step_ids: expected ids below {labels.shape[1]} (the labels' S), got {int(sid.max())}")
    lab = torch.gather(labels.long(), 1, sid.clamp(min=0))
    supported = in_step & (lab == 1)
    unsupported = in_step & (lab == 0)
    scale = torch.where((adv > 0) & unsupported | (adv <= 0) & supported, alpha, 1.0)
    return adv * scale


def step_labels(task, examples, rollouts) -> list[list[bool | None]]:
    """Per rollout, per turn: ``task.judge_steps`` (None on the answer turn)."""
    return [task.judge_steps(e, r.turn_texts) for e, r in zip(examples, rollouts)]


def step_tensors(labels: list[list[bool | None]], turn_ids: Tensor) -> tuple[Tensor, Tensor]:
    """``step_ids [N, L]`` (the turn's index where the turn is a step, else -1) and
    ``step_supported [N, T]`` (1 / 0 per turn, -1 for non-steps and padding) from per-turn labels
    and the collated ``turn_ids [N, L]``."""
    N = len(labels)
    T = max([len(x) for x in labels] + [1])
    sup = torch.full((N, T), -1, dtype=torch.long)
    for i, row in enumerate(labels):
        for t, ok in enumerate(row):
            if ok is not None:
                sup[i, t] = int(ok)
    tid = turn_ids.long()
    is_step = (tid >= 0) & (torch.gather(sup, 1, tid.clamp(min=0, max=T - 1)) >= 0) & (tid < T)
    return torch.where(is_step, tid, torch.full_like(tid, -1)), sup


def faithfulness(labels: list[list[bool | None]]) -> dict:
    """``step_faithfulness`` (supported / steps, 1.0 when there are no steps) and ``steps``
    (steps per rollout)."""
    flat = [ok for row in labels for ok in row if ok is not None]
    return {"step_faithfulness": sum(flat) / len(flat) if flat else 1.0, "steps": len(flat) / max(1, len(labels))}


class FaithRewards:
    """The recipe's ``rewards`` hook: geometric scores on the last model token, step ids and labels
    for ``faithrl_advantage``, and per-step metrics (step faithfulness, hallucination rate)."""

    def __init__(self, x0: float, y0: float, alpha: float = ALPHA):
        if not (0 < x0 <= 1 and 0 < y0 <= 1):
            raise ValueError(f"x0/y0: expected rates in (0, 1], got {x0}, {y0}")
        self.x0, self.y0, self.alpha = x0, y0, alpha

    def __call__(self, ctx) -> Tensor:
        outcomes = [v.outcome for v in ctx.verdicts]
        scores = geometric_scores(outcomes, self.x0, self.y0)
        labels = step_labels(ctx.task, ctx.examples, ctx.rollouts)
        ids, sup = step_tensors(labels, ctx.batch["turn_ids"])
        ctx.step_ids = torch.where(ctx.batch["response_mask"] > 0, ids, torch.full_like(ids, -1))
        ctx.extra.update({"step_supported": sup, "alpha": self.alpha})
        n = len(outcomes)
        ctx.metrics.update({**faithfulness(labels), "rate_hallucination": sum(o not in ("correct", "abstain")
                                                                               for o in outcomes) / n})
        return outcome_rewards(scores, ctx.batch["response_mask"].double())


def judge_for(task):
    """An ``evaluate`` judge adding ``step_faithfulness``, ``steps`` and ``rate_hallucination``."""

    def judge(examples, rollouts, verdicts) -> dict:
        n = len(verdicts)
        return {**faithfulness(step_labels(task, examples, rollouts)),
                "rate_hallucination": sum(v.outcome not in ("correct", "abstain") for v in verdicts) / n}

    return judge


def measure_reference(init: str, cfg) -> dict:
    """x0, y0 of checkpoint ``init``: sampled correct and hallucination rates on the dev split
    (``cfg.eval_samples`` samples of its first ``cfg.eval_n`` questions, the policy's
    temperature)."""
    from hysparse_kernels.models import load_pretrained
    from ..evaluate import evaluate
    from ..tasks import get_task

    task = get_task(cfg.task, cfg.task_seed)
    n = min(cfg.eval_n, len(task.examples("dev")))
    ev = evaluate(load_pretrained(init), task, split="dev", n=n, temperature=cfg.temperature, top_p=cfg.top_p,
                  samples=cfg.eval_samples, greedy=False)
    x0, y0 = ev["rate_correct"], hallucination_rate(ev)
    return {"x0": max(x0, MIN_RATE), "y0": max(y0, MIN_RATE), "x0_measured": x0, "y0_measured": y0,
            "rate_abstain": ev["rate_abstain"], "split": "dev", "n": n, "samples": cfg.eval_samples}


def add_ths(report: dict, ref: dict) -> dict:
    """``report`` (an ``eval.json``) with ``reference`` and, under before / after,
    ``rate_hallucination`` and ``ths``."""
    report = dict(report, reference=ref)
    for key in ("before", "after"):
        if report.get(key):
            r = dict(report[key])
            r["rate_hallucination"] = hallucination_rate(r)
            r["ths"] = ths(r["rate_correct"], r["rate_hallucination"], ref["x0"], ref["y0"])
            report[key] = r
    return report


def run(args, recipe, cfg) -> dict:
    """Measure x0, y0 on the starting checkpoint (kept in ``reference.json`` for ``--resume``), run
    the RL loop with the geometric reward, then add THS to ``eval.json``."""
    from pathlib import Path

    from .. import runs
    from ..tasks import get_task
    from ..trainer import resolve_init, train_rl

    out = Path(args.out)
    init = resolve_init(cfg, progress=not args.no_progress)
    ref_path = out / "reference.json"
    ref = runs.read_json(ref_path) if args.resume else None
    if ref is None or ref.get("init") != str(init):
        ref = {**measure_reference(init, cfg), "init": str(init)}
        runs.write_json(ref_path, ref)
    summary = train_rl(cfg, out, init=init, rewards=FaithRewards(ref["x0"], ref["y0"]), resume=args.resume,
                       progress=not args.no_progress, recipe_name=recipe.name,
                       eval_judge=judge_for(get_task(cfg.task, cfg.task_seed)))
    report = add_ths(runs.read_json(out / "eval.json"), ref)
    runs.write_json(out / "eval.json", report)
    return {**summary, "x0": ref["x0"], "y0": ref["y0"], "ths_before": report["before"]["ths"],
            "ths_after": report["after"]["ths"] if report.get("after") else None}


RECIPE = register_recipe(Recipe(
    name="faithrl",
    summary="FaithRL: geometric reward (y0 / 0 / -x0), step-verified advantage modulation (alpha 0.75), THS",
    overrides=dict(advantage="faithrl", loss="ppo_clip", aggregation="seq-mean-token-mean", eps_low=0.2, eps_high=0.2,
                   kl_coef=0.04),
    tasks=("lookup",),
    run=run,
    module=__name__,
))
