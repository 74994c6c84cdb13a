"""Passes: validation errors, KV owners, KV bytes by hand, selection plan, FLOPs."""

import pytest

from hysparse_kernels.ir import (
    AttentionDims,
    Dense,
    GraphError,
    OracleSparse,
    SlidingWindow,
    assign_kv_owners,
    flops_per_token,
    from_pattern,
    get_graph,
    kv_plan,
    param_count,
    selection_plan,
    validate,
)
from hysparse_kernels.ir.accounting import _mean_visible

DIMS = AttentionDims(q_heads=4, kv_heads=2, qk_dim=16)


def tiny(pattern, attention=DIMS, **kw):
    return from_pattern(pattern, hidden=32, vocab=100, attention=attention, ffn=Dense(32), **kw)


# -- validate -----------------------------------------------------------------------------------


def test_valid_layouts_pass():
    for p in ("F SSS F SSS", "F", "F S S W W", "W W F S"):
        assert validate(tiny(p)).num_layers == len(p.replace(" ", ""))


def test_sparse_first_is_rejected():
    with pytest.raises(GraphError, match="layer 0: OracleSparse layer has no preceding Full layer"):
        validate(tiny("S F"))


def test_sparse_after_swa_layer_is_rejected():
    with pytest.raises(GraphError, match="layer 2: OracleSparse layer follows the SlidingWindow layer 1"):
        validate(tiny("F W S"))
    with pytest.raises(GraphError, match="layer 1: OracleSparse layer has no preceding Full layer"):
        validate(tiny("W S"))


@pytest.mark.parametrize(
    "sparse_dims, field",
    [
        (AttentionDims(q_heads=8, kv_heads=4, qk_dim=16), "kv_heads=4, but the full layer 0 whose cache it reads has kv_heads=2"),
        (AttentionDims(q_heads=4, kv_heads=2, qk_dim=32), "qk_dim=32, but the full layer 0 whose cache it reads has qk_dim=16"),
        (AttentionDims(q_heads=4, kv_heads=2, qk_dim=16, v_dim=8), "v_dim=8, but the full layer 0"),
    ],
    ids=["kv-heads", "dqk", "dv"],
)
def test_head_mismatch_is_rejected(sparse_dims, field):
    g = tiny("F S", attention={"F": DIMS, "S": sparse_dims})
    with pytest.raises(GraphError, match=f"layer 1: OracleSparse layer has {field}"):
        validate(g)


def test_sparse_after_bidirectional_full_layer_is_rejected():
    from hysparse_kernels.ir import Full

    with pytest.raises(GraphError, match="layer 1: OracleSparse layer reads layer 0, which is not causal"):
        validate(tiny("F S", patterns={"F": Full(causal=False)}))


def test_sparse_may_have_more_query_heads_than_its_full_layer():
    g = tiny("F S", attention={"F": DIMS, "S": AttentionDims(q_heads=8, kv_heads=2, qk_dim=16)})
    assert validate(g) is g


# -- KV owners ----------------------------------------------------------------------------------


def test_kv_owners_one_to_three_with_final_full_layer():
    g = get_graph("hysparse-7b")
    owners = assign_kv_owners(g)
    fulls = [o.layer for o in owners if o.kind == "full"]
    assert fulls == [0, 4, 8, 12, 16, 20, 24, 28, 32, 35]
    for o in owners:
        if o.kind == "full":
            assert (o.reads, o.owns) == (o.layer, "full")
        else:
            expected = max(f for f in fulls if f < o.layer)
            assert (o.reads, o.owns, o.window) == (expected, "window", 128)
    assert [o.reads for o in owners[32:]] == [32, 32, 32, 35]


def test_kv_owners_one_to_eleven_with_final_full_layer():
    g = get_graph("hysparse-80b-a3b")
    owners = assign_kv_owners(g)
    assert g.num_layers == 49
    assert [o.layer for o in owners if o.owns == "full"] == [0, 12, 24, 36, 48]
    assert [o.reads for o in owners] == [12 * (i // 12) for i in range(49)]
    assert sum(o.kind == "sparse" for o in owners) == 44


def test_swa_layers_and_sparse_without_window():
    g = tiny("W F S", patterns={"S": OracleSparse(window=None), "W": SlidingWindow(8)})
    owners = assign_kv_owners(g)
    assert [(o.reads, o.owns, o.window) for o in owners] == [(None, "window", 8), (1, "full", None), (1, "none", None)]


# -- KV plan ------------------------------------------------------------------------------------


def test_kv_bytes_by_hand_for_a_tiny_graph():
    # kv_heads 2, Dqk = Dv = 16, bf16, batch 2: 2 * 2 * 32 * 2 = 256 bytes per cached token.
    g = tiny("F SS F", patterns={"S": OracleSparse(topk=2, block_size=16, window=8)})
    plan = kv_plan(g, batch=2, seq_len=100, dtype="bfloat16")
    assert [e.tokens for e in plan.layers] == [100, 8, 8, 100]
    assert {(e.kv_heads, e.qk_dim, e.v_dim) for e in plan.layers} == {(2, 16, 16)}
    assert [e.bytes for e in plan.layers] == [25600, 2048, 2048, 25600]
    assert plan.total_bytes == 55296
    assert plan.twin_total_bytes == 4 * 25600
    assert plan.saving == pytest.approx(102400 / 55296)
    # Shorter than the window: the ring buffer holds only what exists.
    assert [e.tokens for e in kv_plan(g, 1, 5).layers] == [5, 5, 5, 5]


def test_kv_bytes_with_dqk_not_dv_and_float32():
    swa = AttentionDims(q_heads=4, kv_heads=2, qk_dim=24, v_dim=16, rope_dim=8)
    g = tiny("F W", attention={"F": AttentionDims(q_heads=4, kv_heads=1, qk_dim=24, v_dim=16), "W": swa},
             patterns={"W": SlidingWindow(16)})
    plan = kv_plan(g, batch=1, seq_len=50, dtype="float32")
    assert [e.bytes for e in plan.layers] == [50 * 1 * 40 * 4, 16 * 2 * 40 * 4]
    assert plan.twin_total_bytes == 50 * 1 * 40 * 4 + 50 * 2 * 40 * 4


def test_kv_plan_with_mtp_blocks():
    g = get_graph("tiny-mimo-v2-flash")
    base, with_mtp = kv_plan(g, 1, 64), kv_plan(g, 1, 64, include_mtp=True)
    extra = [e for e in with_mtp.layers if e.mtp]
    assert len(extra) == 3 and all(e.tokens == 16 for e in extra)  # SWA window 16
    assert with_mtp.total_bytes == base.total_bytes + sum(e.bytes for e in extra)


def test_kv_plan_errors():
    g = tiny("F")
    with pytest.raises(ValueError, match="seq_len: expected a positive int, got 0"):
        kv_plan(g, 1, 0)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        kv_plan(g, 1, 8, dtype="int8")


def test_kv_plan_accepts_torch_dtypes():
    torch = pytest.importorskip("torch")
    g = tiny("F")
    assert kv_plan(g, 1, 8, dtype=torch.float32).total_bytes == 2 * kv_plan(g, 1, 8, dtype="bfloat16").total_bytes
    assert kv_plan(g, 1, 8, dtype=torch.float16).dtype == "float16"


def test_hysparse_80b_claim_about_ten_times_less_kv_at_32k():
    plan = kv_plan(get_graph("hysparse-80b-a3b"), batch=1, seq_len=32768)
    # 5 full layers hold 32768 tokens, 44 sparse layers a 128-token SWA cache; the twin 49 x 32768.
    assert plan.saving == pytest.approx(49 * 32768 / (5 * 32768 + 44 * 128))
    assert 9.0 < plan.saving < 10.5


# -- selection plan -----------------------------------------------------------------------------


def test_selection_plan_groups_sparse_layers_by_their_full_layer():
    sel = selection_plan(get_graph("hysparse-80b-a3b"))
    assert [(s.full_layer, s.sparse_layers) for s in sel] == [
        (f, tuple(range(f + 1, f + 12))) for f in (0, 12, 24, 36)]
    assert {(s.block_size, s.topk) for s in sel} == {(64, 16)}


def test_selection_plan_distinct_topk_and_block_size_conflict():
    g = tiny("F S S", attention=DIMS)
    g2 = g.__class__(tuple(layer if layer.index != 2 else layer.__class__(**{**vars(layer), "pattern": OracleSparse(topk=4)})
                           for layer in g.layers), vocab=g.vocab, hidden=g.hidden)
    assert [(s.topk, s.sparse_layers) for s in selection_plan(g2)] == [(4, (2,)), (16, (1,))]
    g3 = g.__class__(tuple(layer if layer.index != 2 else layer.__class__(**{**vars(layer), "pattern": OracleSparse(block_size=32)})
                           for layer in g.layers), vocab=g.vocab, hidden=g.hidden)
    with pytest.raises(GraphError, match="layer 2: OracleSparse block_size=32, but another sparse layer reading full layer 0"):
        selection_plan(g3)


# -- FLOPs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("s, cap", [(10, 4), (10, 10), (10, None), (7, 100), (1, 1)], ids=str)
def test_mean_visible_keys_matches_brute_force(s, cap):
    brute = sum(min(i, cap) if cap else i for i in range(1, s + 1)) / s
    assert _mean_visible(s, cap) == pytest.approx(brute)


def test_flops_per_token_by_hand():
    g = tiny("F S", patterns={"S": OracleSparse(topk=2, block_size=4, window=8)})
    s = 64
    fl = flops_per_token(g, s)
    pc = param_count(g)
    assert fl.matmul == 2 * (pc.active_non_embedding + 100 * 32)  # + the LM head
    per_key = 2 * 4 * 32  # 2 * q_heads * (Dqk + Dv)
    sparse_keys = _mean_visible(s, 8) + _mean_visible(s, 8)  # top-2 x 4 = 8 selected, window 8
    assert fl.attention_prefill == pytest.approx(per_key * ((s + 1) / 2 + sparse_keys))
    assert fl.attention_decode == pytest.approx(per_key * (s + 8 + 8))
    assert fl.prefill == fl.matmul + fl.attention_prefill and fl.decode == fl.matmul + fl.attention_decode


def test_sparse_graph_needs_fewer_attention_flops_than_its_twin_at_long_context():
    hs = flops_per_token(get_graph("hysparse-7b"), 32768)
    twin = flops_per_token(get_graph("mimo-7b"), 32768)  # same backbone, all full attention
    assert hs.attention_decode < twin.attention_decode / 2
