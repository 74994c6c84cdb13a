"""Generation: prefill each prompt into a KV cache, then decode all sequences together.

Prompts may have different lengths: each is prefilled on its own view of the batch cache, and
the decode steps run on the whole batch with per-sequence lengths (``cache_seqlens``).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from hysparse_kernels import ir
from hysparse_kernels.backends.tvm.threads import sized_for

from .cache import KVCache


@lru_cache(maxsize=64)
def _active_params(graph) -> int:
    return ir.param_count(graph).active


def step_work(model, tokens: int) -> float:
    """FLOPs of one forward over ``tokens`` new tokens (2 per active parameter per token): what the
    thread policy sizes decode steps by (``threads.sized_for``: small steps run on one thread)."""
    return 2.0 * _active_params(model.graph) * tokens


def sample(logits: Tensor, temperature: float, top_p: float, generator=None) -> Tensor:
    """``[B, vocab]`` logits -> ``[B]`` tokens; temperature 0 is greedy (ties to the lower id)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the first
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)


def check_token_ids(name: str, ids, vocab: int) -> None:
    """``ids``: a non-empty list of ints in ``[0, vocab)``; else a ValueError naming ``name``."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not ids:
        raise ValueError(f"{name}: expected a non-empty list of token ids, got {ids!r}"[:200])
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
    if bad:
        raise ValueError(f"{name}: expected token ids in [0, {vocab}) (the model's vocabulary), got {bad[:5]}")


@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0, eos: int | None = None,
             generator=None, cache_dtype=None) -> list[list[int]]:
    """Continue each prompt (a list of token-id lists) by up to ``max_new_tokens`` tokens.

    Returns the new tokens of each prompt (stopping after ``eos`` when given).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: expected a non-empty list of non-empty token lists")
    for b, prompt in enumerate(prompts):
        check_token_ids(f"prompts[{b}]", prompt, model.graph.vocab)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature/top_p: expected temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    device = next(model.parameters()).device
    dtype = cache_dtype or next(model.parameters()).dtype
    B = len(prompts)
    cache = KVCache(model.graph, B, max(len(p) for p in prompts) + max_new_tokens, dtype=dtype, device=device)
    last = []
    for b, prompt in enumerate(prompts):
        ids = torch.tensor([prompt], device=device)
        with sized_for(step_work(model, len(prompt))):
            last.append(model.hidden_states(ids, cache=cache.select(b))[:, -1])
    logits = model.logits(torch.cat(last))  # [B, vocab]: only the last position of each prompt
    out = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    with sized_for(step_work(model, B)):  # a decode step of a small model runs on one thread
        for step in range(max_new_tokens):
            tok = sample(logits, temperature, top_p, generator)
            for b in range(B):
                if not done[b]:
                    out[b].append(int(tok[b]))
            if eos is not None:
                done |= tok == eos
                if bool(done.all()):
                    break
            if step + 1 < max_new_tokens:  # the last token needs no forward of its own
                logits = model.logits(model.hidden_states(tok[:, None], cache=cache)[:, -1])
    return out
