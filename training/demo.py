"""The main job (`make demo`): train the tiny HySparse-MoE twin with 3 MTP heads on the CPU, then
decode with and without speculative decoding and print one table.

The trained checkpoint is cached under ``$HYSPARSE_CACHE/demo/`` (keyed by the training
settings), so a second run only decodes. ``--fresh`` retrains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
import warnings
from pathlib import Path

import torch

from hysparse_kernels import dispatch, ir, tuned
from hysparse_kernels.models import generate, load_pretrained
from hysparse_kernels.models.speculative import speculative_generate
from .artifacts import artifact_dir
from .data import ByteTokenizer, make_corpus, unigram_entropy
from .pretrain import PretrainConfig, train

DEMO = PretrainConfig(model="tiny-hysparse-80b-a3b", mtp_layers=3, steps=250, batch=16, seq_len=64, lr=4e-3,
                      warmup=15, corpus_lines=20000, checkpoint_every=50)
PROMPTS = ["run c: c d e", "count 41: 41 42", "the quick"]


def cache_dir(cfg: PretrainConfig) -> Path:
    """Where the demo checkpoint of ``cfg`` is cached (keyed by the settings and the code)."""
    return artifact_dir("demo", cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hysparse_kernels.training.demo", description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="retrain even if a cached checkpoint exists")
    parser.add_argument("--steps", type=int, default=DEMO.steps, help=f"training steps (default {DEMO.steps})")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens to generate per prompt (default 48)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
    # Untuned kernels warn once each; the table's backend line and `hysparse ir` say which config runs.
    warnings.simplefilter("ignore", tuned.TunedConfigWarning)
    torch.manual_seed(0)
    cfg = dataclasses.replace(DEMO, steps=args.steps)
    out = cache_dir(cfg)
    cfg = dataclasses.replace(cfg, out=str(out))
    if args.fresh and out.exists():
        shutil.rmtree(out)  # asked for: the cached run is discarded, not resumed
    if args.fresh or not (out / "final" / "config.json").exists():
        print(f"training {cfg.model} + {cfg.mtp_layers} MTP blocks for {cfg.steps} steps (cached at {out}) ...")
        summary = train(cfg, resume=not args.fresh, progress=True)
        print(f"trained in {summary['seconds']:.0f} s")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    model = load_pretrained(out / "final").eval()
    graph = model.graph
    tok = ByteTokenizer()
    baseline = unigram_entropy(tok.encode(make_corpus(cfg.corpus_lines, cfg.seed)))
    last = rows[-20:]
    lm = sum(r["lm_loss"] for r in last) / len(last)
    mtp = [sum(r["mtp_loss"][k] for r in last) / len(last) for k in range(len(last[0]["mtp_loss"]))]

    # Warm-up, untimed: the first call of each shape imports the backends and builds their kernels.
    warm = tok.encode(PROMPTS[0], bos=True)
    generate(model, [warm], 4)
    speculative_generate(model, warm, 8, num_draft=cfg.mtp_layers)
    plain_tokens, spec_tokens, plain_s, spec_s, accept, samples = 0, 0, 0.0, 0.0, [], []
    heads = [0.0] * cfg.mtp_layers
    for text in PROMPTS:
        prompt = tok.encode(text, bos=True)
        t0 = time.perf_counter()
        plain = generate(model, [prompt], args.new_tokens)[0]
        plain_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        spec, stats = speculative_generate(model, prompt, args.new_tokens, num_draft=cfg.mtp_layers)
        spec_s += time.perf_counter() - t0
        if spec != plain:
            raise SystemExit(f"speculative greedy output differs from plain greedy for {text!r}")
        plain_tokens += len(plain)
        spec_tokens += len(spec)
        accept.append(stats.acceptance_length)
        heads = [h + a / len(PROMPTS) for h, a in zip(heads, stats.head_acceptance)]
        samples.append((text, tok.decode(plain).split("\n")[0]))

    kv = ir.kv_plan(graph, batch=1, seq_len=32768, dtype=torch.bfloat16)
    plan = ir.lower(graph, "cpu")
    by_op = {}
    for entry in plan.entries:
        by_op.setdefault(entry.op, entry.backend)
    print()
    print(f"model          {graph.name}: {graph.num_layers} layers ({graph.pattern_string()}), "
          f"{ir.param_count(graph).total / 1e6:.2f}M params, {cfg.mtp_layers} MTP blocks")
    print(f"learned        main loss {lm:.3f} nats/token vs unigram baseline {baseline:.3f}; "
          f"MTP blocks {', '.join(f'{x:.3f}' for x in mtp)}")
    print("backends       " + ", ".join(f"{op}: {b}" for op, b in by_op.items()))
    print(f"KV @ 32K bf16  {kv.total_bytes / 2**20:.1f} MiB vs {kv.twin_total_bytes / 2**20:.1f} MiB for the "
          f"full-attention twin ({kv.twin_total_bytes / kv.total_bytes:.1f}x less)")
    plain_tps, spec_tps = plain_tokens / plain_s, spec_tokens / spec_s
    print(f"decoding       plain {plain_tps:.1f} tok/s, speculative (K={cfg.mtp_layers}) {spec_tps:.1f} tok/s: "
          f"{spec_tps / plain_tps:.2f}x; acceptance length {sum(accept) / len(accept):.2f} "
          f"(per head {', '.join(f'{h:.2f}' for h in heads)}); outputs identical to greedy")
    for text, cont in samples:
        print(f"  {text!r} -> {cont!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
