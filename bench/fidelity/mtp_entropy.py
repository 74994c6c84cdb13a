"""MTP acceptance length against the main head's next-token entropy, and the fit
``L(H) = (K + 1) * (1 - a * H**b)`` (MiMo-V2-Flash reports a = 0.58, b = 0.58 for K = 3, R^2 0.995).

    python bench/fidelity/mtp_entropy.py [--seeds 0 1 2] [--prompts 64] [--new-tokens 48]
        [--num-draft 3] [--temperature 1.0] [--bins 8] [--out bench/out/fidelity/mtp_entropy]

The model is the `make demo` checkpoint (tiny HySparse-80B-A3B twin with 3 MTP blocks, trained
first if it is not cached). Prompts are the first words of held-out lines of the demo's generated
corpus (a corpus seed no training run uses); each seed draws its own prompts and sampling noise.
Every speculative round records the tokens it committed (1 + accepted drafts) and the entropy
of the main model's distribution at the first drafted position (`SpecStats.round_entropy`).
Rounds are binned by entropy (equal-count bins over all seeds); per bin: mean entropy, mean
acceptance length and its spread over the seeds. The fit is least squares of
``L = (K + 1)(1 - a H^b)`` over the bins' means, its R^2 measured on L.

Writes ``table.md``, ``result.json`` and ``acceptance_vs_entropy.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from hysparse_kernels import dispatch, tuned
from hysparse_kernels.models import load_pretrained
from hysparse_kernels.models.speculative import speculative_generate
from hysparse_kernels.training.data import ByteTokenizer, make_corpus
from hysparse_kernels.training.demo import DEMO, cache_dir
from hysparse_kernels.training.pretrain import train

HELD_OUT_CORPUS_SEED = 9_000_001  # training corpora use small seeds


def demo_model():
    out = cache_dir(DEMO)
    if not (out / "final" / "config.json").exists():
        train(dataclasses.replace(DEMO, out=str(out)), resume=True)
    return load_pretrained(out / "final").eval()


def prompts_for(seed: int, n: int) -> list[str]:
    """First 1 to 3 words of ``n`` held-out corpus lines (each line's own seed)."""
    rng = random.Random(seed)
    out = []
    for line in make_corpus(n, seed=HELD_OUT_CORPUS_SEED + seed).splitlines():
        words = line.split(" ")
        out.append(" ".join(words[: rng.randint(1, min(3, len(words)))]))
    return out


def run_seed(model, seed: int, n_prompts: int, new_tokens: int, num_draft: int, temperature: float):
    """(entropies, tokens per round) of every speculative round over the seed's prompts."""
    tok = ByteTokenizer()
    gen = torch.Generator().manual_seed(seed)
    entropy, committed = [], []
    for text in prompts_for(seed, n_prompts):
        _, stats = speculative_generate(model, tok.encode(text, bos=True), new_tokens, num_draft=num_draft,
                                        temperature=temperature, generator=gen)
        entropy += stats.round_entropy
        committed += stats.round_tokens
    return entropy, committed


def fit(h: np.ndarray, acc: np.ndarray, k: int) -> dict:
    """Least squares of ``L = (K+1)(1 - a H^b)`` on the points with H > 0 and 0 < L < K + 1.

    For a fixed b the model is linear in a (closed form); b is found by a grid over [0.01, 4]
    refined by golden-section search. R^2 is measured on L."""
    ok = (h > 0) & (acc < k + 1) & (acc > 0)
    if ok.sum() < 2:
        return {"a": float("nan"), "b": float("nan"), "r2": float("nan"), "points": int(ok.sum())}
    h, acc = h[ok], acc[ok]
    y = 1 - acc / (k + 1)  # = a H^b

    def a_and_sse(b):
        x = h ** b
        a = float((x * y).sum() / (x * x).sum())
        return a, float((((k + 1) * (y - a * x)) ** 2).sum())

    grid = np.linspace(0.01, 4.0, 400)
    i = int(np.argmin([a_and_sse(b)[1] for b in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (5 ** 0.5 - 1) / 2
    for _ in range(80):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if a_and_sse(m1)[1] <= a_and_sse(m2)[1]:
            hi = m2
        else:
            lo = m1
    b = (lo + hi) / 2
    a, sse = a_and_sse(b)
    ss_tot = float(((acc - acc.mean()) ** 2).sum())
    return {"a": a, "b": float(b), "r2": 1 - sse / ss_tot if ss_tot > 0 else float("nan"), "points": int(ok.sum())}


def bin_rounds(per_seed: dict[int, tuple[list, list]], bins: int) -> list[dict]:
    """Equal-count entropy bins over all rounds; per bin the mean entropy and acceptance, and the
    acceptance of each seed's rounds in the bin."""
    all_h = np.concatenate([np.asarray(h, dtype=float) for h, _ in per_seed.values()])
    edges = np.quantile(all_h, np.linspace(0, 1, bins + 1))
    edges[-1] = np.inf
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        hs, accs, by_seed = [], [], {}
        for seed, (h, c) in per_seed.items():
            h, c = np.asarray(h, dtype=float), np.asarray(c, dtype=float)
            inside = (h >= lo) & (h < hi)
            hs.append(h[inside])
            accs.append(c[inside])
            if inside.any():
                by_seed[seed] = float(c[inside].mean())
        hs, accs = np.concatenate(hs), np.concatenate(accs)
        if len(hs):
            rows.append({"entropy_lo": float(lo), "entropy_hi": float(hi), "rounds": int(len(hs)),
                         "entropy": float(hs.mean()), "acceptance": float(accs.mean()), "by_seed": by_seed})
    return rows


def plot(rows: list[dict], params: dict, k: int, path: Path, paper=(0.58, 0.58)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.array([r["entropy"] for r in rows])
    acc = np.array([r["acceptance"] for r in rows])
    spread = [statistics.pstdev(r["by_seed"].values()) if len(r["by_seed"]) > 1 else 0.0 for r in rows]
    grid = np.linspace(max(1e-3, h.min() * 0.8), h.max() * 1.1, 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(h, acc, yerr=spread, fmt="o", label="bins (mean, spread over seeds)")
    if np.isfinite(params["a"]):
        ax.plot(grid, (k + 1) * (1 - params["a"] * grid ** params["b"]),
                label=f"fit: {k + 1}(1 - {params['a']:.2f} H^{params['b']:.2f}), R² {params['r2']:.3f}")
    ax.plot(grid, (k + 1) * (1 - paper[0] * grid ** paper[1]), "--", label="MiMo-V2-Flash: 4(1 - 0.58 H^0.58)")
    ax.set_xlabel("next-token entropy of the main head (nats)")
    ax.set_ylabel(f"acceptance length (K = {k})")
    ax.set_ylim(0, k + 1.2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--num-draft", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--out", default="bench/out/fidelity/mtp_entropy")
    args = ap.parse_args(argv)
    for name in ("prompts", "new_tokens", "num_draft", "bins"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
    warnings.simplefilter("ignore", tuned.TunedConfigWarning)
    model = demo_model()
    per_seed = {s: run_seed(model, s, args.prompts, args.new_tokens, args.num_draft, args.temperature) for s in args.seeds}
    rows = bin_rounds(per_seed, args.bins)
    params = fit(np.array([r["entropy"] for r in rows]), np.array([r["acceptance"] for r in rows]), args.num_draft)
    per_seed_fit = {}
    for s, (h, c) in per_seed.items():
        r = bin_rounds({s: (h, c)}, args.bins)
        per_seed_fit[s] = fit(np.array([x["entropy"] for x in r]), np.array([x["acceptance"] for x in r]), args.num_draft)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"K = {args.num_draft}, temperature {args.temperature}, seeds {args.seeds}, {args.prompts} prompts x "
             f"{args.new_tokens} new tokens per seed, {sum(len(h) for h, _ in per_seed.values())} rounds", "",
             "| entropy bin (nats) | rounds | mean entropy | acceptance length | per seed |", "|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{v:.2f}" for v in r["by_seed"].values())
        lines.append(f"| {r['entropy_lo']:.3f} - {r['entropy_hi']:.3f} | {r['rounds']} | {r['entropy']:.3f} | "
                     f"{r['acceptance']:.2f} | {seeds} |")
    lines += ["", f"fit over the bins: L = {args.num_draft + 1}(1 - a H^b), a = {params['a']:.3f}, b = {params['b']:.3f}, "
              f"R^2 = {params['r2']:.3f} (MiMo-V2-Flash: a = 0.58, b = 0.58, R^2 0.995)",
              "per seed: " + "; ".join(f"seed {s}: a {p['a']:.3f}, b {p['b']:.3f}, R^2 {p['r2']:.3f}"
                                        for s, p in per_seed_fit.items())]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "result.json").write_text(json.dumps({"args": vars(args), "bins": rows, "fit": params,
                                                 "fit_per_seed": per_seed_fit}, indent=2))
    plot(rows, params, args.num_draft, out / "acceptance_vs_entropy.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
