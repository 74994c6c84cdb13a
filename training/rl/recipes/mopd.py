"""MOPD (MiMo-V2-Flash): multi-teacher on-policy distillation. One student samples on-policy on a
mix of domains; each token's advantage comes from its domain's teacher, plus α times the
outcome (GRPO) advantage.

On the ``mixed`` task (``arith30`` and ``lookup`` questions; domains ``arith`` and ``lookup``),
with teachers ``π_d`` = RL checkpoints trained on domain ``d`` alone from the student's own warm
start, for rollout i of domain d(i):

    Â_i,t = sg(log π_d(i)(y_t | ·) - log π_old(y_t | ·))  +  α · A_i^GRPO
    A_i^GRPO = (r_i - mean(r)) / (std(r) + eps)            (outcome reward, per group)
    w_i,t = 1 if 0.1 <= π_old(y_t) / π_rollout(y_t) <= 10, else 0   (the token leaves the loss)
    J(θ)  = 1/G Σ_i 1/|o_i| Σ_t w_i,t min(ρ Â, clip(ρ, 1-ε, 1+ε) Â),   ρ = π_θ / π_old

``π_old``: the policy's log-probs recomputed before the update; ``π_rollout``: the sampler's (the
rollout engine's). Teachers score at the policy's temperature (1). The paper gives no α; α = 1
here (not tuned). No KL to a reference (the teacher term is the reverse-KL pull), so the loss is
PPO-clip 0.2 with seq-mean-token-mean, as GRPO otherwise.

Teachers (``--quick``): ``grpo --quick`` runs on ``arith30`` and on ``lookup``, each started from
the ``mixed`` SFT warm start the student starts from, trained on first use and cached under
``$HYSPARSE_CACHE/rl-teachers/<domain>-<hash of the settings>`` (seed 0).

Departure from GRPO on the mixed task (``grpo --task mixed``, the baseline): the dense
per-token teacher term and the importance-ratio mask; GRPO uses the outcome alone (and k3 KL).

``eval.json`` (``mixed`` held-out questions) has ``before`` / ``after`` with ``success_arith`` and
``success_lookup``, and ``teachers``: per domain the teacher checkpoint, its held-out metrics on
the same questions and settings (``eval``), its success on its own domain (``success``), and
``student_ratio`` = the student's final success on that domain / the teacher's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..algos import AdvantageInput, AlgoConfig, grpo_advantage, register_advantage
from . import Recipe, register_recipe

ALPHA = 1.0
IS_LOW, IS_HIGH = 0.1, 10.0
DOMAINS = ("arith", "lookup")
TEACHER_TASKS = {"arith": "arith30", "lookup": "lookup"}  # the task each domain's teacher trains on


@register_advantage("mopd")
def mopd_advantage(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:
    """``[N, L]``: ``(teacher - old) + α · A^GRPO`` on model tokens (module docstring). Needs
    ``inp.extra["teacher_logprobs"]`` and ``inp.extra["old_logprobs"]`` (``[N, L]``);
    ``inp.extra["alpha"]`` overrides α."""
    for key in ("teacher_logprobs", "old_logprobs"):
        if key not in inp.extra:
            raise ValueError(f"extra[{key!r}]: expected an [N, L] tensor of log-probs for the mopd advantage, got none")
        if tuple(inp.extra[key].shape) != tuple(inp.response_mask.shape):
            raise ValueError(f"extra[{key!r}]: expected shape {tuple(inp.response_mask.shape)}, "
                             f"got {tuple(inp.extra[key].shape)}")
    alpha = float(inp.extra.get("alpha", ALPHA))
    m = inp.response_mask.double()
    distill = (inp.extra["teacher_logprobs"].double() - inp.extra["old_logprobs"].double()).detach()
    return distill * m + alpha * grpo_advantage(inp, cfg)


def ratio_mask(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, low: float = IS_LOW,
               high: float = IS_HIGH) -> Tensor:
    """``[N, L]``: 1 on model tokens whose ``π_old / π_rollout`` lies in ``[low, high]``, 0 elsewhere."""
    if not 0 < low <= 1 <= high:
        raise ValueError(f"low/high: expected 0 < low <= 1 <= high, got {low}, {high}")
    ratio = torch.exp((old_logprobs.double() - rollout_logprobs.double()).clamp(-50, 50))
    return ((ratio >= low) & (ratio <= high)).to(mask.dtype) * mask


def teacher_logprobs(teachers: dict, domains: list[str], batch: dict, temperature: float, top_p: float) -> Tensor:
    """``[N, L]`` float64: each row's response scored by the teacher of its domain (0 off the
    response)."""
    from ..policy import sequence_logprobs

    N, L = batch["response"].shape
    out = torch.zeros(N, L, dtype=torch.float64)
    for d in sorted(set(domains)):
        if d not in teachers:
            raise ValueError(f"teachers: expected a teacher for domain {d!r}, got {sorted(teachers)}")
        idx = torch.tensor([i for i, x in enumerate(domains) if x == d])
        sub = {k: v[idx] for k, v in batch.items()}
        with torch.no_grad():
            lp, _ = sequence_logprobs(teachers[d], sub, temperature, top_p)
        out[idx] = lp.double()
    return out * batch["response_mask"].double()


class MopdRewards:
    """The recipe's ``rewards`` hook: the outcome reward (for α · A^GRPO), teacher and old
    log-probs in ``extra``, the ratio mask as ``loss_mask``; logs the mean teacher term per domain
    and the share of tokens masked."""

    def __init__(self, teachers: dict, alpha: float = ALPHA):
        self.teachers = {d: m.eval().requires_grad_(False) for d, m in teachers.items()}
        self.alpha = alpha

    def __call__(self, ctx) -> Tensor:
        from ..trainer import default_rewards

        mask = ctx.batch["response_mask"].double()
        domains = [e.meta["domain"] for e in ctx.examples]
        cfg = ctx.config
        t_lp = teacher_logprobs(self.teachers, domains, ctx.batch, cfg.temperature, cfg.top_p)
        old = ctx.old_logprobs.double()
        ctx.extra.update({"teacher_logprobs": t_lp, "old_logprobs": old, "alpha": self.alpha})
        keep = ratio_mask(old, ctx.batch["old_logprobs"], mask)
        ctx.loss_mask = keep
        n = mask.sum().clamp(min=1)
        ctx.metrics["is_masked"] = float(((mask - keep) * mask).sum() / n)
        for d in sorted(set(domains)):
            rows = torch.tensor([x == d for x in domains])
            md = mask[rows]
            ctx.metrics[f"teacher_term_{d}"] = float(((t_lp[rows] - old[rows]) * md).sum() / md.sum().clamp(min=1))
        return default_rewards(ctx)


def teacher_config(cfg, domain: str, init: str):
    """The ``grpo --quick`` settings of the teacher of ``domain``, started from ``init``."""
    from ..trainer import QUICK, RLConfig
    from .grpo import RECIPE as GRPO

    from ..tasks import get_task

    task = TEACHER_TASKS[domain]
    n = min(cfg.eval_n, len(get_task(task, cfg.task_seed).examples(cfg.eval_split)))  # arith30 has 184 held out
    return RLConfig(**{**GRPO.overrides, **QUICK, "recipe": "grpo", "task": task, "task_seed": cfg.task_seed,
                       "model": cfg.model, "init_from": str(init), "seed": 0, "eval_n": n})


def ensure_teacher(cfg, domain: str, init: str, progress: bool = True) -> Path:
    """The ``final/`` of the cached teacher of ``domain`` (trained first when missing; an
    interrupted training resumes)."""
    from ...artifacts import artifact_dir
    from ..trainer import train_rl

    tcfg = teacher_config(cfg, domain, init)
    out = artifact_dir("rl-teachers", tcfg, prefix=f"{domain}-{cfg.model}-")
    if not (out / "final" / "config.json").exists():
        train_rl(tcfg, out, init=str(init), resume=(out / "config.json").exists(), progress=progress,
                 recipe_name="grpo")
    return out / "final"


def run(args, recipe, cfg, teachers: dict | None = None, alpha: float = ALPHA, recipe_name: str | None = None) -> dict:
    """Build (or find) the teachers, run the RL loop with the MOPD advantage on ``mixed``, then
    evaluate each teacher on the same held-out questions into ``eval.json``. ``teachers``:
    ``{domain: checkpoint}`` to use instead of the cached ``grpo --quick`` teachers; ``alpha``:
    the weight of the GRPO advantage (0: distillation alone)."""
    from hysparse_kernels.models import load_pretrained
    from .. import runs
    from ..evaluate import evaluate
    from ..tasks import get_task
    from ..trainer import resolve_init, train_rl

    out = Path(args.out)
    init = resolve_init(cfg, progress=not args.no_progress)
    paths = dict(teachers) if teachers else {d: ensure_teacher(cfg, d, init, progress=not args.no_progress)
                                             for d in DOMAINS}
    models = {d: load_pretrained(p) for d, p in paths.items()}
    summary = train_rl(cfg, out, init=init, rewards=MopdRewards(models, alpha), resume=args.resume,
                       progress=not args.no_progress, recipe_name=recipe_name or recipe.name)
    if "stopped_at" in summary:
        return summary
    report = runs.read_json(out / "eval.json")
    task = get_task(cfg.task, cfg.task_seed)
    report["teachers"] = {}
    for d, model in models.items():
        ev = evaluate(model, task, split=cfg.eval_split, n=cfg.eval_n, temperature=cfg.temperature, top_p=cfg.top_p,
                      samples=cfg.eval_samples)
        score = ev[f"success_{d}"]
        report["teachers"][d] = {"checkpoint": str(paths[d]), "success": score, "eval": ev,
                                 "student_ratio": report["after"][f"success_{d}"] / score if score else None}
    runs.write_json(out / "eval.json", report)
    return {**summary, **{f"ratio_{d}": t["student_ratio"] for d, t in report["teachers"].items()}}


RECIPE = register_recipe(Recipe(
    name="mopd",
    summary="MOPD: per-token sg(log pi_teacher(domain) - log pi_old) + 1.0 x GRPO advantage, ratio mask [0.1, 10]",
    overrides=dict(advantage="mopd", loss="ppo_clip", aggregation="seq-mean-token-mean", eps_low=0.2, eps_high=0.2,
                   kl_coef=0.0),
    tasks=("mixed",),
    run=run,
    module=__name__,
))
