"""TAME against its baselines over the evolution stream: the TAME table of ``bench/RESULTS_memory.md``.

    python bench/tame_compare.py [--runs DIR ...] [--seeds 0 1 2] [--out bench/out/memory] [--run] [--quick]
                                 [--png tame_curves.png] [--order-check]

Each ``tame`` run (``eval.json``: ``arms``) holds every arm over the same stream and the same
attempts of the frozen agent: ``none``, ``single`` (one memory, task outcomes only: the
misevolution baseline), ``single_fb`` (one memory, every feedback bit) and ``tame``. ``--run``
runs the missing ones (``tame[-quick]-sS`` under ``--out``) one after the other with ``--threads 1``.
Prints mean ± sample std over the runs (per-run values after), writes the mean utility and trust
curves of the arms to ``--png``.

``--order-check`` re-runs the memory arms of each run in-process with ``persist`` placed before
``retry`` in the strategy menu (the order breaks ties between equal values; the two strategies
have the same utility on tasks, so only the order tells a utility-driven memory which to keep).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ARMS = ("none", "single", "single_fb", "tame")
NAMES = {"none": "no memory", "single": "single memory, task outcomes only (misevolution baseline)",
         "single_fb": "single memory, all feedback (ablation)", "tame": "TAME (executor + evaluator)"}
COLUMNS = ("utility", "utility_first_half", "utility_second_half", "trust", "trust_first_half", "trust_second_half",
           "trust_protected", "trust_injection", "trust_unanswerable")


def run_one(seed: int, out: Path, quick: bool) -> None:
    cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", "tame", "--seed", str(seed), "--out", str(out),
           "--no-progress", "--threads", "1"] + (["--quick"] if quick else [])
    print("$", " ".join(["hysparse", *cmd[3:]]), flush=True)
    subprocess.run(cmd, check=True)


def fmt(values: list[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.{digits}f} ± {sd:.{digits}f} ({' / '.join(f'{v:.{digits}f}' for v in values)})"


def table(arms_per_run: list[dict], columns=COLUMNS) -> str:
    out = ["| arm | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for arm in ARMS:
        if all(arm in a for a in arms_per_run):
            out.append(f"| {NAMES[arm]} | " + " | ".join(fmt([a[arm][c] for a in arms_per_run]) for c in columns) + " |")
    return "\n".join(out)


def choices(arms_per_run: list[dict]) -> str:
    lines = []
    for arm in ARMS[1:]:
        if all(arm in a for a in arms_per_run):
            s = " ; ".join(", ".join(f"{k} {v}" for k, v in a[arm]["strategies"].items() if v) for a in arms_per_run)
            lines.append(f"- {arm} strategies per run: {s}")
            if arm == "tame":
                v = " ; ".join(", ".join(f"{k} {n}" for k, n in a[arm]["verdicts"].items()) for a in arms_per_run)
                lines.append(f"- tame verdicts per run: {v}")
    return "\n".join(lines)


def plot(arms_per_run: list[dict], png: Path) -> None:
    """Top: mean utility and trust per block; bottom: each arm minus no memory on the same
    episodes (the stream's mix of probe kinds moves every arm's trust together)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_curve(arm, key):
        curves = [a[arm]["curve"][key] for a in arms_per_run]
        return [statistics.fmean([c[i] for c in curves if not math.isnan(c[i])]) for i in range(len(curves[0]))]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    x = arms_per_run[0]["none"]["curve"]["episode"]
    for arm in ARMS:
        if not all(arm in a for a in arms_per_run):
            continue
        for col, key in enumerate(("utility", "trust")):
            y, base = mean_curve(arm, key), mean_curve("none", key)
            axes[0][col].plot(x, y, marker="o", label=NAMES[arm])
            axes[1][col].plot(x, [a - b for a, b in zip(y, base)], marker="o", label=NAMES[arm])
    labels = ("utility (task success)", "trust (probes handled safely)")
    for col, label in enumerate(labels):
        axes[0][col].set_ylabel(label)
        axes[1][col].set_ylabel(f"{label.split()[0]} minus no memory")
        axes[1][col].axhline(0, color="grey", lw=0.8)
        axes[1][col].set_xlabel("episode")
        for row in range(2):
            axes[row][col].grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    fig.suptitle(f"utility and trust per block of episodes, mean of {len(arms_per_run)} seeds")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def order_check(reports: list[dict]) -> list[dict]:
    """The memory arms of each run again with ``persist`` before ``retry`` in the menu."""
    import torch

    from hysparse_kernels.models import load_pretrained
    from hysparse_kernels.training.memory.bank import load_encoder
    from hysparse_kernels.training.memory.tame import make_agent, run_stream, summary, curve
    from hysparse_kernels.training.memory.tame_run import (BLOCKS, EPSILON, EVAL_EPSILON, MEMORY, N_PROTECTED,
                                                          PROBE_SHARE, make_attempts, memoised)
    from hysparse_kernels.training.memory.trust_bench import TrustBench

    torch.set_num_threads(1)
    embed = memoised(load_encoder())
    order = ("direct", "persist", "retry", "abstain", "refuse")
    out = []
    for r in reports:
        b = r["bench"]
        bench = TrustBench(b["seed"], b["n_episodes"], probe_share=PROBE_SHARE, n_protected=N_PROTECTED,
                           task_seed=b["task"]["seed"])
        attempts = make_attempts(load_pretrained(r["init"]).eval(), bench, r["samples"], b["seed"])
        arms = {}
        for arm in ("single", "single_fb", "tame"):
            rec = run_stream(bench, attempts, make_agent(arm, embed, b["seed"], epsilon=EPSILON,
                                                         eval_epsilon=EVAL_EPSILON, strategies=order, **MEMORY))
            arms[arm] = {**summary(rec), "curve": curve(rec, BLOCKS)}
        out.append(arms)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="*", default=None, help="run directories (default: --out/tame[-quick]-sS)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="bench/out/memory")
    p.add_argument("--run", action="store_true", help="run the missing runs")
    p.add_argument("--quick", action="store_true", help="the --quick runs")
    p.add_argument("--png", default=None, help="mean curves plot (default: --out/tame_curves.png)")
    p.add_argument("--order-check", action="store_true", help="memory arms again with persist before retry")
    a = p.parse_args()
    dirs = [Path(d) for d in a.runs] if a.runs else [Path(a.out) / f"tame{'-quick' if a.quick else ''}-s{s}"
                                                     for s in a.seeds]
    reports = []
    for i, d in enumerate(dirs):
        f = d / "eval.json"
        if not f.exists() and a.run and not a.runs:
            run_one(a.seeds[i], d, a.quick)
        report = json.loads(f.read_text()) if f.exists() else None
        if report is None or report.get("after") is None:
            print(f"{f}: missing or unfinished; run it first (--run)", file=sys.stderr)
            return 2
        report["samples"] = json.loads((d / "config.json").read_text())["samples"]
        reports.append(report)
    arms = [r["arms"] for r in reports]
    print(f"{len(reports)} run(s): {', '.join(str(d) for d in dirs)}")
    print(table(arms))
    print()
    print(choices(arms))
    png = Path(a.png) if a.png else Path(a.out) / "tame_curves.png"
    plot(arms, png)
    print(f"\ncurves: {png}")
    if a.order_check:
        print("\nwith persist before retry in the strategy menu:")
        checked = order_check(reports)
        print(table(checked))
        print()
        print(choices(checked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
