"""SFT warm-up: supervised next-token training on the task's demonstrations.

    L(θ) = - 1/Σ m Σ_t m_t log π_θ(y_t | y_<t)  +  λ · mean_k L_MTP,k(θ)

``m_t`` is 1 on the tokens the model writes in a demonstration (its tool calls and its answer)
and 0 on the prompt and on tool observations; ``L_MTP,k`` is the same masked cross-entropy for
MTP block k (predicting ``y_{t+k+1}``), λ = 0.3. Departure from GRPO: not RL at all — no
sampling, no reward; it is what gives a tiny model non-zero success so that group-relative
advantages are not all zero. Its checkpoint is what the RL recipes start from (cached by
settings under ``$HYSPARSE_CACHE/rl-sft``).
"""

from __future__ import annotations

from . import Recipe, register_recipe


def run(args, recipe, cfg) -> dict:
    from pathlib import Path

    from hysparse_kernels.models import load_pretrained
    from .. import runs
    from ..evaluate import evaluate
    from ..policy import build_policy
    from ..sft import SFTConfig, train_sft
    from ..tasks import get_task

    sft = SFTConfig(task=cfg.task, task_seed=cfg.task_seed, model=cfg.model, init_from=cfg.init_from,
                    steps=cfg.sft_steps, seed=cfg.seed)
    out = Path(args.out)
    task = get_task(cfg.task, cfg.task_seed)
    settings = dict(split=cfg.eval_split, n=cfg.eval_n, temperature=cfg.temperature, top_p=cfg.top_p,
                    samples=cfg.eval_samples)
    report_path = out / "eval.json"
    report = runs.read_json(report_path) if args.resume else None
    if report is None:
        before = evaluate(build_policy(sft.model, sft.mtp_layers, init_from=sft.init_from, seed=sft.seed), task, **settings)
        report = {"recipe": recipe.name, "task": cfg.task, "metric": "success", "before": before, "after": None,
                  "n_eval": cfg.eval_n, "split": cfg.eval_split, "init": sft.init_from or f"random {sft.model}"}
        out.mkdir(parents=True, exist_ok=True)
        runs.write_json(report_path, report)
    summary = train_sft(sft, out, resume=args.resume, progress=not args.no_progress)
    report["after"] = evaluate(load_pretrained(out / "final"), task, **settings)
    runs.write_json(report_path, report)
    return {"before": report["before"]["success"], "after": report["after"]["success"], "out": str(out),
            "seconds": summary.get("seconds")}


RECIPE = register_recipe(Recipe(
    name="sft",
    summary="supervised warm-up on task demonstrations (tool calls included), masked CE + 0.3 x MTP CE",
    run=run,
    module=__name__,
))
