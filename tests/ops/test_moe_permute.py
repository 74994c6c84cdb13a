"""``moe_permute`` / ``moe_unpermute`` (tokens sorted by expert and back): round trips and
gradients."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk

from moe_helpers import REF


# ---------------------------------------------------------------- reference


PERM_CASES = [(1, 4, 2, 3), (13, 8, 2, 5), (20, 16, 4, 7), (6, 64, 8, 3)]


def _ids(T, E, k, how):
    if how == "one_expert":
        return torch.full((T, k), E - 1, dtype=torch.int32)
    return torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32)


@pytest.mark.parametrize("T,E,k,D", PERM_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("how", ["random", "one_expert"])
def test_permute_unpermute_round_trip(T, E, k, D, how):
    if how == "one_expert" and k > 1:
        k = 1  # distinct experts per token: all tokens to one expert means k = 1
    x = torch.randn(T, D, dtype=torch.float64)
    ids = _ids(T, E, k, how)
    xs, off, inv = hk.moe_permute(x, ids, E, backend=REF)
    assert xs.shape == (T * k, D) and off.shape == (E + 1,) and inv.shape == (T, k)
    counts = torch.bincount(ids.reshape(-1).long(), minlength=E)
    assert torch.equal(off[1:] - off[:-1], counts)  # empty experts: zero-length segments
    for j in range(k):
        assert torch.equal(xs[inv[:, j]], x)  # every token back in place
    seg_expert = torch.repeat_interleave(torch.arange(E), counts)
    assert torch.equal(seg_expert, ids.reshape(-1).long()[torch.argsort(inv.reshape(-1))])
    # Unpermute with weights: the weighted sum of each token's copies.
    w = torch.rand(T, k, dtype=torch.float64)
    out = hk.moe_unpermute(xs * 2.0, inv, w, backend=REF)
    torch.testing.assert_close(out, 2.0 * w.sum(1, keepdim=True) * x, rtol=1e-12, atol=1e-12)


def test_gradcheck_permute_unpermute_and_route():
    ids = torch.tensor([[0, 2], [1, 2], [2, 0]], dtype=torch.int32)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)

    def f(x, w):
        xs, _, inv = hk.moe_permute(x, ids, 3, backend=REF)
        return hk.moe_unpermute(xs.sin(), inv, w, backend=REF)

    assert torch.autograd.gradcheck(f, (x, w))
    logits = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    for scoring, rn in (("softmax", True), ("softmax", False), ("sigmoid", True), ("sigmoid", False)):
        assert torch.autograd.gradcheck(
            lambda l: hk.route(l, top_k=3, scoring=scoring, renormalize=rn, scaling=1.5, backend=REF)[0], (logits,)
        )
