"""``moe`` (the fused expert MLP: permute, gate/up GEMM, SwiGLU, down GEMM, unpermute) on every
backend against naive formulas and the float64 reference, with gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hysparse_kernels as hk
from hysparse_kernels import dispatch
from hysparse_kernels.ops.moe import reference as R
from hysparse_kernels.testing import assert_close_to_reference

from backend_params import requires
from moe_data import moe_inputs
from moe_helpers import DEV, DTYPES, REF, TRI, TVM, make_moe


# ---------------------------------------------------------------- reference


def naive_moe(x, wgu, wd, w, ids):
    """Token by token, float64."""
    I = wd.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            g = wgu[e, :I].double() @ x[t].double()
            u = wgu[e, I:].double() @ x[t].double()
            out[t] += float(w[t, j]) * (wd[e].double() @ (F.silu(g) * u))
    return out


@pytest.mark.parametrize("T,E,k,D,I", [(1, 4, 2, 8, 6), (11, 8, 2, 16, 12), (33, 16, 4, 24, 20)], ids=lambda v: str(v))
def test_moe_reference_matches_naive(T, E, k, D, I):
    x, wgu, wd, w, ids = make_moe(T, E, k, D, I)
    out = hk.moe(x, wgu, wd, w, ids, backend=REF)
    torch.testing.assert_close(out, naive_moe(x, wgu, wd, w, ids), rtol=1e-12, atol=1e-12)
    # The step-by-step path gives the same result.
    xs, off, inv = hk.moe_permute(x, ids, E, backend=REF)
    gu = hk.grouped_gemm(xs, wgu, off, backend=REF)
    h = F.silu(gu[:, :I]) * gu[:, I:]
    out2 = hk.moe_unpermute(hk.grouped_gemm(h, wd, off, backend=REF), inv, w.double(), backend=REF)
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)


def test_gradcheck_moe():
    x, wgu, wd, w, ids = make_moe(5, 4, 2, 6, 4)
    w = w.double()
    args = [t.clone().requires_grad_() for t in (x, wgu, wd, w)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: hk.moe(a, b, c, d, ids, backend=REF), args)


# ---------------------------------------------------------------- TVM (CPU)


SHAPES = [
    # T, E, k, D, I: T = 1, odd T, D and I not multiples of the vector width, many experts
    (1, 8, 2, 32, 16),
    (37, 8, 2, 48, 24),
    (13, 6, 3, 20, 10),
]


def _sid(s):
    return "T{}-E{}-k{}-D{}-I{}".format(*s)


@requires("tvm")
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
@pytest.mark.parametrize("dtype,atol", DTYPES, ids=["fp32", "bf16", "fp64"])
def test_moe_tvm_matches_reference(shape, dtype, atol):
    x, wgu, wd, w, ids = moe_inputs(*shape)
    out = hk.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids, backend=TVM)
    assert out.dtype == dtype and out.shape == x.shape
    ref64 = R.moe(x, wgu, wd, w.double(), ids)
    ref_lp = None if dtype == torch.float64 else R.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids)
    assert_close_to_reference(out, ref64, ref_lp, atol=atol)


@requires("tvm")
@pytest.mark.parametrize("shape", [(300, 4, 2, 64, 48), (130, 6, 3, 20, 10)], ids=_sid)
@pytest.mark.parametrize("dtype,atol", [DTYPES[2]], ids=["fp64"])
def test_moe_blas_path_matches_reference(monkeypatch, shape, dtype, atol):
    """Large float64 segments run one BLAS GEMM per expert (the threshold lowered to reach it here)."""
    from hysparse_kernels.ops.moe.tvm import moe as moe_tvm

    monkeypatch.setattr(moe_tvm, "BLAS_ROWS", 1)
    calls = []
    real = moe_tvm._moe_blas
    monkeypatch.setattr(moe_tvm, "_moe_blas", lambda *a: calls.append(1) or real(*a))
    x, wgu, wd, w, ids = moe_inputs(*shape)
    out = hk.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids, backend=TVM)
    assert calls and out.dtype == dtype and out.shape == x.shape
    ref64 = R.moe(x, wgu, wd, w.double(), ids)
    ref_lp = None if dtype == torch.float64 else R.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids)
    assert_close_to_reference(out, ref64, ref_lp, atol=atol)


@requires("tvm")
@pytest.mark.parametrize("mv", [16, 32], ids=["16-row-vectors", "32-row-vectors"])
@pytest.mark.parametrize("shape", [(40, 4, 2, 64, 32), (70, 3, 2, 20, 10), (100, 8, 3, 48, 40)], ids=_sid)
@pytest.mark.parametrize("dtype,atol", DTYPES[:2] + [(torch.float16, 2e-3)], ids=["fp32", "bf16", "fp16"])
def test_moe_outer_product_path_matches_reference(shape, dtype, atol, mv, monkeypatch):
    """Segments of >= OP_ROWS rows run the outer-product kernels (packed x, weights broadcast into
    vectors of 16 rows (AVX2) or 32 (AVX-512), both run whatever this machine has); sizes with
    N % NR tails, partial row vectors and D off the vector width."""
    from hysparse_kernels.ops.moe.tvm import moe as moe_tvm

    monkeypatch.setattr(moe_tvm, "op_rows_per_vector", lambda: mv)
    x, wgu, wd, w, ids = moe_inputs(*shape)
    assert moe_tvm._rows_per_expert(moe_tvm._sort_pairs(ids, shape[1])[1]) >= moe_tvm.OP_ROWS
    out = hk.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids, backend=TVM)
    assert out.dtype == dtype and out.shape == x.shape
    ref64 = R.moe(x, wgu, wd, w.double(), ids)
    ref_lp = None if dtype == torch.float32 else R.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids)
    assert_close_to_reference(out, ref64, ref_lp, atol=atol)


@requires("tvm")
def test_moe_tvm_all_tokens_to_one_expert():
    x, wgu, wd, _, _ = moe_inputs(9, 4, 1, 32, 16)
    ids = torch.full((9, 1), 2, dtype=torch.int32)
    w = torch.rand(9, 1)
    out = hk.moe(x.float(), wgu.float(), wd.float(), w, ids, backend=TVM)
    assert_close_to_reference(out, R.moe(x, wgu, wd, w.double(), ids), R.moe(x.float(), wgu.float(), wd.float(), w, ids))


@requires("tvm")
def test_moe_tvm_gradients_match_reference():
    x, wgu, wd, w, ids = moe_inputs(6, 4, 2, 16, 8)
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


@requires("tvm")
def test_tvm_is_the_cpu_default_for_moe():
    assert dispatch.resolve("moe_fwd", "cpu") == TVM
    assert dispatch.resolve("grouped_gemm", "cpu") == TVM


@requires("tvm")
def test_moe_tvm_saturating_gates():
    """Gate pre-activations far in both tails (|g| up to ~1e3): SiLU's exp must neither overflow
    nor lose the linear branch (the fp32 kernel uses its own exp)."""
    x, wgu, wd, w, ids = moe_inputs(16, 4, 2, 32, 16)
    x = x * 300.0
    out = hk.moe(x.float(), wgu.float(), wd.float(), w, ids, backend=TVM)
    ref64 = R.moe(x, wgu, wd, w.double(), ids)
    assert torch.isfinite(out).all()
    assert_close_to_reference(out, ref64, R.moe(x.float(), wgu.float(), wd.float(), w, ids), atol=1e-3)


# ---------------------------------------------------------------- Triton


def _check_moe(shape, dtype, atol):
    x, wgu, wd, w, ids = moe_inputs(*shape)
    d = lambda t: t.to(DEV)  # noqa: E731
    out = hk.moe(d(x.to(dtype)), d(wgu.to(dtype)), d(wd.to(dtype)), d(w), d(ids), backend=TRI).cpu()
    assert out.dtype == dtype and out.shape == x.shape
    ref64 = R.moe(x, wgu, wd, w.double(), ids)
    ref_lp = None if dtype == torch.float64 else R.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids)
    assert_close_to_reference(out, ref64, ref_lp, atol=atol)


@requires("triton", usable=True)
@pytest.mark.parametrize("shape", [(1, 4, 2, 16, 16), (21, 8, 2, 24, 20), (40, 4, 3, 32, 16)],
                         ids=lambda s: "T{}-E{}-k{}-D{}-I{}".format(*s))
@pytest.mark.parametrize("dtype,atol", DTYPES, ids=["fp32", "bf16", "fp64"])
def test_moe_triton_matches_reference(shape, dtype, atol):
    _check_moe(shape, dtype, atol)


@requires("triton", usable=True)
def test_moe_triton_runs_any_config_it_is_given():
    """Tuned tiles reach the kernels: other block sizes than the heuristic's give the same result."""
    from hysparse_kernels.ops.moe.triton import moe as kernels

    x, wgu, wd, w, ids = (t.to(DEV) for t in moe_inputs(21, 8, 2, 24, 20))
    shape = {"tokens": 21, "hidden": 24, "experts": 8, "top_k": 2, "intermediate": 20}
    heuristic = kernels.heuristic_config("moe_fwd", shape)
    assert heuristic == {"block_m": 16, "gate_up_block_n": 32, "gate_up_block_k": 32, "down_block_n": 32,
                         "down_block_k": 32}
    other = {"block_m": 32, "gate_up_block_n": 16, "gate_up_block_k": 16, "down_block_n": 64, "down_block_k": 16}
    got = kernels.run_with_config("moe_fwd", other, x, wgu, wd, w, ids).cpu()
    assert_close_to_reference(got, R.moe(*(t.cpu() for t in (x, wgu, wd)), w.double().cpu(), ids.cpu()), atol=1e-12)


@requires("triton", usable=True)
def test_moe_triton_gradients_match_reference():
    x, wgu, wd, w, ids = moe_inputs(5, 4, 2, 16, 16)
    grads = []
    for backend in (TRI, "reference"):
        args = [t.float().to(DEV).requires_grad_() for t in (x, wgu, wd, w)]
        out = hk.moe(*args, ids.to(DEV), backend=backend)
        (out * torch.linspace(-1, 1, out.numel(), device=DEV).view_as(out)).sum().backward()
        grads.append([a.grad.cpu() for a in args])
    for g_tri, g_ref in zip(*grads):
        torch.testing.assert_close(g_tri, g_ref, rtol=1e-5, atol=1e-5)


@requires("triton", usable=True)
@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 64, 1000])
def test_moe_triton_gpu_large(T):
    for dtype, atol in DTYPES[:2]:
        _check_moe((T, 64, 8, 1024, 512), dtype, atol)


@requires("tvm")
def test_moe_kernels_build_for_the_toolkits_cpu_target(monkeypatch):
    """HYSPARSE_TVM_TARGET reaches the MoE kernels as it does the attention kernels."""
    from hysparse_kernels.backends.tvm.target import cpu_target_spec
    from hysparse_kernels.ops.moe.tvm import kernels as moe_kernels

    monkeypatch.setenv("HYSPARSE_TVM_TARGET", '{"kind": "llvm", "mcpu": "znver3"}')
    cpu_target_spec.cache_clear()  # the target is read once per process
    try:
        tgt = moe_kernels.target(2)
    finally:
        monkeypatch.undo()
        cpu_target_spec.cache_clear()
    assert str(tgt.attrs["mcpu"]) == "znver3" and int(tgt.attrs["num-cores"]) == 2
