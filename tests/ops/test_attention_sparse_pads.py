"""``-1`` pads and repeats in HySparse index lists cost nothing and change nothing, and every
power-of-two block size runs on every backend.

Lists longer than the number of blocks are compacted before any backend runs (so a list of
100,000 mostly ``-1`` entries costs what its distinct blocks cost: ``bench/attention_cpu.py``,
"sparse pads"); here the results are checked, not the time.
"""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk
from backend_params import ATTENTION, params
from hysparse_kernels.ops.attention import ops
from hysparse_kernels.ops.attention import reference as R
from hysparse_kernels.testing import assert_close_to_reference

pytestmark = pytest.mark.filterwarnings(
    "ignore::hysparse_kernels.BackendFallbackWarning", "ignore::hysparse_kernels.tuned.TunedConfigWarning"
)

B, HQ, HKV, S, D, BS, K = 1, 4, 2, 70, 16, 16, 3  # 5 blocks


def _padded(idx, width, g):
    """``idx`` scattered into ``width`` entries of -1 pads, with each block listed twice."""
    out = torch.full((*idx.shape[:-1], width), -1, dtype=idx.dtype)
    slots = torch.randperm(width, generator=g)[: 2 * idx.shape[-1]]
    out[..., slots[: idx.shape[-1]]] = idx
    out[..., slots[idx.shape[-1]:]] = idx
    return out


def _inputs(sq=S):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, HQ, sq, D, generator=g)
    k, v = torch.randn(B, HKV, S, D, generator=g), torch.randn(B, HKV, S, D, generator=g)
    sink = torch.randn(HQ, generator=g)
    scores = torch.rand(B, HKV, sq, -(-S // BS), generator=g)
    idx = hk.topk_blocks(scores, K, block_size=BS, seqlen_k=S, backend="reference")
    return q, k, v, sink, idx, g


def test_compact_indices_keeps_the_selection():
    _, _, _, _, idx, g = _inputs()
    wide = _padded(idx, 2000, g)
    small = ops.compact_indices(wide, -(-S // BS))
    assert small.shape == (*idx.shape[:-1], -(-S // BS)) and small.dtype == idx.dtype
    assert torch.equal(R.sparse_mask(small, S, S, BS), R.sparse_mask(idx, S, S, BS))
    valid = small[small >= 0]
    assert valid.numel() == (idx >= 0).sum()  # each block once, pads at the end
    assert ops.compact_indices(idx, -(-S // BS)) is idx  # short lists are left alone


@pytest.mark.parametrize("backend", ATTENTION)
def test_long_padded_lists_give_the_short_lists_result(backend):
    q, k, v, sink, idx, g = _inputs()
    wide = _padded(idx, 3000, g)  # 3000 entries for 5 blocks
    want = R.sparse_attention_fwd(*(t.double() for t in (q, k, v)), idx, BS, sink.double(), D**-0.5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    out, lse = hk.sparse_attention(*leaves[:3], wide, block_size=BS, sink=leaves[3], return_lse=True, backend=backend)
    assert_close_to_reference(out.detach(), want[0], atol=2e-5, name="out")
    assert_close_to_reference(lse.detach(), want[1], atol=2e-5, name="lse")
    (out.square().sum() + lse.sum()).backward()
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v, sink)]
    o, l = R.sparse_attention_fwd(*ref_leaves[:3], idx, BS, ref_leaves[3], D**-0.5)
    (o.square().sum() + l.sum()).backward()
    for name, a, b in zip("q k v sink".split(), leaves, ref_leaves):
        # dsink sums over every query of a head (as in the Triton backward tests: atol x B * Sq)
        assert_close_to_reference(a.grad, b.grad, atol=2e-5 * (B * S if name == "sink" else 1), name=f"d{name}")
    # decode over a padded cache: the same lists for the last 2 queries
    lens = torch.tensor([S], dtype=torch.int32)
    got = hk.sparse_attention_decode(q[:, :, -2:], k, v, lens, wide[:, :, -2:], block_size=BS, sink=sink,
                                     return_lse=True, backend=backend)
    want = R.sparse_attention_decode(*(t.double() for t in (q[:, :, -2:], k, v)), lens, idx[:, :, -2:], BS,
                                     sink.double(), D**-0.5)
    assert_close_to_reference(got[0], want[0], atol=2e-5, name="decode out")


@pytest.mark.parametrize("backend", params("reference", "triton"))
def test_topk_with_more_slots_than_blocks_pads(backend):
    _, _, _, _, _, g = _inputs()
    scores = torch.rand(B, HKV, S, -(-S // BS), generator=g)
    idx = hk.topk_blocks(scores, 1000, block_size=BS, seqlen_k=S, backend=backend)
    want = hk.topk_blocks(scores, 5, block_size=BS, seqlen_k=S, backend="reference")
    assert idx.shape[-1] == 1000 and torch.equal(idx[..., :5], want) and bool((idx[..., 5:] == -1).all())


@pytest.mark.parametrize("block_size", [1, 2, 8])
@pytest.mark.parametrize("backend", ATTENTION)
def test_every_power_of_two_block_size_runs(backend, block_size):
    """README: block_size is any power of two; below a backend's smallest kernel tile (TVM 8,
    Triton 16) the reference path runs."""
    q, k, v, sink, _, g = _inputs(sq=20)
    k, v = k[:, :, :20].contiguous(), v[:, :, :20].contiguous()
    scale = D**-0.5
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=block_size, backend=backend)
    want = R.attention_with_block_scores(q.double(), k.double(), v.double(), block_size, True, scale)
    for name, a, b in zip(("out", "lse", "scores"), (out, lse, scores), want):
        assert_close_to_reference(a, b, atol=2e-5, name=name)
    idx = hk.topk_blocks(scores, 3, block_size=block_size, seqlen_k=20)
    out = hk.sparse_attention(q, k, v, idx, block_size=block_size, sink=sink, backend=backend)
    want = R.sparse_attention_fwd(q.double(), k.double(), v.double(), idx, block_size, sink.double(), scale)
    assert_close_to_reference(out, want[0], atol=2e-5, name="sparse out")
