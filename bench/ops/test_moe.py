"""pytest-benchmark suite of the CPU MoE: the TVM fused expert MLP and the per-expert torch loop
at the issue's shapes (64 experts, top-8, D = 1024, I = 512), both in one run; GFLOP/s and
effective GB/s go to each result's extra_info. ``python bench/ops/moe.py`` prints the table with
the two interleaved (fairer on a shared machine). Run: ``make bench`` or
``pytest bench/ops/test_moe.py --benchmark-only``."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("tvm", reason="apache-tvm is not installed")

import moe as suite  # noqa: E402

_WEIGHTS = {}


def _weights(dtype):
    if dtype not in _WEIGHTS:
        g = torch.Generator().manual_seed(0)
        E, D, I = suite.E, suite.D, suite.I
        _WEIGHTS.clear()  # keep one dtype's 400 MB at a time
        _WEIGHTS[dtype] = ((torch.randn(E, 2 * I, D, generator=g) / D**0.5).to(dtype),
                           (torch.randn(E, D, I, generator=g) / I**0.5).to(dtype))
    return _WEIGHTS[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 16, 64, 512, 4096], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("impl", ["loop", "tvm"])
def test_moe(benchmark, impl, T, dtype):
    x, wgu, wd, w, ids = suite.make_inputs(T, dtype, weights=_weights(dtype))
    fn = suite.torch_loop if impl == "loop" else suite.tvm_moe
    with torch.no_grad():
        fn(x, wgu, wd, w, ids)  # warm-up (kernel build for tvm)
        benchmark.pedantic(fn, args=(x, wgu, wd, w, ids), rounds=3 if T >= 4096 else 7, iterations=1)
    flops, nbytes = suite.work(T, ids, dtype)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(gflops=flops / med / 1e9, gbs=nbytes / med / 1e9)
