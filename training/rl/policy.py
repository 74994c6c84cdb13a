"""The policy model of the RL recipes: building it, loading it, and scoring responses.

``response_logits`` gathers, for a batch of (prompt + response) sequences, the logits that
predict each response token, in one forward without a cache; ``sequence_logprobs`` turns them
into the sampling policy's log-probs (and entropies): what the trainer recomputes and what the
rollout engine reported while sampling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hysparse_kernels.models import HybridLM, load_pretrained
from ..data import ByteTokenizer
from .sampling import entropy, policy_logprobs


def build_policy(model: str, mtp_layers: int | None = None, *, init_from: str | None = None, seed: int = 0) -> HybridLM:
    """A zoo model (``mtp_layers`` MTP blocks when given, as pretraining does), randomly
    initialised with ``seed``, or loaded from the checkpoint directory ``init_from``."""
    if init_from:
        return load_pretrained(init_from)
    from ..pretrain import model_config

    graph = model_config(model, mtp_layers).to_graph()
    if graph.vocab < ByteTokenizer.vocab_size:
        raise ValueError(f"model: vocabulary {graph.vocab} is smaller than the tokenizer's {ByteTokenizer.vocab_size}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return HybridLM(graph)


def response_logits(model, input_ids: Tensor, prompt_lens: Tensor, length: int) -> Tensor:
    """Logits ``[N, length, V]`` predicting response token ``t`` of each row (which sits at
    ``prompt_lens[i] + t`` in ``input_ids`` ``[N, T]``). Positions past a row's end read
    padding and must be masked by the caller."""
    logits = model(input_ids)  # [N, T, V]
    idx = (prompt_lens[:, None].to(input_ids.device) + torch.arange(length, device=input_ids.device) - 1)
    idx = idx.clamp(max=input_ids.shape[1] - 1)
    return logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))


def sequence_logprobs(model, batch: dict, temperature: float, top_p: float = 1.0, *, with_entropy: bool = False):
    """Policy log-probs ``[N, L]`` of ``batch["response"]`` (from ``rollout.collate``), and the
    per-token entropy ``[N, L]`` when asked (else None)."""
    L = batch["response"].shape[1]
    lp_all = policy_logprobs(response_logits(model, batch["input_ids"], batch["prompt_lens"], L), temperature, top_p)
    lp = lp_all.gather(-1, batch["response"][..., None]).squeeze(-1)
    return lp, (entropy(lp_all) if with_entropy else None)
