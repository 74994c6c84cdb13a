"""The LatentMem memory composer and the frozen agent that reads its latent memory.

``MemoryComposer(backbone, agent_hidden, n_latent=8)``: for a context text (the agent's role, the
retrieved experience, the current task), the zoo model ``backbone`` reads the context's token
embeddings followed by ``n_latent`` learned query vectors ``[P, D_c]``; its last hidden states at
the query positions, through a linear projection ``D_c -> D_a``, are the latent memory
``[P, D_a]``. Different roles are different context texts, so the same experience composes into
different memories per role.

``LatentAgent(agent, n_latent)``: the frozen agent with ``P`` latent tokens prepended to its
input embeddings, right after BOS (which stays at position 0). A prompt is
``[BOS] + [PAD] * P + tokens``; the ``P`` placeholder positions take ``e_BOS + latent``, where
``e_BOS`` is the agent's embedding of BOS and ``latent`` what was registered for that prompt
(``set_memory``). The projection starts at zero, so an untrained composer shows the agent extra
BOS tokens, and LMPO moves the slots from there. An agent trained on bare prompts only breaks on
extra positions (the RL recipes' lookup warm start: greedy dev success 0.77 / 0.21 / 0.02 with 1 /
2 / 4 BOS slots, against 0.9 without); the LatentMem team's warm starts (``roles``) are trained
with 1..4 noisy BOS slots and read them as they read a bare prompt. The rollout engine, its
cache and ``rollout.collate`` work unchanged (positions, cache capacity and ``prompt_lens`` count
the latent slots like tokens). ``response_logprobs`` scores responses with gradients flowing
into the latent vectors (and so into the composer), not into the agent.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data import ByteTokenizer
from ..rl.sampling import policy_logprobs


class MemoryComposer(nn.Module):
    """``forward(contexts: list[list[int]]) -> latent [B, P, D_a]``; see the module docstring."""

    def __init__(self, backbone, agent_hidden: int, n_latent: int = 8, *, seed: int = 0):
        super().__init__()
        if n_latent < 1:
            raise ValueError(f"n_latent: expected >= 1, got {n_latent}")
        self.backbone = backbone
        D = backbone.graph.hidden
        g = torch.Generator().manual_seed(seed)
        self.queries = nn.Parameter(torch.randn(n_latent, D, generator=g) * 0.02)
        self.proj = nn.Linear(D, agent_hidden)
        with torch.no_grad():  # zero: the untrained composer adds nothing to the agent's fill slots
            self.proj.weight.zero_()
            self.proj.bias.zero_()
        self.n_latent = n_latent

    def forward(self, contexts: list[list[int]]) -> Tensor:
        if not contexts or any(len(c) == 0 for c in contexts):
            raise ValueError("contexts: expected a non-empty list of non-empty token lists")
        emb = self.backbone.model.embed_tokens
        device = self.queries.device
        out = []
        for ids in contexts:  # one row each: no padding ahead of the queries
            x = torch.cat([emb(torch.tensor([ids], device=device)), self.queries[None]], 1)  # [1, S+P, D_c]
            h = self.backbone.hidden_states(None, inputs_embeds=x)[:, -self.n_latent:]  # [1, P, D_c]
            out.append(self.proj(self.backbone.model.norm(h)))
        return torch.cat(out)  # [B, P, D_a]


class LatentAgent(nn.Module):
    """A frozen ``agent`` (``HybridLM``) whose prompts start with ``n_latent`` latent slots."""

    def __init__(self, agent, n_latent: int):
        super().__init__()
        self.agent = agent
        self.n_latent = n_latent
        self._memory: dict[tuple, Tensor] = {}
        agent.requires_grad_(False)
        fill = torch.tensor([ByteTokenizer.bos])
        self.register_buffer("fill", agent.model.embed_tokens(fill).detach()[0], persistent=False)  # [D]

    @property
    def graph(self):
        return self.agent.graph

    @property
    def model(self):
        return self.agent.model

    def logits(self, hidden: Tensor) -> Tensor:
        return self.agent.logits(hidden)

    def prompt(self, tokens: list[int]) -> list[int]:
        """``[BOS] + [PAD] * n_latent + tokens[1:]`` for ``tokens`` that start with BOS: the
        prompt the engine rolls out."""
        if not tokens or tokens[0] != ByteTokenizer.bos:
            raise ValueError("tokens: expected a prompt that starts with BOS")
        return [ByteTokenizer.bos] + [ByteTokenizer.pad] * self.n_latent + list(tokens[1:])

    def slots(self, latent: Tensor, x: Tensor) -> Tensor:
        """Token embeddings ``x [B, T, D]`` of prompts from :meth:`prompt` with the slots
        (positions ``1..P``) holding ``fill + latent [B, P, D]``."""
        lat = self.fill.to(x.dtype) + latent.to(x.dtype)
        return torch.cat([x[:, :1], lat, x[:, 1 + self.n_latent:]], 1)

    def set_memory(self, prompts: list[list[int]], latent: Tensor) -> None:
        """Register ``latent [B, P, D]`` (detached) for the prompts (from :meth:`prompt`)."""
        if latent.shape[0] != len(prompts) or latent.shape[1] != self.n_latent:
            raise ValueError(f"latent: expected [{len(prompts)}, {self.n_latent}, D], got {tuple(latent.shape)}")
        self._memory = {tuple(p): latent[i].detach() for i, p in enumerate(prompts)}

    def hidden_states(self, input_ids: Tensor, cache=None) -> Tensor:
        """As ``HybridLM.hidden_states``; a prefill (empty cache, or none) of prompts with latent
        slots gets their registered latent vectors in those slots."""
        fresh = cache is None or int(next(iter(cache.lens.values())).max()) == 0
        if not fresh or input_ids.shape[1] <= self.n_latent:
            return self.agent.hidden_states(input_ids, cache)
        x = self.agent.model.embed_tokens(input_ids)
        rows = []
        for b in range(input_ids.shape[0]):
            key = tuple(input_ids[b].tolist())
            if key not in self._memory:
                raise KeyError("LatentAgent: no latent memory registered for a prompt (call set_memory first)")
            rows.append(self._memory[key])
        return self.agent.hidden_states(None, cache, inputs_embeds=self.slots(torch.stack(rows), x))

    def forward(self, input_ids: Tensor, cache=None) -> Tensor:
        return self.logits(self.hidden_states(input_ids, cache))

    def response_logprobs(self, latent: Tensor, batch: dict, temperature: float) -> Tensor:
        """Log-probs ``[N, L]`` of ``batch["response"]`` (``rollout.collate`` of rollouts whose
        prompts came from :meth:`prompt`) with ``latent [N, P, D]`` in the slots; differentiable
        in ``latent``."""
        ids = batch["input_ids"]
        x = self.slots(latent, self.agent.model.embed_tokens(ids))
        logits = self.agent.logits(self.agent.hidden_states(None, inputs_embeds=x))  # [N, T, V]
        L = batch["response"].shape[1]
        idx = (batch["prompt_lens"][:, None] + torch.arange(L) - 1).clamp(max=ids.shape[1] - 1)
        picked = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))
        lp = policy_logprobs(picked, temperature, 1.0)
        return lp.gather(-1, batch["response"][..., None]).squeeze(-1)
