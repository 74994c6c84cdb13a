"""MoE on the Triton backend: the fused expert GEMMs and the routing kernel against the float64
reference (CPU: Triton's interpreter, tiny shapes; the conftest sets TRITON_INTERPRET=1), a
compile-only check of the kernels for sm_80/sm_90 PTX, and `gpu` tests at larger shapes."""

import math

import pytest
import torch

import hysparse_kernels as hk

from moe_data import moe_inputs
from hysparse_kernels.backends import status
from hysparse_kernels.ops.moe import reference as R
from hysparse_kernels.testing import assert_close_to_reference

pytest.importorskip("triton", reason="triton is not installed (pip install 'hysparse-kernels[triton]')")
if not status("triton").usable:
    pytest.skip(f"triton cannot run here: {status('triton').reason}", allow_module_level=True)

TRI = "triton"
DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float64, 1e-12)]


_data = moe_inputs


def _check_moe(shape, dtype, atol):
    x, wgu, wd, w, ids = _data(*shape)
    d = lambda t: t.to(DEV)  # noqa: E731
    out = hk.moe(d(x.to(dtype)), d(wgu.to(dtype)), d(wd.to(dtype)), d(w), d(ids), backend=TRI).cpu()
    assert out.dtype == dtype and out.shape == x.shape
    ref64 = R.moe(x, wgu, wd, w.double(), ids)
    ref_lp = None if dtype == torch.float64 else R.moe(x.to(dtype), wgu.to(dtype), wd.to(dtype), w, ids)
    assert_close_to_reference(out, ref64, ref_lp, atol=atol)


@pytest.mark.parametrize("shape", [(1, 4, 2, 16, 16), (21, 8, 2, 24, 20), (40, 4, 3, 32, 16)],
                         ids=lambda s: "T{}-E{}-k{}-D{}-I{}".format(*s))
@pytest.mark.parametrize("dtype,atol", DTYPES, ids=["fp32", "bf16", "fp64"])
def test_moe_triton_matches_reference(shape, dtype, atol):
    _check_moe(shape, dtype, atol)


def test_moe_triton_runs_any_config_it_is_given():
    """Tuned tiles reach the kernels: other block sizes than the heuristic's give the same result."""
    from hysparse_kernels.ops.moe.triton import moe as kernels

    x, wgu, wd, w, ids = (t.to(DEV) for t in _data(21, 8, 2, 24, 20))
    shape = {"tokens": 21, "hidden": 24, "experts": 8, "top_k": 2, "intermediate": 20}
    heuristic = kernels.heuristic_config("moe_fwd", shape)
    assert heuristic == {"block_m": 16, "gate_up_block_n": 32, "gate_up_block_k": 32, "down_block_n": 32,
                         "down_block_k": 32}
    other = {"block_m": 32, "gate_up_block_n": 16, "gate_up_block_k": 16, "down_block_n": 64, "down_block_k": 16}
    got = kernels.run_with_config("moe_fwd", other, x, wgu, wd, w, ids).cpu()
    assert_close_to_reference(got, R.moe(*(t.cpu() for t in (x, wgu, wd)), w.double().cpu(), ids.cpu()), atol=1e-12)


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


def test_moe_triton_gradients_match_reference():
    x, wgu, wd, w, ids = _data(5, 4, 2, 16, 16)
    grads = []
    for backend in (TRI, "reference"):
        args = [t.float().to(DEV).requires_grad_() for t in (x, wgu, wd, w)]
        out = hk.moe(*args, ids.to(DEV), backend=backend)
        (out * torch.linspace(-1, 1, out.numel(), device=DEV).view_as(out)).sum().backward()
        grads.append([a.grad.cpu() for a in args])
    for g_tri, g_ref in zip(*grads):
        torch.testing.assert_close(g_tri, g_ref, rtol=1e-5, atol=1e-5)


ROUTES = [
    dict(top_k=2, scoring="softmax"),
    dict(top_k=3, scoring="softmax", renormalize=False, scaling=1.5),
    dict(top_k=4, scoring="sigmoid", bias=True, scaling=2.5),
    dict(top_k=4, scoring="sigmoid", bias=True, n_group=4, topk_group=2),
    dict(top_k=8, scoring="sigmoid", bias=True, n_group=8, topk_group=4),
]


@pytest.mark.parametrize("kw", ROUTES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
@pytest.mark.parametrize("T,E", [(1, 16), (37, 32)], ids=["T1-E16", "T37-E32"])
def test_route_triton_matches_reference(kw, T, E):
    kw = dict(kw)
    if kw.get("n_group", 1) > 1 and E < kw["n_group"] * 2:
        pytest.skip("too few experts per group")
    logits = torch.randn(T, E)
    bias = torch.randn(E) * 0.3 if kw.pop("bias", False) else None
    w, ids = hk.route(logits.to(DEV), bias=None if bias is None else bias.to(DEV), backend=TRI, **kw)
    w_ref, ids_ref = hk.route(logits, bias=bias, backend="reference", **kw)
    assert torch.equal(ids.cpu(), ids_ref)
    torch.testing.assert_close(w.cpu(), w_ref, rtol=1e-6, atol=1e-6)


def test_route_triton_ties_go_to_lower_id():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 3.0, 0.0, 0.0]])
    _, ids = hk.route(logits.to(DEV), top_k=3, backend=TRI)
    assert ids.cpu().tolist() == [[1, 2, 4]]


_COMPILE_SCRIPT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hysparse_kernels.ops.moe.triton import moe as fused, route as routing

common = {"p_blk_e": "*i32", "p_blk_start": "*i32", "p_blk_end": "*i32"}
kernels = [
    (fused._moe_gate_up_kernel,
     {"p_x": "*bf16", "p_rowtok": "*i32", "p_w": "*bf16", "p_h": "*bf16", **common, "INTER": "i32", "K": "i32",
      "stride_x": "i32", "stride_we": "i32", "stride_wn": "i32", "stride_h": "i32"},
     {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "DOT_F32": False, "ACC": tl.float32}, "mma"),
    (fused._grouped_gemm_kernel,
     {"p_x": "*bf16", "p_rowsrc": "*i32", "p_w": "*bf16", "p_y": "*fp32", "p_scale": "*fp32", "p_rowdst": "*i32",
      **common, "N": "i32", "K": "i32", "stride_x": "i32", "stride_we": "i32", "stride_wn": "i32", "stride_y": "i32"},
     {"GATHER": False, "SCALE": True, "SCATTER": True, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64,
      "DOT_F32": False, "ACC": tl.float32}, "mma"),
    (routing._route_kernel,
     {"p_logits": "*fp32", "p_bias": "*fp32", "p_w": "*fp32", "p_ids": "*i32", "T": "i32", "E": "i32",
      "stride_l": "i32", "scaling": "fp32"},
     {"TOP_K": 8, "K_P2": 8, "SIGMOID": True, "HAS_BIAS": True, "N_GROUP": 8, "TOPK_GROUP": 4, "RENORM": True,
      "BLOCK_T": 16, "BLOCK_E": 256, "ACC": tl.float32}, None),
]
import sys
which = sys.argv[1]
for fn, sig, const, needle in (kernels[:2] if which == "gemm" else kernels[2:]):
    for cc in (80, 90):
        k = triton.compile(ASTSource(fn, {**sig, **{c: "constexpr" for c in const}}, const), target=GPUTarget("cuda", cc, 32))
        ptx = k.asm["ptx"]
        assert needle is None or needle in ptx, (fn.__name__, cc, "no tensor-core mma in the PTX")
        print(fn.__name__, cc, len(k.asm["cubin"]))
"""


def _compile(which: str, expected_lines: int):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, which], env=env, capture_output=True, text=True, timeout=900)
    if r.returncode and ("ptxas" in r.stderr and "not found" in r.stderr):
        pytest.skip(f"triton cannot compile for CUDA here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("\n") == expected_lines, r.stdout


def test_gemm_kernels_compile_for_sm80_and_sm90():
    """Compile-only, no GPU: the fused GEMM kernels lower to PTX and a cubin for sm_80 and sm_90
    with tensor-core mma (catching layout and shared-memory errors the interpreter cannot see).
    Runs in a subprocess: compiling needs triton without TRITON_INTERPRET (about 10 s)."""
    _compile("gemm", 4)


@pytest.mark.slow
def test_route_kernel_compiles_for_sm80_and_sm90():
    """Compile-only: the routing kernel at MiMo-V2-Flash shape (E = 256, 8 groups); minutes here."""
    _compile("route", 2)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 64, 1000])
def test_moe_triton_gpu_large(T):
    for dtype, atol in DTYPES[:2]:
        _check_moe((T, 64, 8, 1024, 512), dtype, atol)


def test_opcheck_triton():
    from hysparse_kernels.ops.moe import ops

    x, wgu, wd, w, ids = _data(6, 4, 2, 16, 16)
    args = [t.float().to(DEV).requires_grad_() for t in (x, wgu, wd, w)]
    torch.library.opcheck(ops.moe_fwd, (*args, ids.to(DEV), TRI))
    torch.library.opcheck(ops.route, (torch.randn(5, 16, device=DEV), 4, "sigmoid", None, 4, 2, True, 2.5, TRI))
