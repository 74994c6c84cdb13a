"""Paper recipes against their baselines, same seeds, steps and starting checkpoint: the tables of
``bench/RESULTS_recipes.md``.

    python bench/recipes_compare.py faithrl [--seeds 0 1 2] [--out bench/out/recipes] [--run]
    python bench/recipes_compare.py aoi     [--seeds 0 1 2] [--out bench/out/recipes] [--run]

``faithrl``: ``faithrl --quick`` vs ``grpo --quick`` on lookup (run directories
``{recipe}-lookup-quick-s{seed}``; ``--run`` trains the missing ones one after the other, as a
user would, with ``--threads 1``). Both arms are judged by the same function: held-out accuracy,
hallucination (wrong or no answer), abstention, step faithfulness (``LookupQA.judge_steps`` on
the sampled held-out rollouts; the grpo arm's final checkpoints are re-evaluated for it, with the
evaluation's own seed, and the rates must agree with its ``eval.json``) and THS against the
x0, y0 the faithrl runs measured on the dev split at step 0.

``aoi``: ``aoi --quick`` per seed (``aoi-quick-s{seed}``): the learned policy's per-slot reward,
AoI and cost against zero-wait, the best fixed period and the best threshold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run_recipe(name: str, seed: int, out: Path, task: str | None) -> None:
    cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", name, "--quick", "--seed", str(seed),
           "--out", str(out), "--no-progress", "--threads", "1"] + (["--task", task] if task else [])
    print("$", " ".join(["hysparse", *cmd[3:]]), flush=True)
    subprocess.run(cmd, check=True)


def fmt(values: list[float], digits: int = 3) -> str:
    """``mean ± std (v0, v1, ...)``; the std is the sample std over seeds."""
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    per = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{mean:.{digits}f} ± {spread:.{digits}f} ({per})"


def faith_metrics(run_dir: Path, ref: dict) -> tuple[dict, dict]:
    """Before / after metrics of a lookup run, step faithfulness re-measured where missing."""
    from hysparse_kernels.models import load_pretrained
    from hysparse_kernels.training.rl.evaluate import evaluate
    from hysparse_kernels.training.rl.recipes.faithrl import hallucination_rate, judge_for, ths
    from hysparse_kernels.training.rl.tasks import get_task

    report = json.loads((run_dir / "eval.json").read_text())
    out = []
    for key, model_dir in (("before", None), ("after", run_dir / "final")):
        r = dict(report[key])
        if "step_faithfulness" not in r:
            task = get_task(report["task"], 0)
            path = model_dir if model_dir is not None else Path(report["init"])
            again = evaluate(load_pretrained(path), task, split=report["split"], n=report["n_eval"],
                             samples=r["samples"], temperature=r["temperature"], top_p=r["top_p"], greedy=False,
                             judge=judge_for(task))
            for k in ("rate_correct", "rate_wrong", "rate_abstain"):
                if abs(again[k] - r[k]) > 0.03:
                    print(f"warning: {run_dir} {key}: re-evaluated {k} {again[k]:.4f} vs eval.json {r[k]:.4f}")
            r["step_faithfulness"] = again["step_faithfulness"]
            r["step_faithfulness_reevaluated"] = True
        r["rate_hallucination"] = hallucination_rate(r)
        r["ths"] = ths(r["rate_correct"], r["rate_hallucination"], ref["x0"], ref["y0"])
        out.append(r)
    return out[0], out[1]


def faithrl(args) -> None:
    root = Path(args.out)
    for seed in args.seeds:
        for recipe in ("grpo", "faithrl"):
            d = root / f"{recipe}-lookup-quick-s{seed}"
            if args.run and not (d / "eval.json").exists():
                run_recipe(recipe, seed, d, "lookup")
    ref = json.loads((root / f"faithrl-lookup-quick-s{args.seeds[0]}" / "reference.json").read_text())
    rows = {"grpo": [], "faithrl": []}
    before = None
    for seed in args.seeds:
        for recipe in rows:
            d = root / f"{recipe}-lookup-quick-s{seed}"
            cfg = json.loads((d / "config.json").read_text())
            b, a = faith_metrics(d, ref)
            rows[recipe].append({"seed": seed, "after": a, "steps": cfg["steps"], "init": Path(cfg["init"]).parent.name})
            before = before or b
    inits = {r["init"] for rs in rows.values() for r in rs}
    steps = {r["steps"] for rs in rows.values() for r in rs}
    print(f"\nstarting checkpoint(s): {sorted(inits)}; steps {sorted(steps)}; "
          f"x0 = {ref['x0']:.4f}, y0 = {ref['y0']:.4f} (dev, n {ref['n']} x {ref['samples']} samples)")
    keys = [("rate_correct", "accuracy"), ("rate_hallucination", "hallucination"), ("rate_abstain", "abstention"),
            ("step_faithfulness", "step faithfulness"), ("ths", "THS"), ("success_greedy", "greedy accuracy")]
    print(f"\n| held-out metric | start | grpo --quick after | faithrl --quick after |")
    print("|---|---|---|---|")
    for key, label in keys:
        print(f"| {label} | {before[key]:.3f} | {fmt([r['after'][key] for r in rows['grpo']])} | "
              f"{fmt([r['after'][key] for r in rows['faithrl']])} |")
    print("\nper seed, faithrl minus grpo:")
    for i, seed in enumerate(args.seeds):
        g, f = rows["grpo"][i]["after"], rows["faithrl"][i]["after"]
        print(f"  seed {seed}: accuracy {f['rate_correct'] - g['rate_correct']:+.4f}, hallucination "
              f"{f['rate_hallucination'] - g['rate_hallucination']:+.4f}, THS {f['ths'] - g['ths']:+.4f}")


def aoi(args) -> None:
    root = Path(args.out)
    reports = []
    for seed in args.seeds:
        d = root / f"aoi-quick-s{seed}"
        if args.run and not (d / "eval.json").exists():
            run_recipe("aoi", seed, d, None)
        reports.append(json.loads((d / "eval.json").read_text()))
    env = reports[0]["env"]
    print(f"\nenv: {env}; {reports[0]['n_eval']} evaluation episodes per policy (same seeds for all)")
    arms = [("learned (greedy), before training", lambda r: r["before"]), ("learned (greedy), after", lambda r: r["after"]),
            ("zero-wait", lambda r: r["baselines"]["zero_wait"]),
            ("best fixed period", lambda r: r["baselines"]["fixed_period"]),
            ("best threshold", lambda r: r["baselines"]["threshold"])]
    print("\n| policy | reward / slot | AoI / slot | transmissions / slot |")
    print("|---|---|---|---|")
    for label, get in arms:
        print(f"| {label} | {fmt([get(r)['reward'] for r in reports])} | {fmt([get(r)['aoi'] for r in reports])} | "
              f"{fmt([get(r)['cost'] for r in reports])} |")
    print(f"\nbest threshold per seed: {[r['baselines']['threshold']['tau'] for r in reports]}; best period: "
          f"{[r['baselines']['fixed_period']['period'] for r in reports]}")
    gaps = [r["after"]["reward"] - r["baselines"]["threshold"]["reward"] for r in reports]
    print(f"learned minus best threshold (reward / slot): {fmt(gaps, 4)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=["faithrl", "aoi"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/out/recipes")
    parser.add_argument("--run", action="store_true", help="train the runs that are missing")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    {"faithrl": faithrl, "aoi": aoi}[args.recipe](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
