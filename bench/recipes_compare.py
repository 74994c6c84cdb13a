"""Paper recipes against their baselines, same seeds, steps and starting checkpoint: the tables of
``bench/RESULTS_recipes.md``.

    python bench/recipes_compare.py faithrl [--seeds 0 1 2] [--out bench/out/recipes] [--run] [--ablation]
    python bench/recipes_compare.py tspo    [--seeds 0 1 2] [--out bench/out/recipes] [--run]
    python bench/recipes_compare.py aoi     [--seeds 0 1 2] [--out bench/out/recipes] [--run]
    python bench/recipes_compare.py tool_grpo [--seeds 0 1 2] [--out bench/out/recipes] [--run]
    python bench/recipes_compare.py mopd    [--seeds 0 1 2] [--out bench/out/recipes] [--run] [--ablation]

The ``grpo`` arm of every comparison runs ``grpo --quick --set prompts_per_step=16``: the batch of
the other recipes' ``--quick`` (``grpo --quick`` alone takes 32 prompts per step).

``faithrl``: ``faithrl --quick`` vs ``grpo --quick`` on lookup (run directories
``{recipe}-lookup-quick-s{seed}``; ``--run`` trains the missing ones one after the other, as a
user would, with ``--threads 1``). Both arms are judged by the same function: held-out accuracy,
hallucination (wrong or no answer), abstention, step faithfulness (``LookupQA.judge_steps`` on
the sampled held-out rollouts; the grpo arm's final checkpoints are re-evaluated for it, with the
evaluation's own seed, and the rates must agree with its ``eval.json``) and THS against the
x0, y0 the faithrl runs measured on the dev split at step 0. ``--ablation`` adds a third arm,
faithrl with α = 1 (the geometric reward without the step modulation), trained in-process.

``tspo``: ``tspo --quick`` vs ``grpo --quick`` (outcome reward only) on the same multi-turn lookup
task: held-out success, and from the tspo runs' ``metrics.jsonl`` the within-group variance and
zero-variance group share of both rewards on the same rollouts.

``aoi``: ``aoi --quick`` per seed (``aoi-quick-s{seed}``): the learned policy's per-slot reward,
AoI and cost against zero-wait, the best fixed period and the best threshold.

``tool_grpo``: ``tool_grpo --quick`` vs ``grpo --quick --task toolmix`` (outcome reward only; same
task, tools, warm start, steps and seeds): per domain, tool calls per episode before and after,
success, format, and success with tool names from the held-out pool (the grpo arm's final
checkpoints are evaluated for it here, by the same function, cached in ``heldout_names.json``).

``mopd``: ``mopd --quick`` vs ``grpo --quick --task mixed``: each teacher's held-out success on its
domain (from the mopd runs' ``eval.json``, same questions and decoding), and each student's
success per domain and its ratio to the teacher's. ``--ablation`` adds mopd with α = 0 (the
teacher term alone), trained in-process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run_recipe(name: str, seed: int, out: Path, task: str | None, init: str | None = None) -> None:
    cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", name, "--quick", "--seed", str(seed),
           "--out", str(out), "--no-progress", "--threads", "1"] + (["--task", task] if task else [])
    cmd += ["--init-from", init] if init else []
    if name == "grpo":  # the baseline arm takes the other recipes' --quick batch, not grpo's own (32 prompts)
        cmd += ["--set", "prompts_per_step=16"]
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
            gap = max(abs(again[k] - r[k]) for k in ("rate_correct", "rate_wrong", "rate_abstain", "rate_invalid"))
            print(f"{run_dir.name} {key}: re-evaluated for step faithfulness; largest rate difference to its "
                  f"eval.json {gap:.4f}{'  WARNING: not the same rollouts' if gap > 0.03 else ''}")
            r["step_faithfulness"] = again["step_faithfulness"]
            r["step_faithfulness_reevaluated"] = True
        r["rate_hallucination"] = hallucination_rate(r)
        r["ths"] = ths(r["rate_correct"], r["rate_hallucination"], ref["x0"], ref["y0"])
        out.append(r)
    return out[0], out[1]


def run_faithrl_alpha1(seed: int, out: Path, ref: dict) -> None:
    """The ablation arm: ``faithrl --quick`` with α = 1 (the geometric reward alone, no step
    modulation), from the same warm start and reference x0, y0."""
    from types import SimpleNamespace

    from hysparse_kernels.training.rl.cli import build_config
    from hysparse_kernels.training.rl.recipes import get_recipe
    from hysparse_kernels.training.rl.recipes.faithrl import FaithRewards, judge_for
    from hysparse_kernels.training.rl.tasks import get_task
    from hysparse_kernels.training.rl.trainer import resolve_init, train_rl

    recipe = get_recipe("faithrl")
    flags = dict(quick=True, task="lookup", steps=None, seed=seed, model=None, init_from=None, num_draft=None, eval_n=None)
    cfg = build_config(recipe, SimpleNamespace(**flags))
    init = resolve_init(cfg, progress=False)
    if str(init) != ref["init"]:
        raise ValueError(f"init: the reference was measured on {ref['init']}, this run starts from {init}")
    print(f"$ faithrl --quick --seed {seed} with alpha = 1 -> {out}", flush=True)
    train_rl(cfg, out, init=init, rewards=FaithRewards(ref["x0"], ref["y0"], alpha=1.0), progress=False,
             recipe_name="faithrl-alpha1", eval_judge=judge_for(get_task("lookup", cfg.task_seed)))


def faithrl(args) -> None:
    root = Path(args.out)
    for seed in args.seeds:
        for recipe in ("grpo", "faithrl"):
            d = root / f"{recipe}-lookup-quick-s{seed}"
            if args.run and not (d / "eval.json").exists():
                run_recipe(recipe, seed, d, "lookup")
    ref = json.loads((root / f"faithrl-lookup-quick-s{args.seeds[0]}" / "reference.json").read_text())
    arms = ["grpo", "faithrl"]
    if args.ablation:
        arms.append("faithrl_a1")
        for seed in args.seeds:
            d = root / f"faithrl_a1-lookup-quick-s{seed}"
            if not (d / "eval.json").exists() or json.loads((d / "eval.json").read_text()).get("after") is None:
                run_faithrl_alpha1(seed, d, ref)
    rows = {a: [] for a in arms}
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
    names = {"grpo": "grpo --quick after", "faithrl": "faithrl --quick after", "faithrl_a1": "faithrl, α = 1, after"}
    print(f"\n| held-out metric | start | {' | '.join(names[a] for a in arms)} |")
    print("|---|---|" + "---|" * len(arms))
    for key, label in keys:
        print(f"| {label} | {before[key]:.3f} | " + " | ".join(fmt([r['after'][key] for r in rows[a]]) for a in arms) + " |")
    print("\nper seed, faithrl minus grpo:")
    for i, seed in enumerate(args.seeds):
        g, f = rows["grpo"][i]["after"], rows["faithrl"][i]["after"]
        print(f"  seed {seed}: accuracy {f['rate_correct'] - g['rate_correct']:+.4f}, hallucination "
              f"{f['rate_hallucination'] - g['rate_hallucination']:+.4f}, THS {f['ths'] - g['ths']:+.4f}")


def tspo(args) -> None:
    root = Path(args.out)
    for seed in args.seeds:
        for recipe in ("grpo", "tspo"):
            d = root / f"{recipe}-lookup-quick-s{seed}"
            if args.run and not (d / "eval.json").exists():
                run_recipe(recipe, seed, d, "lookup")
    ev = {r: [json.loads((root / f"{r}-lookup-quick-s{s}" / "eval.json").read_text()) for s in args.seeds]
          for r in ("grpo", "tspo")}
    inits = {Path(e["init"]).parent.name for es in ev.values() for e in es}
    print(f"\nstarting checkpoint(s): {sorted(inits)}; start held-out success {ev['grpo'][0]['before']['success']:.3f}")
    print("\n| held-out metric | start | grpo --quick after | tspo --quick after |")
    print("|---|---|---|---|")
    for key, label in (("success", "success (sampled)"), ("success_greedy", "success (greedy)"),
                       ("success_hops1", "success, 1 hop"), ("success_hops2", "success, 2 hops"),
                       ("success_hops3", "success, 3 hops"), ("rate_wrong", "wrong"), ("rate_abstain", "abstain")):
        print(f"| {label} | {ev['grpo'][0]['before'][key]:.3f} | {fmt([e['after'][key] for e in ev['grpo']])} | "
              f"{fmt([e['after'][key] for e in ev['tspo']])} |")
    rows = [[json.loads(x) for x in (root / f"tspo-lookup-quick-s{s}" / "metrics.jsonl").read_text().splitlines()]
            for s in args.seeds]
    print("\ntspo runs, mean over the steps of each seed (same rollouts, two rewards):\n")
    print("| per step | outcome reward only | TSPO (FOLR + outcome) |")
    print("|---|---|---|")
    for a, b, label in (("outcome_reward_var", "reward_var", "within-group reward variance"),
                        ("outcome_zero_var_groups", "zero_var_groups", "share of zero-variance groups")):
        print(f"| {label} | {fmt([statistics.mean(r[a] for r in rs) for rs in rows])} | "
              f"{fmt([statistics.mean(r[b] for r in rs) for rs in rows])} |")
    print(f"\nrollouts whose observations showed the gold answer: "
          f"{fmt([statistics.mean(r['folr_rate'] for r in rs) for rs in rows])}")
    for i, seed in enumerate(args.seeds):
        print(f"  seed {seed}: tspo minus grpo success {ev['tspo'][i]['after']['success'] - ev['grpo'][i]['after']['success']:+.4f}")


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


def _after(d: Path) -> dict:
    report = json.loads((d / "eval.json").read_text())
    if not report.get("after"):
        raise ValueError(f"{d}: the run has no final evaluation yet")
    return report


def tool_grpo(args) -> None:
    from types import SimpleNamespace

    from hysparse_kernels.training.rl.recipes.tool_grpo import heldout_names_eval

    root = Path(args.out)
    for seed in args.seeds:
        for recipe in ("tool_grpo", "grpo"):  # grpo starts from tool_grpo's warm start (800 SFT steps)
            d = root / f"{recipe}-toolmix-quick-s{seed}"
            if args.run and not (d / "eval.json").exists():
                init = json.loads((root / f"tool_grpo-toolmix-quick-s{seed}" / "config.json").read_text())["init"]
                run_recipe(recipe, seed, d, "toolmix", None if recipe == "tool_grpo" else init)
    ev = {r: [_after(root / f"{r}-toolmix-quick-s{s}") for s in args.seeds] for r in ("grpo", "tool_grpo")}
    for seed, report in zip(args.seeds, ev["grpo"]):  # the baseline arm: held-out names evaluated here
        d = root / f"grpo-toolmix-quick-s{seed}"
        cache = d / "heldout_names.json"
        if not cache.exists():
            cfg = SimpleNamespace(**{k: v for k, v in json.loads((d / "config.json").read_text()).items()})
            print(f"{d.name}: evaluating the final checkpoint with held-out tool names", flush=True)
            cache.write_text(json.dumps({"after": heldout_names_eval(d / "final", cfg)}))
        report["heldout_names"] = json.loads(cache.read_text())
    inits = {Path(e["init"]).parent.name for es in ev.values() for e in es}
    start, start_h = ev["tool_grpo"][0]["before"], ev["tool_grpo"][0]["heldout_names"]["before"]
    print(f"\nstarting checkpoint(s): {sorted(inits)}")
    print("\n| held-out metric | start | grpo --quick after | tool_grpo --quick after |")
    print("|---|---|---|---|")
    keys = [("success", "success (sampled)"), ("success_greedy", "success (greedy)"), ("success_arith", "success, arithmetic"),
            ("success_lookup", "success, lookup"), ("format_ok", "well-formed episodes")]
    for dom in ("arith", "lookup"):
        for role in ("calculator", "search", "reverse", "unknown"):
            keys.append((f"calls_{dom}_{role}", f"{dom}: {role} calls / episode"))
    for key, label in keys:
        print(f"| {label} | {start[key]:.3f} | {fmt([e['after'][key] for e in ev['grpo']])} | "
              f"{fmt([e['after'][key] for e in ev['tool_grpo']])} |")
    print("\nwith tool names from the held-out pool (never seen in training), same questions:\n")
    print("| held-out names | start | grpo --quick after | tool_grpo --quick after |")
    print("|---|---|---|---|")
    for key, label in [("success", "success (sampled)"), ("success_arith", "success, arithmetic"),
                       ("success_lookup", "success, lookup"), ("format_ok", "well-formed episodes"),
                       ("calls_arith_calculator", "arith: calculator calls / episode"),
                       ("calls_lookup_search", "lookup: search calls / episode"),
                       ("calls_arith_reverse", "arith: reverse calls / episode"),
                       ("calls_lookup_reverse", "lookup: reverse calls / episode")]:
        print(f"| {label} | {start_h[key]:.3f} | {fmt([e['heldout_names']['after'][key] for e in ev['grpo']])} | "
              f"{fmt([e['heldout_names']['after'][key] for e in ev['tool_grpo']])} |")
    for i, seed in enumerate(args.seeds):
        g, t = ev["grpo"][i], ev["tool_grpo"][i]
        print(f"  seed {seed}: tool_grpo minus grpo success {t['after']['success'] - g['after']['success']:+.4f}, "
              f"held-out names {t['heldout_names']['after']['success'] - g['heldout_names']['after']['success']:+.4f}")


def run_mopd_alpha0(seed: int, out: Path) -> None:
    """The ablation arm: ``mopd --quick`` with α = 0 (the teacher term alone, no outcome
    advantage), same warm start and cached teachers, trained in-process."""
    from types import SimpleNamespace

    from hysparse_kernels.training.rl.cli import build_config
    from hysparse_kernels.training.rl.recipes import get_recipe
    from hysparse_kernels.training.rl.recipes.mopd import run

    recipe = get_recipe("mopd")
    flags = dict(quick=True, task="mixed", steps=None, seed=seed, model=None, init_from=None, num_draft=None, eval_n=None)
    cfg = build_config(recipe, SimpleNamespace(**flags))
    print(f"$ mopd --quick --seed {seed} with alpha = 0 -> {out}", flush=True)
    run(SimpleNamespace(out=str(out), resume=False, no_progress=True), recipe, cfg, alpha=0.0, recipe_name="mopd-alpha0")


def mopd(args) -> None:
    root = Path(args.out)
    for seed in args.seeds:
        for recipe in ("grpo", "mopd"):
            d = root / f"{recipe}-mixed-quick-s{seed}"
            if args.run and not (d / "eval.json").exists():
                run_recipe(recipe, seed, d, "mixed")
    arms = ("grpo", "mopd") + (("mopd_a0",) if args.ablation else ())
    if args.ablation:
        for seed in args.seeds:
            d = root / f"mopd_a0-mixed-quick-s{seed}"
            if not (d / "eval.json").exists() or json.loads((d / "eval.json").read_text()).get("after") is None:
                run_mopd_alpha0(seed, d)
    ev = {r: [_after(root / f"{r}-mixed-quick-s{s}") for s in args.seeds] for r in arms}
    inits = {Path(e["init"]).parent.name for es in ev.values() for e in es}
    teachers = ev["mopd"][0]["teachers"]
    if any(e["teachers"][d]["checkpoint"] != teachers[d]["checkpoint"] for e in ev["mopd"] for d in teachers):
        raise ValueError("the mopd runs were distilled from different teachers")
    start = ev["mopd"][0]["before"]
    print(f"\nstarting checkpoint(s): {sorted(inits)}; teachers: "
          + ", ".join(f"{d} {Path(t['checkpoint']).parent.name}" for d, t in teachers.items()))
    names = {"grpo": "grpo --quick after", "mopd": "mopd --quick after", "mopd_a0": "mopd, α = 0, after"}
    print("\n| held-out success | start | teacher (its domain) | " + " | ".join(names[a] for a in arms) + " |")
    print("|---|---|---|" + "---|" * len(arms))
    for key, label in (("success", "mixed (sampled)"), ("success_greedy", "mixed (greedy)"),
                       ("success_arith", "arithmetic"), ("success_lookup", "lookup")):
        dom = key[len("success_"):]
        t = f"{teachers[dom]['success']:.3f}" if dom in teachers else "-"
        print(f"| {label} | {start[key]:.3f} | {t} | " + " | ".join(fmt([e['after'][key] for e in ev[a]]) for a in arms)
              + " |")
    print("\n| student / teacher on the teacher's domain | " + " | ".join(a for a in arms) + " |")
    print("|---|" + "---|" * len(arms))
    for dom, t in teachers.items():
        print(f"| {dom} | " + " | ".join(fmt([e['after'][f'success_{dom}'] / t['success'] for e in ev[a]]) for a in arms)
              + " |")
    for i, seed in enumerate(args.seeds):
        g, m = ev["grpo"][i]["after"], ev["mopd"][i]["after"]
        print(f"  seed {seed}: mopd minus grpo: " + ", ".join(f"{dom} {m[f'success_{dom}'] - g[f'success_{dom}']:+.4f}"
                                                             for dom in teachers))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=["faithrl", "tspo", "aoi", "tool_grpo", "mopd"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/out/recipes")
    parser.add_argument("--run", action="store_true", help="train the runs that are missing")
    parser.add_argument("--ablation", action="store_true",
                        help="faithrl: also the α = 1 arm; mopd: also the α = 0 arm (trained when missing)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    {"faithrl": faithrl, "tspo": tspo, "aoi": aoi, "tool_grpo": tool_grpo, "mopd": mopd}[args.recipe](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
