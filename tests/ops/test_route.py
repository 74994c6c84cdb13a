"""``route`` (top-k routing with group limits, a selection bias, softmax / sigmoid scoring) on
every backend against hand-written float64 formulas and worked examples."""

from __future__ import annotations

import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import ir
from hysparse_kernels.backends import status
from hysparse_kernels.models.moe import MoEBlock

from backend_params import requires
from moe_helpers import DEV, REF, TRI


# ---------------------------------------------------------------- reference


def naive_route(logits, top_k, scoring, bias, n_group, topk_group, renormalize, scaling):
    """One token at a time, in Python floats (float64): the definition, spelled out."""
    T, E = logits.shape
    W = torch.zeros(T, top_k, dtype=torch.float64)
    I = torch.zeros(T, top_k, dtype=torch.int64)
    for t in range(T):
        row = [float(v) for v in logits[t]]
        if scoring == "softmax":
            m = max(row)
            z = sum(math.exp(v - m) for v in row)
            s = [math.exp(v - m) / z for v in row]
        else:
            s = [1.0 / (1.0 + math.exp(-v)) for v in row]
        c = [s[e] + (float(bias[e]) if bias is not None else 0.0) for e in range(E)]
        allowed = set(range(E))
        if n_group > 1:
            per = E // n_group
            gscore = []
            for g in range(n_group):
                best = sorted(c[g * per:(g + 1) * per], reverse=True)[:2 if bias is not None else 1]
                gscore.append((sum(best), g))  # with a bias the two best, without it the best
            keep = sorted(gscore, key=lambda p: (-p[0], p[1]))[:topk_group]
            allowed = {g * per + i for _, g in keep for i in range(per)}
        chosen = sorted(allowed, key=lambda e: (-c[e], e))[:top_k]
        w = [s[e] for e in chosen]
        if renormalize:
            tot = sum(w)
            w = [v / tot for v in w]
        W[t] = torch.tensor([v * scaling for v in w], dtype=torch.float64)
        I[t] = torch.tensor(chosen)
    return W, I


ROUTE_CASES = [
    # (T, E, top_k, scoring, with_bias, n_group, topk_group, renormalize, scaling)
    (7, 8, 2, "softmax", False, 1, 1, False, 1.0),
    (7, 8, 2, "softmax", False, 1, 1, True, 1.0),
    (5, 16, 4, "sigmoid", True, 1, 1, True, 2.5),
    (9, 16, 4, "sigmoid", True, 4, 2, True, 2.5),
    (9, 32, 8, "sigmoid", True, 8, 4, True, 1.0),
    (6, 12, 3, "softmax", False, 3, 2, False, 1.5),
    (1, 64, 8, "sigmoid", False, 8, 4, True, 1.0),
    (4, 6, 6, "softmax", True, 1, 1, True, 1.0),
]


def _route_id(c):
    T, E, k, scoring, b, ng, tg, rn, sc = c
    return f"T{T}-E{E}-k{k}-{scoring}{'-bias' if b else ''}-g{ng}of{tg}{'-renorm' if rn else ''}-s{sc}"


@pytest.mark.parametrize("case", ROUTE_CASES, ids=_route_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_route_matches_formula(case, dtype):
    T, E, k, scoring, with_bias, ng, tg, rn, sc = case
    logits = torch.randn(T, E, dtype=torch.float64)
    bias = torch.randn(E, dtype=torch.float64) * 0.3 if with_bias else None
    w, ids = hk.route(logits.to(dtype), top_k=k, scoring=scoring, bias=None if bias is None else bias.to(dtype),
                      n_group=ng, topk_group=tg, renormalize=rn, scaling=sc, backend=REF)
    # Formula on the same rounded inputs the op saw.
    w_ref, i_ref = naive_route(logits.to(dtype).double(), k, scoring,
                               None if bias is None else bias.to(dtype).double(), ng, tg, rn, sc)
    assert ids.dtype == torch.int32 and w.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(ids.long(), i_ref)
    torch.testing.assert_close(w.double(), w_ref, rtol=0, atol=1e-12 if dtype == torch.float64 else 2e-6)


def test_route_ties_go_to_lower_id():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 3.0]], dtype=torch.float64)
    _, ids = hk.route(logits, top_k=3, backend=REF)
    assert ids.tolist() == [[1, 2, 4]]
    # Groups {0,1}, {2,3}, {4,5} scored by their two best (a bias, zero here): groups 2 and 0 win;
    # inside them 1, 4, 5 tie -> 1, 4.
    _, ids = hk.route(logits, top_k=2, bias=torch.zeros(6, dtype=torch.float64), n_group=3, topk_group=2, backend=REF)
    assert ids.tolist() == [[1, 4]]
    # Without a bias, by their best: all three tie, groups 0 and 1 win; inside them 1, 2 (tied) -> 1, 2.
    _, ids = hk.route(logits, top_k=2, n_group=3, topk_group=2, backend=REF)
    assert ids.tolist() == [[1, 2]]
    # Tied groups: {0,1} and {2,3} score the same; the lower group wins.
    _, ids = hk.route(torch.tensor([[3.0, 3.0, 3.0, 3.0, 0.0, 0.0]]), top_k=2, n_group=3, topk_group=1, backend=REF)
    assert ids.tolist() == [[0, 1]]


def test_route_bias_moves_selection_not_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0], dtype=torch.float64)
    w0, i0 = hk.route(logits, top_k=2, scoring="sigmoid", renormalize=False, backend=REF)
    w1, i1 = hk.route(logits, top_k=2, scoring="sigmoid", bias=bias, renormalize=False, backend=REF)
    assert i0.tolist() == [[0, 1]] and i1.tolist() == [[3, 0]]
    s = torch.sigmoid(logits[0])
    torch.testing.assert_close(w1[0], torch.stack([s[3], s[0]]), rtol=0, atol=1e-15)  # unbiased scores


def test_route_group_score_is_sum_of_top2_with_a_bias_and_the_max_without():
    # Group 0 has one very high expert; group 1 two moderately high ones: the top-2 sum (with a
    # bias) picks group 1, the best score (without) group 0.
    logits = torch.tensor([[4.0, -4.0, -4.0, -4.0, 1.5, 1.5, -4.0, -4.0]], dtype=torch.float64)
    bias = torch.zeros(8, dtype=torch.float64)
    _, ids = hk.route(logits, top_k=2, scoring="sigmoid", bias=bias, n_group=2, topk_group=1, backend=REF)
    assert sorted(ids[0].tolist()) == [4, 5]
    _, ids = hk.route(logits, top_k=2, scoring="sigmoid", n_group=2, topk_group=1, backend=REF)
    assert sorted(ids[0].tolist()) == [0, 1]


# ---------------------------------------------------------------- group-limited routing, worked by hand


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


# ---------------------------------------------------------------- Triton


ROUTES = [
    dict(top_k=2, scoring="softmax"),
    dict(top_k=3, scoring="softmax", renormalize=False, scaling=1.5),
    dict(top_k=4, scoring="sigmoid", bias=True, scaling=2.5),
    dict(top_k=4, scoring="sigmoid", bias=True, n_group=4, topk_group=2),
    dict(top_k=8, scoring="sigmoid", bias=True, n_group=8, topk_group=4),
]


@requires("triton", usable=True)
@pytest.mark.parametrize("kw", ROUTES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
@pytest.mark.parametrize("T,E", [(1, 16), (37, 32)], ids=["T1-E16", "T37-E32"])
def test_route_triton_matches_reference(kw, T, E):
    kw = dict(kw)
    logits = torch.randn(T, E)
    bias = torch.randn(E) * 0.3 if kw.pop("bias", False) else None
    w, ids = hk.route(logits.to(DEV), bias=None if bias is None else bias.to(DEV), backend=TRI, **kw)
    w_ref, ids_ref = hk.route(logits, bias=bias, backend="reference", **kw)
    assert torch.equal(ids.cpu(), ids_ref)
    torch.testing.assert_close(w.cpu(), w_ref, rtol=1e-6, atol=1e-6)


@requires("triton", usable=True)
def test_route_triton_ties_go_to_lower_id():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 3.0, 0.0, 0.0]])
    _, ids = hk.route(logits.to(DEV), top_k=3, backend=TRI)
    assert ids.cpu().tolist() == [[1, 2, 4]]
