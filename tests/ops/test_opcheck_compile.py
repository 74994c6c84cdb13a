"""The registered ops on every backend: ``torch.library.opcheck`` (schema, fake kernels,
autograd registration, AOT dispatch) and ``torch.compile(fullgraph=True)`` against eager."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import ops, reference as ref
from hysparse_kernels.ops.moe import ops as moe_ops

from attention_helpers import _inputs
from backend_params import requires
from moe_data import moe_inputs
from moe_helpers import DEV, REF, TRI, TVM, make_moe
from tvm_helpers import _indices, _tvm_bwd_indices, _tvm_bwd_inputs, _tvm_qkv


# ---------------------------------------------------------------- attention ops, reference


def _opcheck_cases():
    q, k, v = _inputs(dtype=torch.float32, grad=True)
    qd, kd, vd = _inputs(dtype=torch.float32)
    sink = torch.randn(4, requires_grad=True)
    idx = torch.tensor([[0, 1], [1, -1], [2, 0]], dtype=torch.int32).repeat(1, 2, 3, 1)[:, :, :9].contiguous()
    scores = torch.rand(1, 2, 9, 3)
    dout, dlse = torch.randn(1, 4, 9, 6), torch.randn(1, 4, 9)
    out, lse = ops.attention_fwd(qd, kd, vd, None, True, None, 0.3, "reference")
    lens = torch.tensor([7], dtype=torch.int32)
    return {
        "attention_fwd": (ops.attention_fwd, (q, k, v, sink, True, 4, 0.3, "reference")),
        "attention_fwd-nosink": (ops.attention_fwd, (q, k, v, None, True, None, 0.3, "reference")),
        "attention_bwd": (ops.attention_bwd, (dout, dlse, qd, kd, vd, None, out, lse, True, None, 0.3, "reference")),
        "attention_with_block_scores": (ops.attention_with_block_scores, (q, k, v, 4, True, 0.3, "reference")),
        "topk_blocks": (ops.topk_blocks, (scores, 2, 4, 9, "reference")),
        "attention_with_block_scores-seqlens": (ops.attention_with_block_scores, (qd, kd, vd, 4, True, 0.3, "reference", lens)),
        "topk_blocks-seqlens": (ops.topk_blocks, (scores, 2, 4, 9, "reference", lens)),
        "sparse_attention_fwd": (ops.sparse_attention_fwd, (q, k, v, idx, 4, sink, 0.3, "reference")),
        "sparse_attention_bwd": (ops.sparse_attention_bwd, (dout, dlse, qd, kd, vd, idx, None, out, lse, 4, 0.3, "reference")),
        "attention_decode": (ops.attention_decode, (qd[:, :, :2], kd, vd, lens, sink.detach(), 3, 0.3, "reference")),
        "sparse_attention_decode": (
            ops.sparse_attention_decode, (qd[:, :, :2].contiguous(), kd, vd, lens, idx[:, :, :2].contiguous(), 4, None, 0.3, "reference")
        ),
    }


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize("name", list(_opcheck_cases()))
def test_opcheck(name):
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, args)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    q, k, v = _inputs(Sq=20, Sk=20, dtype=torch.float32)
    sink = torch.randn(4)

    def layer(q, k, v, sink):
        full, _, scores = hk.attention_with_block_scores(q, k, v, block_size=4)
        idx = hk.topk_blocks(scores, 2, block_size=4, seqlen_k=k.shape[2])
        sparse = hk.sparse_attention(q, k, v, idx, block_size=4, sink=sink)
        swa = hk.attention(q, k, v, window=5, sink=sink)
        return full + torch.sigmoid(sparse) * swa

    with hk.use_backend("reference"):
        eager = layer(q, k, v, sink)
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(q, k, v, sink)
    torch.testing.assert_close(compiled, eager)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_compile_fullgraph_backward_matches_eager():
    torch._dynamo.reset()
    q, k, v = _inputs(Sq=10, Sk=10, dtype=torch.float32, grad=True)
    sink = torch.randn(4, requires_grad=True)
    fn = lambda q, k, v, s: hk.attention(q, k, v, window=3, sink=s, backend="reference").sum()  # noqa: E731
    eager = torch.autograd.grad(fn(q, k, v, sink), (q, k, v, sink))
    compiled = torch.autograd.grad(torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v, sink), (q, k, v, sink))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- attention ops, TVM


@requires("tvm")
def test_opcheck_with_tvm_backend():
    q, k, v = _tvm_qkv(1, 4, 2, 20, 20, 32, 16, torch.float32)
    sink = torch.randn(4)
    idx = _indices(1, 2, 20, 20, 8, 2)
    lens = torch.tensor([20], dtype=torch.int32)
    torch.library.opcheck(torch.ops.hysparse.attention_fwd, (q, k, v, sink, True, 8, 0.2, "tvm"))
    torch.library.opcheck(torch.ops.hysparse.sparse_attention_fwd, (q, k, v, idx, 8, None, 0.2, "tvm"))
    torch.library.opcheck(torch.ops.hysparse.attention_decode, (q[:, :, -1:], k, v, lens, sink, None, 0.2, "tvm"),
                          test_utils=("test_schema", "test_faketensor"))


@requires("tvm")
def test_tvm_compile_fullgraph_matches_eager():
    q, k, v = _tvm_qkv(1, 4, 2, 33, 33, 32, 32, torch.float32)
    sink = torch.randn(4)

    def fn(q, k, v, s):
        return hk.attention(q, k, v, window=8, sink=s, backend="tvm") * 2

    eager = fn(q, k, v, sink)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v, sink)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


# ---------------------------------------------------------------- attention backward ops, TVM


@requires("tvm")
def test_opcheck_backward_ops_with_tvm_backend():
    q, k, v, sink = _tvm_bwd_inputs(1, 4, 2, 20, 20, 32, 16, torch.float32, True)
    out, lse = ref.attention_fwd(q, k, v, sink, True, 8, 0.2)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    torch.library.opcheck(torch.ops.hysparse.attention_bwd, (dout, dlse, q, k, v, sink, out, lse, True, 8, 0.2, "tvm"),
                          test_utils=("test_schema", "test_faketensor"))
    idx = _tvm_bwd_indices(1, 2, 20, 20, 8, 3)
    out, lse = ref.sparse_attention_fwd(q, k, v, idx, 8, None, 0.2)
    torch.library.opcheck(torch.ops.hysparse.sparse_attention_bwd,
                          (dout, dlse, q, k, v, idx, None, out, lse, 8, 0.2, "tvm"), test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- attention ops, Triton


def _qkv(Sq=20, Sk=20, grad=False):
    t = lambda *s: torch.randn(*s, requires_grad=grad)  # noqa: E731
    return t(1, 4, Sq, 16), t(1, 2, Sk, 16), t(1, 2, Sk, 16)


def test_opcheck_attention_with_sink_and_window():
    q, k, v = _qkv(grad=True)
    sink = torch.randn(4, requires_grad=True)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, sink, True, 8, 0.25, "triton"))


@pytest.mark.slow
def test_opcheck_block_scores_topk_sparse_decode():
    q, k, v = _qkv(Sq=20, Sk=40)
    torch.library.opcheck(ops.attention_with_block_scores, (q, k, v, 16, True, 0.25, "triton"))
    scores = torch.rand(1, 2, 20, 3)
    torch.library.opcheck(ops.topk_blocks, (scores, 2, 16, 40, "triton"))
    idx = hk.topk_blocks(scores, 2, block_size=16, seqlen_k=40, backend="triton")
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(ops.sparse_attention_fwd, (qg, kg, vg, idx, 16, None, 0.25, "triton"))
    lens = torch.tensor([33], dtype=torch.int32)
    torch.library.opcheck(ops.attention_decode, (q[:, :, :2], k, v, lens, None, None, 0.25, "triton"))


@pytest.mark.slow
def test_compiled_graph_matches_eager():
    q, k, v = _qkv()
    sink = torch.randn(4)

    def f(q, k, v):
        return hk.attention(q, k, v, window=8, sink=sink, backend="triton").square().sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v))


# ---------------------------------------------------------------- MoE ops, reference


def _opcheck_samples():
    x, wgu, wd, w, ids = make_moe(6, 4, 2, 8, 4, dtype=torch.float32)
    xs, off, inv = moe_ops.moe_permute(x, ids, 4, REF)
    logits = torch.randn(6, 4)
    return [
        (moe_ops.route, (logits.requires_grad_(), 2, "sigmoid", torch.zeros(4), 2, 1, True, 2.0, REF)),
        (moe_ops.moe_permute, (x.clone().requires_grad_(), ids, 4, REF)),
        (moe_ops.moe_unpermute, (xs.clone().requires_grad_(), inv, w.clone().requires_grad_(), REF)),
        (moe_ops.grouped_gemm, (xs.clone().requires_grad_(), wgu.clone().requires_grad_(), off, REF)),
        (moe_ops.grouped_gemm_wgrad, (torch.randn(12, 8), xs, off, 4, REF)),
        (moe_ops.moe_fwd, (x.clone().requires_grad_(), wgu.clone().requires_grad_(), wd.clone().requires_grad_(),
                       w.clone().requires_grad_(), ids, REF)),
        (moe_ops.moe_bwd, (torch.randn(6, 8), x, wgu, wd, w, ids, REF)),
    ]


@pytest.mark.parametrize("idx", range(7), ids=["route", "permute", "unpermute", "grouped_gemm", "wgrad", "moe_fwd", "moe_bwd"])
def test_moe_opcheck(idx):
    op, args = _opcheck_samples()[idx]
    torch.library.opcheck(op, args)


def test_moe_compile_fullgraph_matches_eager():
    x, wgu, wd, _, _ = make_moe(7, 4, 2, 8, 4, dtype=torch.float32)
    logits = torch.randn(7, 4)

    def layer(x, logits):
        w, ids = hk.route(logits, top_k=2, scoring="sigmoid", n_group=2, topk_group=1, backend=REF)
        return hk.moe(x, wgu, wd, w, ids, backend=REF)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, logits), layer(x, logits), rtol=0, atol=0)


# ---------------------------------------------------------------- MoE ops, TVM


@requires("tvm")
def test_opcheck_tvm():
    from hysparse_kernels.ops.moe import ops

    x, wgu, wd, w, ids = moe_inputs(6, 4, 2, 16, 8)
    args = [t.float().requires_grad_() for t in (x, wgu, wd, w)]
    torch.library.opcheck(ops.moe_fwd, (*args, ids, TVM))
    xs, off, _ = ops.moe_permute(x.float(), ids, 4, "reference")
    torch.library.opcheck(ops.grouped_gemm, (xs.requires_grad_(), wgu.float().requires_grad_(), off, TVM))


@requires("tvm")
def test_compile_fullgraph_tvm_matches_eager():
    x, wgu, wd, _, _ = moe_inputs(7, 4, 2, 16, 8)
    x, wgu, wd = x.float(), wgu.float(), wd.float()
    logits = torch.randn(7, 4)

    def layer(x, logits):
        w, ids = hk.route(logits, top_k=2, scoring="sigmoid", backend="reference")
        return hk.moe(x, wgu, wd, w, ids, backend=TVM)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, logits), layer(x, logits), rtol=0, atol=0)


# ---------------------------------------------------------------- MoE ops, Triton


@requires("triton", usable=True)
def test_opcheck_triton():
    from hysparse_kernels.ops.moe import ops

    x, wgu, wd, w, ids = moe_inputs(6, 4, 2, 16, 16)
    args = [t.float().to(DEV).requires_grad_() for t in (x, wgu, wd, w)]
    torch.library.opcheck(ops.moe_fwd, (*args, ids.to(DEV), TRI))
    torch.library.opcheck(ops.route, (torch.randn(5, 16, device=DEV), 4, "sigmoid", None, 4, 2, True, 2.5, TRI))
