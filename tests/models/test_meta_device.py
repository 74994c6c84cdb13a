"""Full-size models on the meta device: the real module tree in no memory, its size equal to the
IR's count, and its checkpoint names equal to the published checkpoints' names."""

import json
from pathlib import Path

from hysparse_kernels import ir
from hysparse_kernels.cli import main
from hysparse_kernels.models import build_model, from_hf_config, hf_names

DATA = Path(__file__).resolve().parent.parent / "data"


def mimo_v2_flash_checkpoint_names() -> set[str]:
    """MiMo-V2-Flash's tensor names, written from its published layout: 48 layers (``hybrid_layer_pattern``:
    layer 0 and every 6th global, the rest SWA with a per-head ``attention_sink_bias``), layer 0 a
    dense MLP, the rest 256 routed experts with a router and its ``e_score_correction_bias``, and 3
    MTP blocks (``enorm``, ``hnorm``, ``eh_proj``, an SWA attention with sinks, ``pre_mlp_layernorm``,
    a dense MLP, ``final_layernorm``) under ``model.mtp.layers``."""
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    attn = [f"self_attn.{p}_proj.weight" for p in "qkvo"]
    dense = [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    for i in range(48):
        pre = f"model.layers.{i}."
        names |= {pre + "input_layernorm.weight", pre + "post_attention_layernorm.weight"} | {pre + a for a in attn}
        if not (i == 0 or (i + 1) % 6 == 0):
            names.add(pre + "self_attn.attention_sink_bias")
        if i == 0:
            names |= {pre + d for d in dense}
        else:
            names |= {pre + "mlp.gate.weight", pre + "mlp.gate.e_score_correction_bias"}
            names |= {f"{pre}mlp.experts.{e}.{p}_proj.weight" for e in range(256) for p in ("gate", "up", "down")}
    for k in range(3):
        pre = f"model.mtp.layers.{k}."
        names |= {pre + n + ".weight" for n in ("enorm", "hnorm", "eh_proj", "input_layernorm", "pre_mlp_layernorm",
                                                 "final_layernorm")}
        names |= {pre + a for a in attn} | {pre + d for d in dense} | {pre + "self_attn.attention_sink_bias"}
    return names


def test_mimo_v2_flash_on_the_meta_device():
    model = build_model("mimo-v2-flash", device="meta")
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == "meta" for t in tensors)
    # Parameters plus the routers' correction biases (buffers: moved by the balancing rule, not by gradients).
    assert sum(t.numel() for t in tensors) == ir.param_count(ir.get_graph("mimo-v2-flash")).total == 309_766_601_088
    names = hf_names(model)
    assert set(names) == mimo_v2_flash_checkpoint_names() and len(names) == 36565
    experts = model.model.layers[1].mlp.experts.gate_up_proj
    assert experts.shape == (256, 2 * 2048, 4096) and experts.device.type == "meta"


def test_meta_model_from_the_published_config_json():
    config = json.loads((DATA / "mimo-v2-flash.config.json").read_text())
    model = from_hf_config(config, device="meta")
    assert set(hf_names(model)) == mimo_v2_flash_checkpoint_names()
    assert next(model.parameters()).device.type == "meta"


def test_mimo_7b_names_on_the_meta_device():
    config = json.loads((DATA / "mimo-7b-base.config.json").read_text())
    names = set(hf_names(from_hf_config(config, device="meta")))
    mtp = {n for n in names if "mtp" in n}
    block = ["input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
             "mlp.down_proj.weight", "self_attn.o_proj.weight"] + [f"self_attn.{p}_proj.{w}" for p in "qkv"
                                                                    for w in ("weight", "bias")]
    assert mtp == {f"model.mtp_layers.0.{n}" for n in block + ["token_layernorm.weight", "hidden_layernorm.weight",
                                                               "input_proj.weight", "final_layernorm.weight"]}
    assert len(names - mtp) == 3 + 36 * 12  # embedding, final norm, LM head; 12 tensors per Qwen2 layer


def test_cli_prints_the_names(capsys):
    assert main(["models", "--names", "mimo-v2-flash"]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = dict(line.split("\t") for line in lines)
    assert set(printed) == mimo_v2_flash_checkpoint_names()
    assert printed["model.layers.1.mlp.experts.255.down_proj.weight"] == "[4096, 2048]"
    assert printed["model.mtp.layers.2.eh_proj.weight"] == "[4096, 8192]"


def test_cli_names_errors_are_one_line(capsys, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert main(["models", "--names", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not valid JSON" in err[0]
    assert main(["models", "--names", "no-such-model"]) == 2
    assert "expected one of" in capsys.readouterr().err


def test_every_full_size_preset_on_the_meta_device_matches_the_ir_count():
    for name in ("hysparse-7b", "hysparse-80b-a3b", "mimo-7b"):
        model = build_model(name, device="meta")
        tensors = list(model.parameters()) + list(model.buffers())
        assert all(t.is_meta for t in tensors)
        assert sum(t.numel() for t in tensors) == ir.param_count(model.graph).total, name
