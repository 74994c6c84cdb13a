"""The registered ops: float64 gradcheck, torch.library.opcheck, torch.compile(fullgraph=True)."""

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import ops

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")


def _inputs(B=1, Hq=4, Hkv=2, Sq=9, Sk=9, Dqk=8, Dv=6, dtype=torch.float64, grad=False):
    t = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=grad)  # noqa: E731
    return t(B, Hq, Sq, Dqk), t(B, Hkv, Sk, Dqk), t(B, Hkv, Sk, Dv)


@pytest.mark.parametrize("window,with_sink", [(None, False), (None, True), (4, True)], ids=["causal", "sink", "swa4-sink"])
def test_gradcheck_attention(window, with_sink):
    q, k, v = _inputs(grad=True)
    sink = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_sink else None

    def fn(q, k, v, *rest):
        out, lse = hk.attention(q, k, v, window=window, sink=rest[0] if rest else None, return_lse=True, backend="reference")
        return out, lse

    args = (q, k, v) + ((sink,) if with_sink else ())
    assert torch.autograd.gradcheck(fn, args)


def test_gradcheck_sparse_attention():
    q, k, v = _inputs(Sq=5, Sk=12, grad=True)
    sink = torch.randn(4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 2], [1, -1], [2, 0], [0, -1], [2, 1]], dtype=torch.int32).expand(1, 2, 5, 2).contiguous()
    fn = lambda q, k, v, s: hk.sparse_attention(q, k, v, idx, block_size=4, sink=s, return_lse=True, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, sink))


def test_gradcheck_block_scores_out_and_lse():
    q, k, v = _inputs(Sq=7, Sk=7, grad=True)
    fn = lambda q, k, v: hk.attention_with_block_scores(q, k, v, block_size=4, backend="reference")[:2]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_sink_gradient_is_nonzero_and_matches_finite_difference():
    q, k, v = _inputs(dtype=torch.float64)
    sink = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    hk.attention(q, k, v, sink=sink, backend="reference").square().sum().backward()
    eps = 1e-6
    for h in range(4):
        bump = torch.zeros(4, dtype=torch.float64)
        bump[h] = eps
        plus = hk.attention(q, k, v, sink=sink.detach() + bump, backend="reference").square().sum()
        minus = hk.attention(q, k, v, sink=sink.detach() - bump, backend="reference").square().sum()
        assert abs(float(sink.grad[h]) - float(plus - minus) / (2 * eps)) < 1e-6
    assert sink.grad.abs().min() > 0


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


@pytest.mark.parametrize("name", list(_opcheck_cases()))
def test_opcheck(name):
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, args)


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


def test_compile_fullgraph_backward_matches_eager():
    torch._dynamo.reset()
    q, k, v = _inputs(Sq=10, Sk=10, dtype=torch.float32, grad=True)
    sink = torch.randn(4, requires_grad=True)
    fn = lambda q, k, v, s: hk.attention(q, k, v, window=3, sink=s, backend="reference").sum()  # noqa: E731
    eager = torch.autograd.grad(fn(q, k, v, sink), (q, k, v, sink))
    compiled = torch.autograd.grad(torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v, sink), (q, k, v, sink))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)
