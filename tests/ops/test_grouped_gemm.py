"""``grouped_gemm`` (one GEMM per expert over its rows) on every backend against naive
formulas and the float64 reference; the CUTLASS kernel compiled with nvcc (no GPU needed)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.moe import reference as R
from hysparse_kernels.ops.moe.cutlass import grouped_gemm as C
from hysparse_kernels.testing import assert_close_to_reference

from backend_params import requires
from moe_helpers import DEV, DTYPES, REF, TRI, TVM


# ---------------------------------------------------------------- reference


def test_grouped_gemm_with_empty_experts_matches_naive():
    E, K, N = 6, 10, 7
    counts = torch.tensor([3, 0, 0, 5, 1, 0])
    off = torch.zeros(E + 1, dtype=torch.int64)
    off[1:] = counts.cumsum(0)
    x = torch.randn(int(off[-1]), K, dtype=torch.float64)
    w = torch.randn(E, N, K, dtype=torch.float64)
    y = hk.grouped_gemm(x, w, off, backend=REF)
    seg = torch.repeat_interleave(torch.arange(E), counts)
    y_ref = torch.stack([w[seg[r]] @ x[r] for r in range(x.shape[0])])
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


def test_gradcheck_grouped_gemm():
    off = torch.tensor([0, 2, 2, 5])
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: hk.grouped_gemm(a, b, off, backend=REF), (x, w))


# ---------------------------------------------------------------- TVM (CPU)


@requires("tvm")
@pytest.mark.parametrize("counts", [[3, 0, 0, 5, 1, 0], [0, 0, 9, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
                         ids=["empty-experts", "one-expert", "one-row"])
@pytest.mark.parametrize("dtype,atol", DTYPES[:2], ids=["fp32", "bf16"])
def test_grouped_gemm_tvm_matches_reference(counts, dtype, atol):
    E, K, N = len(counts), 40, 24
    off = torch.zeros(E + 1, dtype=torch.int64)
    off[1:] = torch.tensor(counts).cumsum(0)
    x = torch.randn(int(off[-1]), K, dtype=torch.float64)
    w = torch.randn(E, N, K, dtype=torch.float64) / math.sqrt(K)
    y = hk.grouped_gemm(x.to(dtype), w.to(dtype), off, backend=TVM)
    ref64 = R.grouped_gemm(x, w, off)
    ref_lp = None if dtype == torch.float64 else R.grouped_gemm(x.to(dtype), w.to(dtype), off)
    assert_close_to_reference(y, ref64, ref_lp, atol=atol)


# ---------------------------------------------------------------- Triton


@requires("triton", usable=True)
@pytest.mark.parametrize("counts", [[3, 0, 0, 20, 1], [0, 0, 7, 0, 0]], ids=["empty-experts", "one-expert"])
@pytest.mark.parametrize("dtype,atol", DTYPES[:2], ids=["fp32", "bf16"])
def test_grouped_gemm_triton_matches_reference(counts, dtype, atol):
    E, K, N = len(counts), 40, 24
    off = torch.zeros(E + 1, dtype=torch.int64)
    off[1:] = torch.tensor(counts).cumsum(0)
    x = torch.randn(int(off[-1]), K, dtype=torch.float64)
    w = torch.randn(E, N, K, dtype=torch.float64) / math.sqrt(K)
    y = hk.grouped_gemm(x.to(dtype).to(DEV), w.to(dtype).to(DEV), off.to(DEV), backend=TRI).cpu()
    assert_close_to_reference(y, R.grouped_gemm(x, w, off), R.grouped_gemm(x.to(dtype), w.to(dtype), off), atol=atol)


# ---------------------------------------------------------------- CUTLASS


@pytest.mark.skipif(C.nvcc_path() is None, reason="nvcc not found: the CUTLASS kernel cannot be compiled")
@pytest.mark.skipif(importlib.util.find_spec("cutlass_cppgen") is None, reason="nvidia-cutlass is not installed (pip install 'hysparse-kernels[cutlass]')")
@pytest.mark.slow
@pytest.mark.parametrize("element,cc,arch", [("bf16", 80, "sm_80"), ("f16", 90, "sm_90a")], ids=["bf16-sm80", "f16-sm90a"])
def test_cutlass_grouped_gemm_emits_and_compiles(element, cc, arch, tmp_path):
    name, source = C.emit_source(element, cc)
    assert "GemmGrouped" in source and "hk_grouped_gemm" in source
    assert "cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone" in source  # A row-major (see module doc)
    obj = C.compile_source(source, tmp_path / f"{name}.o", arch=arch, mode="object")
    assert obj.stat().st_size > 10_000  # host launcher + the device code (fatbin)


@pytest.mark.skipif(C.nvcc_path() is None, reason="nvcc not found: the CUTLASS kernel cannot be compiled")
@pytest.mark.skipif(importlib.util.find_spec("cutlass_cppgen") is None, reason="nvidia-cutlass is not installed (pip install 'hysparse-kernels[cutlass]')")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cutlass_grouped_gemm_matches_reference(dtype):
    import hysparse_kernels as hk
    from hysparse_kernels.ops.moe import reference as R
    from hysparse_kernels.testing import assert_close_to_reference

    counts = [37, 0, 128, 5, 0, 300, 1, 64]
    E, K, N = len(counts), 512, 256
    off = torch.zeros(E + 1, dtype=torch.int64)
    off[1:] = torch.tensor(counts).cumsum(0)
    x = torch.randn(int(off[-1]), K, dtype=torch.float64)
    w = torch.randn(E, N, K, dtype=torch.float64) / math.sqrt(K)
    y = hk.grouped_gemm(x.to(dtype).cuda(), w.to(dtype).cuda(), off.cuda(), backend="cutlass").cpu()
    assert_close_to_reference(y, R.grouped_gemm(x, w, off), R.grouped_gemm(x.to(dtype), w.to(dtype), off), atol=1e-2)
