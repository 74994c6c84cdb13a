"""A decoder-only hybrid model built from an ``ir.ModelGraph``.

Layer ``i`` gets the attention module its pattern names (full, sliding window, HySparse sparse),
and its FFN (dense SwiGLU or MoE). Module names follow Hugging Face checkpoints:
``model.embed_tokens``, ``model.layers.{i}.{input_layernorm,self_attn,post_attention_layernorm,mlp}``,
``model.norm``, ``lm_head``.

Example::

    from hysparse_kernels.ir import presets
    model = HybridLM(presets.get_graph("tiny-hysparse-7b"))
    logits = model(torch.randint(0, 512, (2, 100)))      # [2, 100, vocab]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hysparse_kernels.ir import ModelGraph, Selection
from hysparse_kernels.ir.passes import selection_sources
from .layers import RMSNorm, Step, attention_for
from .moe import ffn_for


class DecoderLayer(nn.Module):
    def __init__(self, spec, hidden: int, selects: tuple[Selection, ...] | None, eps: float):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = attention_for(spec, hidden, selects)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = ffn_for(spec, hidden)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), step)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, graph: ModelGraph, eps: float):
        super().__init__()
        selects = selection_sources(graph)  # full layer -> the selections its sparse layers read
        self.embed_tokens = nn.Embedding(graph.vocab, graph.hidden)
        self.layers = nn.ModuleList(DecoderLayer(s, graph.hidden, selects.get(s.index, ()), eps) for s in graph.layers)
        self.norm = RMSNorm(graph.hidden, eps)
        if graph.mtp is not None:
            from .mtp import MTPStack

            # Always ``model.mtp.layers.{k}`` in memory; ``models.loading`` maps the layouts whose
            # checkpoints store them elsewhere (MiMo-7B: ``model.mtp_layers.{k}``).
            self.mtp = MTPStack(graph.mtp, graph.hidden, graph.num_layers, eps)

    def forward(self, input_ids: Tensor | None, step: Step, inputs_embeds: Tensor | None = None) -> Tensor:
        """Last hidden states ``[B, S, D]`` before the final norm (what the MTP blocks read).
        ``inputs_embeds`` ``[B, S, D]``: input vectors used instead of embedding ``input_ids``."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        for layer in self.layers:
            x = layer(x, step)
        return x


class CausalLMBody:
    """What every causal LM of the zoo has, whatever its base class (``HybridLM`` here, the
    ``transformers`` ``PreTrainedModel`` in ``models.hf``): ``model`` (the ``Decoder``: embedding,
    layers, final norm, MTP blocks), ``lm_head``, ``graph``, and the two steps of a forward,
    ``hidden_states`` and ``logits``."""

    graph: ModelGraph

    def _build(self, graph: ModelGraph, eps: float | None = None) -> None:
        if not isinstance(graph, ModelGraph):
            raise TypeError(f"graph: expected an ir.ModelGraph, got {type(graph).__name__}")
        self.graph = graph
        self.model = Decoder(graph, graph.norm_eps if eps is None else eps)
        self.lm_head = nn.Linear(graph.hidden, graph.vocab, bias=False)
        if graph.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(_init)

    def hidden_states(self, input_ids: Tensor | None, cache=None, *, inputs_embeds: Tensor | None = None) -> Tensor:
        """Last hidden states ``[B, S, D]`` before the final norm.

        ``inputs_embeds`` ``[B, S, D]`` (with ``input_ids=None``): vectors fed in place of the
        token embeddings, e.g. ``model.embed_tokens(ids)`` with soft tokens (latent memory,
        learned queries) spliced in; they get positions like tokens and enter the cache alike."""
        if inputs_embeds is not None:
            if input_ids is not None:
                raise ValueError("inputs_embeds: expected input_ids=None when inputs_embeds is given")
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.graph.hidden:
                raise ValueError(f"inputs_embeds: expected [B, S, {self.graph.hidden}], got shape {tuple(inputs_embeds.shape)}")
            B, S = inputs_embeds.shape[:2]
            device = inputs_embeds.device
        else:
            if input_ids is None or input_ids.dim() != 2:
                raise ValueError(f"input_ids: expected [B, S], got {None if input_ids is None else tuple(input_ids.shape)}")
            B, S = input_ids.shape
            device = input_ids.device
        if cache is None:
            positions = torch.arange(S, device=device).expand(B, S)
        else:
            start = next(iter(cache.lens.values())).long()[:, None]
            positions = start + torch.arange(S, device=device)
        return self.model(input_ids, Step(positions=positions, cache=cache), inputs_embeds)

    def logits(self, hidden: Tensor) -> Tensor:
        """``[..., D]`` last hidden states -> ``[..., vocab]`` logits (final norm, LM head)."""
        return self.lm_head(self.model.norm(hidden))


class HybridLM(CausalLMBody, nn.Module):
    """Causal LM over ``graph``: ``forward(input_ids [B, S], cache=None) -> logits [B, S, vocab]``.

    Without a cache the whole sequence is attended (training, scoring). With a ``KVCache`` the
    new tokens are appended after each sequence's cached ones and attended through the decode ops.
    ``eps``: the RMSNorm epsilon (default: the graph's ``norm_eps``).
    """

    def __init__(self, graph: ModelGraph, *, eps: float | None = None):
        nn.Module.__init__(self)
        self._build(graph, eps)

    def forward(self, input_ids: Tensor, cache=None) -> Tensor:
        return self.logits(self.hidden_states(input_ids, cache))


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
