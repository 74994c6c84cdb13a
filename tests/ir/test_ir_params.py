"""Parameter counts: by hand on tiny graphs, and the presets against the published figures."""

import pytest

from hysparse_kernels.ir import (
    AttentionDims,
    Dense,
    MoE,
    MTPSpec,
    SlidingWindow,
    from_pattern,
    get_graph,
    list_graphs,
    param_count,
)
from hysparse_kernels.ir.presets import PUBLISHED

DIMS = AttentionDims(q_heads=4, kv_heads=2, qk_dim=16)


def test_param_count_by_hand_full_and_sparse_layer():
    g = from_pattern("F S", hidden=32, vocab=100, attention=DIMS, ffn=Dense(32))
    pc = param_count(g)
    full_attn = 32 * 64 + 32 * 32 + 32 * 32 + 64 * 32  # q, k, v, o
    sparse_attn = 32 * 64 + 32 * 32 + 32 * 32 + 64 * 32 + 2 * 32 * 4 + 2 * 4  # + SWA k/v, two gates, two sinks
    expected = 2 * 100 * 32 + full_attn + sparse_attn + 2 * 3 * 32 * 32 + (2 * 2 * 32 + 32)
    assert pc.part("attention") == full_attn + sparse_attn == 6144 + 6408
    assert pc.total == expected == 25256
    # Dense, no MTP: a token touches everything but the embedding table (one row of it).
    assert pc.active == pc.total - 3200 + 32
    assert pc.active_non_embedding == pc.total - 6400


def test_param_count_by_hand_moe_and_tied_embeddings():
    moe = MoE(4, 2, 8, correction_bias=True, shared_experts=1)
    g = from_pattern("F", hidden=32, vocab=100, attention=DIMS, ffn=moe, tie_embeddings=True)
    pc = param_count(g)
    expert = 3 * 32 * 8
    assert pc.lm_head == 0
    assert pc.part("router") == 32 * 4 + 4
    assert pc.part("experts") == (4 + 1) * expert
    assert pc.total == 3200 + 6144 + 128 + 4 + 5 * expert + 96
    assert pc.active == 3200 + 6144 + 128 + 4 + (2 + 1) * expert + 96  # the tied head used whole


def test_param_count_by_hand_mtp():
    mtp = MTPSpec(1, SlidingWindow(8, sink=True), Dense(16), DIMS)
    g = from_pattern("F", hidden=32, vocab=100, attention=DIMS, ffn=Dense(32), mtp=mtp)
    pc = param_count(g)
    assert pc.part("mtp") == 2 * 32 + 2 * 32 * 32 + (6144 + 4) + 2 * 32 + 3 * 32 * 16 + 32 == 9892
    assert pc.active == pc.total - 9892 - 3200 + 32  # MTP only drafts


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_reproduce_published_sizes_within_3_percent(name):
    pc = param_count(get_graph(name))
    for field, published in PUBLISHED[name].items():
        got = getattr(pc, field)
        assert abs(got / published - 1) <= 0.03, f"{name} {field}: {got / 1e9:.2f}B vs published {published / 1e9:.0f}B"


def test_mimo_v2_flash_breakdown():
    pc = param_count(get_graph("mimo-v2-flash"))
    # 47 MoE layers x 256 experts x 3 x 4096 x 2048, one dense layer of 16384.
    assert pc.part("experts") == 47 * 256 * 3 * 4096 * 2048
    assert pc.part("ffn_dense") == 3 * 4096 * 16384
    assert pc.embedding == pc.lm_head == 152576 * 4096
    # 3 MTP blocks of about 0.33B.
    assert 0.32e9 < pc.part("mtp") / 3 < 0.34e9


@pytest.mark.parametrize("name", [n for n in list_graphs() if n.startswith("tiny-")])
def test_tiny_twins_are_small(name):
    assert param_count(get_graph(name)).total < 5_000_000
