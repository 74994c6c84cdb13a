"""``hysparse recipe run tame``: the three arms over one Trust-Memevo-style stream.

1. The stream (:class:`.trust_bench.TrustBench`): ``steps`` episodes, seed ``seed``.
2. The frozen agent (the cached SFT warm start, ``trainer.resolve_init``) makes its attempts at
   every item once, up front: one greedy and ``group_size`` sampled at temperature 1 (a generator
   seeded by ``seed``). The agent does not change during the stream, so every arm draws its drafts
   from these same attempts (a paired comparison).
3. ``none``, ``single`` and ``tame`` (:mod:`.tame`) run over the stream in order, each with its
   own memories, learning from each episode's feedback bit.

Writes ``config.json``; ``metrics.jsonl`` (one row per episode and arm); ``curves.png`` (utility
and trust per block of episodes, three arms); ``memory/<arm>/{executor,evaluator}/`` (the banks
at the end); ``eval.json`` (per arm: :func:`.tame.summary` and the curve; ``after`` is TAME's).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from ..data import ByteTokenizer
from ..rl import runs
from ..rl.evaluate import task_sampling
from ..rl.rollout import RolloutEngine
from .bank import load_encoder
from .tame import ARMS, make_agent, parse_attempt, run_stream, summary, curve
from .trust_bench import StreamEnv, TrustBench

BLOCKS = 8  # points on the utility / trust curves
MEMORY = dict(k=16, tau=0.1, prior=0.5, strength=1.0, alpha=0.3)
EPSILON, EVAL_EPSILON = 0.1, 0.02
PROBE_SHARE, N_PROTECTED = 0.25, 6


@torch.no_grad()
def make_attempts(model, bench: TrustBench, samples: int, seed: int, batch: int = 128) -> list[list]:
    """``[len(bench)][1 + samples]`` attempts (greedy first) of the frozen ``model`` at each item."""
    tok = ByteTokenizer()
    items = bench.items
    out = [[] for _ in items]
    gen = torch.Generator().manual_seed(seed)
    for temp, reps in ((0.0, 1), (1.0, samples)):
        engine = RolloutEngine(model, tok, task_sampling(bench.task, temp))
        rows = [i for i in range(len(items)) for _ in range(reps)]
        for s in range(0, len(rows), batch):
            chunk = rows[s:s + batch]
            its = [items[i] for i in chunk]
            rollouts, _ = engine.generate([tok.encode(it.example.prompt, bos=True) for it in its],
                                          StreamEnv(bench, its), gen if temp > 0 else None)
            for i, it, r in zip(chunk, its, rollouts):
                out[i].append(parse_attempt(it.example, r.turn_texts, r.observations))
    return out


def memoised(embed):
    """``embed`` with a per-text cache (the stream re-queries the same questions)."""
    cache: dict[str, torch.Tensor] = {}

    @functools.wraps(embed)
    def wrapped(texts):
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for t, v in zip(missing, embed(missing)):
                cache[t] = v
        return torch.stack([cache[t] for t in texts]) if texts else embed([])

    wrapped.name = embed.name
    return wrapped


def plot(curves: dict, png: Path, title: str) -> None:
    """Utility and trust against episodes, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, c in curves.items():
        for ax, key in zip(axes, ("utility", "trust")):
            ax.plot(c["episode"], c[key], marker="o", label=arm)
    for ax, key in zip(axes, ("utility (task success)", "trust (probes handled safely)")):
        ax.set_xlabel("episode")
        ax.set_ylabel(key)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png)


def run(args, recipe, cfg) -> dict:
    """The recipe's ``run``: see the module docstring. Returns a summary."""
    from hysparse_kernels.models import load_pretrained
    from ..rl.trainer import resolve_init

    if args.resume:
        raise ValueError("--resume: recipe 'tame' does not resume; start a fresh --out")
    try:
        embed = memoised(load_encoder())
    except ImportError as e:
        raise ValueError(f"recipe tame: {e}") from None
    out = Path(args.out)
    init = resolve_init(cfg, progress=not args.no_progress)
    bench = TrustBench(cfg.seed, cfg.steps, probe_share=PROBE_SHARE, n_protected=N_PROTECTED, task_seed=cfg.task_seed)
    config = {**dataclasses.asdict(cfg), "init": str(init), "episodes": cfg.steps, "samples": cfg.group_size,
              "memory": MEMORY, "epsilon": EPSILON, "eval_epsilon": EVAL_EPSILON, "bench": bench.describe(),
              "encoder": embed.name, "arms": list(ARMS)}
    runs.prepare_out(out, False, config)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "config.json", config)
    attempts = make_attempts(load_pretrained(init).eval(), bench, cfg.group_size, cfg.seed)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    report = {"recipe": recipe.name, "task": cfg.task, "metric": "utility and trust", "init": str(init),
              "bench": bench.describe(), "arms": {}, "before": None, "after": None}
    curves = {}
    for arm in ARMS:
        agent = make_agent(arm, embed, cfg.seed, epsilon=EPSILON, eval_epsilon=EVAL_EPSILON, **MEMORY)
        records = run_stream(bench, attempts, agent)
        for r in records:
            runs.append_metrics(metrics_path, {"arm": arm, **r})
        curves[arm] = curve(records, min(BLOCKS, len(records)))
        report["arms"][arm] = {**summary(records), "curve": curves[arm]}
        for name in ("executor", "evaluator"):
            if hasattr(agent, name):
                getattr(agent, name).save(out / "memory" / arm / name)
        runs.write_json(out / "eval.json", report)
    report["before"], report["after"] = report["arms"]["none"], report["arms"]["tame"]
    runs.write_json(out / "eval.json", report)
    plot(curves, out / "curves.png", f"{recipe.name}: {cfg.steps} episodes, seed {cfg.seed}")
    return {arm: {k: report["arms"][arm][k] for k in ("utility", "trust", "utility_second_half", "trust_second_half")}
            for arm in ARMS} | {"out": str(out)}
