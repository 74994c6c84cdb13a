"""``topk_blocks`` (the HySparse oracle's selection) on every backend against the reference:
visible blocks only, ties to the lower index, ``-1`` pads, per-sequence lengths."""

from __future__ import annotations

import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import reference as R

from attention_helpers import ALL, ARGS, B, BS, HKV, S, _pads_inputs
from backend_params import params
from triton_helpers import inputs


# ---------------------------------------------------------------- reference (float64 formulas)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
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


# ---------------------------------------------------------------- per-sequence lengths (cache_seqlens), every backend


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


# ---------------------------------------------------------------- -1 pads and block sizes, every backend


@pytest.mark.filterwarnings(
    "ignore::hysparse_kernels.BackendFallbackWarning", "ignore::hysparse_kernels.tuned.TunedConfigWarning"
)
@pytest.mark.parametrize("backend", params("reference", "triton"))
def test_topk_with_more_slots_than_blocks_pads(backend):
    _, _, _, _, _, g = _pads_inputs()
    scores = torch.rand(B, HKV, S, -(-S // BS), generator=g)
    idx = hk.topk_blocks(scores, 1000, block_size=BS, seqlen_k=S, backend=backend)
    want = hk.topk_blocks(scores, 5, block_size=BS, seqlen_k=S, backend="reference")
    assert idx.shape[-1] == 1000 and torch.equal(idx[..., :5], want) and bool((idx[..., 5:] == -1).all())


# ---------------------------------------------------------------- Triton (interpreter without a GPU)


# (B, Hkv, Sq, Sk, block_size, k): k above the number of visible blocks included
TOPK_CASES = [
    pytest.param(2, 2, 65, 130, 16, 3, id="Sq65-Sk130-bs16-k3"),
    pytest.param(1, 2, 130, 130, 32, 8, id="S130-bs32-k8-more-than-visible"),
    pytest.param(1, 1, 70, 33, 16, 5, id="Sq70-Sk33-rows-with-no-block"),
    pytest.param(1, 2, 1, 65, 16, 20, id="Sq1-k20-more-than-blocks"),
]


@pytest.mark.parametrize("B,Hkv,Sq,Sk,block_size,k", TOPK_CASES)
def test_topk_blocks_equal_reference(B, Hkv, Sq, Sk, block_size, k):
    n_blocks = -(-Sk // block_size)
    scores = torch.round(torch.rand(B, Hkv, Sq, n_blocks) * 4) / 4  # many ties: lower index must win
    scores[0, 0, -1, 0] = float("nan")
    scores[0, -1, 0, :] = 0.0
    got = hk.topk_blocks(scores, k, block_size=block_size, seqlen_k=Sk, backend="triton")
    want = R.topk_blocks(scores, k, block_size, Sk)
    assert got.dtype == torch.int32
    assert torch.equal(got, want)


def test_topk_of_kernel_block_scores_never_selects_invisible_blocks():
    q, k, v, _ = inputs(1, 4, 2, 65, 130, 32, 32, torch.float32)
    _, _, scores = hk.attention_with_block_scores(q, k, v, block_size=16, backend="triton")
    idx = hk.topk_blocks(scores, 12, block_size=16, seqlen_k=130, backend="triton")
    nvis = R.visible_blocks(65, 130, 16)[None, None, :, None]
    assert torch.all((idx == -1) | ((idx >= 0) & (idx < nvis)))
    assert torch.equal(idx, R.topk_blocks(scores, 12, 16, 130))
