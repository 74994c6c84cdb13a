"""CPU MoE benchmark: the TVM fused expert MLP (``hk.moe(backend="tvm")``) against the per-expert
torch loop, 64 experts, top-8, D = 1024, I = 512 (the issue's shapes), measured in one process.

Run as a script for the table (rounds of the two implementations interleaved, so both see the
same load on a shared machine; medians), in the environment a user has (no thread variables)::

    python bench/ops/moe.py --tokens 1 16 64 512 4096 --dtype float32 bfloat16

``bench/ops/test_moe.py`` runs the same two functions under pytest-benchmark (``make bench``).

Times are medians of wall-clock time; the CPU time (both threads, ``time.process_time``) is
reported too: on a machine shared with other jobs it is the steadier measure of the work done.
Effective GB/s counts the bytes an ideal kernel must move: the weights of the experts that
received at least one token, x and the output. GFLOP/s counts 2 * T * k * 3 * I * D.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import hysparse_kernels as hk

E, TOP_K, D, I = 64, 8, 1024, 512


def make_inputs(T: int, dtype: torch.dtype, seed: int = 0, weights=None):
    g = torch.Generator().manual_seed(seed)
    if weights is None:
        wgu = (torch.randn(E, 2 * I, D, generator=g) / D**0.5).to(dtype)
        wd = (torch.randn(E, D, I, generator=g) / I**0.5).to(dtype)
    else:
        wgu, wd = weights
    x = torch.randn(T, D, generator=g).to(dtype)
    w, ids = hk.route(torch.randn(T, E, generator=g), top_k=TOP_K, scoring="sigmoid", backend="reference")
    return x, wgu, wd, w, ids


def torch_loop(x, wgu, wd, w, ids):
    """The per-expert torch loop (the baseline): gather, two matmuls, SiLU-and-mul, index_add."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    for e in range(wgu.shape[0]):
        tok, slot = (ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        gu = x[tok] @ wgu[e].T
        h = F.silu(gu[:, :I]) * gu[:, I:]
        out.index_add_(0, tok, w[tok, slot, None] * (h @ wd[e].T).float())
    return out.to(x.dtype)


def tvm_moe(x, wgu, wd, w, ids):
    return hk.moe(x, wgu, wd, w, ids, backend="tvm")


def work(T: int, ids: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """(flops, bytes) of one MoE forward."""
    flops = 2.0 * T * TOP_K * 3 * I * D
    active = int(torch.unique(ids).numel())
    size = torch.finfo(dtype).bits // 8
    return flops, size * (active * 3 * I * D + 2 * T * D)


def measure(T: int, dtype: torch.dtype, rounds: int, weights=None) -> dict:
    x, wgu, wd, w, ids = make_inputs(T, dtype, weights=weights)
    with torch.no_grad():
        ref = torch_loop(x, wgu, wd, w, ids)
        out = tvm_moe(x, wgu, wd, w, ids)  # builds the kernels once
        err = float((out.float() - ref.float()).abs().max())
        times = {"loop": [], "tvm": []}
        cpu = {"loop": [], "tvm": []}
        for _ in range(rounds):
            for name, fn in (("loop", torch_loop), ("tvm", tvm_moe)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn(x, wgu, wd, w, ids)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    flops, nbytes = work(T, ids, dtype)
    row = {"T": T, "dtype": str(dtype).replace("torch.", ""), "max_abs_diff": err}
    for name, ts in times.items():
        med = statistics.median(ts)
        row[name] = {"ms": med * 1e3, "min_ms": min(ts) * 1e3, "gflops": flops / med / 1e9, "gbs": nbytes / med / 1e9,
                     "cpu_ms": statistics.median(cpu[name]) * 1e3}
    row["speedup"] = row["loop"]["ms"] / row["tvm"]["ms"]
    row["cpu_speedup"] = row["loop"]["cpu_ms"] / row["tvm"]["cpu_ms"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 512, 4096])
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per size (4096 uses at most 3)")
    args = p.parse_args(argv)
    from hysparse_kernels.backends.tvm import threads

    plan = threads.policy()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, TVM threads {plan.threads} (pool {plan.pool}), "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| dtype | T | loop ms | loop GFLOP/s | loop GB/s | TVM ms | TVM GFLOP/s | TVM GB/s | speedup (wall) |"
          " loop CPU ms | TVM CPU ms | speedup (CPU time) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dt in args.dtype:
        dtype = getattr(torch, dt)
        g = torch.Generator().manual_seed(0)
        weights = ((torch.randn(E, 2 * I, D, generator=g) / D**0.5).to(dtype), (torch.randn(E, D, I, generator=g) / I**0.5).to(dtype))
        for T in args.tokens:
            r = measure(T, dtype, min(args.rounds, 3) if T >= 4096 else args.rounds, weights=weights)
            lp, tv = r["loop"], r["tvm"]
            print(f"| {r['dtype']} | {T} | {lp['ms']:.1f} | {lp['gflops']:.0f} | {lp['gbs']:.1f} | {tv['ms']:.1f} | "
                  f"{tv['gflops']:.0f} | {tv['gbs']:.1f} | {r['speedup']:.2f}x | {lp['cpu_ms']:.0f} | {tv['cpu_ms']:.0f} | "
                  f"{r['cpu_speedup']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
