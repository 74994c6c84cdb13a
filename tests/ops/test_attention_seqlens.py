"""``attention_with_block_scores`` and ``topk_blocks`` over a padded cache with per-sequence
lengths (``cache_seqlens``): every backend (the TVM and Triton kernels take the lengths) against
the reference run on each sequence's own keys, whatever the cache holds past them (NaN here),
and bad lengths named.

Small shapes: Triton runs in its interpreter without a GPU (tests/conftest.py)."""

import pytest
import torch

import hysparse_kernels as hk
from backend_params import ATTENTION, params

# (B, Hq, Hkv, Sq, Sk, D, block_size, causal, lengths)
CASES = {
    "decode-bs16": (3, 4, 2, 1, 50, 16, 16, True, (50, 17, 1)),
    "verify-Sq3-bs8": (3, 2, 1, 3, 40, 16, 8, True, (40, 9, 3)),
    "lens-below-Sq-bs16": (2, 2, 2, 4, 33, 16, 16, True, (33, 2)),
    "noncausal-bs16": (2, 2, 1, 3, 40, 16, 16, False, (23, 40)),
    "empty-sequence-bs8": (2, 2, 1, 1, 24, 16, 8, True, (0, 24)),
    # odd lengths, 0 and Sk in one batch, GQA group 2, a last block cut short
    "odd-0-Sk-gqa-bs16": (4, 4, 2, 1, 45, 16, 16, True, (45, 0, 31, 17)),
    "verify-odd-Sq2-bs16": (3, 4, 2, 2, 37, 8, 16, True, (1, 37, 19)),
    "noncausal-empty-bs16": (3, 2, 2, 2, 35, 8, 16, False, (0, 35, 16)),
}
ARGS = "B,Hq,Hkv,Sq,Sk,D,block_size,causal,lengths"
ALL = [pytest.param(*c, id=name) for name, c in CASES.items()]


def _inputs(B, Hq, Hkv, Sq, Sk, D, lengths, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Sq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Sk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Sk, D, generator=g).to(dtype)
    # what lies past a sequence's length must never matter: fill it with NaN
    for b, n in enumerate(lengths):
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("nan")
    return q, k, v, torch.tensor(lengths, dtype=torch.int32)


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
    q, k, v, lens = _inputs(B, Hq, Hkv, Sq, Sk, D, lengths)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=block_size, causal=causal,
                                                      cache_seqlens=lens, backend=backend)
    assert scores.shape == (B, Hkv, Sq, -(-Sk // block_size))
    for b, (o1, l1, s1) in enumerate(_per_sequence(q, k, v, lengths, block_size, causal)):
        torch.testing.assert_close(out[b:b + 1].double(), o1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b:b + 1].double(), l1, atol=1e-5, rtol=1e-5)
        nb = s1.shape[-1]
        torch.testing.assert_close(scores[b:b + 1, ..., :nb].double(), s1, atol=1e-5, rtol=1e-5)
        assert bool((scores[b, ..., nb:] == 0).all()), "blocks past the sequence's keys score 0"


@pytest.mark.parametrize("backend", params("reference", "triton"))
@pytest.mark.parametrize(ARGS, ALL)
def test_topk_with_lengths_equals_each_sequence_alone(backend, B, Hq, Hkv, Sq, Sk, D, block_size, causal, lengths):
    g = torch.Generator().manual_seed(1)
    nb = -(-Sk // block_size)
    # coarse scores make ties; a NaN and a -inf among them exercise the ordering rules
    scores = torch.randint(0, 4, (B, Hkv, Sq, nb), generator=g).float()
    scores[0, 0, 0, 0] = float("nan")
    scores[-1, -1, -1, 0] = float("-inf")
    lens = torch.tensor(lengths, dtype=torch.int64)
    for topk in (1, 3, nb + 2):
        got = hk.topk_blocks(scores, topk, block_size=block_size, seqlen_k=Sk, cache_seqlens=lens, backend=backend)
        for b, n in enumerate(lengths):
            own = scores[b:b + 1, ..., : -(-n // block_size)]
            if n == 0:  # no keys at all: nothing to select
                assert bool((got[b] == -1).all())
                continue
            want = hk.topk_blocks(own, topk, block_size=block_size, seqlen_k=n, backend="reference")
            assert torch.equal(got[b:b + 1], want), (b, topk, got[b], want)


def test_lengths_equal_to_the_cache_change_nothing():
    q, k, v, _ = _inputs(2, 4, 2, 2, 40, 16, (40, 40))
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

    q, k, v, lens = _inputs(2, 2, 1, 1, 32, 16, (32, 5))
    assert dispatch.accepts("attention_with_block_scores", backend, q, k, v, 16, True, 0.25, lens)
    assert dispatch.accepts("attention_with_block_scores", backend, q, k, v, 16, True, 0.25, None)
    assert not dispatch.accepts("attention_with_block_scores", backend, q, k, v, 4, True, 0.25, lens)


def test_no_gradient_through_lengths():
    q, k, v, lens = _inputs(2, 2, 1, 1, 32, 16, (32, 5))
    q.requires_grad_(True)
    out, _, _ = hk.attention_with_block_scores(q, k.nan_to_num(), v.nan_to_num(), block_size=16, cache_seqlens=lens,
                                               backend="reference")
    with pytest.raises(NotImplementedError, match="cache_seqlens"):
        out.sum().backward()


_q, _k, _v, _lens = _inputs(2, 2, 1, 1, 32, 16, (32, 5))
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
