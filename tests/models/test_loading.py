"""Checkpoints: Hugging Face names, bit-exact round trips, and clear errors (all or nothing)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hysparse_kernels.models import CheckpointError, build_model, load_pretrained, save_pretrained
from hysparse_kernels.models.loading import to_hf_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("shard", [None, 200_000], ids=["single", "sharded"])
@pytest.mark.parametrize("name", ["tiny-mimo-v2-flash", "tiny-hysparse-7b"])
def test_round_trip_is_bit_exact(tmp_path, name, shard):
    model = build_model(name)
    save_pretrained(model, tmp_path, max_shard_bytes=shard)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "config.json" in files and not any(f.endswith(".tmp") for f in files)
    assert ("model.safetensors.index.json" in files) == (shard is not None)
    assert _same(model, load_pretrained(tmp_path))
    assert _same(model, load_pretrained(tmp_path, name=name))


def test_hugging_face_names():
    names = set(to_hf_state_dict(build_model("tiny-mimo-v2-flash")))
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert "model.layers.1.self_attn.attention_sink_bias" in names
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" in names
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in names
    assert not any("gate_up_proj" in n for n in names)


@pytest.fixture
def saved(tmp_path):
    model = build_model("tiny-mimo-v2-flash")
    save_pretrained(model, tmp_path)
    return tmp_path


def _edit(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_key_is_listed(saved):
    _edit(saved, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 \['model.norm.weight'\]"):
        load_pretrained(saved)


def test_unexpected_key_is_listed(saved):
    _edit(saved, lambda t: t.__setitem__("model.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected 1 \['model.extra.weight'\]"):
        load_pretrained(saved)


def test_shape_mismatch_is_named(saved):
    _edit(saved, lambda t: t.__setitem__("model.norm.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"model.norm.weight: expected shape \(64,\), got \(3,\)"):
        load_pretrained(saved)


def test_truncated_file_is_a_clear_error(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        load_pretrained(saved)


def test_missing_shard_and_missing_config(tmp_path):
    model = build_model("tiny-hysparse-7b")
    save_pretrained(model, tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / victim).unlink()
    with pytest.raises(CheckpointError, match=f"lists shard {victim}, which is missing"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing; pass name="):
        load_pretrained(tmp_path)


def test_config_json_is_hugging_face_style(tmp_path):
    save_pretrained(build_model("tiny-mimo-v2-flash"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["hybrid_layer_pattern"] == [0, 1, 1, 1, 1, 0]
    assert cfg["swa_num_key_value_heads"] == 2 and cfg["add_swa_attention_sink_bias"] is True
    assert cfg["attention_value_scale"] == 0.707 and cfg["num_nextn_predict_layers"] == 3


def test_unusable_config_is_a_clear_error(saved):
    (saved / "config.json").write_text(json.dumps({"vocab_size": 10}))
    with pytest.raises(CheckpointError, match="config.json: not a usable model config"):
        load_pretrained(saved)
