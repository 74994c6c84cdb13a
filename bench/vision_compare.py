"""DiffThinker vs the text-centric baseline over seeds: one ``run_compare`` per seed (the
function behind ``hysparse recipe run diffthinker``), the seeds in parallel processes, or only
reading runs already there; prints the markdown tables of ``bench/RESULTS_vision.md``.

    python bench/vision_compare.py --out .cache/vision_small --seeds 0 1 2       # = the recipe's --quick, 3 seeds
    python bench/vision_compare.py --out .cache/vision_long --seeds 0 1 2 --steps 900
    python bench/vision_compare.py --out .cache/vision_compare --seeds 0 1 2 --report-only
    python bench/vision_compare.py --out unused --prior      # the most-frequent-answer context

Each run trains both models on the same puzzles and writes ``eval.json`` and PNG grids in
``OUT/seedS``; ``--dim``/``--depth`` size both models alike (the text LM: hidden ``dim``,
``depth`` layers, MLP ``5 dim``). Tables: solve rate per setting (mean ± std over seeds) for the DiT (first sample,
and best of N with verifier selection) and the text model (greedy, and best of N sampled);
the DiT's accuracy against its number of Euler steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def run_seed(out: Path, seed: int, args) -> None:
    import torch

    from hysparse_kernels.training.vision.compare import CompareConfig, run_compare

    torch.set_num_threads(1)
    heads = 4 if args.dim % 4 == 0 else 2
    cfg = CompareConfig(steps=args.steps, batch=args.batch, seed=seed, n_test=args.n_test, n_samples=args.n_samples,
                        n_train=args.n_train,
                        dit=dict(patch=4, dim=args.dim, depth=args.depth, heads=heads, mlp_ratio=4),
                        text=dict(patch=4, hidden=args.dim, layers=args.depth, heads=heads, intermediate=5 * args.dim))
    run_compare(out / f"seed{seed}", cfg, progress=lambda line: print(f"[seed {seed}] {line}", flush=True))


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def tables(reports: list[dict]) -> str:
    first = reports[0]
    last = str(first["config"]["sampling_steps"][-1])
    n = first["config"]["n_samples"]
    keys = [k for k in first["text"] if k != "all"] + ["all"]
    lines = [f"Seeds: {len(reports)}; test puzzles per setting: {first['text']['all']['n'] // (len(keys) - 1)}; "
             f"parameters: DiT {first['params']['dit']:,}, text {first['params']['text']:,}; "
             f"training steps: {first['config']['steps']} each, batch {first['config']['batch']}.", "",
             f"| setting | DiT {last} steps, 1 sample | DiT best of {n} | text greedy | text best of {n} |",
             "|---|---|---|---|---|"]
    for key in keys:
        cells = [_fmt([r["dit"][last][key]["best_of_1"] for r in reports]),
                 _fmt([r["dit"][last][key][f"best_of_{n}"] for r in reports]),
                 _fmt([r["text"][key]["best_of_1"] for r in reports]),
                 _fmt([r["text"][key][f"best_of_{n}"] for r in reports])]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", f"| Euler steps | DiT all settings, 1 sample | DiT best of {n} | sampling seconds (all samples) |",
              "|---|---|---|---|"]
    for steps in first["dit"]:
        lines.append(f"| {steps} | {_fmt([r['dit'][steps]['all']['best_of_1'] for r in reports])} | "
                     f"{_fmt([r['dit'][steps]['all'][f'best_of_{n}'] for r in reports])} | "
                     f"{statistics.fmean(r['dit'][steps]['seconds'] for r in reports):.1f} |")
    lines += ["", "| seed | DiT final loss | text final loss | DiT train s | text train s | run s |", "|---|---|---|---|---|---|"]
    for r in reports:
        t = r["train"]
        lines.append(f"| {r['config']['seed']} | {t['dit']['final_loss']:.4f} | {t['text']['final_loss']:.4f} | "
                     f"{t['dit']['seconds']:.0f} | {t['text']['seconds']:.0f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def prior_table(n_train: int = 1000, n_test: int = 100) -> str:
    """Context: what the most frequent training answer solves on the test split, and how many
    test puzzles also occur in the training split, per setting."""
    from collections import Counter

    from hysparse_kernels.training.vision.compare import SETTINGS
    from hysparse_kernels.training.vision.puzzles import make_split, verify_text

    lines = ["| setting | most frequent train answer | solves (test) | test puzzles also in train |", "|---|---|---|---|"]
    for domain, size in SETTINGS:
        train, test = make_split(domain, "train", n_train, size), make_split(domain, "test", n_test, size)
        top = Counter(p.solution_text for p in train).most_common(1)[0][0]
        rate = sum(verify_text(p, top) for p in test) / len(test)
        dup = len({p.image.tobytes() for p in test} & {p.image.tobytes() for p in train})
        lines.append(f"| {domain}-{size} | `{top!r}` | {100 * rate:.0f}% | {dup} / {n_test} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the runs (one subfolder per seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="optimiser steps of each model (the recipe's --quick: 300)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=96, help="width of both models")
    p.add_argument("--depth", type=int, default=3, help="blocks / layers of both models")
    p.add_argument("--n-train", type=int, default=1000, help="training puzzles per setting")
    p.add_argument("--n-test", type=int, default=12, help="test puzzles per setting")
    p.add_argument("--n-samples", type=int, default=4, help="parallel samples per puzzle (best of N)")
    p.add_argument("--report-only", action="store_true", help="only read the runs already in --out")
    p.add_argument("--prior", action="store_true", help="only print the most-frequent-answer context table")
    args = p.parse_args(argv)
    if args.prior:
        print(prior_table())
        return 0
    out = Path(args.out)
    if not args.report_only:
        import multiprocessing as mp

        procs = [mp.get_context("spawn").Process(target=run_seed, args=(out, seed, args)) for seed in args.seeds]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
            if proc.exitcode:
                print(f"a seed's run failed (exit {proc.exitcode})", file=sys.stderr)
                return 1
    reports = []
    for seed in args.seeds:
        path = out / f"seed{seed}" / "eval.json"
        if not path.exists():
            print(f"--out: expected {path} (run without --report-only first)", file=sys.stderr)
            return 2
        reports.append(json.loads(path.read_text()))
    print(tables(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
