"""``sparse_attention_decode`` (sparse attention of decode queries over selected blocks of a
padded cache) on every backend against the reference and the sparse prefill."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import reference as ref

from attention_helpers import _qkv
from backend_params import requires
from triton_helpers import R, check, f64, padded_cache, random_indices
from tvm_helpers import _check, _tvm_qkv


# ---------------------------------------------------------------- reference (float64 formulas)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_sparse_decode_matches_sparse_prefill():
    B, Hq, Hkv, Smax, D, bs = 2, 4, 2, 64, 16, 16
    q, k, v = _qkv(B, Hq, Hkv, Smax, Smax, D, D)
    lens = torch.tensor([64, 37], dtype=torch.int32)
    idx = torch.tensor([2, 0], dtype=torch.int32).expand(B, Hkv, 1, 2).contiguous()
    dq = torch.stack([q[b, :, int(lens[b]) - 1:int(lens[b])] for b in range(B)])
    out = hk.sparse_attention_decode(dq, k, v, lens, idx, block_size=bs, backend="reference")
    for b in range(B):
        L = int(lens[b])
        pre = hk.sparse_attention(dq[b:b + 1], k[b:b + 1, :, :L], v[b:b + 1, :, :L], idx[b:b + 1], block_size=bs, backend="reference")
        torch.testing.assert_close(out[b:b + 1], pre, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- TVM (CPU, llvm)


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sparse_decode_matches_reference(dtype):
    B, Hq, Hkv, Smax, D, bs = 2, 8, 2, 200, 64, 32
    q, k, v = _tvm_qkv(B, Hq, Hkv, 1, Smax, D, D, dtype)
    lens = torch.tensor([200, 90], dtype=torch.int32)
    idx = torch.empty(B, Hkv, 1, 4, dtype=torch.int32)
    idx[0, 0, 0] = torch.tensor([0, 3, -1, 5])
    idx[0, 1, 0] = torch.tensor([6, 6, 1, -1])  # a block listed twice counts once
    idx[1, :, 0] = torch.tensor([2, 0, -1, 1])  # length 90: block 2 holds the query
    sink = torch.randn(Hq)
    got = hk.sparse_attention_decode(q, k, v, lens, idx, block_size=bs, sink=sink, return_lse=True, backend="tvm")
    _check("sparse_decode", got, ref.sparse_attention_decode, (q, k, v, lens, idx, bs, sink, D**-0.5), dtype)


# ---------------------------------------------------------------- Triton (interpreter without a GPU)


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
