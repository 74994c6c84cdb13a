"""AdaReasoner: a tiny multimodal model (patch-embedding vision encoder + a zoo LM) learns to use
visual tools on generated puzzles: SFT on generated tool-use traces, then Tool-GRPO.

Tasks ``visualtools`` (maze, frozenlake, jigsaw) and ``visualtools4`` (and sudoku). Each episode
shows the puzzle image and five tools under per-episode names (``training.vision.episodes``,
``training.vision.tools``): an A* ``planner`` (helps on maze / frozenlake, not on jigsaw), a
``cell`` reader, ``crop`` (returns a new image, spliced into the context as patch tokens), a
candidate ``check`` and a distractor ``count``. Rollout i is a sequence of turns: calls
``call: NAME ARGS`` and a final ``answer: X``::

    F_i      = 1 if every turn but the last is a parsable call and the last one is the answer
    c_i,k    = (1[call parses] + 1[NAME offered] + 1[ARGS valid for that tool]) / 3
    R_tool,i = mean_k c_i,k   (0 without calls)
    R_i      = F_i · (1[o_i correct] + 0.25 · R_tool,i · (1 - 1[o_i correct]))
    A_i      = (R_i - mean(R)) / (std(R) + eps)                          (GRPO, per group)
    J(θ)     = GRPO's objective with these A_i (PPO clip 0.2, 1/|o_i|; k3 KL β = kl_coef)

Warm start: ``sft_steps`` (1500) AdamW steps of 32 traces, masked next-token CE on generated
traces whose strategy is drawn per episode (the useful tool, a direct answer, or an irrelevant
tool then a direct answer, a third each; 1 in 10 traces offer no tools), so the warm start knows
the protocol but not which tool pays; cached under ``$HYSPARSE_CACHE/vision-sft`` and shared by
every RL seed (``--init-from`` a ``VisionLM`` folder replaces it). Copying a tool's name from the
list emerged only after ~700 steps of 32 traces (at 16 traces per step, 800 steps were not
enough).
Departures from GRPO with the outcome reward: the format gate, tool credit on wrong answers,
random tool names per episode; the policy is the vision model, rolled out by
``training.vision.rollout`` (the RL core's engine and trainer take text-only models), with the
core's ``algos`` advantage and loss. Departures from the paper (Qwen2.5-VL-7B, JSON calls inside
``<think>``/``<tool_call>``/``<response>`` tags, 6-character names, paraphrased descriptions,
8 : mean-tool-score rewards): a byte-level LM of 0.26 M parameters, one-line calls, three-letter
names, one fixed word per tool as its description (written back before the name in a call:
``call: planner=kev img_1``), 1 : 0.25.

``eval.json``: for ``before`` (the SFT warm start) and ``after`` (after RL), and each condition
``tools`` (test puzzles, names from the training pool drawn anew: renamed tools), ``unseen``
(names from the held-out pool) and ``notools`` (``tools: none``): ``success``,
``success_<domain>``, ``format_ok``, ``tool_reward``, ``reward`` and per domain and role
``calls_<domain>_<role>`` / ``used_<domain>_<role>`` (one rollout per puzzle sampled at temperature
1 with a fixed generator seed: the policy's own tool choices), and ``success_greedy`` /
``success_greedy_<domain>`` (greedy decoding).
``grid.png``: puzzle, answer before RL, answer after RL, solution.
"""

from __future__ import annotations

from . import Recipe, register_recipe

TASK_DOMAINS = {"visualtools": ("maze", "frozenlake", "jigsaw"), "visualtools4": ("maze", "frozenlake", "jigsaw", "sudoku")}
TRAIN_PER_DOMAIN = 600
SFT_BATCH = 32
SFT_LR = 3e-3
NOTOOLS_SHARE = 10  # one SFT trace in this many offers no tools


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("transcripts")}


def warm_start_settings(cfg) -> dict:
    """What the SFT warm start of a run depends on (shared by runs of every RL seed)."""
    return {"task": cfg.task, "model": cfg.model, "steps": cfg.sft_steps, "batch": SFT_BATCH, "lr": SFT_LR,
            "seed": 0, "train_per_domain": TRAIN_PER_DOMAIN, "notools_share": NOTOOLS_SHARE}


def train_episodes(task: str):
    """The training episodes (tools offered) and the no-tools ones the SFT traces add."""
    from ...vision.episodes import make_episodes

    domains = TASK_DOMAINS[task]
    return (make_episodes(domains, "train", TRAIN_PER_DOMAIN),
            make_episodes(domains, "train", TRAIN_PER_DOMAIN // NOTOOLS_SHARE, tools=False))


def cached_warm_start(cfg, progress: bool = True):
    """The ``VisionLM`` warm start of ``cfg`` (SFT on generated traces), trained on first use and
    kept under ``$HYSPARSE_CACHE/vision-sft/<task>-<model>-<hash of the settings and the code>``
    (``final/``, with the SFT ``metrics.jsonl``)."""
    import torch

    from hysparse_kernels.models.vision.multimodal import VisionConfig, VisionLM, save_vision_lm
    from ...artifacts import artifact_dir
    from ...vision.agent import train_sft
    from .. import runs

    settings = warm_start_settings(cfg)
    out = artifact_dir("vision-sft", settings, prefix=f"{cfg.task}-{cfg.model}-")
    if not (out / "final" / "vision.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        runs.write_json(out / "config.json", settings)
        metrics = out / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
        train, bare = train_episodes(cfg.task)
        with torch.random.fork_rng():
            torch.manual_seed(settings["seed"])
            model = VisionLM(VisionConfig(backbone=cfg.model))
        bar = runs.progress_bar(cfg.sft_steps, 0, f"sft {cfg.task}", progress)

        def log(row):
            runs.append_metrics(metrics, row)
            if bar is not None:
                bar.update(1)

        train_sft(model, train + bare, cfg.sft_steps, batch=SFT_BATCH, lr=SFT_LR,
                  generator=torch.Generator().manual_seed(settings["seed"]), log=log)
        if bar is not None:
            bar.close()
        save_vision_lm(model, out / "final")
    return out / "final"


def run(args, recipe, cfg) -> dict:
    """Warm start (cached SFT, or ``--init-from`` a ``VisionLM`` folder), evaluation, Tool-GRPO,
    evaluation; writes ``eval.json``, ``metrics.jsonl``, ``curves.png``, ``grid.png`` and
    ``final/`` into ``--out``."""
    import dataclasses
    import time
    from pathlib import Path

    import torch

    from hysparse_kernels.models.vision.multimodal import load_vision_lm, save_vision_lm
    from ...vision.agent import ToolGRPO, evaluate
    from ...vision.episodes import make_episodes
    from ...vision.figures import write_grid
    from ...vision.rollout import Limits
    from .. import runs

    if args.resume:
        raise ValueError("--resume: the adareasoner recipe runs start to end (a quick run takes minutes)")
    t0 = time.perf_counter()
    init = Path(cfg.init_from) if cfg.init_from else cached_warm_start(cfg, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domains = TASK_DOMAINS[cfg.task]
    runs.write_json(out / "config.json", {**dataclasses.asdict(cfg), "domains": list(domains), "init": str(init)})
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    train, _ = train_episodes(cfg.task)
    tests = {"tools": make_episodes(domains, "test", cfg.eval_n, salt="eval"),
             "unseen": make_episodes(domains, "test", cfg.eval_n, names="heldout"),
             "notools": make_episodes(domains, "test", cfg.eval_n, tools=False)}
    limits = Limits()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = load_vision_lm(init)
    t_eval = time.perf_counter()
    before = {c: evaluate(model, eps, limits) for c, eps in tests.items()}
    report = {"recipe": recipe.name, "task": cfg.task, "domains": list(domains), "metric": "success",
              "n_eval_per_domain": cfg.eval_n, "init": str(init), "before": {c: _strip(m) for c, m in before.items()},
              "after": None}
    runs.write_json(out / "eval.json", report)
    t_eval = time.perf_counter() - t_eval
    reference = load_vision_lm(init).eval() if cfg.kl_coef > 0 else None
    if reference is not None:
        reference.requires_grad_(False)
    rl = ToolGRPO(model, cfg, limits, reference)
    bar = runs.progress_bar(cfg.steps, 0, f"{recipe.name} {cfg.task}", not args.no_progress)
    for step in range(cfg.steps):
        picks = torch.randint(0, len(train), (cfg.prompts_per_step,), generator=gen).tolist()
        t1 = time.perf_counter()
        m = rl.step(step, [train[i] for i in picks], gen)
        m["t_step"] = time.perf_counter() - t1
        runs.append_metrics(metrics_path, m)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward']:.2f}", success=f"{m['success']:.2f}")
    if bar is not None:
        bar.close()
    save_vision_lm(model, out / "final")
    after = {c: evaluate(model, eps, limits) for c, eps in tests.items()}
    report["after"] = {c: _strip(m) for c, m in after.items()}
    report["seconds"] = {"total": time.perf_counter() - t0, "eval_before": t_eval}
    runs.write_json(out / "eval.json", report)
    runs.plot_curves(metrics_path, out / "curves.png",
                     ["reward", "success", "format_ok", "tool_reward", "kl", "entropy", "turns", "lm_loss"]
                     + [f"used_{d}_{r}" for d in domains for r in ("planner", "cell", "count")],
                     title=f"{recipe.name} on {cfg.task}")
    write_grid(tests["tools"], {"before": before["tools"]["transcripts"], "after": after["tools"]["transcripts"]},
               out / "grid.png")
    return {c: {"before": before[c]["success"], "after": after[c]["success"]} for c in tests} | {"out": str(out)}


RECIPE = register_recipe(Recipe(
    name="adareasoner",
    summary="AdaReasoner: vision LM + visual tools (A*, cell, crop, check, distractor), SFT traces then Tool-GRPO",
    overrides=dict(advantage="grpo", loss="ppo_clip", aggregation="seq-mean-token-mean", eps_low=0.2, eps_high=0.2,
                   kl_coef=0.0, sft_steps=1500, steps=100, prompts_per_step=8, group_size=8, lr=5e-4, eval_n=50,
                   temperature=1.0, minibatches=2),
    quick=dict(steps=60, eval_n=30),
    tasks=tuple(TASK_DOMAINS),
    run=run,
    module=__name__,
))
