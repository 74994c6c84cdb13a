"""DiffThinker vs the text-centric baseline over seeds: runs ``hysparse recipe run diffthinker``
once per seed (or reads runs already there) and prints the markdown tables of
``bench/RESULTS_vision.md``.

    python bench/vision_compare.py --out .cache/vision_compare --seeds 0 1 2 --quick
    python bench/vision_compare.py --out .cache/vision_compare --seeds 0 1 2 --report-only

Each run trains both models on the same puzzles and writes ``eval.json`` and PNG grids in
``OUT/seedS``. Tables: solve rate per setting (mean ± std over seeds) for the DiT (first sample,
and best of N with verifier selection) and the text model (greedy, and best of N sampled);
the DiT's accuracy against its number of Euler steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run_seed(out: Path, seed: int, quick: bool, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", "diffthinker", "--out", str(out / f"seed{seed}"),
           "--seed", str(seed), "--no-progress", *(["--quick"] if quick else []), *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the runs (one subfolder per seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="the recipe's --quick setting")
    p.add_argument("--report-only", action="store_true", help="only read the runs already in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to the recipe")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.report_only:
        for seed in args.seeds:
            run_seed(out, seed, args.quick, [x for item in args.set for x in ("--set", item)])
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
