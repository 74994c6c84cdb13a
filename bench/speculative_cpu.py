"""Speculative vs plain decoding on the trained demo model (CPU): acceptance length and speed-up.

Uses the checkpoint `make demo` trains (training it first if it is missing). For K = 1, 2, 3
drafts and temperature 0 and 1, decodes the same prompts both ways in one run and reports
acceptance length (tokens committed per verification forward), per-head acceptance and the
speed-up in tokens/s over plain decoding. Prints a markdown table; ``--json PATH`` writes it too.

    python bench/speculative_cpu.py [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
import warnings

import torch

from hysparse_kernels import dispatch
from hysparse_kernels.models import generate, load_pretrained
from hysparse_kernels.models.speculative import speculative_generate
from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.demo import DEMO, PROMPTS, cache_dir
from hysparse_kernels.training.pretrain import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per setting (median)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
    out = cache_dir(DEMO)
    if not (out / "final" / "config.json").exists():
        train(dataclasses.replace(DEMO, out=str(out)), resume=True)
    model = load_pretrained(out / "final").eval()
    tok = ByteTokenizer()
    prompts = [tok.encode(p, bos=True) for p in PROMPTS]

    def plain_run(temperature, seed):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        n = sum(len(generate(model, [p], args.new_tokens, temperature=temperature, generator=g)[0]) for p in prompts)
        return n / (time.perf_counter() - t0)

    # Warm-up: the first call of each shape imports the backend and builds its kernels.
    for temperature in (0.0, 1.0):
        generate(model, [prompts[0]], 4, temperature=temperature, generator=torch.Generator().manual_seed(0))
        for K in (1, 2, 3):
            speculative_generate(model, prompts[0], 8, num_draft=K, temperature=temperature,
                                 generator=torch.Generator().manual_seed(0))
    rows = []
    for temperature in (0.0, 1.0):
        plain_tps = statistics.median(plain_run(temperature, s) for s in range(args.repeats))
        for K in (1, 2, 3):
            tps, acc, heads = [], [], []
            for s in range(args.repeats):
                g = torch.Generator().manual_seed(s)
                t0, n = time.perf_counter(), 0
                for p in prompts:
                    new, stats = speculative_generate(model, p, args.new_tokens, num_draft=K, temperature=temperature, generator=g)
                    n += len(new)
                    acc.append(stats.acceptance_length)
                    heads.append(stats.head_acceptance)
                tps.append(n / (time.perf_counter() - t0))
            head_mean = [statistics.mean(h[j] for h in heads) for j in range(K)]
            rows.append({"temperature": temperature, "K": K, "acceptance_length": statistics.mean(acc),
                         "head_acceptance": head_mean, "plain_tok_s": plain_tps, "spec_tok_s": statistics.median(tps),
                         "speedup": statistics.median(tps) / plain_tps})
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| temperature | K | acceptance length | per-head acceptance | plain tok/s | speculative tok/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        heads = ", ".join(f"{h:.2f}" for h in r["head_acceptance"])
        print(f"| {r['temperature']:.0f} | {r['K']} | {r['acceptance_length']:.2f} | {heads} | {r['plain_tok_s']:.1f} | "
              f"{r['spec_tok_s']:.1f} | {r['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
