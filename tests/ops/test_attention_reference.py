"""The reference attention against row-by-row float64 formulas (tests/ops/naive.py)."""

import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import reference

import naive

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")


def _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype=torch.float64):
    return (
        torch.randn(B, Hq, Sq, Dqk, dtype=dtype),
        torch.randn(B, Hkv, Sk, Dqk, dtype=dtype),
        torch.randn(B, Hkv, Sk, Dv, dtype=dtype),
    )


CASES = [
    # B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, sink
    (1, 2, 2, 1, 1, 16, 16, None, False),
    (1, 4, 1, 7, 7, 16, 8, None, True),
    (2, 8, 1, 7, 100, 24, 16, 5, True),
    (1, 8, 2, 100, 100, 16, 16, 16, False),
    (1, 4, 4, 100, 100, 32, 16, 128, True),
    (1, 4, 1, 257, 257, 8, 8, 64, True),
    (1, 2, 2, 33, 257, 12, 8, None, False),
    (1, 4, 2, 20, 10, 16, 16, None, True),  # Sq > Sk: the first queries see no key
]


def _id(c):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, w, s = c
    return f"B{B}-H{Hq}/{Hkv}-Sq{Sq}-Sk{Sk}-D{Dqk}/{Dv}-w{w}-{'sink' if s else 'nosink'}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_attention_matches_formula(case):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, with_sink = case
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv)
    sink = torch.randn(Hq, dtype=torch.float64) if with_sink else None
    out, lse = hk.attention(q, k, v, window=window, sink=sink, return_lse=True, backend="reference")
    exp_out, exp_lse, _ = naive.attention(q, k, v, window=window, sink=sink)
    torch.testing.assert_close(out, exp_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, exp_lse, rtol=1e-10, atol=1e-10)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64


def test_noncausal_and_scale():
    q, k, v = _qkv(1, 2, 1, 9, 13, 8, 8)
    out = hk.attention(q, k, v, causal=False, scale=0.3, backend="reference")
    exp, _, _ = naive.attention(q, k, v, causal=False, scale=0.3)
    torch.testing.assert_close(out, exp, rtol=1e-10, atol=1e-10)


def test_unseen_rows_are_zero_with_lse_minus_inf_or_sink():
    q, k, v = _qkv(1, 2, 1, 6, 3, 8, 8)
    out, lse = hk.attention(q, k, v, return_lse=True, backend="reference")
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    assert torch.isneginf(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 3:]).all()
    sink = torch.tensor([0.5, -1.0], dtype=torch.float64)
    out, lse = hk.attention(q, k, v, sink=sink, return_lse=True, backend="reference")
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    torch.testing.assert_close(lse[0, :, 0], sink)


def test_low_precision_output_dtype_and_lse_float32():
    q, k, v = _qkv(1, 4, 2, 10, 10, 16, 16, dtype=torch.bfloat16)
    out, lse = hk.attention(q, k, v, return_lse=True, backend="reference")
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32


def test_matches_torch_sdpa():
    q, k, v = _qkv(2, 8, 2, 50, 50, 32, 32, dtype=torch.float32)
    out = hk.attention(q, k, v, backend="reference")
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, sdpa, rtol=1e-5, atol=1e-5)


BLOCK_CASES = [(1, 4, 1, 100, 100, 16), (2, 8, 2, 7, 130, 32), (1, 2, 2, 65, 65, 64), (1, 8, 8, 1, 257, 64)]


@pytest.mark.parametrize("B,Hq,Hkv,Sq,Sk,bs", BLOCK_CASES, ids=[f"B{c[0]}-H{c[1]}/{c[2]}-Sq{c[3]}-Sk{c[4]}-bs{c[5]}" for c in BLOCK_CASES])
def test_block_scores_match_definition(B, Hq, Hkv, Sq, Sk, bs):
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, 16, 8)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=bs, backend="reference")
    exp_out, exp_lse, probs = naive.attention(q, k, v)
    torch.testing.assert_close(out, exp_out, rtol=1e-10, atol=1e-10)
    nb = math.ceil(Sk / bs)
    assert scores.shape == (B, Hkv, Sq, nb)
    group = Hq // Hkv
    expected = torch.zeros(B, Hkv, Sq, nb, dtype=torch.float64)
    for b in range(B):
        for g in range(Hkv):
            for i in range(Sq):
                for n in range(nb):
                    expected[b, g, i, n] = probs[b, g * group:(g + 1) * group, i, n * bs:(n + 1) * bs].max()
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)
    pos = torch.arange(Sk - Sq, Sk)
    later = torch.arange(nb)[None, :] > (pos // bs)[:, None]
    assert (scores[..., later] == 0).all(), "blocks after the query's own must score 0"


@pytest.mark.parametrize("Sq,Sk,bs,k", [(100, 100, 16, 3), (100, 100, 16, 20), (5, 130, 64, 2), (1, 257, 64, 16), (30, 20, 8, 2)])
def test_topk_blocks_visible_sorted_and_padded(Sq, Sk, bs, k):
    nb = math.ceil(Sk / bs)
    scores = torch.rand(2, 3, Sq, nb, dtype=torch.float64)
    scores[..., 0] = scores[..., 1]  # a tie: the lower id must come first
    idx = hk.topk_blocks(scores, k, block_size=bs, seqlen_k=Sk, backend="reference")
    assert idx.dtype == torch.int32 and idx.shape == (2, 3, Sq, k)
    for i in range(Sq):
        pos = Sk - Sq + i
        nvis = max(pos // bs + 1, 0)
        row = idx[:, :, i]
        take = min(k, nvis)
        assert (row[..., take:] == -1).all()
        chosen = row[..., :take].long()
        assert (chosen >= 0).all() and (chosen < nvis).all(), "an invisible block was selected"
        vis_scores = scores[:, :, i, :nvis]
        # the chosen ones are the best: sorted descending, ties by ascending id
        expected = sorted(range(nvis), key=lambda n: (-float(vis_scores[0, 0, n]), n))[:take]
        assert chosen[0, 0].tolist() == expected


def test_sparse_with_all_blocks_equals_causal_attention():
    B, Hq, Hkv, S, bs = 1, 4, 2, 100, 16
    q, k, v = _qkv(B, Hq, Hkv, S, S, 16, 8)
    sink = torch.randn(Hq, dtype=torch.float64)
    nb = math.ceil(S / bs)
    idx = torch.arange(nb, dtype=torch.int32).expand(B, Hkv, S, nb).contiguous()
    out = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, backend="reference")
    full = hk.attention(q, k, v, sink=sink, backend="reference")
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("Sq,Sk,bs,k", [(63, 63, 16, 2), (9, 130, 32, 3), (1, 100, 16, 7)])
def test_sparse_equals_masked_attention(Sq, Sk, bs, k):
    B, Hq, Hkv = 2, 4, 2
    q, k_, v = _qkv(B, Hq, Hkv, Sq, Sk, 16, 8)
    sink = torch.randn(Hq, dtype=torch.float64)
    _, _, scores = hk.attention_with_block_scores(q, k_, v, block_size=bs, backend="reference")
    idx = hk.topk_blocks(torch.rand_like(scores), k, block_size=bs, seqlen_k=Sk, backend="reference")
    out, lse = hk.sparse_attention(q, k_, v, idx, block_size=bs, sink=sink, return_lse=True, backend="reference")

    def visible(b, g, i, j):
        return (j // bs) in idx[b, g, i].tolist() and j <= Sk - Sq + i

    exp_out, exp_lse, _ = naive.attention(q, k_, v, sink=sink, visible_fn=visible)
    torch.testing.assert_close(out, exp_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, exp_lse, rtol=1e-10, atol=1e-10)


def test_sparse_duplicate_indices_count_once():
    q, k, v = _qkv(1, 2, 1, 4, 32, 8, 8)
    once = torch.tensor([0, 1, -1], dtype=torch.int32).expand(1, 1, 4, 3).contiguous()
    twice = torch.tensor([0, 1, 1], dtype=torch.int32).expand(1, 1, 4, 3).contiguous()
    torch.testing.assert_close(
        hk.sparse_attention(q, k, v, once, block_size=16, backend="reference"),
        hk.sparse_attention(q, k, v, twice, block_size=16, backend="reference"),
    )


@pytest.mark.parametrize("window,sink", [(None, False), (5, True)], ids=["full", "swa5-sink"])
def test_decode_matches_prefill(window, sink):
    B, Hq, Hkv, Smax, D = 3, 4, 2, 40, 16
    q, k, v = _qkv(B, Hq, Hkv, Smax, Smax, D, D)
    s = torch.randn(Hq, dtype=torch.float64) if sink else None
    lens = torch.tensor([40, 17, 3], dtype=torch.int32)
    for Sq in (1, 3):
        dq = torch.stack([q[b, :, int(lens[b]) - Sq:int(lens[b])] for b in range(B)])
        out = hk.attention_decode(dq, k, v, lens, window=window, sink=s, backend="reference")
        for b in range(B):
            L = int(lens[b])
            pre = hk.attention(q[b:b + 1, :, :L], k[b:b + 1, :, :L], v[b:b + 1, :, :L], window=window, sink=s, backend="reference")
            torch.testing.assert_close(out[b:b + 1], pre[:, :, L - Sq:], rtol=1e-12, atol=1e-12)


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


def test_reference_low_precision_emulation_differs_from_fp32():
    """compute_dtype=bfloat16 is the low-precision baseline the kernel tests measure against."""
    q, k, v = _qkv(1, 2, 1, 64, 64, 32, 32, dtype=torch.bfloat16)
    hi, _ = reference.attention_fwd(q, k, v, None, True, None, 32**-0.5)
    lo, _ = reference.attention_fwd(q, k, v, None, True, None, 32**-0.5, compute_dtype=torch.bfloat16)
    assert hi.dtype == lo.dtype == torch.bfloat16
    assert (hi.double() - lo.double()).abs().max() > 0
