"""Multi-token-prediction (MTP) blocks, as in MiMo-V2-Flash / DeepSeek-V3.

Block ``k`` (1-based) at position ``i`` combines the previous depth's hidden state and the
embedding of the token ``k`` ahead, ``h' = eh_proj(concat(enorm(emb(t[i+k])), hnorm(h[k-1][i])))``,
runs one attention block (its graph pattern, e.g. SWA with sink) and a dense FFN, and predicts
``t[i+k+1]`` through the final norm and the main model's shared LM head. ``h[0]`` is the main
model's last hidden state (before its final norm). Chained, K blocks draft K tokens.

HF names: ``model.mtp.layers.{k}.{enorm,hnorm,eh_proj,input_layernorm,self_attn,
post_attention_layernorm,mlp,final_layernorm}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hysparse_kernels.ir import Full, LayerSpec, MTPSpec
from .layers import RMSNorm, Step, attention_for


def mtp_layer_spec(spec: MTPSpec, index: int) -> LayerSpec:
    dims = spec.attention
    return LayerSpec(index=index, pattern=spec.pattern, q_heads=dims.q_heads, kv_heads=dims.kv_heads,
                     qk_dim=dims.qk_dim, v_dim=dims.v_dim, rope_dim=dims.rope_dim, ffn=spec.ffn,
                     value_scale=dims.value_scale, rope_theta=dims.rope_theta, qkv_bias=dims.qkv_bias)


class MTPBlock(nn.Module):
    def __init__(self, spec: MTPSpec, hidden: int, index: int, eps: float):
        super().__init__()
        from .model import ffn_for

        layer = mtp_layer_spec(spec, index)
        self.enorm, self.hnorm = RMSNorm(hidden, eps), RMSNorm(hidden, eps)
        self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = attention_for(layer, hidden, None)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = ffn_for(layer, hidden)
        self.final_layernorm = RMSNorm(hidden, eps)

    def forward(self, h_prev: Tensor, tok_emb: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """h_prev, tok_emb ``[B, S, D]`` -> (hidden for the next block, normed hidden for the LM head)."""
        x = self.eh_proj(torch.cat([self.enorm(tok_emb), self.hnorm(h_prev)], dim=-1))
        step = Step(positions=positions)
        x = x + self.self_attn(self.input_layernorm(x), step)
        x = x + self.mlp(self.post_attention_layernorm(x))
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
