"""Group-limited routing worked by hand: a group is scored by its best score without a selection
bias (DeepSeek-V2 ``group_limited_greedy``, DeepSeek-V3's gate without bias, vLLM ``grouped_topk``)
and by the sum of its two best biased scores with one (DeepSeek-V3 ``noaux_tc``); on every backend
that routes, and through the zoo's MoE block with ``norm_topk_prob``."""

import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import ir
from hysparse_kernels.backends import status
from hysparse_kernels.models.moe import MoEBlock

BACKENDS = ["reference"] + (["triton"] if status("triton").usable else [])

# Sigmoid scores chosen by hand: logit ln(p / (1 - p)) has sigmoid p.
SCORES = [0.9, 0.1,   # group 0: best 0.9, two best 1.0
          0.7, 0.6,   # group 1: best 0.7, two best 1.3
          0.8, 0.4,   # group 2: best 0.8, two best 1.2
          0.3, 0.25]  # group 3: best 0.3, two best 0.55
LOGITS = torch.tensor([[math.log(p / (1 - p)) for p in SCORES]], dtype=torch.float64)


def route(backend, **kw):
    return hk.route(LOGITS, top_k=2, scoring="sigmoid", n_group=4, topk_group=2, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_bias_groups_are_scored_by_their_best(backend):
    # Best scores 0.9, 0.7, 0.8, 0.3: groups 0 and 2 are eligible, {0.9, 0.1, 0.8, 0.4};
    # the top 2 are experts 0 (0.9) and 4 (0.8), weights 0.9 / 1.7 and 0.8 / 1.7.
    w, ids = route(backend)
    assert ids.tolist() == [[0, 4]]
    torch.testing.assert_close(w, torch.tensor([[0.9 / 1.7, 0.8 / 1.7]], dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_a_bias_groups_are_scored_by_their_two_best(backend):
    # Two-best sums 1.0, 1.3, 1.2, 0.55 (a zero bias moves nothing else): groups 1 and 2,
    # {0.7, 0.6, 0.8, 0.4}; the top 2 are experts 4 (0.8) and 2 (0.7), weights 0.8 / 1.5, 0.7 / 1.5.
    w, ids = route(backend, bias=torch.zeros(8, dtype=torch.float64))
    assert ids.tolist() == [[4, 2]]
    torch.testing.assert_close(w, torch.tensor([[0.8 / 1.5, 0.7 / 1.5]], dtype=torch.float64), rtol=0, atol=1e-6)
    # A bias of +0.5 on expert 7 lifts group 3 to 0.3 + 0.75 = 1.05 > group 0's 1.0, not past
    # groups 1 and 2: same experts.
    bias = torch.zeros(8, dtype=torch.float64)
    bias[7] = 0.5
    assert route(backend, bias=bias)[1].tolist() == [[4, 2]]
    # +0.8 makes it 0.3 + 1.05 = 1.35: groups 3 and 1, experts 7 (1.05 biased) and 2 (0.7); the
    # weights are the unbiased scores 0.25 and 0.7 renormalised.
    bias[7] = 0.8
    w, ids = route(backend, bias=bias)
    assert ids.tolist() == [[7, 2]]
    torch.testing.assert_close(w, torch.tensor([[0.25 / 0.95, 0.7 / 0.95]], dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("renormalize", [True, False])
def test_moe_block_routes_as_its_spec_says(renormalize, monkeypatch):
    """The zoo's MoE block: no bias -> best-score groups; ``renormalize`` (norm_topk_prob) decides
    whether the two weights are divided by their sum (2.5 is the routed scaling)."""
    spec = ir.MoE(8, 2, 4, scoring="sigmoid", n_group=4, topk_group=2, routed_scaling=2.5, renormalize=renormalize)
    block = MoEBlock(spec, hidden=8).double()
    with torch.no_grad():
        block.gate.weight.copy_(torch.eye(8, dtype=torch.float64))  # router logits = the input itself
    x = LOGITS.view(1, 1, 8)
    seen = {}
    original = hk.moe

    def spy(x_, wgu, wd, w, ids, **kw):
        seen["w"], seen["ids"] = w, ids
        return original(x_, wgu, wd, w, ids, **kw)

    monkeypatch.setattr(hk, "moe", spy)
    block(x)
    assert seen["ids"].tolist() == [[0, 4]]
    expected = [0.9 / 1.7, 0.8 / 1.7] if renormalize else [0.9, 0.8]
    torch.testing.assert_close(seen["w"], 2.5 * torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-12)
