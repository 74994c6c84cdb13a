"""Triton sparse attention (HySparse, shared-KV block selection) and decode against the float64
reference: forward, backward, duplicates and -1 pads in the index lists, decode vs prefill."""

import pytest
import torch

import hysparse_kernels as hk
from triton_helpers import DTYPE_IDS, DTYPES, R, check, f64, inputs, lowp, reference_grads, run_grads


def random_indices(B, Hkv, Sq, Sk, block_size, k, mode):
    """``topk``: what the oracle picks (visible, -1 pads); ``raw``: any ids, -1, duplicates and
    blocks after the query (which the causal mask must empty)."""
    n_blocks = -(-Sk // block_size)
    if mode == "topk":
        return R.topk_blocks(torch.rand(B, Hkv, Sq, n_blocks), k, block_size, Sk)
    idx = torch.randint(-1, n_blocks, (B, Hkv, Sq, k), dtype=torch.int32)
    idx[..., -1] = idx[..., 0]  # a block listed twice counts once
    return idx


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, block_size, k, mode, sink)
CASES = {
    "B1-H4kv1-Sq65-Sk130-bs16-k3-raw-sink": (1, 4, 1, 65, 130, 32, 32, 16, 3, "raw", True),
    "B1-H2kv2-Sq33-Sk63-D192v128-bs16-k4-topk": (1, 2, 2, 33, 63, 192, 128, 16, 4, "topk", False),
    "B2-H4kv4-Sq1-Sk65-bs32-k2-raw": (2, 4, 4, 1, 65, 32, 32, 32, 2, "raw", False),
    "B1-H4kv2-Sq10-Sk70-bs16-k8-more-than-visible-sink": (1, 4, 2, 10, 70, 32, 32, 16, 8, "topk", True),
}
SLOW_CASES = {
    "B2-H8kv2-S130-D64-bs32-k4-topk-sink": (2, 8, 2, 130, 130, 64, 64, 32, 4, "topk", True),
    "B1-H4kv1-Sq63-Sk63-D192v128-bs16-k3-raw": (1, 4, 1, 63, 63, 192, 128, 16, 3, "raw", False),
}
# The interpreter runs one program per (query, KV group) and block: the two larger cases run in
# fp32 by default and in bf16 under `slow`; the small ones in both.
_BF16_DEFAULT = ("B2-H4kv4-Sq1-Sk65-bs32-k2-raw", "B1-H4kv2-Sq10-Sk70-bs16-k8-more-than-visible-sink")
FWD = [pytest.param(*c, dt, tol, id=f"{n}-{i}",
                    marks=() if i == "fp32" or n in _BF16_DEFAULT else pytest.mark.slow)
       for n, c in CASES.items() for (dt, tol), i in zip(DTYPES, DTYPE_IDS)] + [
    pytest.param(*c, dt, tol, id=f"{n}-{i}", marks=pytest.mark.slow)
    for n, c in SLOW_CASES.items() for (dt, tol), i in zip(DTYPES, DTYPE_IDS)
]
ARGS = "B,Hq,Hkv,Sq,Sk,Dqk,Dv,block_size,k,mode,with_sink"


@pytest.mark.parametrize(ARGS + ",dtype,atol", FWD)
def test_sparse_forward_matches_reference(B, Hq, Hkv, Sq, Sk, Dqk, Dv, block_size, k, mode, with_sink, dtype, atol):
    q, kk, v, sink = inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, with_sink)
    idx = random_indices(B, Hkv, Sq, Sk, block_size, k, mode)
    out, lse = hk.sparse_attention(q, kk, v, idx, block_size=block_size, sink=sink, return_lse=True, backend="triton")
    scale = Dqk**-0.5
    ref = R.sparse_attention_fwd(*f64(q, kk, v), idx, block_size, f64(sink)[0], scale)
    low = R.sparse_attention_fwd(q, kk, v, idx, block_size, sink, scale, compute_dtype=lowp(dtype))
    check(out, ref[0], low[0], dtype, atol, "out")
    check(lse, ref[1], low[1], dtype, atol, "lse")


BWD = [
    pytest.param(*CASES["B1-H4kv1-Sq65-Sk130-bs16-k3-raw-sink"], torch.float32, 2e-5, id="Sq65-Sk130-raw-sink-fp32"),
    pytest.param(*CASES["B1-H2kv2-Sq33-Sk63-D192v128-bs16-k4-topk"], torch.float32, 2e-5, id="D192v128-topk-fp32"),
    pytest.param(*CASES["B1-H4kv2-Sq10-Sk70-bs16-k8-more-than-visible-sink"], torch.bfloat16, 2e-3,
                 id="Sq10-k8-sink-bf16"),
    pytest.param(*SLOW_CASES["B2-H8kv2-S130-D64-bs32-k4-topk-sink"], torch.bfloat16, 2e-3, id="S130-sink-bf16",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize(ARGS + ",dtype,atol", BWD)
def test_sparse_backward_matches_reference(B, Hq, Hkv, Sq, Sk, Dqk, Dv, block_size, k, mode, with_sink, dtype, atol):
    q, kk, v, sink = inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, with_sink)
    idx = random_indices(B, Hkv, Sq, Sk, block_size, k, mode)
    scale = Dqk**-0.5
    dout, dlse = torch.randn(B, Hq, Sq, Dv).to(dtype), torch.randn(B, Hq, Sq)
    fn = lambda q, k_, v, s: hk.sparse_attention(  # noqa: E731
        q, k_, v, idx, block_size=block_size, sink=s, return_lse=True, backend="triton")
    grads, _, _ = run_grads(fn, (q, kk, v, sink), (dout, dlse))
    ref = reference_grads(lambda q, k_, v, s: R.sparse_attention_fwd(q, k_, v, idx, block_size, s, scale),
                          f64(q, kk, v, sink), f64(dout, dlse))
    low = reference_grads(
        lambda q, k_, v, s: R.sparse_attention_fwd(q, k_, v, idx, block_size, s, scale, compute_dtype=lowp(dtype)),
        (q, kk, v, sink), (dout, dlse))
    for name, g, r, lo in zip(("dq", "dk", "dv", "dsink"), grads, ref, low):
        check(g, r, lo, dtype, atol * (B * Sq if name == "dsink" else 1), name)


def test_sparse_with_every_block_equals_dense_causal():
    B, Hq, Hkv, S, D, bs = 1, 2, 1, 40, 32, 16
    q, k, v, sink = inputs(B, Hq, Hkv, S, S, D, D, torch.float32, sink=True)
    n_blocks = -(-S // bs)
    idx = torch.arange(n_blocks, dtype=torch.int32).expand(B, Hkv, S, n_blocks).contiguous()
    sparse = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, backend="triton")
    dense = hk.attention(q, k, v, sink=sink, backend="triton")
    torch.testing.assert_close(sparse, dense, atol=2e-6, rtol=0)


# ---------------------------------------------------------------- decode


def padded_cache(B, Hkv, Smax, D):
    return torch.randn(B, Hkv, Smax, D)  # garbage beyond each sequence's length must be ignored


@pytest.mark.parametrize("Sq", [1, 3], ids=["Sq1", "Sq3-draft2"])
@pytest.mark.parametrize("window,with_sink", [(None, False), (16, True)], ids=["full", "W16-sink"])
def test_decode_equals_prefill(Sq, window, with_sink):
    B, Hq, Hkv, Smax, D = 2, 4, 2, 100, 32
    lens = torch.tensor([100, 37])
    q = torch.randn(B, Hq, Sq, D)
    k_cache, v_cache = padded_cache(B, Hkv, Smax, D), padded_cache(B, Hkv, Smax, D)
    sink = torch.randn(Hq) if with_sink else None
    out, lse = hk.attention_decode(q, k_cache, v_cache, lens, window=window, sink=sink, return_lse=True, backend="triton")
    for b in range(B):
        L = int(lens[b])
        pre_out, pre_lse = hk.attention(q[b:b + 1], k_cache[b:b + 1, :, :L], v_cache[b:b + 1, :, :L], window=window,
                                        sink=sink, return_lse=True, backend="triton")
        torch.testing.assert_close(out[b:b + 1], pre_out, atol=2e-6, rtol=0)
        torch.testing.assert_close(lse[b:b + 1], pre_lse, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype,atol", DTYPES, ids=DTYPE_IDS)
def test_decode_matches_reference_dqk192_dv128(dtype, atol):
    B, Hq, Hkv, Sq, Smax = 3, 4, 1, 2, 130
    q = torch.randn(B, Hq, Sq, 192).to(dtype)
    k_cache, v_cache = torch.randn(B, Hkv, Smax, 192).to(dtype), torch.randn(B, Hkv, Smax, 128).to(dtype)
    lens, sink = torch.tensor([130, 65, 2]), torch.randn(Hq)
    out, lse = hk.attention_decode(q, k_cache, v_cache, lens, sink=sink, return_lse=True, backend="triton")
    ref = R.attention_decode(*f64(q, k_cache, v_cache), lens, sink.double(), None, 192**-0.5)
    low = R.attention_decode(q, k_cache, v_cache, lens, sink, None, 192**-0.5, compute_dtype=lowp(dtype))
    check(out, ref[0], low[0], dtype, atol, "out")
    check(lse, ref[1], low[1], dtype, atol, "lse")


@pytest.mark.parametrize("Sq", [1, 3], ids=["Sq1", "Sq3-draft2"])
def test_sparse_decode_equals_sparse_prefill(Sq):
    B, Hq, Hkv, Smax, D, bs, k = 2, 4, 2, 100, 32, 16, 3
    lens = torch.tensor([100, 37])
    q = torch.randn(B, Hq, Sq, D)
    k_cache, v_cache = padded_cache(B, Hkv, Smax, D), padded_cache(B, Hkv, Smax, D)
    sink = torch.randn(Hq)
    idx = torch.stack([random_indices(1, Hkv, Sq, int(L), bs, k, "topk")[0] for L in lens])
    out, lse = hk.sparse_attention_decode(q, k_cache, v_cache, lens, idx, block_size=bs, sink=sink, return_lse=True,
                                          backend="triton")
    for b in range(B):
        L = int(lens[b])
        pre_out, pre_lse = hk.sparse_attention(q[b:b + 1], k_cache[b:b + 1, :, :L], v_cache[b:b + 1, :, :L],
                                               idx[b:b + 1], block_size=bs, sink=sink, return_lse=True, backend="triton")
        torch.testing.assert_close(out[b:b + 1], pre_out, atol=2e-6, rtol=0)
        torch.testing.assert_close(lse[b:b + 1], pre_lse, atol=2e-6, rtol=0)
    ref = R.sparse_attention_decode(*f64(q, k_cache, v_cache), lens, idx, bs, sink.double(), D**-0.5)
    check(out, ref[0], None, torch.float32, 2e-5, "out")
