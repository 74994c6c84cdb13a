"""The CPU benchmark harness of the per-op scripts in ``bench/ops``: cases of implementations
timed with their rounds interleaved, and one command line for every script.

Each ``bench/ops/<op>.py`` builds ``Case`` objects (a name, the useful FLOPs, the implementations)
and calls ``main(cases, argv, doc)``: ``[--quick] [--only NAME ...] [--threads N]``, then a
markdown table (median of the rounds, GFLOP/s of useful work, the ratio of every implementation
against the case's first one, measured in the same run). ``bench/ops/test_<op>.py`` runs the same
cases under pytest-benchmark (``make bench``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

HQ, HKV, D = 32, 8, 128  # the attention shapes: Hq 32 / Hkv 8, D 128


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


@dataclass
class Case:
    name: str
    flops: float
    impls: dict[str, Callable[[], object]] = field(default_factory=dict)
    rounds: int = 5
    # implementations timed once without warm-up (a masked SDPA at 8K takes tens of seconds)
    once: tuple[str, ...] = ()


def measure_peaks() -> dict[str, float]:
    """fp32 matmul GFLOP/s and copy GB/s on this machine, for the roofline notes."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = timeit(lambda: a @ b, rounds=5)
    x = torch.randn(64 * 1024 * 1024 // 4)
    y = torch.empty_like(x)
    tc = timeit(lambda: y.copy_(x), rounds=5)
    return {"matmul_gflops": 2 * 2048**3 / t / 1e9, "copy_gbs": 2 * x.numel() * 4 / tc / 1e9}


def main(cases: Callable[[bool], Iterable[Case]], argv=None, doc: str = "") -> None:
    """Run ``cases(quick)`` and print the table; the ratios are against each case's first implementation
    (the TVM kernel in every case here)."""
    ap = argparse.ArgumentParser(description=(doc or __doc__).splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the small cases")
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
    for case in cases(args.quick):
        if args.only and not any(s in case.name for s in args.only):
            continue
        times = interleaved(case)
        first, base = next(iter(times.items()))
        for name, t in times.items():
            ratio = "" if name == first else f"{t / base:.2f}x"
            print(f"| {case.name} | {name} | {t * 1e3:.2f} | {case.flops / t / 1e9:.1f} | {ratio} |", flush=True)
    print(f"load after: {os.getloadavg()}")


# ---------------------------------------------------------------- the pytest-benchmark faces

_BUILT: dict[str, Case] = {}


def built(name: str, build: Callable[[], Case]) -> Case:
    """The case ``name``, built once; one case's tensors alive at a time."""
    if name not in _BUILT:
        _BUILT.clear()
        _BUILT[name] = build()
    return _BUILT[name]


def run_benchmark(benchmark, case: Case, impl: str) -> None:
    """Time one implementation of ``case`` under pytest-benchmark; each case is one group, so
    ``--benchmark-group-by=group`` lines its implementations up (ratios read off the same run)."""
    benchmark.group = case.name
    benchmark.extra_info["useful_gflop"] = case.flops / 1e9
    once = impl in case.once
    benchmark.pedantic(case.impls[impl], rounds=1 if once else case.rounds, iterations=1,
                       warmup_rounds=0 if once else 1)
