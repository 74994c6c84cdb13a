"""Helpers for testing kernels against the float64 reference (used by the test suite and benches).

The rule (a tolerance relative to a baseline, not a fixed one): a kernel's error against a float64
reference may be at most ``factor`` times the error of the reference itself run in the same low
precision, plus a small ``atol``. Errors are absolute values, never signed differences.
"""

from __future__ import annotations

import torch
from torch import Tensor


def max_abs_err(a: Tensor, b: Tensor) -> float:
    """Largest ``|a - b|`` over finite positions of ``b``; NaN positions must agree."""
    a64, b64 = a.double(), b.double()
    nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
    if not torch.equal(nan_a, nan_b):
        raise AssertionError(f"NaN positions differ: {int(nan_a.sum())} vs {int(nan_b.sum())}")
    inf_b = torch.isinf(b64)
    if not torch.equal(a64[inf_b], b64[inf_b]):
        raise AssertionError("infinite entries differ")
    keep = ~(nan_b | inf_b)
    if not keep.any():
        return 0.0
    return float((a64[keep] - b64[keep]).abs().max())


def assert_close_to_reference(
    out: Tensor, ref64: Tensor, ref_lowp: Tensor | None = None, *, factor: float = 2.0, atol: float = 1e-5, name: str = "out"
) -> None:
    """``|out - ref64| <= factor * |ref_lowp - ref64| + atol`` (max over elements).

    Without ``ref_lowp`` (fp32 / fp64 kernels) the bound is ``atol`` alone.
    """
    err = max_abs_err(out, ref64)
    base = max_abs_err(ref_lowp, ref64) if ref_lowp is not None else 0.0
    bound = factor * base + atol
    if not err <= bound:
        raise AssertionError(
            f"{name}: max |err| vs float64 reference {err:.3e} > {factor} x low-precision reference error "
            f"{base:.3e} + atol {atol:.1e} = {bound:.3e}"
        )


def cuda_median_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of ``fn`` in milliseconds on the current CUDA device (CUDA events,
    after ``warmup`` untimed calls). For the GPU benchmark scripts."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
