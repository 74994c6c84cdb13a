"""Patterns, layer specs and graph builders: construction checks and the builders' layouts."""

import pytest

from hysparse_kernels.ir import (
    AttentionDims,
    Dense,
    Full,
    LayerSpec,
    ModelGraph,
    MoE,
    MTPSpec,
    OracleSparse,
    SlidingWindow,
    build_graph,
    from_hybrid_layer_pattern,
    from_pattern,
    hybrid_kinds,
    parse_pattern,
)

DIMS = AttentionDims(q_heads=4, kv_heads=2, qk_dim=16)


def tiny(pattern, **kw):
    kw.setdefault("ffn", Dense(32))
    return from_pattern(pattern, hidden=32, vocab=100, attention=kw.pop("attention", DIMS), **kw)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SlidingWindow(window=0), "SlidingWindow.window: expected an int >= 1, got 0"),
        (lambda: SlidingWindow(window=128.0), "SlidingWindow.window: expected an int"),
        (lambda: OracleSparse(block_size=48), "OracleSparse.block_size: expected a power of two, got 48"),
        (lambda: OracleSparse(topk=0), "OracleSparse.topk: expected an int >= 1, got 0"),
        (lambda: OracleSparse(gate="softmax"), "OracleSparse.gate: expected one of"),
        (lambda: Full(causal=1), "Full.causal: expected a bool"),
        (lambda: MoE(8, 9, 32), r"MoE.top_k: expected <= num_experts \(8\), got 9"),
        (lambda: MoE(8, 2, 32, scoring="relu"), "MoE.scoring"),
        (lambda: MoE(8, 2, 32, n_group=3), "MoE.n_group: expected a divisor"),
        (lambda: Dense(0), "Dense.intermediate"),
        (lambda: AttentionDims(q_heads=6, kv_heads=4, qk_dim=16), r"q_heads: expected a multiple of kv_heads \(4\), got 6"),
        (lambda: AttentionDims(q_heads=4, kv_heads=2, qk_dim=16, rope_dim=18), "rope_dim: expected an even number <= qk_dim"),
        (lambda: MTPSpec(1, OracleSparse(), Dense(8), DIMS), "MTPSpec.pattern: expected Full or SlidingWindow"),
    ],
    ids=["swa-window-0", "swa-window-float", "block-48", "topk-0", "gate", "causal-int", "moe-topk", "moe-scoring",
         "moe-groups", "dense-0", "gqa", "rope", "mtp-sparse"],
)
def test_construction_errors_name_the_field(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_patterns_are_frozen_and_hashable():
    p = OracleSparse()
    with pytest.raises(AttributeError):
        p.topk = 8
    assert {p, OracleSparse(), Full(), SlidingWindow()} == {OracleSparse(), Full(), SlidingWindow()}
    assert p.selected_tokens == 16 * 64


def test_pattern_string_builder():
    g = tiny("F SSS F SSS")
    assert [layer.pattern.kind for layer in g.layers] == ["full"] + ["sparse"] * 3 + ["full"] + ["sparse"] * 3
    assert [layer.index for layer in g.layers] == list(range(8))
    assert g.pattern_string() == "FSSS FSSS"
    assert parse_pattern(" F W\tS ") == ["F", "W", "S"]
    with pytest.raises(ValueError, match=r"pattern: expected letters .* got \['X'\]"):
        parse_pattern("F SSX")
    with pytest.raises(ValueError, match="empty"):
        parse_pattern("  ")


def test_patterns_and_ffn_per_layer():
    moe = MoE(4, 2, 16)
    g = tiny("F W S", ffn=[Dense(64), moe, moe], patterns={"W": SlidingWindow(32, sink=False), "S": OracleSparse(topk=4)})
    assert g.layers[0].ffn == Dense(64) and g.layers[2].ffn is moe
    assert g.layers[1].pattern == SlidingWindow(32, sink=False)
    assert g.layers[2].pattern.topk == 4
    with pytest.raises(ValueError, match=r"ffn: expected one FFN or 3 \(one per layer\), got 2"):
        tiny("F W S", ffn=[Dense(8), Dense(8)])
    with pytest.raises(TypeError, match=r"patterns\['W'\]: expected SlidingWindow, got Full"):
        tiny("F W", patterns={"W": Full()})


def test_hybrid_layer_pattern_list_builder_mimo_style():
    glob = AttentionDims(q_heads=4, kv_heads=1, qk_dim=24, v_dim=16, rope_dim=8)
    swa = AttentionDims(q_heads=4, kv_heads=2, qk_dim=24, v_dim=16, rope_dim=8)
    g = from_hybrid_layer_pattern([0, 1, 1, 0], hidden=32, vocab=100, attention={"F": glob, "W": swa}, ffn=Dense(8))
    assert [layer.pattern.kind for layer in g.layers] == ["full", "swa", "swa", "full"]
    assert [layer.kv_heads for layer in g.layers] == [1, 2, 2, 1]
    assert g.layers[1].v_dim == 16 and g.layers[1].rope_dim == 8
    with pytest.raises(ValueError, match=r"hybrid_layer_pattern\[1\]: expected 0 \(full\) or 1"):
        from_hybrid_layer_pattern([0, 2], hidden=32, vocab=100, attention=glob, ffn=Dense(8))
    with pytest.raises(ValueError, match="no AttentionDims for layer kind 'W'"):
        from_hybrid_layer_pattern([0, 1], hidden=32, vocab=100, attention={"F": glob}, ffn=Dense(8))


@pytest.mark.parametrize(
    "n, ratio, expected",
    [(8, 3, "FSSSFSSF"), (13, 11, "F" + "S" * 11 + "F"), (49, 11, ("F" + "S" * 11) * 4 + "F"), (5, 0, "FFFFF")],
    ids=["8-1to3", "13-1to11", "49-1to11", "all-full"],
)
def test_hybrid_kinds(n, ratio, expected):
    assert "".join(hybrid_kinds(n, ratio)) == expected


def test_graph_checks_indices_and_types():
    layer = LayerSpec(index=1, pattern=Full(), q_heads=4, kv_heads=2, qk_dim=16, v_dim=16, rope_dim=16, ffn=Dense(8))
    with pytest.raises(ValueError, match=r"ModelGraph.layers\[0\]: expected index 0, got 1"):
        ModelGraph((layer,), vocab=10, hidden=32)
    with pytest.raises(TypeError, match="layer 0: pattern: expected Full, SlidingWindow or OracleSparse"):
        LayerSpec(index=0, pattern="full", q_heads=4, kv_heads=2, qk_dim=16, v_dim=16, rope_dim=16, ffn=Dense(8))
    with pytest.raises(ValueError, match="at least one layer"):
        ModelGraph((), vocab=10, hidden=32)


def test_attention_dims_defaults():
    d = AttentionDims(q_heads=8, kv_heads=2, qk_dim=192, v_dim=128, rope_dim=64)
    assert (d.v_dim, d.rope_dim) == (128, 64)
    d = AttentionDims(q_heads=8, kv_heads=2, qk_dim=64)
    assert (d.v_dim, d.rope_dim) == (64, 64)


def test_presets_follow_the_published_layouts():
    from hysparse_kernels.ir import get_graph

    flash = get_graph("mimo-v2-flash")
    kinds = "".join(layer.pattern.letter for layer in flash.layers)
    assert kinds == "FWWWWF" + "WWWWWF" * 7 and kinds.count("F") == 9
    assert flash.layers[0].ffn == Dense(16384) and all(isinstance(layer.ffn, MoE) for layer in flash.layers[1:])
    swa, glob = flash.layers[1], flash.layers[0]
    assert (swa.q_heads, swa.kv_heads, glob.q_heads, glob.kv_heads) == (64, 8, 64, 4)
    assert (swa.qk_dim, swa.v_dim, swa.rope_dim, swa.value_scale) == (192, 128, 64, 0.707)
    # the query and the 128 keys before it (MiMo-V2-Flash's sliding_window 128 counts the keys before the query)
    assert swa.pattern == SlidingWindow(129, sink=True) and glob.pattern == Full()
    assert flash.mtp.num_layers == 3 and flash.vocab == 152576
    hs80 = get_graph("hysparse-80b-a3b")
    assert hs80.num_layers == 49 and sum(layer.pattern.kind == "full" for layer in hs80.layers) == 5
    assert hs80.layers[-1].pattern == Full() and hs80.layers[1].pattern == OracleSparse(16, 64, 128, True, "sigmoid")
    hs7 = get_graph("hysparse-7b")
    assert hs7.num_layers == 36 and hs7.layers[-1].pattern == Full()


def test_ir_imports_only_the_kernel_layer():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    for path in (root / "ir").rglob("*.py"):
        text = path.read_text()
        imports = re.findall(r"^\s*(?:from|import)\s+(\S+)", text, re.MULTILINE)
        assert not [m for m in imports if re.match(r"hysparse_kernels\.(models|training|autotune)|torch\.nn|\.\.", m)], path
    # The kernel layer never imports the IR (its CLI names subcommand modules as strings).
    for path in (root / "hysparse_kernels").rglob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+(\S+)", path.read_text(), re.MULTILINE)
        assert not [m for m in imports if m.startswith("hysparse_kernels.ir")], path
