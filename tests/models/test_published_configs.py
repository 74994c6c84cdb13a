"""The published MiMo-V2-Flash and MiMo-7B config.json files load into the zoo's presets, and
their parameter counts and KV plans reproduce the published figures."""

import json
import logging
from pathlib import Path

import pytest

from hysparse_kernels import ir
from hysparse_kernels.models import ModelConfig

DATA = Path(__file__).resolve().parent.parent / "data"


def published(name: str) -> dict:
    return json.loads((DATA / f"{name}.config.json").read_text())


def graph_of(config: dict) -> ir.ModelGraph:
    return ModelConfig.from_hf_config(config).to_graph()


def test_mimo_v2_flash_config_json_is_the_preset():
    config = published("mimo-v2-flash")
    assert config["n_shared_experts"] is None and config["routed_scaling_factor"] is None  # what the hub stores
    assert "num_nextn_predict_layers" not in config
    g, preset = graph_of(config), ir.get_graph("mimo-v2-flash")
    assert g == preset  # layers (patterns, heads, dims, rope thetas, FFNs), MTP, vocab, hidden, norm eps
    full, swa = g.layers[0], g.layers[1]
    assert (full.pattern.kind, full.rope_theta, full.kv_heads, full.rope_dim) == ("full", 5_000_000.0, 4, 64)
    # sliding_window 128 counts the keys before the query: the zoo's window (query included) is 129
    assert (swa.pattern.kind, swa.rope_theta, swa.kv_heads, swa.pattern.window, swa.pattern.sink) == ("swa", 10_000.0, 8, 129, True)
    assert sum(layer.pattern.kind == "full" for layer in g.layers) == 9
    moe = g.layers[1].ffn
    assert (moe.shared_experts, moe.routed_scaling, moe.correction_bias, moe.renormalize) == (0, 1.0, True, True)
    assert g.layers[0].ffn == ir.Dense(16384)
    # No MTP key in config.json: the model type's published default, 3 SWA blocks with a dense FFN.
    assert (g.mtp.num_layers, g.mtp.pattern, g.mtp.ffn, g.mtp.layout) == (3, swa.pattern, ir.Dense(16384), "mimo-v2")
    assert g.mtp.attention.rope_theta == 10_000.0 and g.norm_eps == 1e-5


def test_mimo_v2_flash_parameter_counts():
    pc = ir.param_count(graph_of(published("mimo-v2-flash")))
    assert round(pc.total / 1e9, 1) == 309.8  # with its 3 MTP blocks
    assert round((pc.total - pc.part("mtp")) / 1e9, 1) == 308.8
    assert round(pc.active / 1e9, 1) == 14.8


def test_mimo_7b_config_json_is_the_preset():
    g, preset = graph_of(published("mimo-7b-base")), ir.get_graph("mimo-7b")
    assert g == preset
    layer = g.layers[0]
    assert (layer.pattern.kind, layer.rope_theta, layer.qkv_bias, layer.q_heads, layer.kv_heads, layer.qk_dim) == (
        "full", 640_000.0, True, 32, 8, 128)
    # Its MTP block is a full-attention Qwen2 block (not the SWA default of MiMo-V2-Flash).
    assert (g.mtp.num_layers, g.mtp.pattern, g.mtp.ffn, g.mtp.layout) == (1, ir.Full(), ir.Dense(11008), "mimo")
    assert g.norm_eps == 1e-5


def test_unknown_keys_are_named_in_one_line(caplog):
    config = published("mimo-v2-flash")
    config["some_future_key"] = 3
    with caplog.at_level(logging.INFO, logger="hysparse_kernels.models"):
        ModelConfig.from_hf_config(config)
    lines = [r.getMessage() for r in caplog.records if "ignoring keys" in r.getMessage()]
    assert len(lines) == 1
    assert "attention_chunk_size" in lines[0] and "some_future_key" in lines[0]
    assert "rope_theta" not in lines[0] and "architectures" not in lines[0]


def test_nulls_mean_defaults_and_missing_mtp_keys_follow_the_model_type():
    config = published("mimo-7b-base")
    del config["num_nextn_predict_layers"]
    config["attention_bias"] = None
    g = graph_of(config)
    assert g.mtp.num_layers == 1 and g.layers[0].qkv_bias  # MiMo-7B: one MTP block, Qwen2 biases
    flash = published("mimo-v2-flash")
    flash["num_nextn_predict_layers"] = 1
    assert graph_of(flash).mtp.num_layers == 1  # given: not overridden


def test_transformers_rope_parameters_are_read():
    config = published("mimo-v2-flash")
    for key in ("rope_theta", "swa_rope_theta", "partial_rotary_factor"):
        del config[key]
    config["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.334},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.334},
    }
    assert graph_of(config) == ir.get_graph("mimo-v2-flash")


@pytest.mark.parametrize("key, value, message", [
    ("hidden_act", "gelu", r"config.hidden_act: expected 'silu'"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, r"config.rope_scaling: expected null"),
    ("add_full_attention_sink_bias", True, r"config.add_full_attention_sink_bias: expected false"),
    ("use_qk_norm", True, r"config.use_qk_norm: expected false"),
    ("sliding_window_size", 256, r"config.sliding_window_size: expected the same window as sliding_window \(128\)"),
    ("layernorm_epsilon", 1e-6, r"config.layernorm_epsilon: expected the same value as rms_norm_eps"),
    ("topk_method", "aux_loss", r"config.topk_method: expected one of"),
])
def test_architectures_the_zoo_does_not_build_are_refused(key, value, message):
    config = published("mimo-v2-flash")
    config[key] = value
    with pytest.raises(ValueError, match=message):
        graph_of(config)


TOPK = ("greedy", "group_limited_greedy", "noaux_tc")


def test_topk_method_maps_to_the_routing():
    base = {"vocab_size": 64, "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1,
            "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "n_group": 4, "topk_group": 2}
    greedy = graph_of({**base, "topk_method": "greedy"}).layers[0].ffn
    limited = graph_of({**base, "topk_method": "group_limited_greedy", "norm_topk_prob": False}).layers[0].ffn
    noaux = graph_of({**base, "topk_method": "noaux_tc", "scoring_func": "sigmoid"}).layers[0].ffn
    assert (greedy.n_group, greedy.correction_bias) == (1, False)  # plain top-k: groups ignored
    assert (limited.n_group, limited.topk_group, limited.correction_bias, limited.renormalize) == (4, 2, False, False)
    assert (noaux.n_group, noaux.correction_bias, noaux.renormalize) == (4, True, True)
    for method in TOPK:  # and back through our config.json
        g = graph_of({**base, "topk_method": method})
        assert graph_of(ModelConfig.from_graph(g).to_hf_config()) == g


def test_hysparse_80b_kv_plan_at_1m_tokens_in_fp8():
    """The follow-up paper's FP8 KV figures at 1M tokens: HySparse 6.72 GB, hybrid SWA 12.09 GB."""
    g = ir.get_graph("hysparse-80b-a3b")
    full = g.layers[0]
    assert (full.q_heads, full.kv_heads, full.qk_dim, full.v_dim, g.hidden) == (64, 4, 192, 128, 2048)
    plan = ir.kv_plan(g, batch=1, seq_len=2**20, dtype="fp8")
    # By hand: 5 full layers hold 2^20 tokens, 44 sparse layers a 128-token SWA ring; per token
    # 4 KV heads x (192 + 128) x 1 byte. The twin: 9 full layers (0, 6, ..., 48), 40 SWA-128.
    per_token = 4 * (192 + 128)
    assert plan.total_bytes == (5 * 2**20 + 44 * 128) * per_token
    assert plan.swa_twin_total_bytes == (9 * 2**20 + 40 * 128) * per_token
    assert plan.total_bytes / 1e9 == pytest.approx(6.72, rel=0.01)
    assert plan.swa_twin_total_bytes / 1e9 == pytest.approx(12.09, rel=0.01)
    twin = ir.hybrid_swa_twin(g)
    assert [i for i, layer in enumerate(twin.layers) if layer.pattern.kind == "full"] == list(range(0, 49, 6))
    assert ir.kv_plan(twin, 1, 2**20, "fp8").total_bytes == plan.swa_twin_total_bytes


def test_hysparse_80b_notes_state_the_assumptions():
    g = ir.get_graph("hysparse-80b-a3b")
    pc = ir.param_count(g)
    assert g.layers[1].ffn == ir.MoE(512, 8, 512, scoring="sigmoid", correction_bias=True)
    assert round(pc.total / 1e9, 1) == 81.8 and round(pc.active_non_embedding / 1e9, 2) == 3.48
    text = " ".join(g.notes)
    assert "QK 192 / V 128" in text and "512 experts of 512" in text and "3.48B" in text and "81.8B" in text
