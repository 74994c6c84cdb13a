"""Multi-token-prediction (MTP) blocks, as in DeepSeek-V3, MiMo-V2-Flash and MiMo-7B.

Block ``k`` (1-based) at position ``i`` combines the previous depth's hidden state and the
embedding of the token ``k`` ahead, ``h' = proj(concat(norm(emb(t[i+k])), norm(h[k-1][i])))``,
runs one attention block (its graph pattern, e.g. SWA with sink) and its FFN, and predicts
``t[i+k+1]`` through the final norm and the main model's shared LM head. ``h[0]`` is the main
model's last hidden state (before its final norm). Chained, K blocks draft K tokens.

The graph's ``MTPSpec.layout`` decides the names (the checkpoint's) and the concat order:

* ``deepseek``: ``enorm`` (embedding), ``hnorm`` (hidden), ``eh_proj`` over ``[emb, h]``; the
  second norm is ``post_attention_layernorm``;
* ``mimo-v2`` (MiMo-V2-Flash): the same, the second norm named ``pre_mlp_layernorm``;
* ``mimo`` (MiMo-7B): ``token_layernorm`` (embedding), ``hidden_layernorm`` (hidden),
  ``input_proj`` over ``[h, emb]`` (the reverse order), then a Qwen2 block
  (``post_attention_layernorm``).

Each block also has ``input_layernorm``, ``self_attn``, ``mlp`` and ``final_layernorm``. The
``[emb, h]`` / ``[h, emb]`` order is which half of the projection's input columns multiplies
which: ``proj.weight[:, :D]`` multiplies the first. MiMo-7B also zeroes the token embedding at
position 0 (as its reference inference code does). Blocks live at ``model.mtp.layers.{k}``;
MiMo-7B's checkpoints store them at ``model.mtp_layers.{k}`` (``models.loading`` maps the prefix).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hysparse_kernels.ir import Full, LayerSpec, MTPSpec
from .layers import RMSNorm, Step, attention_for
from .moe import ffn_for


def mtp_layer_spec(spec: MTPSpec, index: int) -> LayerSpec:
    dims = spec.attention
    return LayerSpec(index=index, pattern=spec.pattern, q_heads=dims.q_heads, kv_heads=dims.kv_heads,
                     qk_dim=dims.qk_dim, v_dim=dims.v_dim, rope_dim=dims.rope_dim, ffn=spec.ffn,
                     value_scale=dims.value_scale, rope_theta=dims.rope_theta, qkv_bias=dims.qkv_bias)


# layout -> (embedding norm, hidden norm, projection, embedding first in the concat, second norm)
LAYOUT_NAMES = {
    "deepseek": ("enorm", "hnorm", "eh_proj", True, "post_attention_layernorm"),
    "mimo-v2": ("enorm", "hnorm", "eh_proj", True, "pre_mlp_layernorm"),
    "mimo": ("token_layernorm", "hidden_layernorm", "input_proj", False, "post_attention_layernorm"),
}


class MTPBlock(nn.Module):
    """One MTP block; its submodules carry the names of ``spec.layout`` (see the module docstring)."""

    def __init__(self, spec: MTPSpec, hidden: int, index: int, eps: float):
        super().__init__()
        layer = mtp_layer_spec(spec, index)
        self.layout = spec.layout
        emb_norm, hidden_norm, proj, self.emb_first, mlp_norm = LAYOUT_NAMES[spec.layout]
        self._names = (emb_norm, hidden_norm, proj, mlp_norm)
        setattr(self, emb_norm, RMSNorm(hidden, eps))
        setattr(self, hidden_norm, RMSNorm(hidden, eps))
        setattr(self, proj, nn.Linear(2 * hidden, hidden, bias=False))  # [D, 2D]
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = attention_for(layer, hidden)
        setattr(self, mlp_norm, RMSNorm(hidden, eps))
        self.mlp = ffn_for(layer, hidden)
        self.final_layernorm = RMSNorm(hidden, eps)

    def combine(self, h_prev: Tensor, tok_emb: Tensor, positions: Tensor) -> Tensor:
        """``proj(concat(...))`` in the layout's order: ``[B, S, D]`` x2 -> ``[B, S, D]``."""
        emb_norm, hidden_norm, proj, _ = (getattr(self, n) for n in self._names)
        if self.layout == "mimo":  # MiMo-7B's MTP never sees the token at position 0
            tok_emb = tok_emb.masked_fill((positions == 0)[..., None], 0)
        e, h = emb_norm(tok_emb), hidden_norm(h_prev)
        return proj(torch.cat([e, h] if self.emb_first else [h, e], dim=-1))

    def forward(self, h_prev: Tensor, tok_emb: Tensor, positions: Tensor, cache=None) -> tuple[Tensor, Tensor]:
        """h_prev, tok_emb ``[B, S, D]``, positions ``[B, S]`` -> (hidden for the next block,
        normed hidden for the LM head). ``cache``: a ``KVCache`` holding this block's layer (its
        keys so far), for drafting position by position; ``None`` attends within the call."""
        x = self.combine(h_prev, tok_emb, positions)
        step = Step(positions=positions, cache=cache)
        x = x + self.self_attn(self.input_layernorm(x), step)
        x = x + self.mlp(getattr(self, self._names[3])(x))
        return x, self.final_layernorm(x)


class MTPStack(nn.Module):
    def __init__(self, spec: MTPSpec, hidden: int, first_index: int, eps: float):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(MTPBlock(spec, hidden, first_index + k, eps) for k in range(spec.num_layers))

    @property
    def span(self) -> int | None:
        """Keys one block attends to (its window), or None for full attention."""
        return None if isinstance(self.spec.pattern, Full) else self.spec.pattern.window


def mtp_logits(model, hidden: Tensor, input_ids: Tensor, num_blocks: int | None = None) -> list[Tensor]:
    """Training view: logits of each MTP block over a whole sequence.

    ``hidden`` ``[B, S, D]`` the main model's last hidden states, ``input_ids`` ``[B, S]``.
    Returns, for block k = 1..K, logits ``[B, S - k, vocab]`` whose position ``i`` predicts
    ``input_ids[:, i + k + 1]`` (the last position has no target inside the sequence).
    """
    stack = model.model.mtp
    K = len(stack.layers) if num_blocks is None else num_blocks
    B, S, _ = hidden.shape
    out, h = [], hidden
    for k in range(1, K + 1):
        if S - k < 1:
            break
        emb = model.model.embed_tokens(input_ids[:, k:])
        positions = torch.arange(S - k, device=hidden.device).expand(B, S - k)
        h, normed = stack.layers[k - 1](h[:, : S - k], emb, positions)
        out.append(model.lm_head(normed))
    return out
