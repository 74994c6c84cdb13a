"""KV bytes, measured: the cache each tiny model really holds after a generation, against the IR's
KV plan, for the model, its hybrid-SWA twin and its full-attention twin; and the plan's ratios for
the full-size models.

    python bench/fidelity/kv_bytes.py [--prefill 512] [--decode 64] [--seed 0]
        [--out bench/out/fidelity/kv_bytes]

Each model is built from its graph (random weights: the cache's size does not depend on them),
prefills ``--prefill`` random tokens into a ``KVCache`` sized for prefill + decode, then decodes
``--decode`` tokens one at a time (greedy). "measured" is ``KVCache.nbytes`` after the last step
(every K/V tensor the cache holds), "plan" is ``ir.kv_plan(graph, 1, prefill + decode,
"float32").total_bytes``. The twins: ``ir.hybrid_swa_twin`` (1 full : 5 SWA-128, last full) and
every layer full attention with the same heads and head dims.

Writes ``table.md`` and ``result.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import torch

from hysparse_kernels import dispatch, tuned
from hysparse_kernels.ir import Full, get_graph, hybrid_swa_twin, kv_plan, list_graphs, validate
from hysparse_kernels.models import HybridLM, KVCache


def full_twin(graph):
    """Every layer full attention, heads and dims kept."""
    layers = tuple(dataclasses.replace(layer, pattern=Full()) for layer in graph.layers)
    return validate(dataclasses.replace(graph, layers=layers, name=f"{graph.name} full-attention twin"))


@torch.no_grad()
def measured_bytes(graph, prefill: int, decode: int, seed: int) -> tuple[int, int]:
    """(bytes the cache holds after prefill + decode, tokens generated) for a model of ``graph``."""
    torch.manual_seed(seed)
    model = HybridLM(graph).eval()
    cache = KVCache(graph, 1, prefill + decode, dtype=torch.float32)
    ids = torch.randint(0, graph.vocab, (1, prefill))
    logits = model(ids, cache=cache)[:, -1]
    for _ in range(decode):
        ids = logits.argmax(-1, keepdim=True)
        logits = model(ids, cache=cache)[:, -1]
    return cache.nbytes, cache.seq_len()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="*", default=None, help="tiny models (default: every tiny-* preset)")
    ap.add_argument("--out", default="bench/out/fidelity/kv_bytes")
    args = ap.parse_args(argv)
    if args.prefill < 1 or args.decode < 0:
        ap.error(f"--prefill/--decode: expected prefill >= 1 and decode >= 0, got {args.prefill}, {args.decode}")
    warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
    warnings.simplefilter("ignore", tuned.TunedConfigWarning)
    names = args.models or [n for n in list_graphs() if n.startswith("tiny-")]
    total = args.prefill + args.decode
    rows = []
    for name in names:
        graph = get_graph(name)
        for variant, g in (("model", graph), ("hybrid-SWA twin", hybrid_swa_twin(graph)), ("full twin", full_twin(graph))):
            got, seq = measured_bytes(g, args.prefill, args.decode, args.seed)
            plan = kv_plan(g, 1, total, "float32").total_bytes
            rows.append({"model": name, "variant": variant, "tokens": seq, "measured": got, "plan": plan})
    full_size = []
    for name in [n for n in list_graphs() if not n.startswith("tiny-")]:
        p = kv_plan(get_graph(name), 1, 32768, "bfloat16")
        full_size.append({"model": name, "plan_bytes": p.total_bytes, "full_twin_bytes": p.twin_total_bytes,
                          "hybrid_swa_twin_bytes": p.swa_twin_total_bytes, "saving": p.saving})
    lines = [f"after {args.prefill} prefill + {args.decode} decoded tokens, float32, batch 1", "",
             "| model | variant | tokens | measured bytes | plan bytes | equal | full twin / this (measured) |",
             "|---|---|---|---|---|---|---|"]
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["variant"]] = r["measured"]
    for r in rows:
        ratio = by_model[r["model"]]["full twin"] / r["measured"]
        lines.append(f"| {r['model']} | {r['variant']} | {r['tokens']} | {r['measured']:,} | {r['plan']:,} | "
                     f"{'yes' if r['measured'] == r['plan'] else 'NO'} | {ratio:.2f}x |")
    lines += ["", "Plans of the full-size models at 32K tokens, bf16, batch 1:", "",
              "| model | KV bytes | full-attention twin | hybrid-SWA twin | full twin / this |", "|---|---|---|---|---|"]
    for r in full_size:
        lines.append(f"| {r['model']} | {r['plan_bytes'] / 2**20:,.1f} MiB | {r['full_twin_bytes'] / 2**20:,.1f} MiB | "
                     f"{r['hybrid_swa_twin_bytes'] / 2**20:,.1f} MiB | {r['saving']:.2f}x |")
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "result.json").write_text(json.dumps({"args": vars(args), "tiny": rows, "full_size": full_size}, indent=2))
    print(table)
    return 0 if all(r["measured"] == r["plan"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
