"""LatentMem against its baselines: the table of ``bench/RESULTS_memory.md``.

    python bench/memory_compare.py [--runs DIR ...] [--seeds 0 1 2] [--out bench/out/memory] [--run] [--quick]

Each ``latentmem`` run evaluates every arm of the planner/solver team on the same questions with
the same bank and decoding seed (``eval.json``: ``arms``): ``none``, ``text`` (retrieved transcript
in each role's prompt), ``latentmem`` (trained composer, one latent memory per role), the controls
``latent_swap`` (the roles' latent memories exchanged) and ``latent_noexp`` (trained composer, no
experience), plus ``before`` (untrained composer). A second table: the cosine between the
planner's and the solver's latent memory of one question against that between two questions of
one role (``latent_roles``). ``--run`` trains the missing runs
(``latentmem[-quick]-sS`` under ``--out``) one after the other with ``--threads 1``. Prints
mean ± sample std over the runs, then the per-run values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ARMS = ("none", "text", "latentmem", "latent_swap", "latent_noexp")


def run_one(seed: int, out: Path, quick: bool) -> None:
    cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", "latentmem", "--seed", str(seed),
           "--out", str(out), "--no-progress", "--threads", "1"] + (["--quick"] if quick else [])
    print("$", " ".join(["hysparse", *cmd[3:]]), flush=True)
    subprocess.run(cmd, check=True)


def fmt(values: list[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    each = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f} ({each})"


def table(reports: list[dict]) -> str:
    rows = [("arm", "success (T=1)", "greedy success", "planner exact plan (T=1)", "prompt tokens planner",
             "prompt tokens solver", "prompt tokens total")]
    before = [r["before"] for r in reports]
    for arm in ("before",) + tuple(a for a in ARMS if all(a in r["arms"] for r in reports)):
        vals = before if arm == "before" else [r["arms"][arm] for r in reports]
        name = "latentmem, untrained composer" if arm == "before" else arm
        rows.append((name, fmt([v["success"] for v in vals]), fmt([v["success_greedy"] for v in vals]),
                     fmt([v["plan_exact"] for v in vals]), fmt([v["prompt_tokens_planner"] for v in vals], 1),
                     fmt([v["prompt_tokens_solver"] for v in vals], 1), fmt([v["prompt_tokens"] for v in vals], 1)))
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    out.append("")
    for a, b in (("latentmem", "none"), ("latentmem", "text"), ("latentmem", "latent_swap")):
        d = [r["arms"][a]["success"] - r["arms"][b]["success"] for r in reports]
        out.append(f"- {a} − {b} (sampled success), per run: {fmt(d)}")
    if all("latent_roles" in r for r in reports):
        out += ["", "| latent memories (trained composer) | value |", "|---|---|"]
        for k in ("cos_planner_solver", "cos_same_role_other_question", "rel_diff_planner_solver", "norm_planner",
                  "norm_solver"):
            out.append(f"| {k} | {fmt([r['latent_roles'][k] for r in reports])} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="*", default=None, help="run directories (default: --out/latentmem[-quick]-sS)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="bench/out/memory")
    p.add_argument("--run", action="store_true", help="train the missing runs")
    p.add_argument("--quick", action="store_true", help="the --quick runs")
    a = p.parse_args()
    dirs = [Path(d) for d in a.runs] if a.runs else [Path(a.out) / f"latentmem{'-quick' if a.quick else ''}-s{s}"
                                                     for s in a.seeds]
    reports = []
    for i, d in enumerate(dirs):
        f = d / "eval.json"
        if not f.exists() and a.run and not a.runs:
            run_one(a.seeds[i], d, a.quick)
        report = json.loads(f.read_text()) if f.exists() else None
        if report is None or report.get("arms") is None:
            print(f"{f}: missing or unfinished (no arms); run it first (--run)", file=sys.stderr)
            return 2
        reports.append(report)
    print(f"{len(reports)} run(s): {', '.join(str(d) for d in dirs)}")
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
