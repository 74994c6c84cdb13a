"""MoE ops on bad and non-finite input: named errors (values checked inside the ops, so
``torch.compile`` still traces them), and NaN router logits handled alike on every backend."""

import pytest
import torch

import hysparse_kernels as hk
from backend_params import params

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")


def _permuted(T=5, E=4, k=2, D=6):
    x = torch.randn(T, D)
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32)
    xs, _, inv = hk.moe_permute(x, ids, E)
    return xs, inv, torch.rand(T, k)


@pytest.mark.parametrize("bad,shown", [(-1, r"\[-1, 9\]"), (10, r"\[0, 10\]")], ids=["negative", "past-the-end"])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_unpermute_rejects_rows_outside_y_sorted(backend, bad, shown):
    xs, inv, w = _permuted()
    inv = inv.clone()
    inv[2, 1] = bad  # -1 would read the last row, 10 would fail deep inside indexing
    with pytest.raises(ValueError, match=r"inverse: expected rows of y_sorted in \[0, 10\), got values in " + shown):
        hk.moe_unpermute(xs, inv, w, backend=backend)


def test_unpermute_check_compiles_and_fires_in_a_compiled_graph():
    xs, inv, w = _permuted()

    def f(xs, inv, w):
        return hk.moe_unpermute(xs * 2, inv, w)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(xs, inv, w), f(xs, inv, w), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"inverse: expected rows of y_sorted"):
        compiled(xs, inv - 1, w)


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
