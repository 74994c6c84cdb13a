"""The KV cache is allocated from the IR's KV owners: per layer, exactly the tensors the plan
names (full length, ring of ``window`` slots, or nothing), for model graphs and for the MTP
blocks' layers outside one (``KVCache.for_layers``)."""

import dataclasses

import pytest
import torch

from hysparse_kernels import ir
from hysparse_kernels.models import KVCache
from hysparse_kernels.models.mtp import mtp_layer_spec


@pytest.mark.parametrize("name", [n for n in ir.list_graphs() if n.startswith("tiny-")])
def test_cache_tensors_follow_the_kv_plan(name):
    graph = ir.get_graph(name)
    cache = KVCache(graph, 2, 40, dtype=torch.float32)
    plan = ir.kv_plan(graph, batch=2, seq_len=40, dtype="float32")
    owned = {e.layer: e for e in plan.layers if e.tokens}
    assert set(cache.k) == set(owned)
    for i, e in owned.items():
        assert cache.k[i].shape == (2, e.kv_heads, e.tokens, e.qk_dim)
        assert cache.v[i].shape == (2, e.kv_heads, e.tokens, e.v_dim)
        assert cache.window[i] == (None if e.owns == "full" else graph.layers[i].pattern.window)


def test_kv_owners_is_the_rule_assign_kv_owners_applies():
    for name in ir.list_graphs():
        graph = ir.get_graph(name)
        assert ir.kv_owners(graph.layers) == ir.assign_kv_owners(graph)


def test_mtp_layers_get_rings_with_spare_slots():
    graph = ir.get_graph("tiny-mimo-v2-flash")
    specs = [mtp_layer_spec(graph.mtp, graph.num_layers + k) for k in range(2)]
    cache = KVCache.for_layers(specs, 3, 50, dtype=torch.float64, spare=4)
    window = graph.mtp.pattern.window
    assert sorted(cache.k) == [graph.num_layers, graph.num_layers + 1]
    for i in cache.k:
        assert cache.k[i].shape == (3, graph.mtp.attention.kv_heads, window + 4, graph.mtp.attention.qk_dim)
        assert cache.window[i] == window and cache.k[i].dtype == torch.float64


def test_a_graph_the_ir_rejects_gets_no_cache():
    graph = ir.get_graph("tiny-hysparse-7b")
    first = dataclasses.replace(graph.layers[0], pattern=graph.layers[1].pattern)  # sparse, no full layer before it
    bad = dataclasses.replace(graph, layers=(first, *graph.layers[1:]))
    with pytest.raises(ir.GraphError, match="no preceding Full layer"):
        KVCache(bad, 1, 8)
