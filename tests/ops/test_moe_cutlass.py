"""MoE grouped GEMM on the CUTLASS backend: the kernel emitted by cutlass_cppgen compiles with nvcc
(no GPU needed; slow: the package import alone takes ~15 s), and on an sm80/sm90 GPU it matches
the float64 reference."""

import importlib.util
import math

import pytest
import torch

from hysparse_kernels.ops.moe.cutlass import grouped_gemm as C

# find_spec, not importorskip: importing cutlass_cppgen takes ~15 s and writes a cache file into
# the working directory; the backend imports it lazily, from its build cache.
if importlib.util.find_spec("cutlass_cppgen") is None:
    pytest.skip("nvidia-cutlass is not installed (pip install 'hysparse-kernels[cutlass]')", allow_module_level=True)
pytestmark = pytest.mark.skipif(C.nvcc_path() is None, reason="nvcc not found: the CUTLASS kernel cannot be compiled")


@pytest.mark.slow
@pytest.mark.parametrize("element,cc,arch", [("bf16", 80, "sm_80"), ("f16", 90, "sm_90a")], ids=["bf16-sm80", "f16-sm90a"])
def test_cutlass_grouped_gemm_emits_and_compiles(element, cc, arch, tmp_path):
    name, source = C.emit_source(element, cc)
    assert "GemmGrouped" in source and "hk_grouped_gemm" in source
    assert "cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone" in source  # A row-major (see module doc)
    obj = C.compile_source(source, tmp_path / f"{name}.o", arch=arch, mode="object")
    assert obj.stat().st_size > 10_000  # host launcher + the device code (fatbin)


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
