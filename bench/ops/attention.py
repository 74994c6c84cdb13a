"""CPU attention benchmarks: TVM kernels vs torch SDPA, FlexAttention (compiled) and the reference.

One module, two faces:

* ``python bench/attention_cpu.py [--quick] [--only NAME ...] [--threads N]``: runs every case in
  one process with the implementations of a case interleaved round by round, prints a markdown
  table (median of the rounds, GFLOP/s of useful work, ratios against the baselines measured in
  the same run) for ``bench/RESULTS.md``.
* ``bench/test_attention_cpu.py``: the same cases under pytest-benchmark (``make bench``).

Shapes follow the issue: Hq 32 / Hkv 8, D 128, batch 1; causal prefill at S = 1K / 4K (fp32,
bf16), SWA 128 at S = 8K, and a HySparse decode step at 32K context (sparse attention over the
top-16 blocks of 64 of the shared cache + the SWA-128 branch) vs SDPA full decode over the cache;
and sparse attention with index lists padded to 100,000 entries (pads must cost nothing).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import hysparse_kernels as hk

HQ, HKV, D = 32, 8, 128


def timeit(fn: Callable[[], object], rounds: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds over ``rounds`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(case: "Case") -> dict[str, float]:
    """Median seconds per implementation, rounds interleaved (A B C, A B C, ...).

    On a machine shared with other jobs the load changes within seconds; interleaving puts every
    implementation under the same load in each round, so the ratios stay meaningful.
    """
    samples: dict[str, list[float]] = {name: [] for name in case.impls}
    for name, fn in case.impls.items():
        if name not in case.once:
            fn()  # warm-up: builds, compiles, caches
    for r in range(case.rounds):
        for name, fn in case.impls.items():
            if name in case.once and r > 0:
                continue
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def causal_flops(s: int, d: int = D, h: int = HQ) -> float:
    """Useful FLOPs of causal attention: QK^T and PV over the lower triangle."""
    return 4.0 * h * d * s * (s + 1) / 2


def window_flops(s: int, w: int, d: int = D, h: int = HQ) -> float:
    keys = sum(min(i + 1, w) for i in range(s))
    return 4.0 * h * d * keys


@dataclass
class Case:
    name: str
    flops: float
    impls: dict[str, Callable[[], object]] = field(default_factory=dict)
    rounds: int = 5
    # implementations timed once without warm-up (a masked SDPA at 8K takes tens of seconds)
    once: tuple[str, ...] = ()


def _qkv(s, dtype, sk=None):
    g = torch.Generator().manual_seed(0)
    sk = sk or s
    q = torch.randn(1, HQ, s, D, generator=g).to(dtype)
    k = torch.randn(1, HKV, sk, D, generator=g).to(dtype)
    v = torch.randn(1, HKV, sk, D, generator=g).to(dtype)
    return q, k, v


_FLEX = {}


def flex_attention_compiled():
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex_block_mask(s: int, window: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    if window is None:
        def mask(b, h, qi, kj):
            return kj <= qi
    else:
        def mask(b, h, qi, kj):
            return (kj <= qi) & (kj > qi - window)
    return create_block_mask(mask, None, None, s, s, device="cpu")


def prefill_case(s: int, dtype: torch.dtype, *, reference: bool, flex: bool) -> Case:
    q, k, v = _qkv(s, dtype)
    case = Case(f"causal prefill S={s // 1024}K {str(dtype).split('.')[-1]}", causal_flops(s), rounds=3 if s >= 4096 else 5)
    case.impls["tvm"] = lambda: hk.attention(q, k, v, backend="tvm")
    case.impls["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if flex:
        bm = flex_block_mask(s, None)
        fa = flex_attention_compiled()
        case.impls["flex"] = lambda: fa(q, k, v, block_mask=bm, enable_gqa=True)
    if reference:
        case.impls["reference"] = lambda: hk.attention(q, k, v, backend="reference")
    return case


def swa_case(s: int, window: int, dtype=torch.float32) -> Case:
    q, k, v = _qkv(s, dtype)
    case = Case(f"SWA {window} prefill S={s // 1024}K {str(dtype).split('.')[-1]}", window_flops(s, window), rounds=3)
    case.impls["tvm"] = lambda: hk.attention(q, k, v, window=window, backend="tvm")
    bm = flex_block_mask(s, window)
    fa = flex_attention_compiled()
    case.impls["flex"] = lambda: fa(q, k, v, block_mask=bm, enable_gqa=True)
    i = torch.arange(s)
    mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    case.impls["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    case.once = ("sdpa",)
    return case


def decode_case(ctx: int, topk: int = 16, block: int = 64, window: int = 128, dtype=torch.float32) -> Case:
    """HySparse decode step vs full-attention decode over the same cache."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, HQ, 1, D, generator=g).to(dtype)
    k_cache = torch.randn(1, HKV, ctx, D, generator=g).to(dtype)
    v_cache = torch.randn(1, HKV, ctx, D, generator=g).to(dtype)
    k_swa = torch.randn(1, HKV, window, D, generator=g).to(dtype)
    v_swa = torch.randn(1, HKV, window, D, generator=g).to(dtype)
    lens = torch.tensor([ctx], dtype=torch.int32)
    lens_swa = torch.tensor([window], dtype=torch.int32)
    nblocks = ctx // block
    # top-16 blocks of the shared cache per KV head, the query's own (last) block included
    idx = torch.stack([torch.cat([torch.randperm(nblocks - 1, generator=g)[: topk - 1], torch.tensor([nblocks - 1])])
                       for _ in range(HKV)]).to(torch.int32).view(1, HKV, 1, topk)
    sink = torch.zeros(HQ)

    def hysparse_step():
        o_sparse = hk.sparse_attention_decode(q, k_cache, v_cache, lens, idx, block_size=block, sink=sink, backend="tvm")
        o_swa = hk.attention_decode(q, k_swa, v_swa, lens_swa, window=window, sink=sink, backend="tvm")
        return o_sparse, o_swa

    case = Case(f"decode step, {ctx // 1024}K context {str(dtype).split('.')[-1]}", 4.0 * HQ * D * (topk * block + window), rounds=21)
    case.impls["tvm hysparse step"] = hysparse_step
    case.impls["tvm full decode"] = lambda: hk.attention_decode(q, k_cache, v_cache, lens, backend="tvm")
    case.impls["sdpa full decode"] = lambda: F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
    return case


def sparse_pads_case(s: int = 256, topk: int = 4, width: int = 100_000, block: int = 16) -> Case:
    """HySparse sparse attention whose index lists are ``width`` entries of mostly ``-1`` pads
    (the same ``topk`` blocks per query): pads must cost nothing next to the short lists. The
    lists are ``Hkv * s * width`` int32 (205 MB here): only reading them once is left to pay."""
    g = torch.Generator().manual_seed(0)
    hq, hkv, d = 8, 2, 64
    q = torch.randn(1, hq, s, d, generator=g)
    k, v = torch.randn(1, hkv, s, d, generator=g), torch.randn(1, hkv, s, d, generator=g)
    scores = torch.rand(1, hkv, s, s // block, generator=g)
    idx = hk.topk_blocks(scores, topk, block_size=block, seqlen_k=s, backend="reference")
    wide = torch.full((1, hkv, s, width), -1, dtype=torch.int32)
    wide[..., width // 2: width // 2 + topk] = idx
    case = Case(f"sparse attention S={s}, top-{topk} of {s // block} blocks, lists padded to {width}",
                4.0 * hq * d * s * topk * block, rounds=5)
    case.impls["tvm k=4"] = lambda: hk.sparse_attention(q, k, v, idx, block_size=block, backend="tvm")
    case.impls[f"tvm k={width} (pads)"] = lambda: hk.sparse_attention(q, k, v, wide, block_size=block, backend="tvm")
    case.impls[f"reference k={width} (pads)"] = lambda: hk.sparse_attention(q, k, v, wide, block_size=block,
                                                                             backend="reference")
    return case


def all_cases(quick: bool = False) -> list[Case]:
    cases = [prefill_case(1024, torch.float32, reference=True, flex=True),
             prefill_case(1024, torch.bfloat16, reference=False, flex=False),
             decode_case(32768), sparse_pads_case()]
    if not quick:
        cases += [prefill_case(4096, torch.float32, reference=False, flex=True),
                  prefill_case(4096, torch.bfloat16, reference=False, flex=False),
                  swa_case(8192, 128)]
    return cases


def measure_peaks() -> dict[str, float]:
    """fp32 matmul GFLOP/s and copy GB/s on this machine, for the roofline notes."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = timeit(lambda: a @ b, rounds=5)
    x = torch.randn(64 * 1024 * 1024 // 4)
    y = torch.empty_like(x)
    tc = timeit(lambda: y.copy_(x), rounds=5)
    return {"matmul_gflops": 2 * 2048**3 / t / 1e9, "copy_gbs": 2 * x.numel() * 4 / tc / 1e9}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 1K prefill and the decode step")
    ap.add_argument("--only", nargs="*", help="substrings of case names to run")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch and TVM alike (default: all cores). One thread per engine "
                         "is the stable measure on a shared machine: no barrier waits on a preempted worker")
    args = ap.parse_args(argv)
    if args.threads:
        # TVM's pool reads TVM_NUM_THREADS when it starts (on the first kernel launch).
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    import tvm

    print(f"torch {torch.__version__}, tvm {tvm.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    peaks = measure_peaks()
    print(f"fp32 matmul 2048^3: {peaks['matmul_gflops']:.0f} GFLOP/s; copy 64 MiB: {peaks['copy_gbs']:.1f} GB/s")
    print("| case | impl | median ms | GFLOP/s (useful) | tvm speed-up vs impl |")
    print("|---|---|---:|---:|---:|")
    for case in all_cases(args.quick):
        if args.only and not any(s in case.name for s in args.only):
            continue
        times = interleaved(case)
        base = next(t for n, t in times.items() if n.startswith("tvm"))
        for name, t in times.items():
            ratio = "" if name.startswith("tvm") and t == base else f"{t / base:.2f}x"
            print(f"| {case.name} | {name} | {t * 1e3:.2f} | {case.flops / t / 1e9:.1f} | {ratio} |", flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main(sys.argv[1:])
