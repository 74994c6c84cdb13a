"""Speculative decoding with the model's own MTP blocks as the draft.

Each round: the K chained MTP blocks draft ``d1..dK`` after the last committed token ``t``; the
main model verifies ``[t, d1..dK]`` in one forward (the decode ops with ``Sq = K + 1``); the
longest accepted prefix plus one token from the main model are committed; the main KV cache is
rolled back to the committed length (full caches and SWA rings alike; the HySparse selection is
recomputed by the full layers at every step, so it needs no rollback).

Acceptance: greedy (temperature 0: a draft is kept when it equals the main model's argmax, so
the output equals plain greedy decoding token for token), or rejection sampling (Leviathan et
al., 2023: keep ``d`` with probability ``min(1, p(d) / q(d))``, else draw from
``normalise(max(0, p - q))``), which leaves the main model's distribution unchanged.

The MTP blocks keep no cache of their own: each round recomputes them over the last
``K * (window - 1) + 1`` committed positions, which is exact for sliding-window MTP blocks (their
attention never reaches further) and costs ``K * window`` tokens of one block per round. Blocks
with full attention recompute over the whole prefix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hysparse_kernels.backends.tvm.threads import sized_for

from .cache import KVCache
from .generate import check_token_ids, sample, step_work


@dataclass
class SpecStats:
    rounds: int = 0  # verification forwards (the prefill is not counted)
    tokens: int = 0  # tokens committed by them
    accepted_per_head: list = field(default_factory=list)  # drafts of head j accepted
    proposed_per_head: list = field(default_factory=list)  # rounds in which head j's draft was checked
    seconds: float = 0.0

    @property
    def acceptance_length(self) -> float:
        """Mean tokens committed per verification forward (1 + accepted drafts)."""
        return self.tokens / self.rounds if self.rounds else 0.0

    @property
    def head_acceptance(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.accepted_per_head, self.proposed_per_head)]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _probs(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits.double() / temperature, dim=-1)


def accept_or_resample(p: Tensor, q: Tensor, d: int, generator=None) -> tuple[bool, int]:
    """Rejection step of speculative sampling for one draft ``d ~ q``: keep it with probability
    ``min(1, p[d] / q[d])``, else draw from ``normalise(max(0, p - q))``. The returned token is
    distributed exactly as ``p`` (Leviathan et al., 2023, Theorem 1)."""
    if float(torch.rand((), generator=generator, dtype=torch.float64)) < min(1.0, float(p[d] / q[d])):
        return True, d
    residual = torch.clamp(p - q, min=0)
    return False, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


@torch.no_grad()
def draft(model, hidden: Tensor, tokens: list[int], num_draft: int, temperature: float, generator=None):
    """Draft ``num_draft`` tokens after ``tokens`` with the MTP blocks.

    ``hidden`` ``[N-1, D]``: the main model's last hidden states at positions ``0..N-2`` (the
    last committed token ``tokens[N-1]`` is not yet processed). Returns the drafts and, when
    sampling, each draft's distribution ``q`` (``[vocab]``) for the acceptance test.
    """
    stack = model.model.mtp
    N = len(tokens)
    span = stack.span
    lo = 0 if span is None else max(0, N - 2 - num_draft * (span - 1))
    positions = torch.arange(lo, N - 1, device=hidden.device)[None]  # [1, P]
    h = hidden[lo:N - 1][None]
    drafts, dists = [], []
    for k in range(1, num_draft + 1):
        stream = [tokens[p + k] if p + k < N else drafts[p + k - N] for p in range(lo, N - 1)]
        emb = model.model.embed_tokens(torch.tensor([stream], device=hidden.device))
        h, normed = stack.layers[k - 1](h, emb, positions)
        logits = model.lm_head(normed[0, -1])
        if temperature == 0:
            drafts.append(int(logits.argmax()))
            dists.append(None)
        else:
            q = _probs(logits, temperature)
            drafts.append(int(torch.multinomial(q, 1, generator=generator)))
            dists.append(q)
    return drafts, dists


@torch.no_grad()
def speculative_generate(model, prompt: list[int], max_new_tokens: int, *, num_draft: int = 3, temperature: float = 0.0,
                         eos: int | None = None, generator=None) -> tuple[list[int], SpecStats]:
    """Generate up to ``max_new_tokens`` after ``prompt`` (one sequence), drafting ``num_draft``
    tokens per round with the MTP blocks. Returns (new tokens, statistics)."""
    stack = getattr(model.model, "mtp", None)
    if stack is None:
        raise ValueError("model: expected a model with MTP blocks (graph.mtp), got one without")
    if not 1 <= num_draft <= len(stack.layers):
        raise ValueError(f"num_draft: expected 1..{len(stack.layers)} (the MTP blocks), got {num_draft}")
    if not prompt or max_new_tokens < 1 or temperature < 0:
        raise ValueError("prompt/max_new_tokens/temperature: expected a non-empty prompt, max_new_tokens >= 1, temperature >= 0")
    check_token_ids("prompt", prompt, model.graph.vocab)
    device = next(model.parameters()).device
    start = time.perf_counter()
    cache = KVCache(model.graph, 1, len(prompt) + max_new_tokens + num_draft + 1,
                    dtype=next(model.parameters()).dtype, device=device, spare=num_draft)
    with sized_for(step_work(model, len(prompt))):
        hidden = model.hidden_states(torch.tensor([prompt], device=device), cache=cache)[0]  # [N, D]
    tokens = list(prompt)
    tokens.append(int(sample(model.logits(hidden[-1:]), temperature, 1.0, generator)[0]))
    stats = SpecStats(accepted_per_head=[0] * num_draft, proposed_per_head=[0] * num_draft)
    # A round: the verification forward of K + 1 tokens and the MTP blocks over about K * window
    # positions; for a small model it runs on one thread (threads.sized_for).
    span = stack.span if stack.span is not None else len(prompt) + max_new_tokens
    mtp_share = len(stack.layers) / max(1, model.graph.num_layers)  # the MTP blocks, as a share of the model
    round_work = step_work(model, num_draft + 1) + step_work(model, num_draft * span) * mtp_share
    with sized_for(round_work):
        while len(tokens) - len(prompt) < max_new_tokens and (eos is None or tokens[-1] != eos):
            N = len(tokens)
            drafts, dists = draft(model, hidden, tokens, num_draft, temperature, generator)
            verify = torch.tensor([[tokens[-1]] + drafts], device=device)
            h_new = model.hidden_states(verify, cache=cache)[0]  # [K+1, D], positions N-1 .. N-1+K
            logits = model.logits(h_new)
            accepted, bonus = 0, None
            for j, d in enumerate(drafts):
                stats.proposed_per_head[j] += 1
                if temperature == 0:
                    target = int(logits[j].argmax())
                    if d != target:
                        bonus = target
                        break
                else:
                    kept, token = accept_or_resample(_probs(logits[j], temperature), dists[j], d, generator)
                    if not kept:
                        bonus = token
                        break
                stats.accepted_per_head[j] += 1
                accepted += 1
            if bonus is None:  # every draft accepted: one more token from the last verified position
                bonus = int(sample(logits[num_draft:num_draft + 1], temperature, 1.0, generator)[0])
            new = drafts[:accepted] + [bonus]
            cache.rollback(N + accepted)  # keep positions N-1 .. N-1+accepted
            hidden = torch.cat([hidden, h_new[:accepted + 1]])
            tokens.extend(new)
            stats.rounds += 1
            stats.tokens += len(new)
    out = tokens[len(prompt):]
    if eos is not None and eos in out:
        out = out[:out.index(eos) + 1]
    out = out[:max_new_tokens]
    stats.seconds = time.perf_counter() - start
    return out, stats
