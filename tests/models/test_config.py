"""Configs: every flavor converts to a Hugging Face config and back, and to the same graph."""

import pytest

from hysparse_kernels import ir
from hysparse_kernels.models import ModelConfig, from_hf_config, get_config, list_models


@pytest.mark.parametrize("name", list_models())
def test_graph_and_hf_round_trips(name):
    graph = ir.get_graph(name)
    cfg = get_config(name)
    back = cfg.to_graph()
    assert back.layers == graph.layers and back.mtp == graph.mtp
    assert (back.vocab, back.hidden, back.tie_embeddings) == (graph.vocab, graph.hidden, graph.tie_embeddings)
    assert ModelConfig.from_hf_config(cfg.to_hf_config()) == cfg


def test_mimo_v2_flash_keys():
    hf = get_config("mimo-v2-flash").to_hf_config()
    assert hf["num_hidden_layers"] == 48 and len(hf["hybrid_layer_pattern"]) == 48
    assert hf["hybrid_layer_pattern"][:6] == [0, 1, 1, 1, 1, 0]
    assert (hf["num_attention_heads"], hf["num_key_value_heads"]) == (64, 4)
    assert (hf["swa_num_attention_heads"], hf["swa_num_key_value_heads"]) == (64, 8)
    assert (hf["head_dim"], hf["v_head_dim"], hf["partial_rotary_factor"]) == (192, 128, 64 / 192)
    assert hf["sliding_window"] == 129 and hf["add_swa_attention_sink_bias"] is True  # the zoo's window: query included
    assert (hf["n_routed_experts"], hf["num_experts_per_tok"], hf["moe_intermediate_size"]) == (256, 8, 2048)
    assert hf["scoring_func"] == "sigmoid" and hf["topk_method"] == "noaux_tc"
    assert hf["moe_layer_freq"][0] == 0 and all(hf["moe_layer_freq"][1:])
    assert hf["vocab_size"] == 152576 and hf["num_nextn_predict_layers"] == 3


def test_hysparse_layer_types():
    hf = get_config("hysparse-80b-a3b").to_hf_config()
    assert hf["layer_types"].count("full_attention") == 5 and hf["layer_types"][-1] == "full_attention"
    assert (hf["sparse_topk"], hf["sparse_block_size"], hf["sparse_window"]) == (16, 64, 128)
    assert "hybrid_layer_pattern" not in hf


def test_deepseek_style_moe_layer_freq_and_plain_llama_config():
    cfg = ModelConfig.from_hf_config({
        "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 16, "moe_layer_freq": 1, "first_k_dense_replace": 1,
    })
    graph = cfg.to_graph()
    assert [layer.ffn.kind for layer in graph.layers] == ["dense", "moe", "moe"]
    assert graph.layers[0].qk_dim == 8
    model = from_hf_config(cfg.to_hf_config())
    assert sum(p.numel() for p in model.parameters()) > 0


def test_bad_configs():
    with pytest.raises(TypeError, match="config: expected a dict"):
        ModelConfig.from_hf_config([1])
    with pytest.raises(ValueError, match=r"config.layer_types: expected entries of .* got \['linear_attention'\]"):
        ModelConfig.from_hf_config({"layer_types": ["linear_attention"], "hidden_size": 8, "num_attention_heads": 2})
    with pytest.raises(ValueError, match="config.num_hidden_layers: expected 2"):
        ModelConfig.from_hf_config({"hybrid_layer_pattern": [0, 1], "num_hidden_layers": 3, "hidden_size": 8,
                                    "num_attention_heads": 2})


def _hf(name="tiny-mimo-v2-flash", **changes):
    hf = get_config(name).to_hf_config()
    hf.update(changes)
    return hf


BAD_VALUES = [
    ("tiny-mimo-v2-flash", {"num_attention_heads": 0}, ValueError, r"config.num_attention_heads: expected an int >= 1, got 0"),
    ("tiny-mimo-v2-flash", {"sliding_window": 0}, ValueError, r"config.sliding_window: expected an int >= 1, got 0"),
    ("tiny-mimo-v2-flash", {"sliding_window": None}, TypeError, r"config.sliding_window: expected an int, got NoneType"),
    ("tiny-hysparse-7b", {"sparse_topk": 1_000_000}, ValueError, r"config.sparse_topk: expected sparse_topk \* sparse_block_size <= 1048576"),
    ("tiny-hysparse-7b", {"sparse_block_size": 24}, ValueError, r"config.sparse_block_size: expected a power of two, got 24"),
    ("tiny-mimo-v2-flash", {"num_key_value_heads": 3}, ValueError, r"config.num_attention_heads: expected a multiple of num_key_value_heads \(3\)"),
    ("tiny-mimo-v2-flash", {"vocab_size": 2.5}, TypeError, r"config.vocab_size: expected an int, got float 2.5"),
    ("tiny-mimo-v2-flash", {"rope_theta": float("nan")}, ValueError, r"config.rope_theta: expected a finite number"),
    ("tiny-mimo-v2-flash", {"partial_rotary_factor": 1.5}, ValueError, r"config.partial_rotary_factor: expected a finite number in \[0.0, 1.0\]"),
    ("tiny-mimo-v2-flash", {"num_experts_per_tok": 99}, ValueError, r"config.num_experts_per_tok: expected at most n_routed_experts"),
    ("tiny-mimo-v2-flash", {"scoring_func": "relu"}, ValueError, r"config.scoring_func: expected one of \['softmax', 'sigmoid'\], got 'relu'"),
    ("tiny-mimo-v2-flash", {"routed_scaling_factor": float("inf")}, ValueError, r"config.routed_scaling_factor: expected a finite number"),
    ("tiny-mimo-v2-flash", {"attention_bias": "yes"}, TypeError, r"config.attention_bias: expected true or false"),
    ("tiny-mimo-v2-flash", {"moe_layer_freq": [0, 1]}, ValueError, r"config.moe_layer_freq: expected 6 entries of 0 or 1"),
]


@pytest.mark.parametrize("name, changes, error, message", BAD_VALUES,
                         ids=[f"{k}={v!r}" for _, c, _, _ in BAD_VALUES for k, v in c.items()])
def test_values_a_model_cannot_work_with_are_named(name, changes, error, message):
    with pytest.raises(error, match=message):
        ModelConfig.from_hf_config(_hf(name, **changes))


def test_heads_zero_without_head_dim_is_named_not_a_division_by_zero():
    hf = _hf(num_attention_heads=0)
    del hf["head_dim"]
    with pytest.raises(ValueError, match=r"config.num_attention_heads: expected an int >= 1, got 0"):
        ModelConfig.from_hf_config(hf)
    with pytest.raises(ValueError, match=r"config: missing required keys \['vocab_size'\]"):
        ModelConfig.from_hf_config({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1})
