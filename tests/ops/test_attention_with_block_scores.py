"""``attention_with_block_scores`` (attention plus HySparse block scores, with or without the
per-sequence lengths ``cache_seqlens`` of a padded cache) on every backend against the reference."""

from __future__ import annotations

import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import reference as ref

from attention_helpers import ALL, ARGS, _inputs, _lens_inputs, _qkv
from backend_params import ATTENTION, params, requires
from triton_helpers import DTYPES, DTYPE_IDS, R, check, f64, inputs, lowp
from tvm_helpers import _check, _tvm_qkv
import naive


# ---------------------------------------------------------------- reference (float64 formulas)


BLOCK_CASES = [(1, 4, 1, 100, 100, 16), (2, 8, 2, 7, 130, 32), (1, 2, 2, 65, 65, 64), (1, 8, 8, 1, 257, 64)]


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
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


# ---------------------------------------------------------------- per-sequence lengths (cache_seqlens), every backend


def _per_sequence(q, k, v, lengths, block_size, causal):
    """The reference on each sequence's own keys: (out, lse, scores of its own blocks) per row."""
    rows = []
    for b, n in enumerate(lengths):
        rows.append(hk.attention_with_block_scores(
            q[b:b + 1].double(), k[b:b + 1, :, :n].double(), v[b:b + 1, :, :n].double(),
            block_size=block_size, causal=causal, backend="reference"))
    return rows


@pytest.mark.parametrize("backend", ATTENTION)
@pytest.mark.parametrize(ARGS, ALL)
def test_block_scores_with_lengths_equal_each_sequence_alone(backend, B, Hq, Hkv, Sq, Sk, D, block_size, causal, lengths):
    q, k, v, lens = _lens_inputs(B, Hq, Hkv, Sq, Sk, D, lengths)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=block_size, causal=causal,
                                                      cache_seqlens=lens, backend=backend)
    assert scores.shape == (B, Hkv, Sq, -(-Sk // block_size))
    for b, (o1, l1, s1) in enumerate(_per_sequence(q, k, v, lengths, block_size, causal)):
        torch.testing.assert_close(out[b:b + 1].double(), o1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b:b + 1].double(), l1, atol=1e-5, rtol=1e-5)
        nb = s1.shape[-1]
        torch.testing.assert_close(scores[b:b + 1, ..., :nb].double(), s1, atol=1e-5, rtol=1e-5)
        assert bool((scores[b, ..., nb:] == 0).all()), "blocks past the sequence's keys score 0"


def test_lengths_equal_to_the_cache_change_nothing():
    q, k, v, _ = _lens_inputs(2, 4, 2, 2, 40, 16, (40, 40))
    full = hk.attention_with_block_scores(q, k, v, block_size=16, backend="reference")
    lens = torch.tensor([40, 40])
    got = hk.attention_with_block_scores(q, k, v, block_size=16, cache_seqlens=lens, backend="reference")
    for a, b in zip(got, full):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    idx = hk.topk_blocks(full[2], 2, block_size=16, seqlen_k=40, backend="reference")
    assert torch.equal(hk.topk_blocks(full[2], 2, block_size=16, seqlen_k=40, cache_seqlens=lens), idx)


@pytest.mark.parametrize("backend", params("tvm", "triton"))
def test_kernels_take_lengths(backend):
    """The compiled kernels run ragged batches themselves (no fallback to the reference), blocks
    too small for a kernel's tile still go to the next backend."""
    from hysparse_kernels import dispatch

    q, k, v, lens = _lens_inputs(2, 2, 1, 1, 32, 16, (32, 5))
    assert dispatch.accepts("attention_with_block_scores", backend, q, k, v, 16, True, 0.25, lens)
    assert dispatch.accepts("attention_with_block_scores", backend, q, k, v, 16, True, 0.25, None)
    assert not dispatch.accepts("attention_with_block_scores", backend, q, k, v, 4, True, 0.25, lens)


def test_no_gradient_through_lengths():
    q, k, v, lens = _lens_inputs(2, 2, 1, 1, 32, 16, (32, 5))
    q.requires_grad_(True)
    out, _, _ = hk.attention_with_block_scores(q, k.nan_to_num(), v.nan_to_num(), block_size=16, cache_seqlens=lens,
                                               backend="reference")
    with pytest.raises(NotImplementedError, match="cache_seqlens"):
        out.sum().backward()


# ---------------------------------------------------------------- registered op (reference): gradcheck


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_gradcheck_block_scores_out_and_lse():
    q, k, v = _inputs(Sq=7, Sk=7, grad=True)
    fn = lambda q, k, v: hk.attention_with_block_scores(q, k, v, block_size=4, backend="reference")[:2]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


# ---------------------------------------------------------------- TVM (CPU, llvm)


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [(1, 8, 2, 100, 100, 64, 64, 64), (1, 4, 1, 37, 130, 64, 32, 16), (2, 4, 4, 65, 65, 32, 32, 32),
                                  # decode and verification steps (the decode kernel, cache read in place)
                                  (2, 8, 2, 1, 300, 64, 32, 64), (1, 4, 1, 5, 130, 32, 64, 16), (1, 6, 3, 8, 97, 64, 64, 32)],
                         ids=["S100-bs64", "S37x130-bs16", "B2-S65-bs32", "decode-Sk300-bs64", "verify5-Sk130-bs16",
                              "verify8-Sk97-bs32"])
def test_tvm_block_scores_match_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, bs = case
    q, k, v = _tvm_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    got = hk.attention_with_block_scores(q, k, v, block_size=bs, backend="tvm")
    _check("block_scores", got, ref.attention_with_block_scores, (q, k, v, bs, True, Dqk**-0.5), dtype)


# ---------------------------------------------------------------- Triton (interpreter without a GPU)


# (B, Hq, Hkv, Sq, Sk, D, causal, block_size)
SCORE_CASES = [
    pytest.param(1, 4, 1, 65, 130, 64, True, 32, id="B1-H4kv1-Sq65-Sk130-bs32"),
    pytest.param(1, 2, 2, 63, 63, 32, True, 16, id="B1-H2-S63-bs16"),
    pytest.param(1, 2, 1, 33, 70, 32, False, 16, id="B1-H2-Sq33-Sk70-noncausal-bs16"),
    pytest.param(2, 8, 2, 130, 130, 64, True, 64, id="B2-H8kv2-S130-bs64", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("dtype,atol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B,Hq,Hkv,Sq,Sk,D,causal,block_size", SCORE_CASES)
def test_block_scores_match_reference(B, Hq, Hkv, Sq, Sk, D, causal, block_size, dtype, atol):
    q, k, v, _ = inputs(B, Hq, Hkv, Sq, Sk, D, D, dtype)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=block_size, causal=causal, backend="triton")
    assert scores.shape == (B, Hkv, Sq, -(-Sk // block_size)) and scores.dtype == torch.float32
    ref = R.attention_with_block_scores(*f64(q, k, v), block_size, causal, D**-0.5)
    low = R.attention_with_block_scores(q, k, v, block_size, causal, D**-0.5, compute_dtype=lowp(dtype))
    for name, got, r, lo in zip(("out", "lse", "block_scores"), (out, lse, scores), ref, low):
        check(got, r, lo, dtype, atol, name)
    if causal:  # blocks after the query's own block are invisible: exactly zero
        nvis = R.visible_blocks(Sq, Sk, block_size)
        invisible = torch.arange(scores.shape[-1])[None, :] >= nvis[:, None]
        assert torch.all(scores[..., invisible] == 0)


def test_block_size_below_16_runs_the_reference_path():
    """Any power of two is a valid block (README); the kernel's tile needs 16, smaller blocks run
    the reference path, and the launcher itself still refuses them."""
    q, k, v, _ = inputs(1, 2, 2, 8, 8, 16, 16, torch.float32)
    got = hk.attention_with_block_scores(q, k, v, block_size=8, backend="triton")
    want = R.attention_with_block_scores(q, k, v, 8, True, 16**-0.5)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    from hysparse_kernels.ops.attention.triton import attention as fwd

    with pytest.raises(ValueError, match="block_size: .* >= 16, got 8"):
        fwd._launch_fwd(q, k, v, None, True, None, 0.25, block_size=8)
