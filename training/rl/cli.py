"""``hysparse recipe``: list the training recipes and run one.

    hysparse recipe list
    hysparse recipe run NAME --out DIR [--quick] [--steps N] [--seed S] [--task T]
                             [--model NAME | --init-from CKPT] [--resume] [--no-progress]
                             [--eval-n N] [--num-draft K] [--threads T] [--nproc N]
                             [--set KEY=VALUE ...]

``--set KEY=VALUE`` sets any ``RLConfig`` field after the recipe's and ``--quick``'s values (for
example ``--set lr=1e-3 --set kl_coef=0 --set eval_split=dev``: settings are chosen on the dev
split, the numbers reported on the held-out one); it is recorded in ``config.json`` like the rest.

``--nproc N`` runs an RL recipe data-parallel on N local processes (it resolves the warm start
here, then execs ``torchrun --standalone --nproc-per-node N -m hysparse_kernels.training.rl``
with the same options); ``torchrun ... -m hysparse_kernels.training.rl run NAME ...`` works on
several nodes too.

A run writes ``DIR/config.json``, ``metrics.jsonl``, ``curves.png``, ``checkpoints/``,
``final/`` and ``eval.json`` (held-out success of the starting and final checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="the registered recipes")
    p = sub.add_parser("run", help="run a recipe into --out")
    p.add_argument("name", metavar="NAME", help="recipe name (see `hysparse recipe list`)")
    p.add_argument("--out", required=True, help="run directory (config, metrics, curves, checkpoints, eval.json)")
    p.add_argument("--quick", action="store_true", help="the short setting (minutes on a 2-core CPU, warm start cached)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--seed", type=int, default=None, help="seed of the run (default 0)")
    p.add_argument("--task", default=None, help="task: lookup, arith, countdown (default: the recipe's first)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", default=None, help="zoo model to warm-start by SFT (default tiny-mimo-7b)")
    group.add_argument("--init-from", default=None, help="checkpoint directory to start from instead of the SFT warm start")
    p.add_argument("--eval-n", type=int, default=None, help="held-out questions evaluated before and after (default 200)")
    p.add_argument("--num-draft", type=int, default=None, help="MTP speculative rollouts with this many drafts (default 0: off)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: tiny models gain little from more, and lose much on a busy machine)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run on N local processes with torchrun (data parallel, RL recipes only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="set an RLConfig field (repeatable), e.g. --set lr=1e-3 --set eval_split=dev")


def parse_settings(items: list[str]) -> dict:
    """``["lr=1e-3", "kl_coef=0"]`` -> ``{"lr": 0.001, "kl_coef": 0.0}``, each value converted to
    its ``RLConfig`` field's type (``none`` for optional fields; ``true``/``false`` for flags)."""
    from .trainer import RLConfig

    fields = {f.name: f for f in dataclasses.fields(RLConfig)}
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        if key not in fields:
            raise ValueError(f"--set: expected a field of RLConfig ({', '.join(sorted(fields))}), got {key!r}")
        kind = str(fields[key].type)
        text = raw.strip()
        try:
            if text.lower() == "none" and "None" in kind:
                value = None
            elif kind.startswith("bool"):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            elif kind.startswith("int"):
                value = int(text)
            elif kind.startswith("float"):
                value = float(text)
            else:
                value = text
        except ValueError:
            raise ValueError(f"--set {key}: expected a value of type {kind}, got {text!r}") from None
        out[key] = value
    return out


def build_config(recipe, args):
    """The run's ``RLConfig``: defaults, the recipe's overrides, ``--quick`` settings, then flags."""
    from .trainer import QUICK, RLConfig

    values = dict(recipe.overrides)
    if args.quick:
        values.update(QUICK)
        values.update(recipe.quick)
    values["recipe"] = recipe.name
    values["task"] = args.task or recipe.tasks[0]
    for flag, key in (("steps", "steps"), ("seed", "seed"), ("model", "model"), ("init_from", "init_from"),
                      ("num_draft", "num_draft"), ("eval_n", "eval_n")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    if args.steps is not None and recipe.name == "sft":  # the sft recipe's steps are the SFT steps
        values["sft_steps"] = args.steps
    values.update(parse_settings(getattr(args, "settings", [])))
    known = {f.name for f in dataclasses.fields(RLConfig)}
    cfg = RLConfig(**{k: v for k, v in values.items() if k in known})
    cfg.validate()
    return cfg


def run(args) -> int:
    from .recipes import get_recipe, list_recipes

    if args.action == "list":
        for r in list_recipes():
            print(f"{r.name:10s} {r.summary}  [tasks: {', '.join(r.tasks)}]")
        return 0
    import torch

    # Bad input raises ValueError / OSError naming the argument; the `hysparse` dispatcher prints
    # it as one line and exits 2.
    if args.threads < 1:
        raise ValueError(f"--threads: expected a positive int, got {args.threads}")
    torch.set_num_threads(args.threads)
    recipe = get_recipe(args.name)
    cfg = build_config(recipe, args)
    if cfg.task not in recipe.tasks:
        raise ValueError(f"--task: recipe {recipe.name!r} runs on {list(recipe.tasks)}, got {cfg.task!r}")
    _quiet_warnings()
    if args.nproc is not None:
        _exec_torchrun(args, recipe, cfg)
    if recipe.run is not None:
        from .distributed import launched

        if launched() and int(os.environ["WORLD_SIZE"]) > 1:
            raise ValueError(f"recipe: {recipe.name!r} runs in one process only (the RL recipes run on several)")
        summary = recipe.run(args, recipe, cfg)
    else:
        from .trainer import resolve_init, train_rl

        init = resolve_init(cfg, progress=not args.no_progress)
        summary = train_rl(cfg, args.out, init=init, rewards=recipe.rewards, resume=args.resume,
                           progress=not args.no_progress, recipe_name=recipe.name)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def _exec_torchrun(args, recipe, cfg) -> None:
    """Replace this process by ``torchrun`` running the same recipe on ``args.nproc`` ranks, the
    warm start resolved first (so the ranks do not each build it)."""
    from .distributed import launched

    if args.nproc < 1:
        raise ValueError(f"--nproc: expected a positive int, got {args.nproc}")
    if launched():
        raise ValueError("--nproc: already running under torchrun (it started the processes)")
    if recipe.run is not None:
        raise ValueError(f"--nproc: recipe {recipe.name!r} runs in one process only (the RL recipes run on several)")
    from .trainer import resolve_init

    init = resolve_init(cfg, progress=not args.no_progress)
    flags = [args.name, "--out", args.out, "--init-from", init, "--task", cfg.task, "--threads", str(args.threads)]
    for flag in ("quick", "resume", "no_progress"):
        flags += [f"--{flag.replace('_', '-')}"] * bool(getattr(args, flag))
    for flag in ("steps", "seed", "eval_n", "num_draft"):
        if getattr(args, flag) is not None:
            flags += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for item in args.settings:
        flags += ["--set", item]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
            "-m", "hysparse_kernels.training.rl", "run", *flags]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # torchrun takes this process's place (its exit status is ours)


def _quiet_warnings() -> None:
    import warnings

    from hysparse_kernels import dispatch, tuned

    warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
    warnings.simplefilter("ignore", tuned.TunedConfigWarning)
