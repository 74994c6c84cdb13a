"""Rollout throughput on the CPU: the batched engine against plain token-by-token loops, and MTP
speculative rollouts against plain ones, on the same lookup-QA prompts (multi-turn, with the
search tool).

    python bench/rl_rollout_cpu.py [--batch 16] [--repeats 3] [--threads 1] [--init CKPT]

Contenders (all sample at temperature 1 from the same model, same stop/turn/length limits, the
same tool; tokens/s counts the tokens the model writes):

* ``engine``: ``RolloutEngine``, the 16 prompts as one batch (prefill per prompt, one decode
  forward of ``[live rows, 1]`` per step, observations appended into each row's cache);
* ``loop-cached``: one prompt at a time, a batch-1 ``KVCache``, one model call per token
  (observation tokens in one call);
* ``loop-nocache``: one prompt at a time, the whole context re-run through the model for every
  token (no cache).
* ``engine+mtp``: the engine with ``num_draft = K`` (the model's K MTP blocks), vs ``engine``.

The model is the cached SFT warm start of ``hysparse recipe run grpo --quick`` (trained here if
absent), and an SFT twin with 3 MTP blocks for the speculative rows (``--mtp-layers``).
Repeats are interleaved; the median of each is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings

import torch

from hysparse_kernels.models import KVCache, load_pretrained
from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.rl.evaluate import TaskEnv, prompt_ids, task_sampling
from hysparse_kernels.training.rl.rollout import RolloutEngine
from hysparse_kernels.training.rl.sampling import policy_logprobs, sample_from
from hysparse_kernels.training.rl.sft import cached_sft
from hysparse_kernels.training.rl.tasks import get_task
from hysparse_kernels.training.rl.trainer import RLConfig, warm_start_config


@torch.no_grad()
def plain_loop(model, tok, task, examples, params, generator, cached: bool) -> int:
    """One prompt at a time, one model call per token. Returns the model tokens written."""
    written = 0
    for ex in examples:
        ids = prompt_ids(ex, tok)
        cache = KVCache(model.graph, 1, len(ids) + params.total_limit + 2) if cached else None
        logits = model(torch.tensor([ids]), cache=cache)[0, -1]
        n_model, turn_start, turns, total = 0, len(ids), 0, 0
        while True:
            t = int(sample_from(policy_logprobs(logits[None], params.temperature), params.temperature, generator)[0])
            ids.append(t)
            n_model += 1
            total += 1
            text = tok.decode(ids[turn_start:])
            new = [t]
            if any(text.endswith(s) for s in params.stop):
                turns += 1
                obs = task.observe(ex, text) if turns < params.max_turns else None
                if obs is None:
                    break
                o = tok.encode(obs)
                if total + len(o) >= params.total_limit:
                    break
                ids += o
                total += len(o)
                new = [t] + o
                turn_start = len(ids)
            if n_model >= params.max_new_tokens or total >= params.total_limit:
                break
            step_ids = torch.tensor([new]) if cached else torch.tensor([ids])
            logits = model(step_ids, cache=cache)[0, -1]
        written += n_model
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mtp-layers", type=int, default=3)
    parser.add_argument("--skip-nocache", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    task, tok = get_task("lookup"), ByteTokenizer()
    examples = task.examples("heldout", args.batch)
    warm = warm_start_config(RLConfig(task="lookup"))
    base = cached_sft(warm, progress=False)
    mtp = cached_sft(dataclasses.replace(warm, mtp_layers=args.mtp_layers), progress=False)
    models = {"base": load_pretrained(base).eval(), "mtp": load_pretrained(mtp).eval()}
    params = task_sampling(task, 1.0)
    env = TaskEnv(task, examples)
    prompts = [prompt_ids(e, tok) for e in examples]

    def engine(model, k=0, temperature=1.0):
        eng = RolloutEngine(model, tok, task_sampling(task, temperature, num_draft=k))
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        _, st = eng.generate(prompts, env, g)
        return st.model_tokens / (time.perf_counter() - t0), st

    def loop(model, cached):
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        n = plain_loop(model, tok, task, examples, params, g, cached)
        return n / (time.perf_counter() - t0)

    # warm-up: kernels built, caches touched
    engine(models["base"])
    engine(models["mtp"], args.mtp_layers)
    loop(models["base"], True)
    res: dict[str, list[float]] = {}
    accept: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        res.setdefault("engine", []).append(engine(models["base"])[0])
        res.setdefault("loop-cached", []).append(loop(models["base"], True))
        if not args.skip_nocache:
            res.setdefault("loop-nocache", []).append(loop(models["base"], False))
        for K in sorted({1, args.mtp_layers}):
            for temp in (1.0, 0.0):
                name = f"mtp-model T={temp:g}"
                res.setdefault(f"{name} plain", []).append(engine(models["mtp"], 0, temp)[0])
                tps, st = engine(models["mtp"], K, temp)
                res.setdefault(f"{name} K={K}", []).append(tps)
                accept.setdefault(f"{name} K={K}", []).append(st.acceptance_length)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"batch {args.batch} lookup-QA held-out prompts, threads {args.threads}, repeats {args.repeats} (median)")
    print(f"{'contender':28s} {'tok/s':>9s} {'vs':>22s}")
    for k, v in med.items():
        if k.startswith("mtp-model") and not k.endswith("plain"):
            ref = k.rsplit(" K=", 1)[0] + " plain"
            extra = f"  acceptance length {statistics.median(accept[k]):.2f}"
        elif k == "engine":
            ref, extra = "loop-cached", ""
        else:
            ref, extra = None, ""
        ratio = f"{v / med[ref]:.2f}x {ref}" if ref else ""
        print(f"{k:28s} {v:9.1f} {ratio:>22s}{extra}")
    if "loop-nocache" in med:
        print(f"engine vs loop-nocache: {med['engine'] / med['loop-nocache']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
