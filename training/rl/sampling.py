"""The sampling policy as log-probabilities, shared by the rollout engine (which samples from it)
and the trainer (which recomputes it with gradients), so both mean the same distribution.

The policy at temperature ``T > 0`` and nucleus ``top_p`` is ``softmax(logits / T)`` restricted
to the smallest set of most likely tokens whose mass reaches ``top_p`` and renormalised there
(``top_p = 1``: the plain tempered softmax). Temperature 0 is greedy decoding; its log-probs are
those of the untempered softmax (a greedy rollout is for evaluation, not for training).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Log-prob given to tokens outside the nucleus when recomputing with gradients: finite, so a
# token that left the nucleus after an update gives a ratio of ~0 instead of NaN gradients.
OUTSIDE_NUCLEUS = -1e4


def check_sampling(temperature: float, top_p: float) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a value in (0, 1], got {top_p}")


def policy_logprobs(logits: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """Log-probabilities ``[..., V]`` of the sampling policy for ``logits`` ``[..., V]``
    (computed in at least float32; float64 stays float64). Tokens outside the nucleus get
    ``OUTSIDE_NUCLEUS``."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    if temperature > 0:
        x = x / temperature
    lp = torch.log_softmax(x, dim=-1)
    if top_p >= 1.0 or temperature == 0:
        return lp
    with torch.no_grad():
        sorted_lp, order = lp.sort(dim=-1, descending=True)
        p = sorted_lp.exp()
        keep_sorted = p.cumsum(-1) - p < top_p  # the first token is always kept
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = lp.masked_fill(~keep, float("-inf"))
    return (kept - torch.logsumexp(kept, dim=-1, keepdim=True)).masked_fill(~keep, OUTSIDE_NUCLEUS)


def sample_from(logprobs: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """``[B, V]`` policy log-probs -> ``[B]`` tokens (argmax when ``temperature`` is 0, ties to the
    lower id)."""
    if temperature == 0:
        return logprobs.argmax(-1)
    probs = logprobs.exp()
    probs = probs.masked_fill(logprobs <= OUTSIDE_NUCLEUS, 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """Log-prob of ``tokens`` ``[...]`` under the policy of ``logits`` ``[..., V]``."""
    return policy_logprobs(logits, temperature, top_p).gather(-1, tokens[..., None].long()).squeeze(-1)


def entropy(logprobs: Tensor) -> Tensor:
    """Entropy ``[...]`` of the distributions ``[..., V]`` given as log-probs (nucleus-excluded
    tokens contribute nothing)."""
    p = logprobs.exp().masked_fill(logprobs <= OUTSIDE_NUCLEUS, 0.0)
    return -(p * logprobs.masked_fill(logprobs <= OUTSIDE_NUCLEUS, 0.0)).sum(-1)
