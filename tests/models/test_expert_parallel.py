"""Expert parallelism over 2 gloo ranks equals one process running ``hk.moe`` with all experts:
outputs, input and routing-weight gradients, and each rank's expert-weight gradients (the sum
over both ranks' tokens), in float64, including experts that get no rows from some rank and a
rank that gets no rows at all."""

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.models.expert_parallel import expert_parallel_moe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T, D, INTER, E, K = 6, 8, 5, 4, 2
# Routing per rank: expert ids [T, K]. "gaps": expert 2 gets no row from anyone, expert 3 rows
# only from rank 0, so rank 1 receives nothing from itself; "idle": every row goes to experts 0
# and 1 (rank 0), so rank 1 receives no rows at all and its experts' gradients are zero.
ROUTES = {
    "gaps": ([[0, 3], [1, 0], [3, 1], [0, 1], [1, 3], [3, 0]], [[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]]),
    "idle": ([[0, 1]] * T, [[1, 0]] * T),
}


def _data(route):
    g = torch.Generator().manual_seed(7)
    w_gate_up = torch.randn(E, 2 * INTER, D, generator=g, dtype=torch.float64) / D ** 0.5
    w_down = torch.randn(E, D, INTER, generator=g, dtype=torch.float64) / INTER ** 0.5
    per_rank = []
    for ids in ROUTES[route]:
        x = torch.randn(T, D, generator=g, dtype=torch.float64)
        weights = torch.rand(T, K, generator=g, dtype=torch.float64)
        grad_out = torch.randn(T, D, generator=g, dtype=torch.float64)
        per_rank.append((x, weights, torch.tensor(ids, dtype=torch.int32), grad_out))
    return w_gate_up, w_down, per_rank


def _ep_rank(rank, world, route):
    """This rank's share of one ``expert_parallel_moe`` call and its backward."""
    w_gate_up, w_down, per_rank = _data(route)
    x, weights, ids, grad_out = per_rank[rank]
    L = E // world
    mine = slice(rank * L, (rank + 1) * L)
    x, weights = x.clone().requires_grad_(), weights.clone().requires_grad_()
    wg, wd = w_gate_up[mine].clone().requires_grad_(), w_down[mine].clone().requires_grad_()
    out, dispatch = expert_parallel_moe(x, wg, wd, weights, ids)
    (out * grad_out).sum().backward()
    return {"out": out.detach(), "dx": x.grad, "dweights": weights.grad, "dwg": wg.grad, "dwd": wd.grad,
            "sent": dispatch.sent, "received": dispatch.received}


def _all_checks(rank, world):
    """Every case on one pair of spawned ranks (starting ranks costs more than the cases)."""
    with hk.use_backend("reference"):
        return {**{route: _ep_rank(rank, world, route) for route in ROUTES}, "block": _block_rank(rank, world)}


@pytest.fixture(scope="module")
def results(run_ranks):
    return run_ranks(_all_checks)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_expert_parallel_moe_equals_one_process(results, route):
    results = [r[route] for r in results]
    w_gate_up, w_down, per_rank = _data(route)
    wg, wd = w_gate_up.clone().requires_grad_(), w_down.clone().requires_grad_()
    L = E // 2
    for rank, (x, weights, ids, grad_out) in enumerate(per_rank):
        x, weights = x.clone().requires_grad_(), weights.clone().requires_grad_()
        out = hk.moe(x, wg, wd, weights, ids, backend="reference")
        (out * grad_out).sum().backward()  # the weights' gradients add up over both ranks' tokens
        got = results[rank]
        torch.testing.assert_close(got["out"], out.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["dx"], x.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["dweights"], weights.grad, rtol=1e-12, atol=1e-12)
        rows_to = [int(((ids >= p * L) & (ids < (p + 1) * L)).sum()) for p in range(2)]
        assert list(got["sent"]) == rows_to
    for rank in range(2):
        mine = slice(rank * L, (rank + 1) * L)
        torch.testing.assert_close(results[rank]["dwg"], wg.grad[mine], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(results[rank]["dwd"], wd.grad[mine], rtol=1e-12, atol=1e-12)
    assert [list(r["received"]) for r in results] == [[results[0]["sent"][0], results[1]["sent"][0]],
                                                       [results[0]["sent"][1], results[1]["sent"][1]]]
    if route == "idle":
        assert sum(results[1]["received"]) == 0 and not results[1]["dwg"].any()
    else:
        assert not wg.grad[2].any() and wg.grad[3].any()  # expert 2 unused, expert 3 fed by rank 0 only


def _block_rank(rank, world):
    """A MoE block (sigmoid routing with groups and a correction bias) with its experts sharded
    over the two ranks, against the same block unsharded, on this rank's tokens."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh

    from hysparse_kernels.ir import MoE
    from hysparse_kernels.models.expert_parallel import shard_experts
    from hysparse_kernels.models.moe import MoEBlock

    torch.manual_seed(3)
    spec = MoE(num_experts=4, top_k=2, intermediate=6, shared_experts=1, scoring="sigmoid", n_group=2, topk_group=1,
               correction_bias=True, routed_scaling=2.0)
    whole = MoEBlock(spec, 8).double()
    whole.gate.e_score_correction_bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    x_all = torch.randn(world, 2, 5, 8, dtype=torch.float64)
    sharded = copy.deepcopy(whole)
    shard_experts(sharded, init_device_mesh("cpu", (world,), mesh_dim_names=("ep",)))
    x = x_all[rank]
    out = sharded(x)
    out.square().sum().backward()
    ref = whole(x)
    ref.square().sum().backward()
    return {"out": out.detach(), "ref": ref.detach(), "router": sharded.gate.weight.grad, "router_ref": whole.gate.weight.grad,
            "local_shape": tuple(sharded.experts.gate_up_proj.to_local().shape),
            "dispatch": sharded.last_dispatch, "load": sharded.last_load, "load_ref": whole.last_load}


def test_moe_block_with_sharded_experts_equals_the_whole_block(results):
    for r in (r["block"] for r in results):
        torch.testing.assert_close(r["out"], r["ref"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r["router"], r["router_ref"], rtol=1e-12, atol=1e-12)
        assert r["local_shape"] == (2, 12, 8)
        assert torch.equal(r["load"], r["load_ref"]) and sum(r["dispatch"].sent) == 10 * 2
