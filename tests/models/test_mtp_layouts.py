"""MTP checkpoints laid out as the published ones: MiMo-7B (``model.mtp_layers.{k}``,
``token_layernorm`` / ``hidden_layernorm`` / ``input_proj`` over ``[hidden, embedding]``, a Qwen2
block) and MiMo-V2-Flash (``model.mtp.layers.{k}``, ``enorm`` / ``hnorm`` / ``eh_proj`` over
``[embedding, hidden]``, an SWA block with sinks, ``pre_mlp_layernorm``).

Each test writes a small checkpoint with the published names, shapes and concat order (plain
``safetensors``, as a hub checkpoint is), loads it with ``load_pretrained``, and checks the draft
logits of a known input against a re-implementation written here from the published description
(float64, its own attention, RoPE and norms; nothing from ``hysparse_kernels``)."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from hysparse_kernels.models import load_pretrained
from hysparse_kernels.models.mtp import mtp_logits

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")

D, H, HKV, HD, FF, V = 32, 4, 2, 8, 48, 64


# --------------------------------------------------------------------------- the reference


def rms_norm(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, positions, theta, rope_dim):
    """Rotate-half RoPE on the first ``rope_dim`` dims of x [S, heads, hd]."""
    inv = 1.0 / theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim)
    ang = positions.double()[:, None] * inv  # [S, rope_dim/2]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, None], torch.cat([ang.sin(), ang.sin()], -1)[:, None]
    r, rest = x[..., :rope_dim], x[..., rope_dim:]
    half = rope_dim // 2
    rotated = torch.cat([-r[..., half:], r[..., :half]], -1)
    return torch.cat([r * cos + rotated * sin, rest], -1)


def attention(x, w, pre, positions, *, theta, rope_dim, heads, kv_heads, hd, vd, bias, window=None, sink=None,
              v_scale=1.0):
    """Causal GQA softmax attention over x [S, D] (optionally a window and a per-head sink)."""
    S = x.shape[0]
    lin = lambda name, n: x @ w[f"{pre}{name}.weight"].T + (w[f"{pre}{name}.bias"] if bias and name != "o_proj" else 0)  # noqa: E731
    q = rope(lin("q_proj", 0).view(S, heads, hd), positions, theta, rope_dim)
    k = rope(lin("k_proj", 0).view(S, kv_heads, hd), positions, theta, rope_dim)
    v = lin("v_proj", 0).view(S, kv_heads, vd) * v_scale
    rep = heads // kv_heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    visible = j <= i if window is None else (j <= i) & (j > i - window)
    scores = scores.masked_fill(~visible, float("-inf"))
    if sink is not None:  # a per-head logit in the denominator only
        scores = torch.cat([scores, sink[:, None, None].expand(heads, S, 1)], -1)
    p = scores.softmax(-1)[..., :S]
    out = torch.einsum("hqk,khd->qhd", p, v).reshape(S, heads * vd)
    return out @ w[f"{pre}o_proj.weight"].T


def swiglu(x, w, pre):
    g, u = x @ w[f"{pre}gate_proj.weight"].T, x @ w[f"{pre}up_proj.weight"].T
    return (torch.nn.functional.silu(g) * u) @ w[f"{pre}down_proj.weight"].T


# --------------------------------------------------------------------------- checkpoints


def random_weights(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):  # norms away from 1 so that swapping two of them shows
            out[name] = 1 + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            out[name] = 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)
    return out


def write_checkpoint(path, config, weights):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))  # no checksum: as on a hub


def qwen2_block_shapes(pre):
    return {f"{pre}input_layernorm.weight": (D,), f"{pre}post_attention_layernorm.weight": (D,),
            f"{pre}self_attn.q_proj.weight": (H * HD, D), f"{pre}self_attn.q_proj.bias": (H * HD,),
            f"{pre}self_attn.k_proj.weight": (HKV * HD, D), f"{pre}self_attn.k_proj.bias": (HKV * HD,),
            f"{pre}self_attn.v_proj.weight": (HKV * HD, D), f"{pre}self_attn.v_proj.bias": (HKV * HD,),
            f"{pre}self_attn.o_proj.weight": (D, H * HD), f"{pre}mlp.gate_proj.weight": (FF, D),
            f"{pre}mlp.up_proj.weight": (FF, D), f"{pre}mlp.down_proj.weight": (D, FF)}


# --------------------------------------------------------------------------- MiMo-7B

MIMO_CONFIG = {"architectures": ["MiMoForCausalLM"], "model_type": "mimo", "hidden_size": D, "intermediate_size": FF,
               "num_attention_heads": H, "num_key_value_heads": HKV, "num_hidden_layers": 2, "vocab_size": V,
               "rope_theta": 640000.0, "rms_norm_eps": 1e-5, "attention_bias": True, "hidden_act": "silu",
               "num_nextn_predict_layers": 1, "tie_word_embeddings": False, "use_sliding_window": False}


def mimo_weights():
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(2):
        shapes |= qwen2_block_shapes(f"model.layers.{i}.")
    mtp = "model.mtp_layers.0."
    shapes |= qwen2_block_shapes(mtp)
    shapes |= {f"{mtp}token_layernorm.weight": (D,), f"{mtp}hidden_layernorm.weight": (D,),
               f"{mtp}input_proj.weight": (D, 2 * D), f"{mtp}final_layernorm.weight": (D,)}
    return random_weights(shapes, seed=7)


def qwen2_layer(x, w, pre, positions):
    kw = dict(theta=640000.0, rope_dim=HD, heads=H, kv_heads=HKV, hd=HD, vd=HD, bias=True)
    x = x + attention(rms_norm(x, w[f"{pre}input_layernorm.weight"], 1e-5), w, f"{pre}self_attn.", positions, **kw)
    return x + swiglu(rms_norm(x, w[f"{pre}post_attention_layernorm.weight"], 1e-5), w, f"{pre}mlp.")


def mimo_reference(w, ids, *, hidden_first=True):
    """Main hidden states [S, D] and the MTP block's draft logits [S-1, V] (position i predicts
    ids[i+2]). MiMo-7B's MTP: ``input_proj(concat(hidden_layernorm(h_i), token_layernorm(emb(t_{i+1}))))``
    with the embedding zeroed at position 0, a Qwen2 layer, ``final_layernorm``, the shared head."""
    S = ids.shape[0]
    pos = torch.arange(S)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(2):
        x = qwen2_layer(x, w, f"model.layers.{i}.", pos)
    m = "model.mtp_layers.0."
    emb = w["model.embed_tokens.weight"][ids[1:]].clone()
    emb[0] = 0
    e = rms_norm(emb, w[f"{m}token_layernorm.weight"], 1e-5)
    h = rms_norm(x[:-1], w[f"{m}hidden_layernorm.weight"], 1e-5)
    y = torch.cat([h, e] if hidden_first else [e, h], -1) @ w[f"{m}input_proj.weight"].T
    y = qwen2_layer(y, w, m, pos[:-1])
    return x, rms_norm(y, w[f"{m}final_layernorm.weight"], 1e-5) @ w["lm_head.weight"].T


def test_mimo_7b_mtp_checkpoint_layout(tmp_path):
    w = mimo_weights()
    write_checkpoint(tmp_path / "mimo", MIMO_CONFIG, w)
    model = load_pretrained(tmp_path / "mimo").eval()
    assert model.graph.mtp.layout == "mimo" and next(model.parameters()).dtype == torch.float64
    ids = torch.tensor([3, 17, 42, 5, 63, 0, 8, 21, 30, 11, 2])
    with torch.no_grad():
        hidden = model.hidden_states(ids[None])
        draft = mtp_logits(model, hidden, ids[None])[0][0]
    ref_hidden, ref_draft = mimo_reference(w, ids)
    torch.testing.assert_close(hidden[0], ref_hidden, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(draft, ref_draft, rtol=1e-10, atol=1e-10)
    # The concat order matters: DeepSeek's order ([embedding, hidden]) on the same weights is far off.
    _, swapped = mimo_reference(w, ids, hidden_first=False)
    assert (swapped - ref_draft).abs().max() > 0.1


def test_mimo_7b_checkpoint_with_deepseek_names_is_refused(tmp_path):
    w = mimo_weights()
    renamed = {k.replace("model.mtp_layers.0.input_proj", "model.mtp.layers.0.eh_proj"): v for k, v in w.items()}
    write_checkpoint(tmp_path / "renamed", MIMO_CONFIG, renamed)
    with pytest.raises(Exception, match=r"missing 1 \['model.mtp_layers.0.input_proj.weight'\]"):
        load_pretrained(tmp_path / "renamed")


# --------------------------------------------------------------------------- MiMo-V2-Flash

W = 6  # sliding window of the tiny twin
FLASH_CONFIG = {
    "architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash", "hidden_size": D,
    "intermediate_size": FF, "num_hidden_layers": 2, "hybrid_layer_pattern": [0, 1], "moe_layer_freq": [0, 0],
    "num_attention_heads": H, "num_key_value_heads": 1, "head_dim": 12, "v_head_dim": HD,
    "swa_num_attention_heads": H, "swa_num_key_value_heads": HKV, "swa_head_dim": 12, "swa_v_head_dim": HD,
    "rope_theta": 5000000, "swa_rope_theta": 10000, "partial_rotary_factor": 0.334, "sliding_window": W,
    "sliding_window_size": W, "add_swa_attention_sink_bias": True, "add_full_attention_sink_bias": False,
    "attention_value_scale": 0.707, "layernorm_epsilon": 1e-5, "rms_norm_eps": 1e-5, "vocab_size": V,
    "n_shared_experts": None, "routed_scaling_factor": None, "hidden_act": "silu", "attention_bias": False,
    "tie_word_embeddings": False, "num_nextn_predict_layers": 2,
}
QK, ROPE = 12, 4  # round(12 * 0.334) = 4


def flash_attn_shapes(pre, kv, sink):
    out = {f"{pre}self_attn.q_proj.weight": (H * QK, D), f"{pre}self_attn.k_proj.weight": (kv * QK, D),
           f"{pre}self_attn.v_proj.weight": (kv * HD, D), f"{pre}self_attn.o_proj.weight": (D, H * HD)}
    if sink:
        out[f"{pre}self_attn.attention_sink_bias"] = (H,)
    return out


def flash_weights():
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i, kv, sink in ((0, 1, False), (1, HKV, True)):
        pre = f"model.layers.{i}."
        shapes |= {f"{pre}input_layernorm.weight": (D,), f"{pre}post_attention_layernorm.weight": (D,),
                   f"{pre}mlp.gate_proj.weight": (FF, D), f"{pre}mlp.up_proj.weight": (FF, D),
                   f"{pre}mlp.down_proj.weight": (D, FF)} | flash_attn_shapes(pre, kv, sink)
    for k in range(2):
        m = f"model.mtp.layers.{k}."
        shapes |= {f"{m}{n}.weight": (D,) for n in ("enorm", "hnorm", "input_layernorm", "pre_mlp_layernorm",
                                                     "final_layernorm")}
        shapes |= {f"{m}eh_proj.weight": (D, 2 * D), f"{m}mlp.gate_proj.weight": (FF, D),
                   f"{m}mlp.up_proj.weight": (FF, D), f"{m}mlp.down_proj.weight": (D, FF)}
        shapes |= flash_attn_shapes(m, HKV, True)
    return random_weights(shapes, seed=11)


def flash_mtp_reference(w, h, ids):
    """MiMo-V2-Flash's chained MTP blocks: block k at position i takes the previous depth's hidden
    h_i and emb(t_{i+k}): ``eh_proj(concat(enorm(emb), hnorm(h)))``, an SWA attention with sinks
    (SWA heads, swa_rope_theta, partial RoPE, V scaled by 0.707; the query sees itself and the
    ``sliding_window_size`` keys before it), ``pre_mlp_layernorm``, the dense MLP,
    ``final_layernorm``, the shared head. Returns each block's logits [S-k, V]."""
    S = ids.shape[0]
    out = []
    for k in (1, 2):
        m = f"model.mtp.layers.{k - 1}."
        emb = w["model.embed_tokens.weight"][ids[k:]]
        h = h[: S - k]
        x = torch.cat([rms_norm(emb, w[f"{m}enorm.weight"], 1e-5), rms_norm(h, w[f"{m}hnorm.weight"], 1e-5)], -1)
        x = x @ w[f"{m}eh_proj.weight"].T
        x = x + attention(rms_norm(x, w[f"{m}input_layernorm.weight"], 1e-5), w, f"{m}self_attn.", torch.arange(S - k),
                          theta=10000.0, rope_dim=ROPE, heads=H, kv_heads=HKV, hd=QK, vd=HD, bias=False, window=W + 1,
                          sink=w[f"{m}self_attn.attention_sink_bias"], v_scale=0.707)
        x = x + swiglu(rms_norm(x, w[f"{m}pre_mlp_layernorm.weight"], 1e-5), w, f"{m}mlp.")
        out.append(rms_norm(x, w[f"{m}final_layernorm.weight"], 1e-5) @ w["lm_head.weight"].T)
        h = x
    return out


def test_mimo_v2_flash_mtp_checkpoint_layout(tmp_path):
    w = flash_weights()
    write_checkpoint(tmp_path / "flash", FLASH_CONFIG, w)
    model = load_pretrained(tmp_path / "flash").eval()
    assert model.graph.mtp.layout == "mimo-v2" and model.graph.layers[1].rope_dim == ROPE
    assert model.graph.mtp.pattern.window == W + 1
    ids = torch.tensor([9, 1, 33, 60, 4, 4, 18, 27, 50, 12, 7, 45, 3, 39])
    with torch.no_grad():
        hidden = model.hidden_states(ids[None])
        drafts = [d[0] for d in mtp_logits(model, hidden, ids[None])]
    refs = flash_mtp_reference(w, hidden[0], ids)
    assert [d.shape for d in drafts] == [r.shape for r in refs] == [(13, V), (12, V)]
    for d, r in zip(drafts, refs):
        torch.testing.assert_close(d, r, rtol=1e-10, atol=1e-10)


def test_mimo_v2_flash_checkpoint_with_deepseek_norm_name_is_refused(tmp_path):
    w = {k.replace("pre_mlp_layernorm", "post_attention_layernorm"): v for k, v in flash_weights().items()}
    write_checkpoint(tmp_path / "flash", FLASH_CONFIG, w)
    with pytest.raises(Exception, match=r"model.mtp.layers.0.pre_mlp_layernorm.weight"):
        load_pretrained(tmp_path / "flash")
