"""MoE ops on the reference backend: routing against a hand-written float64 formula, permutation
round trips, grouped GEMM and the expert MLP against naive formulas, gradients, opcheck,
torch.compile, the bias update and the bad-input errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import hysparse_kernels as hk
from hysparse_kernels.ops.moe import ops

REF = "reference"


# ---------------------------------------------------------------- routing: a per-token formula


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


# ---------------------------------------------------------------- permutation


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


def test_expert_load_counts():
    ids = torch.tensor([[0, 2], [2, 3], [2, 0]], dtype=torch.int32)
    assert hk.expert_load(ids, 5).tolist() == [2, 0, 3, 1, 0]


# ---------------------------------------------------------------- grouped GEMM and the MLP


def naive_moe(x, wgu, wd, w, ids):
    """Token by token, float64."""
    I = wd.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            g = wgu[e, :I].double() @ x[t].double()
            u = wgu[e, I:].double() @ x[t].double()
            out[t] += float(w[t, j]) * (wd[e].double() @ (F.silu(g) * u))
    return out


def make_moe(T, E, k, D, I, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g, dtype=torch.float64).to(dtype)
    wgu = (torch.randn(E, 2 * I, D, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    wd = (torch.randn(E, D, I, generator=g, dtype=torch.float64) / math.sqrt(I)).to(dtype)
    logits = torch.randn(T, E, generator=g, dtype=torch.float64)
    w, ids = hk.route(logits, top_k=k, backend=REF)
    return x, wgu, wd, w.to(torch.float32), ids


@pytest.mark.parametrize("T,E,k,D,I", [(1, 4, 2, 8, 6), (11, 8, 2, 16, 12), (33, 16, 4, 24, 20)], ids=lambda v: str(v))
def test_moe_reference_matches_naive(T, E, k, D, I):
    x, wgu, wd, w, ids = make_moe(T, E, k, D, I)
    out = hk.moe(x, wgu, wd, w, ids, backend=REF)
    torch.testing.assert_close(out, naive_moe(x, wgu, wd, w, ids), rtol=1e-12, atol=1e-12)
    # The step-by-step path gives the same result.
    xs, off, inv = hk.moe_permute(x, ids, E, backend=REF)
    gu = hk.grouped_gemm(xs, wgu, off, backend=REF)
    h = F.silu(gu[:, :I]) * gu[:, I:]
    out2 = hk.moe_unpermute(hk.grouped_gemm(h, wd, off, backend=REF), inv, w.double(), backend=REF)
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)


def test_grouped_gemm_with_empty_experts_matches_naive():
    E, K, N = 6, 10, 7
    counts = torch.tensor([3, 0, 0, 5, 1, 0])
    off = torch.zeros(E + 1, dtype=torch.int64)
    off[1:] = counts.cumsum(0)
    x = torch.randn(int(off[-1]), K, dtype=torch.float64)
    w = torch.randn(E, N, K, dtype=torch.float64)
    y = hk.grouped_gemm(x, w, off, backend=REF)
    seg = torch.repeat_interleave(torch.arange(E), counts)
    y_ref = torch.stack([w[seg[r]] @ x[r] for r in range(x.shape[0])])
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- gradients


def test_gradcheck_moe():
    x, wgu, wd, w, ids = make_moe(5, 4, 2, 6, 4)
    w = w.double()
    args = [t.clone().requires_grad_() for t in (x, wgu, wd, w)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: hk.moe(a, b, c, d, ids, backend=REF), args)


def test_gradcheck_grouped_gemm():
    off = torch.tensor([0, 2, 2, 5])
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: hk.grouped_gemm(a, b, off, backend=REF), (x, w))


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


# ---------------------------------------------------------------- opcheck, compile


def _opcheck_samples():
    x, wgu, wd, w, ids = make_moe(6, 4, 2, 8, 4, dtype=torch.float32)
    xs, off, inv = ops.moe_permute(x, ids, 4, REF)
    logits = torch.randn(6, 4)
    return [
        (ops.route, (logits.requires_grad_(), 2, "sigmoid", torch.zeros(4), 2, 1, True, 2.0, REF)),
        (ops.moe_permute, (x.clone().requires_grad_(), ids, 4, REF)),
        (ops.moe_unpermute, (xs.clone().requires_grad_(), inv, w.clone().requires_grad_(), REF)),
        (ops.grouped_gemm, (xs.clone().requires_grad_(), wgu.clone().requires_grad_(), off, REF)),
        (ops.grouped_gemm_wgrad, (torch.randn(12, 8), xs, off, 4, REF)),
        (ops.moe_fwd, (x.clone().requires_grad_(), wgu.clone().requires_grad_(), wd.clone().requires_grad_(),
                       w.clone().requires_grad_(), ids, REF)),
        (ops.moe_bwd, (torch.randn(6, 8), x, wgu, wd, w, ids, REF)),
    ]


@pytest.mark.parametrize("idx", range(7), ids=["route", "permute", "unpermute", "grouped_gemm", "wgrad", "moe_fwd", "moe_bwd"])
def test_opcheck(idx):
    op, args = _opcheck_samples()[idx]
    torch.library.opcheck(op, args)


def test_compile_fullgraph_matches_eager():
    x, wgu, wd, _, _ = make_moe(7, 4, 2, 8, 4, dtype=torch.float32)
    logits = torch.randn(7, 4)

    def layer(x, logits):
        w, ids = hk.route(logits, top_k=2, scoring="sigmoid", n_group=2, topk_group=1, backend=REF)
        return hk.moe(x, wgu, wd, w, ids, backend=REF)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, logits), layer(x, logits), rtol=0, atol=0)


# ---------------------------------------------------------------- aux-loss-free balancing


def test_bias_update_moves_load_toward_balance():
    T, E, k = 1024, 16, 2
    g = torch.Generator().manual_seed(1)
    # A skewed router: experts 0-3 get a large logit offset and take most of the load.
    skew = torch.zeros(E)
    skew[:4] = 2.0
    bias = torch.zeros(E)

    def step(bias):
        logits = torch.randn(T, E, generator=g) + skew
        _, ids = hk.route(logits, top_k=k, scoring="sigmoid", bias=bias, backend=REF)
        counts = hk.expert_load(ids, E)
        return counts, float(counts[:4].sum()) / (T * k), float(counts.max()) / (T * k / E)

    counts, share0, peak0 = step(bias)
    shares, peaks = [], []
    for _ in range(80):
        bias = hk.update_routing_bias(bias, counts, 0.02)
        counts, share, peak = step(bias)
        shares.append(share)
        peaks.append(peak)
    share_end, peak_end = sum(shares[-10:]) / 10, sum(peaks[-10:]) / 10
    assert share0 > 0.6 and peak0 > 3.0  # experts 0-3 hold most of the load at the start
    assert abs(share_end - 4 / E) < 0.05, f"share of the skewed experts went from {share0:.2f} to {share_end:.2f}"
    assert peak_end < 1.5, f"max/mean load went from {peak0:.2f} to {peak_end:.2f}"
    assert float(bias[:4].max()) < 0 < float(bias[4:].min())


# ---------------------------------------------------------------- bad input


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
