"""Markdown tables for bench/RESULTS_audio.md from the run directories of bench/audio_runs.sh.

``python bench/audio_summary.py [--runs runs/audio] [--seeds 0 1 2]``: the tokenizer's
``eval.json`` (quality per number of RVQ levels and per sound kind, codebook usage), each LM's
held-out losses against the unigram entropies, and the few-shot scores per task and number of
shots as mean and standard deviation over the seeds (with each seed's value).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def tokenizer_tables(ev: dict) -> str:
    out = ["| RVQ levels | bit/s | mel distance | SNR (dB) |", "|---|---|---|---|"]
    for key, bps in ev["bits_per_second"].items():
        m = ev["mean"][key]
        out.append(f"| {key.split('_')[1]} | {bps:.0f} | {m['mel_distance']:.3f} | {m['snr_db']:.2f} |")
    out.append(f"| (silence as the output) | 0 | {ev['silence_mel_distance']:.3f} | 0 |")
    out += ["", "| kind | mel distance (8 levels) | SNR (dB) | mel distance of silence |", "|---|---|---|---|"]
    for kind, row in ev["by_kind"].items():
        last = row[f"levels_{len(ev['codebook_sizes'])}"]
        out.append(f"| {kind} | {last['mel_distance']:.3f} | {last['snr_db']:.2f} | {row['silence_mel_distance']:.3f} |")
    out += ["", "| codebook | size | used | perplexity |", "|---|---|---|---|"]
    for i, u in enumerate(ev["codebook_usage"]):
        out.append(f"| {i} | {u['size']} | {u['used']:.2f} | {u['perplexity']:.1f} |")
    return "\n".join(out)


def lm_table(evals: list[dict]) -> str:
    out = ["| seed | held-out text CE | held-out CE per codebook (unigram entropy) |", "|---|---|---|"]
    for s, ev in evals:
        per = ", ".join(f"{a:.2f} ({u:.2f})" for a, u in zip(ev["held_out"]["audio"], ev["unigram_entropy"]))
        out.append(f"| {s} | {ev['held_out']['text']:.3f} | {per} |")
    return "\n".join(out)


def fewshot_table(results: list[dict]) -> str:
    """One row per task and score: the model's mean ± std over seeds (each seed's value) per number
    of shots, and the reference rows (means over seeds), which do not depend on the shots."""
    shots = list(results[0][next(iter(results[0]))]["shots"])
    out = ["| task | score | " + " | ".join(f"{k} shots" for k in shots) + " | references |",
           "|---|---|" + "---|" * len(shots) + "---|"]
    for task, row in results[0].items():
        for metric in row["shots"][shots[0]]:
            cells = []
            for k in shots:
                xs = [r[task]["shots"][k][metric] for r in results]
                per = " ".join(f"{x:.2f}" for x in xs)
                if any(x != x for x in xs):  # NaN: not defined at this number of shots
                    cells.append("-")
                    continue
                cells.append(f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f} ({per})" if len(xs) > 1 else f"{xs[0]:.3f}")
            refs = ", ".join(f"{ref} {statistics.mean(r[task][ref][metric] for r in results):.2f}"
                             for ref in ("oracle", "copy", "silence", "chance") if metric in row.get(ref, {}))
            out.append(f"| {task} | {metric.replace('_', ' ')} | " + " | ".join(cells) + f" | {refs} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/audio")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    root = Path(args.runs)
    print(tokenizer_tables(json.loads((root / "tokenizer" / "eval.json").read_text())))
    print()
    print(lm_table([(s, json.loads((root / f"lm-seed{s}" / "eval.json").read_text())) for s in args.seeds]))
    print()
    print(fewshot_table([json.loads((root / f"fewshot-seed{s}.json").read_text()) for s in args.seeds]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
