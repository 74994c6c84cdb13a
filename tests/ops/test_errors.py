"""Bad input to the public ops: each error names the argument, what was expected and what
came (values checked inside the ops, so ``torch.compile`` still traces them)."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk

from attention_helpers import _lens_inputs
from backend_params import params
from moe_helpers import REF, make_moe


# ---------------------------------------------------------------- per-sequence lengths (cache_seqlens)


_q, _k, _v, _lens = _lens_inputs(2, 2, 1, 1, 32, 16, (32, 5))
_scores = torch.rand(2, 1, 1, 2)
BAD = {
    "scores-shape": (lambda: hk.attention_with_block_scores(_q, _k, _v, block_size=16, cache_seqlens=_lens[None]),
                     ValueError, r"cache_seqlens: expected a 1-D tensor \[B\], got shape \(1, 2\)"),
    "scores-batch": (lambda: hk.attention_with_block_scores(_q, _k, _v, block_size=16, cache_seqlens=_lens[:1]),
                     ValueError, r"cache_seqlens: expected one length per sequence, B = 2, got 1"),
    "scores-dtype": (lambda: hk.attention_with_block_scores(_q, _k, _v, block_size=16, cache_seqlens=_lens.float()),
                     TypeError, r"cache_seqlens: expected an int32 or int64 tensor, got torch.float32"),
    "scores-device": (lambda: hk.attention_with_block_scores(_q, _k, _v, block_size=16, cache_seqlens=_lens.to("meta")),
                      ValueError, r"cache_seqlens: expected a tensor on cpu .* got meta"),
    "scores-negative": (lambda: hk.attention_with_block_scores(_q, _k, _v, block_size=16,
                                                               cache_seqlens=torch.tensor([-1, 3])),
                        ValueError, r"cache_seqlens: expected lengths in \[0, Sk=32\], got values in \[-1, 3\]"),
    "scores-too-long": (lambda: hk.attention_with_block_scores(_q, _k, _v, block_size=16,
                                                               cache_seqlens=torch.tensor([33, 3])),
                        ValueError, r"cache_seqlens: expected lengths in \[0, Sk=32\], got values in \[3, 33\]"),
    "topk-batch": (lambda: hk.topk_blocks(_scores, 1, block_size=16, seqlen_k=32, cache_seqlens=_lens[:1]),
                   ValueError, r"cache_seqlens: expected one length per sequence, B = 2, got 1"),
    "topk-dtype": (lambda: hk.topk_blocks(_scores, 1, block_size=16, seqlen_k=32, cache_seqlens=_lens.double()),
                   TypeError, r"cache_seqlens: expected an int32 or int64 tensor"),
    "topk-device": (lambda: hk.topk_blocks(_scores, 1, block_size=16, seqlen_k=32, cache_seqlens=_lens.to("meta")),
                    ValueError, r"cache_seqlens: expected a tensor on cpu .* got meta"),
    "topk-too-long": (lambda: hk.topk_blocks(_scores, 1, block_size=16, seqlen_k=32, cache_seqlens=torch.tensor([1, 40])),
                      ValueError, r"cache_seqlens: expected lengths in \[0, Sk=32\], got values in \[1, 40\]"),
    "topk-negative": (lambda: hk.topk_blocks(_scores, 1, block_size=16, seqlen_k=32, cache_seqlens=torch.tensor([-2, 4])),
                      ValueError, r"cache_seqlens: expected lengths in \[0, Sk=32\], got values in \[-2, 4\]"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_lengths_are_named(case):
    fn, exc, pattern = BAD[case]
    with pytest.raises(exc, match=pattern):
        fn()


# ---------------------------------------------------------------- attention


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


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named(name):
    fn, exc, pattern = CASES[name]
    with pytest.raises(exc, match=pattern):
        fn()


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
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


# ---------------------------------------------------------------- MoE ops


def test_bad_inputs_raise_clear_errors():
    logits = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"top_k: expected at most the number of experts E = 8, got 9"):
        hk.route(logits, top_k=9)
    with pytest.raises(ValueError, match=r"n_group: expected a divisor of .* E = 8, got 3"):
        hk.route(logits, top_k=2, n_group=3)
    with pytest.raises(ValueError, match=r"topk_group: expected at most n_group = 2, got 3"):
        hk.route(logits, top_k=2, n_group=2, topk_group=3)
    with pytest.raises(ValueError, match=r"scoring: expected one of"):
        hk.route(logits, top_k=2, scoring="relu")
    with pytest.raises(ValueError, match=r"bias: expected number of experts E .* = 8, got 7"):
        hk.route(logits, top_k=2, bias=torch.zeros(7))
    x, wgu, wd, w, ids = make_moe(4, 4, 2, 8, 4, dtype=torch.float32)
    bad = ids.clone()
    bad[1, 1] = 4
    with pytest.raises(ValueError, match=r"expert_ids: expected ids in \[0, 4\), got values in \[0, 4\]"):
        hk.moe(x, wgu, wd, w, bad, backend=REF)
    with pytest.raises(ValueError, match=r"expert_ids: expected ids in \[0, 4\)"):
        hk.moe_permute(x, bad - 5, 4, backend=REF)
    with pytest.raises(ValueError, match=r"w_gate_up: expected hidden size D \(x.shape\[1\]\) = 8, got 6"):
        hk.moe(x, wgu[:, :, :6], wd, w, ids)
    with pytest.raises(ValueError, match=r"w_down: expected hidden size D \(x.shape\[1\]\) = 8, got 5"):
        hk.moe(x, wgu, wd[:, :5], w, ids)
    with pytest.raises(ValueError, match=r"w_gate_up: expected 2 \* intermediate size .* = 8, got 6"):
        hk.moe(x, wgu[:, :6], wd, w, ids)
    with pytest.raises(ValueError, match=r"weights: expected the shape of expert_ids"):
        hk.moe(x, wgu, wd, w[:, :1], ids)
    with pytest.raises(TypeError, match=r"expert_ids: expected an int32 or int64 tensor, got torch.float32"):
        hk.moe(x, wgu, wd, w, ids.float())
    with pytest.raises(ValueError, match=r"w: expected hidden size K .* = 8, got 5"):
        hk.grouped_gemm(x, torch.randn(4, 3, 5), torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"expert_offsets: expected non-decreasing offsets from 0 to 4"):
        hk.grouped_gemm(x, torch.randn(4, 3, 8), torch.tensor([0, 3, 2, 3, 4]), backend=REF)
    with pytest.raises(ValueError, match=r"rate: expected a positive finite number"):
        hk.update_routing_bias(torch.zeros(4), torch.ones(4), 0)


# ---------------------------------------------------------------- MoE: unpermute rows, scalars, NaN router logits


def _permuted(T=5, E=4, k=2, D=6):
    x = torch.randn(T, D)
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32)
    xs, _, inv = hk.moe_permute(x, ids, E)
    return xs, inv, torch.rand(T, k)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize("bad,shown", [(-1, r"\[-1, 9\]"), (10, r"\[0, 10\]")], ids=["negative", "past-the-end"])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_unpermute_rejects_rows_outside_y_sorted(backend, bad, shown):
    xs, inv, w = _permuted()
    inv = inv.clone()
    inv[2, 1] = bad  # -1 would read the last row, 10 would fail deep inside indexing
    with pytest.raises(ValueError, match=r"inverse: expected rows of y_sorted in \[0, 10\), got values in " + shown):
        hk.moe_unpermute(xs, inv, w, backend=backend)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_unpermute_check_compiles_and_fires_in_a_compiled_graph():
    xs, inv, w = _permuted()

    def f(xs, inv, w):
        return hk.moe_unpermute(xs * 2, inv, w)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(xs, inv, w), f(xs, inv, w), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"inverse: expected rows of y_sorted"):
        compiled(xs, inv - 1, w)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda l: hk.route(l, top_k=2, scaling=float("nan")), ValueError, r"scaling: expected a finite number, got nan"),
        (lambda l: hk.route(l, top_k=2, scaling=float("-inf")), ValueError, r"scaling: expected a finite number, got -inf"),
        (lambda l: hk.route(l, top_k=2, scaling="2"), TypeError, r"scaling: expected a number, got str"),
        (lambda l: hk.route(l, top_k=2, bias=torch.zeros(8, device="meta")), ValueError,
         r"bias: expected a tensor on cpu \(as router_logits\), got meta"),
        (lambda l: hk.update_routing_bias(torch.zeros(8), torch.ones(8), float("inf")), ValueError,
         r"rate: expected a positive finite number, got inf"),
        (lambda l: hk.update_routing_bias(torch.zeros(8), torch.ones(8), float("nan")), ValueError,
         r"rate: expected a positive finite number, got nan"),
        (lambda l: hk.update_routing_bias(torch.zeros(8), torch.ones(8, dtype=torch.bool), 0.1), TypeError,
         r"counts: expected an integer or floating dtype, got torch.bool"),
        (lambda l: hk.update_routing_bias(torch.zeros(8), torch.ones(8, device="meta"), 0.1), ValueError,
         r"counts: expected a tensor on cpu \(as bias\), got meta"),
        (lambda l: hk.moe_unpermute(torch.randn(4, 3), torch.zeros(2, 2, dtype=torch.int64, device="meta"),
                                    torch.rand(2, 2)), ValueError, r"inverse: expected a tensor on cpu"),
        (lambda l: hk.moe_unpermute(torch.randn(4, 3), torch.zeros(2, 2, dtype=torch.int64), torch.rand(2, 2).double()
                                    .to("meta")), ValueError, r"weights: expected a tensor on cpu"),
    ],
    ids=["scaling-nan", "scaling-inf", "scaling-type", "bias-device", "rate-inf", "rate-nan", "counts-dtype",
         "counts-device", "inverse-device", "weights-device"],
)
def test_bad_scalars_and_tensors_are_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(torch.randn(4, 8))


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (the Triton interpreter) on NaN
@pytest.mark.parametrize("scoring,n_group", [("softmax", 1), ("softmax", 4), ("sigmoid", 1), ("sigmoid", 4)])
@pytest.mark.parametrize("backend", params("reference", "triton"))
def test_nan_logits_rank_first_with_nan_weights(backend, scoring, n_group):
    """A token whose logits hold NaN: valid ids (NaN experts first, ties to the lower id), NaN
    weights (all k with renormalisation), exactly the reference's ids on every backend."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 16, generator=g)
    logits[1] = float("nan")  # every logit
    logits[2, 3] = float("nan")
    logits[3, [5, 9]] = float("nan")
    bias = torch.linspace(-0.3, 0.3, 16)
    kw = dict(top_k=4, scoring=scoring, bias=bias, n_group=n_group, topk_group=2 if n_group > 1 else 1)
    w, ids = hk.route(logits, backend=backend, **kw)
    w_ref, ids_ref = hk.route(logits, backend="reference", **kw)
    assert torch.equal(ids, ids_ref)
    assert ids.min() >= 0 and ids.max() < 16
    assert ids[1].tolist() == [0, 1, 2, 3]
    if scoring == "sigmoid":  # one NaN score per NaN logit (softmax spreads it over the token)
        assert ids[2, 0] == 3 and ids[3, :2].tolist() == [5, 9]
    assert torch.isnan(w[1:4]).all()  # renormalised: one NaN weight makes the token's k weights NaN
    assert torch.equal(torch.isnan(w), torch.isnan(w_ref))
    torch.testing.assert_close(w[~torch.isnan(w)], w_ref[~torch.isnan(w_ref)], rtol=1e-6, atol=1e-7)
