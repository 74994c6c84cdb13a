"""Triton attention on a real GPU (compiled kernels, tensor-core dots), larger shapes than the
interpreter can afford. Skipped without a CUDA device (tests/conftest.py)."""

import pytest
import torch

import hysparse_kernels as hk
from triton_helpers import R, check, f64, lowp, reference_grads, run_grads

pytestmark = pytest.mark.gpu


def _inputs(B, Hq, Hkv, S, Dqk, Dv, dtype):
    g = lambda *s: torch.randn(*s, device="cuda").to(dtype)  # noqa: E731
    return g(B, Hq, S, Dqk), g(B, Hkv, S, Dqk), g(B, Hkv, S, Dv)


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-3), (torch.float16, 1e-3)], ids=["bf16", "fp16"])
@pytest.mark.parametrize("S,Dqk,Dv,window,with_sink", [
    (1024, 128, 128, None, False), (2047, 64, 64, 256, True), (1000, 192, 128, None, True),
], ids=["S1024-D128", "S2047-D64-W256-sink", "S1000-D192v128-sink"])
def test_forward_backward_on_gpu(S, Dqk, Dv, window, with_sink, dtype, atol):
    q, k, v = _inputs(1, 8, 2, S, Dqk, Dv, dtype)
    sink = torch.randn(8, device="cuda") if with_sink else None
    scale = Dqk**-0.5
    dout, dlse = torch.randn(1, 8, S, Dv, device="cuda").to(dtype), torch.randn(1, 8, S, device="cuda")
    fn = lambda q, k, v, s: hk.attention(q, k, v, window=window, sink=s, return_lse=True, backend="triton")  # noqa: E731
    grads, out, lse = run_grads(fn, (q, k, v, sink), (dout, dlse))
    ref_fn = lambda q, k, v, s: R.attention_fwd(q, k, v, s, True, window, scale)  # noqa: E731
    low_fn = lambda q, k, v, s: R.attention_fwd(q, k, v, s, True, window, scale, compute_dtype=lowp(dtype))  # noqa: E731
    ref, low = ref_fn(*f64(q, k, v, sink)), low_fn(q, k, v, sink)
    check(out, ref[0], low[0], dtype, atol, "out")
    check(lse, ref[1], low[1], dtype, atol, "lse")
    rg = reference_grads(ref_fn, f64(q, k, v, sink), f64(dout, dlse))
    lg = reference_grads(low_fn, (q, k, v, sink), (dout, dlse))
    for name, g, r, lo in zip(("dq", "dk", "dv", "dsink"), grads, rg, lg):
        check(g, r, lo, dtype, atol * (S if name == "dsink" else 1), name)


def test_block_scores_topk_sparse_and_decode_on_gpu():
    dtype, atol, S, bs = torch.bfloat16, 2e-3, 1024, 64
    q, k, v = _inputs(1, 8, 2, S, 128, 128, dtype)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=bs, backend="triton")
    ref = R.attention_with_block_scores(*f64(q, k, v), bs, True, 128**-0.5)
    low = R.attention_with_block_scores(q, k, v, bs, True, 128**-0.5, compute_dtype=torch.bfloat16)
    check(scores, ref[2], low[2], dtype, atol, "block_scores")
    idx = hk.topk_blocks(scores, 4, block_size=bs, seqlen_k=S, backend="triton")
    assert torch.equal(idx, R.topk_blocks(scores, 4, bs, S))
    sink = torch.randn(8, device="cuda")
    sp = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, backend="triton")
    ref_sp, _ = R.sparse_attention_fwd(*f64(q, k, v), idx, bs, sink.double(), 128**-0.5)
    low_sp, _ = R.sparse_attention_fwd(q, k, v, idx, bs, sink, 128**-0.5, compute_dtype=torch.bfloat16)
    check(sp, ref_sp, low_sp, dtype, atol, "sparse out")
    lens = torch.tensor([S], device="cuda", dtype=torch.int32)
    dec = hk.attention_decode(q[:, :, -3:], k, v, lens, window=256, sink=sink, backend="triton")
    pre = hk.attention(q, k, v, window=256, sink=sink, backend="triton")[:, :, -3:]
    torch.testing.assert_close(dec.float(), pre.float(), atol=1e-2, rtol=0)
