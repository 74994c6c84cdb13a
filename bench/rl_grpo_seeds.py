"""`hysparse recipe run grpo --quick` for several seeds, one after the other, then two tables:
held-out success before (SFT warm start) and after, and where the time of one RL step goes.

    python bench/rl_grpo_seeds.py [--seeds 0 1 2] [--recipe grpo] [--out bench/out/rl] [--report-only]

Each run is a subprocess started exactly as a user would (``hysparse recipe run ... --quick``);
its wall time is measured around it (the first run also trains the cached SFT warm start).
``--report-only`` reads existing run directories.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PHASES = [("t_rollout", "rollout (generation + tool calls)"), ("t_logprob", "log-prob recompute (old + reference)"),
          ("t_backward", "policy forward + backward"), ("t_optimizer", "optimizer step")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="grpo")
    parser.add_argument("--task", default="lookup")
    parser.add_argument("--out", default="bench/out/rl")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `recipe run` flags")
    args = parser.parse_args(argv)
    root = Path(args.out)
    walls = {}
    for seed in args.seeds:
        out = root / f"{args.recipe}-{args.task}-quick-s{seed}"
        if args.report_only:
            continue
        cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", args.recipe, "--quick", "--task", args.task,
               "--seed", str(seed), "--out", str(out), "--no-progress", *args.extra]
        print("$", " ".join(cmd[2:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        walls[seed] = time.perf_counter() - t0
        (out / "wall_seconds.txt").write_text(f"{walls[seed]:.1f}\n")
    print(f"\n| seed | before success | after success | change | before greedy | after greedy | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    deltas, phase_rows = [], []
    for seed in args.seeds:
        out = root / f"{args.recipe}-{args.task}-quick-s{seed}"
        ev = json.loads((out / "eval.json").read_text())
        b, a = ev["before"], ev["after"]
        wall = (out / "wall_seconds.txt").read_text().strip() if (out / "wall_seconds.txt").exists() else "?"
        deltas.append(a["success"] - b["success"])
        print(f"| {seed} | {b['success']:.3f} | {a['success']:.3f} | {100 * deltas[-1]:+.1f} pts | "
              f"{b['success_greedy']:.3f} | {a['success_greedy']:.3f} | {wall} |")
        phase_rows += [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"\nmean change {100 * statistics.mean(deltas):+.1f} points over {len(deltas)} seeds "
          f"(n_eval {ev['n_eval']}, {ev['before']['samples']} samples each, split {ev['split']})")
    total = statistics.mean(r["t_step"] for r in phase_rows)
    print(f"\n| phase of one RL step | seconds (mean of {len(phase_rows)} steps) | share |")
    print("|---|---|---|")
    for key, label in PHASES:
        v = statistics.mean(r[key] for r in phase_rows)
        print(f"| {label} | {v:.3f} | {100 * v / total:.0f}% |")
    rest = total - sum(statistics.mean(r[k] for r in phase_rows) for k, _ in PHASES)
    print(f"| rewards, advantages, bookkeeping | {rest:.3f} | {100 * rest / total:.0f}% |")
    print(f"| **whole step** | {total:.3f} | 100% |")
    tps = statistics.mean(r["tokens_per_s"] for r in phase_rows)
    print(f"\nrollout tokens/s (model tokens) {tps:.0f}; rollouts per step "
          f"{statistics.mean(r['kept_rollouts'] for r in phase_rows):.0f}; "
          f"mean response {statistics.mean(r['response_len'] for r in phase_rows):.1f} model tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
