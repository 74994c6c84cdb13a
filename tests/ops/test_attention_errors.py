"""Bad input: each error names the argument, what was expected and what came."""

import pytest
import torch

import hysparse_kernels as hk

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")


def qkv(B=1, Hq=4, Hkv=2, S=8, D=8, dtype=torch.float32):
    return torch.randn(B, Hq, S, D, dtype=dtype), torch.randn(B, Hkv, S, D, dtype=dtype), torch.randn(B, Hkv, S, D, dtype=dtype)


q, k, v = qkv()
idx = torch.zeros(1, 2, 8, 2, dtype=torch.int32)
lens = torch.tensor([8], dtype=torch.int32)

CASES = {
    "q-rank": (lambda: hk.attention(q[0], k, v), ValueError, r"q: expected a 4-D tensor .* got shape \(4, 8, 8\)"),
    "k-not-tensor": (lambda: hk.attention(q, k.numpy(), v), TypeError, r"k: expected a torch.Tensor, got ndarray"),
    "batch": (lambda: hk.attention(q, torch.cat([k, k]), torch.cat([v, v])), ValueError, r"k: expected batch size .* = 1, got 2"),
    "v-heads": (lambda: hk.attention(q, k, v[:, :1]), ValueError, r"v: expected kv heads .* = 2, got 1"),
    "v-length": (lambda: hk.attention(q, k, v[:, :, :5]), ValueError, r"v: expected kv length .* = 8, got 5"),
    "head-dim": (lambda: hk.attention(q, k[..., :4], v), ValueError, r"k: expected head dim Dqk .* = 8, got 4"),
    "gqa": (lambda: hk.attention(torch.randn(1, 3, 8, 8), k, v), ValueError, r"k: expected kv heads dividing the 3 query heads .* got 2"),
    "int-dtype": (lambda: hk.attention(q.long(), k.long(), v.long()), TypeError, r"q: expected a floating dtype .* got torch.int64"),
    "mixed-dtype": (lambda: hk.attention(q, k.double(), v), TypeError, r"k: expected dtype torch.float32 .* got torch.float64"),
    "device": (lambda: hk.attention(q, k.to("meta"), v), ValueError, r"k: expected a tensor on cpu .* got meta"),
    "window-zero": (lambda: hk.attention(q, k, v, window=0), ValueError, r"window: expected a positive int, got 0"),
    "window-noncausal": (lambda: hk.attention(q, k, v, window=4, causal=False), ValueError, r"window: a sliding window needs causal=True"),
    "sink-shape": (lambda: hk.attention(q, k, v, sink=torch.zeros(2)), ValueError, r"sink: expected one value per query head, Hq = 4, got 2"),
    "sink-dtype": (lambda: hk.attention(q, k, v, sink=torch.zeros(4, dtype=torch.int32)), TypeError, r"sink: expected a floating dtype"),
    "scale": (lambda: hk.attention(q, k, v, scale=-1.0), ValueError, r"scale: expected a positive finite number, got -1.0"),
    "backend-name": (lambda: hk.attention(q, k, v, backend="cuda"), ValueError, r"backend: expected one of .* got 'cuda'"),
    "block-size": (lambda: hk.attention_with_block_scores(q, k, v, block_size=48), ValueError, r"block_size: expected a power of two, got 48"),
    "topk-k": (lambda: hk.topk_blocks(torch.rand(1, 2, 8, 1), 0, block_size=64, seqlen_k=8), ValueError, r"k: expected a positive int, got 0"),
    "topk-blocks": (lambda: hk.topk_blocks(torch.rand(1, 2, 8, 3), 1, block_size=64, seqlen_k=8), ValueError, r"block_scores: expected ceil\(seqlen_k / block_size\) blocks = 1, got 3"),
    "indices-dtype": (lambda: hk.sparse_attention(q, k, v, idx.float(), block_size=4), TypeError, r"indices: expected an int32 or int64 tensor"),
    "indices-shape": (lambda: hk.sparse_attention(q, k, v, idx[:, :1], block_size=4), ValueError, r"indices: expected shape \[B, Hkv, Sq, topk\] = \[1, 2, 8, topk\], got \(1, 1, 8, 2\)"),
    "indices-range": (lambda: hk.sparse_attention(q, k, v, idx + 2, block_size=4), ValueError, r"indices: expected block ids in \[-1, 2\) .* got values in \[2, 2\]"),
    "indices-negative": (lambda: hk.sparse_attention(q, k, v, idx - 2, block_size=4), ValueError, r"indices: expected block ids in \[-1, 2\)"),
    "seqlens-range": (lambda: hk.attention_decode(q[:, :, :1], k, v, torch.tensor([9], dtype=torch.int32)), ValueError, r"cache_seqlens: expected lengths in \[Sq=1, cache size 8\] .* got values in \[9, 9\]"),
    "seqlens-shape": (lambda: hk.attention_decode(q[:, :, :1], k, v, torch.tensor([3, 4])), ValueError, r"cache_seqlens: expected one length per sequence, B = 1, got 2"),
    "head-dim-zero": (lambda: hk.attention(q[..., :0], k[..., :0], v), ValueError, r"q: expected head dim Dqk \(q.shape\[3\]\) >= 1, got 0"),
    "v-dim-zero": (lambda: hk.attention(q, k, v[..., :0], backend="tvm"), ValueError, r"v: expected head dim Dv \(v.shape\[3\]\) >= 1, got 0"),
    "decode-v-dim-zero": (lambda: hk.attention_decode(q[:, :, :1], k, v[..., :0], lens), ValueError, r"v_cache: expected head dim Dv \(v_cache.shape\[3\]\) >= 1, got 0"),
    "scale-inf": (lambda: hk.attention(q, k, v, scale=float("inf")), ValueError, r"scale: expected a positive finite number, got inf"),
    "scale-nan": (lambda: hk.sparse_attention(q, k, v, idx, block_size=4, scale=float("nan")), ValueError, r"scale: expected a positive finite number, got nan"),
    "scale-type": (lambda: hk.attention(q, k, v, scale="0.1"), ValueError, r"scale: expected a positive finite number, got '0.1'"),
    "sink-inf": (lambda: hk.attention(q, k, v, sink=torch.tensor([0.0, float("inf"), 0.0, 0.0])), ValueError, r"sink: expected values below \+inf .* got \+inf at heads \[1\]"),
    "sink-inf-decode": (lambda: hk.attention_decode(q[:, :, :1], k, v, lens, sink=torch.full((4,), float("inf"))), ValueError, r"sink: expected values below \+inf"),
    "sink-device": (lambda: hk.attention_decode(q[:, :, :1], k, v, lens, sink=torch.zeros(4, device="meta")), ValueError, r"sink: expected a tensor on cpu .* got meta"),
    "decode-indices-device": (lambda: hk.sparse_attention_decode(q[:, :, :1], k, v, lens, idx[:, :, :1].to("meta"), block_size=4), ValueError, r"indices: expected a tensor on cpu .* got meta"),
    "decode-indices-dtype": (lambda: hk.sparse_attention_decode(q[:, :, :1], k, v, lens, idx[:, :, :1].float(), block_size=4), TypeError, r"indices: expected an int32 or int64 tensor"),
    "decode-indices-shape": (lambda: hk.sparse_attention_decode(q[:, :, :1], k, v, lens, idx, block_size=4), ValueError, r"indices: expected shape \[B, Hkv, Sq, topk\] = \[1, 2, 1, topk\], got \(1, 2, 8, 2\)"),
    "decode-indices-range": (lambda: hk.sparse_attention_decode(q[:, :, :1], k, v, lens, idx[:, :, :1] + 5, block_size=4), ValueError, r"indices: expected block ids in \[-1, 2\)"),
    "decode-seqlens-device": (lambda: hk.attention_decode(q[:, :, :1], k, v, lens.to("meta")), ValueError, r"cache_seqlens: expected a tensor on cpu .* got meta"),
    "decode-seqlens-dtype": (lambda: hk.attention_decode(q[:, :, :1], k, v, lens.float()), TypeError, r"cache_seqlens: expected an int32 or int64 tensor"),
    "topk-scores-dtype": (lambda: hk.topk_blocks(torch.ones(1, 2, 8, 1, dtype=torch.int32), 1, block_size=64, seqlen_k=8), TypeError, r"block_scores: expected a floating dtype"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named(name):
    fn, exc, pattern = CASES[name]
    with pytest.raises(exc, match=pattern):
        fn()


def test_nan_propagates_like_the_reference():
    q2, k2, v2 = qkv(S=10)
    q2[0, 1, 3, 2] = float("nan")
    out = hk.attention(q2, k2, v2, backend="reference")
    assert torch.isnan(out[0, 1, 3]).all()
    assert not torch.isnan(out[0, 0]).any() and not torch.isnan(out[0, 1, :3]).any()
    q2[0, 1, 3, 2] = 0.0
    v2[0, 0, 4, 0] = float("nan")  # a NaN value reaches exactly the queries that see key 4
    out = hk.attention(q2, k2, v2, backend="reference")
    assert torch.isnan(out[0, :2, 4:, 0]).all()
    assert not torch.isnan(out[0, :2, :4]).any() and not torch.isnan(out[0, :2, :, 1:]).any()
    assert not torch.isnan(out[0, 2:]).any()
    k2[0, 1, 0, 0] = float("nan")  # a NaN key poisons the queries of its group that see it
    out = hk.attention(q2, k2, v2, window=3, backend="reference")
    assert torch.isnan(out[0, 2:, :3]).all() and not torch.isnan(out[0, 2:, 3:]).any()
