"""The registered ops on backend "triton": torch.library.opcheck (schema, fake kernels, autograd
registration, AOT dispatch) and torch.compile(fullgraph=True) against eager. The fake kernels are
backend-independent and opchecked with the reference in test_attention_ops.py; here the default
run keeps one triton opcheck, the rest is `slow` (opcheck re-runs the op many times)."""

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import ops


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
