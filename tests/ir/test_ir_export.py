"""JSON round trip (exact) and ONNX export (checker, custom ops, KV-sharing edges)."""

import json

import pytest

from hysparse_kernels.ir import (
    AttentionDims,
    Dense,
    MoE,
    OracleSparse,
    from_json,
    from_pattern,
    get_graph,
    list_graphs,
    to_json,
    to_onnx,
)

onnx = pytest.importorskip("onnx")


@pytest.mark.parametrize("name", list_graphs())
def test_json_round_trip_is_exact(name):
    g = get_graph(name)
    text = to_json(g)
    back = from_json(text)
    assert back == g
    assert to_json(back) == text
    assert hash(back) == hash(g)


def test_json_round_trip_keeps_every_option():
    dims = AttentionDims(q_heads=6, kv_heads=2, qk_dim=24, v_dim=16, rope_dim=8, value_scale=0.707,
                         rope_theta=5e5, qkv_bias=True)
    moe = MoE(8, 2, 16, scoring="sigmoid", n_group=4, topk_group=2, shared_experts=1, correction_bias=True,
              routed_scaling=2.5)
    g = from_pattern("F S S", hidden=48, vocab=77, attention=dims, ffn=[Dense(64), moe, moe],
                     patterns={"S": OracleSparse(topk=3, block_size=32, window=None, sink=False)},
                     tie_embeddings=True, name="odd", notes=("a", "b"))
    assert from_json(to_json(g)) == g
    assert from_json(to_json(g, indent=None)) == g


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(format="other"), "expected a document with format 'hysparse-ir'"),
        (lambda d: d.update(version=99), "expected version 1, got 99"),
        (lambda d: d["graph"]["layers"][0]["pattern"].update(type="Dilated"), r"graph.layers\[0\].pattern: expected a 'type'"),
        (lambda d: d["graph"]["layers"][1].update(heads=3), r"graph.layers\[1\] \(LayerSpec\): unexpected fields \['heads'\]"),
        (lambda d: d["graph"]["layers"][1]["pattern"].update(block_size=48), "block_size: expected a power of two"),
        (lambda d: d["graph"]["layers"][1].pop("q_heads"), "q_heads"),
    ],
    ids=["format", "version", "type", "unknown-field", "invalid-value", "missing-field"],
)
def test_from_json_errors(mutate, match):
    doc = json.loads(to_json(get_graph("tiny-hysparse-7b")))
    mutate(doc)
    with pytest.raises(ValueError, match=match):
        from_json(json.dumps(doc))


def test_from_json_not_json():
    with pytest.raises(ValueError, match="not a JSON document"):
        from_json("{nope")


@pytest.mark.parametrize("name", list_graphs())
def test_onnx_export_passes_the_checker(name):
    g = get_graph(name)
    model = to_onnx(g, seq_len=64)
    onnx.checker.check_model(model)
    domains = {o.domain: o.version for o in model.opset_import}
    assert domains == {"": 23, "hysparse": 1}
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attention) == g.num_layers and all(n.domain == "hysparse" for n in attention)
    standard = {n.op_type for n in model.graph.node if n.domain == ""}
    assert standard <= {"Gather", "RMSNormalization", "MatMul", "Sigmoid", "Mul", "Add", "Transpose"}
    assert [o.name for o in model.graph.output] == ["logits"] + (["mtp_logits"] if g.mtp else [])


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_onnx_shows_kv_sharing_and_selection_as_edges():
    model = to_onnx(get_graph("tiny-hysparse-7b"), seq_len=32)  # FSSS FSS F
    nodes = {n.name: n for n in model.graph.node}
    full0, sparse5 = nodes["attention.0"], nodes["attention.5"]
    assert list(full0.output) == ["h.0.attn", "kv.0.k", "kv.0.v", "kv.0.block_scores"]
    assert list(sparse5.input[-3:]) == ["kv.4.k", "kv.4.v", "kv.4.top2"]
    topk = nodes["kv.0.top2"]
    assert (topk.op_type, topk.domain) == ("TopKBlocks", "hysparse")
    assert _attrs(topk) == {"k": 2, "block_size": 16, "source_layer": 0, "consumers": [1, 2, 3]}
    a = _attrs(sparse5)
    assert (a["pattern"], a["topk"], a["block_size"], a["window"], a["kv_owner"]) == (b"sparse", 2, 16, 16, 4)
    assert list(nodes["attention.7"].output) == ["h.7.attn", "kv.7.k", "kv.7.v"]  # feeds no sparse layer


def test_onnx_moe_and_mtp_nodes_carry_their_attributes(tmp_path):
    path = tmp_path / "m.onnx"
    to_onnx(get_graph("tiny-mimo-v2-flash"), seq_len=16, path=str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    nodes = {n.name: n for n in model.graph.node}
    moe = _attrs(nodes["h.1.ffn"])
    assert (moe["num_experts"], moe["top_k"], moe["scoring"], moe["correction_bias"]) == (8, 2, b"sigmoid", 1)
    assert nodes["h.0.ffn"].op_type == "MatMul"  # layer 0: dense FFN from standard ops
    mtp = _attrs(nodes["mtp"])
    assert (mtp["num_layers"], mtp["pattern"], mtp["window"], mtp["sink"]) == (3, b"swa", 16, 1)
    swa = _attrs(nodes["attention.1"])
    assert swa["value_scale"] == pytest.approx(0.707) and swa["qk_dim"] == 24 and swa["v_dim"] == 16


def test_onnx_errors():
    with pytest.raises(ValueError, match="seq_len: expected a positive int"):
        to_onnx(get_graph("tiny-mimo-7b"), seq_len=0)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        to_onnx(get_graph("tiny-mimo-7b"), seq_len=8, dtype="int4")
