"""DiffThinker: reasoning as image-to-image generation, against a text-centric baseline.

Not RL. A diffusion transformer ``v_θ(x_σ, σ, c)`` reads the puzzle image ``c`` (token
concatenation) and is trained by rectified flow on the solution image ``x_0``::

    x_σ = (1 - σ) x_0 + σ ε,   L(θ) = E ‖v_θ(x_σ, σ, c) - (ε - x_0)‖²

then samples an answer by Euler steps from noise (here ``x_0`` is the edit ``solution - puzzle``,
added back to the puzzle: a from-scratch model learns it far sooner than the whole image, which
DiffThinker's pretrained image editor needs not); a pixel parser reads it back and the puzzle's
verifier scores it. The baseline is a zoo decoder LM of about the same size that reads the same
image as patch embeddings and writes the text answer, trained by masked cross-entropy
``- Σ_t log π_θ(y_t | c, y_<t)``. Departure from GRPO: no rollouts, rewards or advantages; the
verifier only scores (and, among N parallel samples, selects).

``RLConfig`` fields it reads: ``steps`` (optimiser steps of each model), ``prompts_per_step``
(batch), ``lr``, ``seed``, ``eval_n`` (test puzzles per setting), ``eval_samples`` (N parallel
samples per puzzle), ``temperature`` (the baseline's sampled answers after the greedy one).
Writes ``eval.json``, ``puzzles.png``, ``dit_outputs.png``, ``solutions.png``, ``grid.png``.
"""

from __future__ import annotations

from . import Recipe, register_recipe


def run(args, recipe, cfg) -> dict:
    from ...vision.compare import CompareConfig, run_compare

    if args.resume:
        raise ValueError("--resume: the diffthinker recipe trains from scratch each run and cannot resume")
    if cfg.init_from is not None or args.model is not None or cfg.num_draft:
        raise ValueError("--init-from/--model/--num-draft: the diffthinker recipe builds its own models and takes none of them")
    compare = CompareConfig(steps=cfg.steps, batch=cfg.prompts_per_step, lr=cfg.lr, text_lr=cfg.lr, seed=cfg.seed,
                            n_test=cfg.eval_n, n_samples=cfg.eval_samples, temperature=cfg.temperature,
                            n_train=1000)
    say = (lambda _: None) if args.no_progress else (lambda line: print(line, flush=True))
    report = run_compare(args.out, compare, progress=say)
    last = str(compare.sampling_steps[-1])
    return {"dit": report["dit"][last]["all"], "text": report["text"]["all"], "params": report["params"],
            "out": str(args.out), "seconds": round(report["seconds"], 1)}


RECIPE = register_recipe(Recipe(
    name="diffthinker",
    summary="image-to-image reasoning: a DiT by rectified flow on puzzles vs a zoo-LM text baseline (not RL)",
    overrides=dict(steps=1500, prompts_per_step=32, lr=1e-3, eval_n=100, eval_samples=4),
    quick=dict(steps=300, prompts_per_step=16, eval_n=12, eval_samples=4),
    tasks=("puzzles",),
    run=run,
    module=__name__,
))
