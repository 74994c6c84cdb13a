"""`hysparse recipe run adareasoner --quick` for several seeds, one after the other, then the
tables of ``bench/RESULTS_vision.md`` ("AdaReasoner"): success per domain with and without tools,
tool calls per domain and role before and after RL, and success with renamed and unseen tools.

    python bench/adareasoner_seeds.py [--seeds 0 1 2] [--out bench/out/adareasoner] [--report-only]
                                      [--extra --set steps=60 ...]

Each run is a subprocess started as a user would; ``--report-only`` reads existing run
directories. Numbers are means over seeds, with the per-seed values in brackets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROLES = ("planner", "cell", "crop", "check", "count", "unknown")
# eval.json keys name tools by role; the prompt describes them by these words
DESCRIBED = {"planner": "planner", "cell": "cell (`read`)", "crop": "crop (`zoom`)", "check": "check (`verify`)",
             "count": "count (`dark`, distractor)", "unknown": "unknown"}
CONDITIONS = (("tools", "tools (renamed: fresh names from the training pool)"), ("unseen", "unseen names (held-out pool)"),
              ("notools", "no tools offered"))


def _cell(values: list[float], digits: int = 2) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} [" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


def _success(reports: list[dict], key: str) -> list[str]:
    domains = reports[0]["domains"]
    lines = ["| condition | checkpoint | all | " + " | ".join(domains) + " |",
             "|---|---|---|" + "---|" * len(domains)]
    for cond, label in CONDITIONS:
        for ck in ("before", "after"):
            row = [_cell([r[ck][cond][key] for r in reports])]
            row += [_cell([r[ck][cond][f"{key}_{d}"] for r in reports]) for d in domains]
            lines.append(f"| {label} | {'SFT' if ck == 'before' else 'SFT + Tool-GRPO'} | " + " | ".join(row) + " |")
    return lines


def tables(reports: list[dict]) -> str:
    domains = reports[0]["domains"]
    out = ["Success, one rollout per test puzzle sampled at temperature 1 (the policy's own choices):", "",
           *_success(reports, "success"), "", "Success, greedy decoding:", "", *_success(reports, "success_greedy"), ""]
    lines = ["| domain | tool | calls/episode SFT | calls/episode RL | share of episodes SFT | share RL |",
             "|---|---|---|---|---|---|"]
    never = [role for role in ROLES if all(r[ck]["tools"][f"calls_{d}_{role}"] == 0 for r in reports
                                           for ck in ("before", "after") for d in domains)]
    for d in domains:
        for role in (r for r in ROLES if r not in never):
            c = [_cell([r[ck]["tools"][f"calls_{d}_{role}"] for r in reports]) for ck in ("before", "after")]
            u = [_cell([r[ck]["tools"][f"used_{d}_{role}"] for r in reports]) for ck in ("before", "after")]
            lines.append(f"| {d} | {DESCRIBED[role]} | {c[0]} | {c[1]} | {u[0]} | {u[1]} |")
    out += ["Tool calls with tools offered (condition `tools`, sampled rollouts; `unknown`: a name not offered"
            + (f"; never called by any checkpoint: {', '.join(never)}" if never else "") + "):", "", *lines, ""]
    lines = ["| checkpoint | format_ok | tool_reward | reward |", "|---|---|---|---|"]
    for ck in ("before", "after"):
        lines.append(f"| {'SFT' if ck == 'before' else 'SFT + Tool-GRPO'} | "
                     + " | ".join(_cell([r[ck]["tools"][k] for r in reports]) for k in ("format_ok", "tool_reward", "reward"))
                     + " |")
    out += ["Format gate, tool score and reward (condition `tools`):", "", *lines, ""]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", default="visualtools")
    parser.add_argument("--out", default="bench/out/adareasoner")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `recipe run` flags")
    args = parser.parse_args(argv)
    root = Path(args.out)
    walls = {}
    for seed in args.seeds:
        out = root / f"{args.task}-quick-s{seed}"
        if args.report_only:
            continue
        cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", "adareasoner", "--quick", "--task",
               args.task, "--seed", str(seed), "--out", str(out), "--no-progress", *args.extra]
        print(" ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        walls[seed] = time.perf_counter() - t0
    reports = [json.loads((root / f"{args.task}-quick-s{s}" / "eval.json").read_text()) for s in args.seeds]
    print(tables(reports))
    for seed, wall in walls.items():
        print(f"seed {seed}: {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
