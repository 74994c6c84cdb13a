"""Our MiMo-V2-Flash against the implementation ``transformers`` ships (written with Xiaomi), on a
small checkpoint laid out as the published one: the same per-expert names, the same
``config.json`` keys (``hybrid_layer_pattern``, ``sliding_window_size``, ``swa_*``,
``attention_value_scale``, ``layernorm_epsilon``, ``n_shared_experts: null``, ...). Both read the
same files; the logits must agree. This pins what the config keys mean, the sliding window
above all: ``sliding_window_size: W`` is the query plus the W keys before it."""

import json

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # noqa: E402

from hysparse_kernels.models import load_pretrained  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning"),
              pytest.mark.skipif("mimo_v2_flash" not in CONFIG_MAPPING_NAMES,
                                 reason="this transformers has no MiMo-V2-Flash implementation")]

D, H, QK, VD, FF, E, I, V, W = 32, 4, 12, 8, 48, 4, 16, 64, 6
CONFIG = {
    "architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash", "hidden_size": D,
    "intermediate_size": FF, "num_hidden_layers": 3, "hybrid_layer_pattern": [0, 1, 1], "moe_layer_freq": [0, 1, 1],
    "num_attention_heads": H, "num_key_value_heads": 1, "head_dim": QK, "v_head_dim": VD,
    "swa_num_attention_heads": H, "swa_num_key_value_heads": 2, "swa_head_dim": QK, "swa_v_head_dim": VD,
    "rope_theta": 5000000, "swa_rope_theta": 10000, "partial_rotary_factor": 0.334, "sliding_window": W,
    "sliding_window_size": W, "add_swa_attention_sink_bias": True, "add_full_attention_sink_bias": False,
    "attention_value_scale": 0.707, "layernorm_epsilon": 1e-5, "rms_norm_eps": 1e-5, "vocab_size": V,
    "n_routed_experts": E, "num_experts_per_tok": 2, "moe_intermediate_size": I, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "n_shared_experts": None,
    "routed_scaling_factor": None, "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
    "num_nextn_predict_layers": 0,
}


def checkpoint_weights() -> dict:
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i, kv in ((0, 1), (1, 2), (2, 2)):
        pre = f"model.layers.{i}."
        shapes |= {pre + "input_layernorm.weight": (D,), pre + "post_attention_layernorm.weight": (D,),
                   pre + "self_attn.q_proj.weight": (H * QK, D), pre + "self_attn.k_proj.weight": (kv * QK, D),
                   pre + "self_attn.v_proj.weight": (kv * VD, D), pre + "self_attn.o_proj.weight": (D, H * VD)}
        if i == 0:
            shapes |= {pre + "mlp.gate_proj.weight": (FF, D), pre + "mlp.up_proj.weight": (FF, D),
                       pre + "mlp.down_proj.weight": (D, FF)}
            continue
        shapes |= {pre + "self_attn.attention_sink_bias": (H,), pre + "mlp.gate.weight": (E, D),
                   pre + "mlp.gate.e_score_correction_bias": (E,)}
        for e in range(E):
            shapes |= {f"{pre}mlp.experts.{e}.gate_proj.weight": (I, D), f"{pre}mlp.experts.{e}.up_proj.weight": (I, D),
                       f"{pre}mlp.experts.{e}.down_proj.weight": (D, I)}
    g = torch.Generator().manual_seed(5)
    return {name: (1 + 0.3 * torch.randn(shape, generator=g)) if "norm" in name else 0.3 * torch.randn(shape, generator=g)
            for name, shape in shapes.items()}


def test_logits_agree_with_the_transformers_implementation(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    save_file(checkpoint_weights(), str(tmp_path / "model.safetensors"))
    ours = load_pretrained(tmp_path, dtype=torch.float64).eval()
    assert ours.graph.layers[1].pattern.window == W + 1  # the query and the W keys before it
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(theirs).__module__.startswith("transformers.models.mimo_v2_flash")
    ids = torch.tensor([[9, 1, 33, 60, 4, 4, 18, 27, 50, 12, 7, 45, 3, 39, 22, 8, 61, 0, 5, 30]])  # > the window
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits.double()
    # float32 (theirs) against float64 (ours): a few float32 roundings of logits of size ~10
    assert a.abs().max() > 1
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # transformers' class stays registered for the type; ours loads the same folder when asked by name.
    from hysparse_kernels.models.hf import MiMoV2FlashForCausalLM

    mine = MiMoV2FlashForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(mine(ids).logits, a)
