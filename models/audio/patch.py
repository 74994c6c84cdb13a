"""The patch encoder and the patch decoder of MiMo-Audio, and the delay pattern between them.

A *patch* is ``P`` consecutive RVQ frames of ``C`` channels: codes ``[..., P, C]``.

**Delay pattern.** The patch decoder emits a patch in ``S = P + max(delays)`` local steps; at
step ``s`` it predicts channel ``c`` of frame ``s - delays[c]`` (when ``0 <= s - delays[c] < P``).
``delay_grid`` lays a patch out that way, ``[N, P, C] -> [N, S, C]``, with the channel's empty id
in the slots that hold nothing; ``undelay_grid`` reads it back. With P = 2, C = 3, delays 0, 1, 2
(``a``, ``b``, ``c`` the channels; digits the frames)::

    step   0    1    2    3
    c=0    a0   a1   -    -
    c=1    -    b0   b1   -
    c=2    -    -    c0   c1

The local input of step 0 is the backbone's hidden state (projected); the input of step
``s >= 1`` is the sum of the embeddings of the tokens emitted at step ``s - 1`` (step 2 above:
``emb(a1) + emb(b0)``). The same embeddings feed the patch encoder (MiMo-Audio shares them).

**Patch encoder.** Per frame the ``C`` code embeddings are summed; a small Transformer runs inside
each patch (bidirectional when ``input_full_attention``); the ``P`` outputs are concatenated and
projected to the backbone's width. Attention goes through ``hysparse_kernels.attention``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

import hysparse_kernels as hk
from hysparse_kernels.ir import ModelGraph
from ..cache import KVCache
from ..layers import FullAttention, RMSNorm, Step
from ..model import DecoderLayer
from .config import AudioLMConfig


def delay_mask(group_size: int, delays) -> Tensor:
    """bool [S, C]: True where step ``s`` emits a token of channel ``c``."""
    S = group_size + max(delays)
    s = torch.arange(S)[:, None]
    d = torch.tensor(list(delays))[None]
    return (s >= d) & (s < d + group_size)


def delay_grid(patch: Tensor, delays, empty_ids) -> Tensor:
    """Patches [N, P, C] -> the delayed layout [N, S, C] (``grid[n, s, c] = patch[n, s - d_c, c]``)."""
    N, P, C = patch.shape
    if len(delays) != C or len(empty_ids) != C:
        raise ValueError(f"delays/empty_ids: expected {C} entries (one per channel), got {len(delays)}, {len(empty_ids)}")
    S = P + max(delays)
    grid = torch.tensor(list(empty_ids), dtype=patch.dtype, device=patch.device).expand(N, S, C).clone()
    for c, d in enumerate(delays):
        grid[:, d:d + P, c] = patch[:, :, c]
    return grid


def undelay_grid(grid: Tensor, delays, group_size: int) -> Tensor:
    """The delayed layout [N, S, C] -> patches [N, P, C] (inverse of ``delay_grid``)."""
    return torch.stack([grid[:, d:d + group_size, c] for c, d in enumerate(delays)], dim=-1)


class BidirectionalAttention(FullAttention):
    """Full attention without the causal mask (inside one patch); no KV cache."""

    def forward(self, x: Tensor, step: Step) -> Tensor:
        q, k, v = self.qkv(x, step)
        return self.out(hk.attention(q, k, v, causal=False))


class LocalTransformer(nn.Module):
    """The layers of ``graph`` (zoo decoder layers: RMSNorm, attention with RoPE, SwiGLU) and a
    final norm, over ``[N, L, dim]``; causal (with an optional ``KVCache``) or bidirectional."""

    def __init__(self, graph: ModelGraph, *, causal: bool, eps: float = 1e-6):
        super().__init__()
        self.graph, self.causal = graph, causal
        self.layers = nn.ModuleList(DecoderLayer(spec, graph.hidden, None, eps) for spec in graph.layers)
        if not causal:
            for layer, spec in zip(self.layers, graph.layers):
                layer.self_attn = BidirectionalAttention(spec, graph.hidden)
        self.norm = RMSNorm(graph.hidden, eps)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        N, L, _ = x.shape
        if cache is None:
            positions = torch.arange(L, device=x.device).expand(N, L)
        else:
            if not self.causal:
                raise ValueError("cache: a bidirectional local transformer has no KV cache")
            positions = next(iter(cache.lens.values())).long()[:, None] + torch.arange(L, device=x.device)
        step = Step(positions=positions, cache=cache)
        for layer in self.layers:
            x = layer(x, step)
        return self.norm(x)


def frame_embeddings(embeddings: nn.ModuleList, codes: Tensor, empty_ids) -> Tensor:
    """Sum over channels of the code embeddings: codes [..., C] -> [..., dim] (empty ids add zero)."""
    out = 0
    for c, emb in enumerate(embeddings):
        ids = codes[..., c]
        e = emb(ids)
        out = out + e * (ids != empty_ids[c]).unsqueeze(-1).to(e.dtype)
    return out


class PatchEncoder(nn.Module):
    """Frame embeddings [N, P, input_local_dim] -> one vector per patch [N, hidden]."""

    def __init__(self, cfg: AudioLMConfig, hidden: int):
        super().__init__()
        self.input_local_transformer = LocalTransformer(cfg.patch_encoder_graph(), causal=not cfg.input_full_attention,
                                                        eps=cfg.norm_eps)
        self.speech_group_downcast = nn.Linear(cfg.group_size * cfg.input_local_dim, hidden, bias=False)

    def forward(self, frames: Tensor) -> Tensor:
        N, P, D = frames.shape
        return self.speech_group_downcast(self.input_local_transformer(frames).reshape(N, P * D))


Sampler = Callable[[Tensor, int, int], Tensor]  # (logits [N, V], channel, step) -> tokens long [N]


class PatchDecoder(nn.Module):
    """Backbone hidden [N, hidden] -> the next patch's codes, channel by channel with the delay pattern."""

    def __init__(self, cfg: AudioLMConfig, hidden: int):
        super().__init__()
        self.cfg = cfg
        self.hidden_states_downcast = nn.Linear(hidden, cfg.local_dim, bias=False)
        self.local_transformer = LocalTransformer(cfg.patch_decoder_graph(), causal=True, eps=cfg.norm_eps)
        self.local_transformer_lm_heads = nn.ModuleList(nn.Linear(cfg.local_dim, v, bias=False) for v in cfg.vocab_sizes)
        self.speech_embeddings_to_local = (nn.Linear(cfg.input_local_dim, cfg.local_dim, bias=False)
                                           if cfg.input_local_dim != cfg.local_dim else None)

    def _to_local(self, e: Tensor) -> Tensor:
        return e if self.speech_embeddings_to_local is None else self.speech_embeddings_to_local(e)

    def logits(self, hidden: Tensor, patch: Tensor, embeddings: nn.ModuleList) -> list[Tensor]:
        """Teacher forcing: hidden [N, hidden], the target patches [N, P, C] -> per channel logits
        [N, S, V_c] (row ``s`` predicts what step ``s`` emits; only ``delay_mask`` slots count)."""
        cfg = self.cfg
        grid = delay_grid(patch, cfg.delay_pattern, cfg.empty_ids)  # [N, S, C]
        step_inputs = self._to_local(frame_embeddings(embeddings, grid[:, :-1], cfg.empty_ids))  # [N, S-1, local]
        x = torch.cat([self.hidden_states_downcast(hidden)[:, None], step_inputs], dim=1)  # [N, S, local]
        out = self.local_transformer(x)
        return [head(out) for head in self.local_transformer_lm_heads]

    def losses(self, hidden: Tensor, patch: Tensor, embeddings: nn.ModuleList) -> Tensor:
        """Cross-entropy per channel [C] of the target patches [N, P, C] (each of the ``N * P``
        frames' tokens counted once)."""
        cfg = self.cfg
        grid = delay_grid(patch, cfg.delay_pattern, cfg.empty_ids)
        mask = delay_mask(cfg.group_size, cfg.delay_pattern).to(patch.device)
        out = []
        for c, logits in enumerate(self.logits(hidden, patch, embeddings)):
            valid = mask[:, c]
            out.append(nn.functional.cross_entropy(logits[:, valid].flatten(0, 1).float(), grid[:, valid, c].flatten()))
        return torch.stack(out)

    @torch.no_grad()
    def generate(self, hidden: Tensor, embeddings: nn.ModuleList, sampler: Sampler) -> Tensor:
        """Hidden [N, hidden] -> patches long [N, P, C], one local step at a time through a KV cache.
        ``sampler(logits [N, V_c], channel, step)`` picks the tokens; the empty id is never offered
        (its logit is -inf)."""
        cfg = self.cfg
        N = hidden.shape[0]
        S, mask = cfg.delay_steps, delay_mask(cfg.group_size, cfg.delay_pattern)
        cache = KVCache(self.local_transformer.graph, N, S, dtype=hidden.dtype, device=hidden.device)
        grid = torch.tensor(list(cfg.empty_ids), device=hidden.device).expand(N, S, cfg.num_channels).clone()
        x = self.hidden_states_downcast(hidden)[:, None]  # [N, 1, local]
        for s in range(S):
            out = self.local_transformer(x, cache)[:, -1]  # [N, local]
            nxt = torch.zeros_like(x)
            for c in range(cfg.num_channels):
                if not mask[s, c]:
                    continue
                logits = self.local_transformer_lm_heads[c](out)
                logits[:, cfg.empty_ids[c]] = float("-inf")
                tok = sampler(logits, c, s)
                grid[:, s, c] = tok
                nxt = nxt + self._to_local(embeddings[c](tok))[:, None]
            x = nxt
        return undelay_grid(grid, cfg.delay_pattern, cfg.group_size)
