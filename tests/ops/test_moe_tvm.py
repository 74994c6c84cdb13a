"""MoE on the TVM backend (llvm, CPU): grouped GEMM and the fused expert MLP against the float64
reference, with the tolerance rule of hysparse_kernels.testing (2x the low-precision reference's
own error + a small atol), gradients through the registered op, and auto dispatch."""

import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import dispatch
from hysparse_kernels.ops.moe import reference as R
from hysparse_kernels.testing import assert_close_to_reference

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'hysparse-kernels[tvm]')")

TVM = "tvm"
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float64, 1e-12)]


def _data(T, E, k, D, I, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g, dtype=torch.float64)
    wgu = torch.randn(E, 2 * I, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    wd = torch.randn(E, D, I, generator=g, dtype=torch.float64) / math.sqrt(I)
    w, ids = hk.route(torch.randn(T, E, generator=g), top_k=k, scoring="sigmoid", backend="reference")
    return x, wgu, wd, w, ids


SHAPES = [
    # T, E, k, D, I: T = 1, odd T, D and I not multiples of the vector width, many experts
    (1, 8, 2, 32, 16),
    (37, 8, 2, 48, 24),
    (13, 6, 3, 20, 10),
    (64, 16, 4, 64, 32),
]


def _sid(s):
    return "T{}-E{}-k{}-D{}-I{}".format(*s)


@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
@pytest.mark.parametrize("dtype,atol", DTYPES, ids=["fp32", "bf16", "fp64"])
def test_moe_tvm_matches_reference(shape, dtype, atol):
    x, wgu, wd, w, ids = _data(*shape)
    out = hk.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids, backend=TVM)
    assert out.dtype == dtype and out.shape == x.shape
    ref64 = R.moe(x, wgu, wd, w.double(), ids)
    ref_lp = None if dtype == torch.float64 else R.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids)
    assert_close_to_reference(out, ref64, ref_lp, atol=atol)


@pytest.mark.parametrize("counts", [[3, 0, 0, 5, 1, 0], [0, 0, 9, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
                         ids=["empty-experts", "one-expert", "one-row"])
@pytest.mark.parametrize("dtype,atol", DTYPES, ids=["fp32", "bf16", "fp64"])
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


def test_moe_tvm_all_tokens_to_one_expert():
    x, wgu, wd, _, _ = _data(9, 4, 1, 32, 16)
    ids = torch.full((9, 1), 2, dtype=torch.int32)
    w = torch.rand(9, 1)
    out = hk.moe(x.float(), wgu.float(), wd.float(), w, ids, backend=TVM)
    assert_close_to_reference(out, R.moe(x, wgu, wd, w.double(), ids), R.moe(x.float(), wgu.float(), wd.float(), w, ids))


def test_moe_tvm_gradients_match_reference():
    x, wgu, wd, w, ids = _data(6, 4, 2, 16, 8)
    grads = []
    for backend in (TVM, "reference"):
        args = [t.clone().requires_grad_() for t in (x, wgu, wd, w.double())]
        out = hk.moe(*args, ids, backend=backend)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([a.grad for a in args])
    for g_tvm, g_ref in zip(*grads):
        torch.testing.assert_close(g_tvm, g_ref, rtol=1e-10, atol=1e-12)
    xs, off, _ = hk.moe_permute(x, ids, 4, backend="reference")
    a = xs.clone().requires_grad_()
    b = wgu.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: hk.grouped_gemm(a, b, off, backend=TVM), (a, b))


def test_tvm_is_the_cpu_default_for_moe():
    assert dispatch.resolve("moe_fwd", "cpu") == TVM
    assert dispatch.resolve("grouped_gemm", "cpu") == TVM
