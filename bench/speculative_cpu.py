"""Speculative vs plain decoding on the trained demo model (CPU): acceptance length and speed-up.

Uses the checkpoint `make demo` trains (training it first if it is missing). For K = 1, 2, 3
drafts and temperature 0 and 1, decodes the same prompts both ways in one run and reports
acceptance length (tokens committed per verification forward), per-head acceptance and the
speed-up in tokens/s over plain decoding. Plain and speculative runs alternate repeat by repeat,
so both see the same load. Prints a markdown table; ``--json PATH`` writes it too.

    python bench/speculative_cpu.py [--new-tokens 64] [--repeats 2] [--compete 1]

``--compete N`` runs N other CPU-bound processes (a busy loop each) during the measurement, the
situation of a user whose machine is doing something else too. ``--small-work FLOPS`` and
``--small-step FLOPS`` override the thread policy's single-thread cutoffs for one kernel and for
one decode step (``backends.tvm.threads.SMALL_WORK`` / ``SMALL_STEP``; 0 disables them), for
measuring what the policy's parts contribute (TVM_NUM_THREADS / TVM_THREAD_POOL_SPIN_COUNT are
set in the environment as usual).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch

from hysparse_kernels import dispatch
from hysparse_kernels.models import generate, load_pretrained
from hysparse_kernels.models.speculative import speculative_generate
from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.demo import DEMO, PROMPTS, cache_dir
from hysparse_kernels.training.pretrain import train


@contextlib.contextmanager
def competing_processes(n: int):
    """``n`` single-threaded busy loops in child processes, stopped on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def thread_settings() -> dict:
    try:
        from hysparse_kernels.backends.tvm import threads

        plan = threads.policy()
        return {"tvm_threads": plan.threads, "tvm_pool": plan.pool, "spin_count": plan.spin_count,
                "small_work": threads.SMALL_WORK, "small_step": threads.SMALL_STEP}
    except ImportError:
        return {"TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per setting (median)")
    parser.add_argument("--compete", type=int, default=0, help="other CPU-bound processes running meanwhile")
    parser.add_argument("--small-work", type=float, default=None, help="override threads.SMALL_WORK (FLOPs)")
    parser.add_argument("--small-step", type=float, default=None, help="override threads.SMALL_STEP (FLOPs)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
    warnings.simplefilter("ignore", UserWarning)
    if args.small_work is not None or args.small_step is not None:
        from hysparse_kernels.backends.tvm import threads

        if args.small_work is not None:
            threads.SMALL_WORK = args.small_work
        if args.small_step is not None:
            threads.SMALL_STEP = args.small_step
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

    def spec_run(temperature, K, seed, acc, heads):
        g = torch.Generator().manual_seed(seed)
        t0, n = time.perf_counter(), 0
        for p in prompts:
            new, stats = speculative_generate(model, p, args.new_tokens, num_draft=K, temperature=temperature, generator=g)
            n += len(new)
            acc.append(stats.acceptance_length)
            heads.append(stats.head_acceptance)
        return n / (time.perf_counter() - t0)

    # Warm-up: the first call of each shape imports the backend and builds its kernels.
    for temperature in (0.0, 1.0):
        generate(model, [prompts[0]], 4, temperature=temperature, generator=torch.Generator().manual_seed(0))
        for K in (1, 2, 3):
            speculative_generate(model, prompts[0], 8, num_draft=K, temperature=temperature,
                                 generator=torch.Generator().manual_seed(0))
    rows = []
    load0 = os.getloadavg()[0]
    with competing_processes(args.compete):
        for temperature in (0.0, 1.0):
            for K in (1, 2, 3):
                plain, spec, acc, heads = [], [], [], []
                for s in range(args.repeats):  # plain and speculative alternate: the same load for both
                    plain.append(plain_run(temperature, s))
                    spec.append(spec_run(temperature, K, s, acc, heads))
                head_mean = [statistics.mean(h[j] for h in heads) for j in range(K)]
                rows.append({"temperature": temperature, "K": K, "acceptance_length": statistics.mean(acc),
                             "head_acceptance": head_mean, "plain_tok_s": statistics.median(plain),
                             "spec_tok_s": statistics.median(spec),
                             "speedup": statistics.median(spec) / statistics.median(plain)})
    settings = thread_settings()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {settings}, competing processes {args.compete}, "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| temperature | K | acceptance length | per-head acceptance | plain tok/s | speculative tok/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        heads = ", ".join(f"{h:.2f}" for h in r["head_acceptance"])
        print(f"| {r['temperature']:.0f} | {r['K']} | {r['acceptance_length']:.2f} | {heads} | {r['plain_tok_s']:.1f} | "
              f"{r['spec_tok_s']:.1f} | {r['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "compete": args.compete, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
