"""Multi-turn rollouts of a ``VisionLM`` with tools that may return images, and the tensors the
SFT and RL steps train on.

A rollout starts from an episode's prompt (token ids with the puzzle image's placeholder run),
decodes one token at a time (bytes only: ``byte_logits``) on a ``KVCache`` (the zoo decoder's ``hysparse`` decode ops) and
ends a turn at a newline; the episode's ``ToolSession`` answers a call with an observation,
whose text is encoded and, when the tool returned an image, gets that image's placeholder run
at ``IMAGE_MARK``. The observation is appended to the row's cache in one forward (its patch
vectors spliced in) and masked out of the loss; an answer, or anything that is not a call, ends
the rollout. Rows of the same prompt (a GRPO group) are prefilled together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from hysparse_kernels.models import KVCache
from hysparse_kernels.models.vision.multimodal import IMAGE_TOKEN
from ..data import ByteTokenizer
from ..rl.kvrows import row_slice, take_rows
from ..rl.sampling import policy_logprobs, sample_from
from .tools import IMAGE_MARK

NEWLINE = 10  # the byte that ends a turn


def byte_logits(logits: Tensor) -> Tensor:
    """``logits [..., V]`` with every id but the 256 bytes set to -inf: the policy writes text
    only (an image placeholder, or BOS / EOS / PAD, is never sampled)."""
    return logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) >= 256, float("-inf"))


def image_tensor(images: list[np.ndarray]) -> Tensor | None:
    """``[px, px, 3]`` uint8 images -> ``[M, 3, px, px]`` floats in 0..1 (None for none)."""
    if not images:
        return None
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def encode(text: str, tok: ByteTokenizer, n_patches: int, *, bos: bool = False) -> list[int]:
    """``text`` as ids, each ``IMAGE_MARK`` replaced by ``n_patches`` placeholder ids."""
    parts = text.split(IMAGE_MARK)
    ids = [tok.bos] if bos else []
    for i, part in enumerate(parts):
        if i:
            ids += [IMAGE_TOKEN] * n_patches
        ids += tok.encode(part)
    return ids


@dataclass
class VRollout:
    """One rollout: ``prompt`` ids; response ``tokens`` (model and observation ids), their
    sampling ``logprobs`` (0 on observations), ``mask`` (1 on model tokens), ``turn`` (per
    token); ``turn_texts``; ``images``: the prompt's image then every tool image, in order;
    ``finish``: ``stop``, ``length`` or ``turns``."""

    prompt: list[int]
    images: list = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)
    turn_texts: list[str] = field(default_factory=list)
    finish: str = ""


@dataclass(frozen=True)
class Limits:
    """``max_new_tokens``: model tokens per rollout; ``max_total_tokens``: with observations;
    ``max_turns``: model turns."""

    max_new_tokens: int = 110
    max_total_tokens: int = 220
    max_turns: int = 6


@torch.no_grad()
def generate(model, episodes: list, limits: Limits, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> list[VRollout]:
    """Roll out every episode once (see the module docstring); consecutive equal episodes share
    their prefill. ``temperature`` 0 is greedy."""
    tok = ByteTokenizer()
    n = model.n_patches
    was = model.training
    model.eval()
    try:
        sessions = [e.session() for e in episodes]
        rows = [VRollout(encode(e.prompt, tok, n, bos=True), [e.puzzle.image]) for e in episodes]
        cap = max(len(r.prompt) for r in rows) + limits.max_total_tokens + 2
        dtype = next(model.parameters()).dtype
        cache = KVCache(model.graph, len(rows), cap, dtype=dtype)
        last = []
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and episodes[j] is episodes[i]:
                j += 1
            ids = torch.tensor([rows[i].prompt] * (j - i))
            h = model.hidden_states(ids, image_tensor([rows[i].images[0]] * (j - i)), row_slice(cache, i, j))
            last.append(h[:, -1])
            i = j
        logits = byte_logits(model.logits(torch.cat(last)))
        live = list(range(len(rows)))  # live[s]: the rollout in cache row s
        start = [0] * len(rows)  # where each row's current turn began
        done = [False] * len(rows)
        while live:
            lp = policy_logprobs(logits, temperature)
            toks = sample_from(lp, temperature, generator)
            tok_lp = lp.gather(-1, toks[:, None]).squeeze(-1)
            obs_items = []
            for s, (b, t, x) in enumerate(zip(live, toks.tolist(), tok_lp.tolist())):
                r = rows[b]
                r.tokens.append(t)
                r.logprobs.append(x)
                r.mask.append(1)
                r.turn.append(len(r.turn_texts))
                if t == NEWLINE:
                    text = tok.decode(r.tokens[start[b]:])
                    r.turn_texts.append(text)
                    start[b] = len(r.tokens)
                    if len(r.turn_texts) >= limits.max_turns:
                        r.finish, done[b] = "turns", True
                        continue
                    obs = sessions[b].observe(text)
                    if obs is None:
                        r.finish, done[b] = "stop", True
                        continue
                    ids = encode(obs[0], tok, n)
                    if len(r.tokens) + len(ids) >= limits.max_total_tokens:
                        r.finish, done[b] = "length", True
                        continue
                    r.tokens += ids
                    r.logprobs += [0.0] * len(ids)
                    r.mask += [0] * len(ids)
                    r.turn += [len(r.turn_texts) - 1] * len(ids)
                    start[b] = len(r.tokens)
                    if obs[1] is not None:
                        r.images.append(obs[1])
                    obs_items.append((s, ids, obs[1]))
                elif sum(r.mask) >= limits.max_new_tokens or len(r.tokens) >= limits.max_total_tokens:
                    r.turn_texts.append(tok.decode(r.tokens[start[b]:]))
                    r.finish, done[b] = "length", True
            keep = [s for s, b in enumerate(live) if not done[b]]
            if not keep:
                break
            h = model.hidden_states(toks[:, None], None, cache)[:, -1]  # [live, D]
            for s, ids, image in obs_items:
                if done[live[s]]:
                    continue
                hs = model.hidden_states(torch.tensor([ids]), None if image is None else image_tensor([image]),
                                         cache.select(s) if cache.batch > 1 else cache)
                h[s] = hs[0, -1]
            logits = byte_logits(model.logits(h))
            if len(keep) < len(live):
                cache = take_rows(cache, keep)
                live, logits = [live[s] for s in keep], logits[keep]
    finally:
        model.train(was)
    return rows


def collate(rollouts: list[VRollout], pad: int) -> dict:
    """Training tensors: the RL core's (``rl.rollout.collate``: ``input_ids [N, T]`` prompt +
    response right-padded, ``prompt_lens [N]``, ``response [N, L]``, ``response_mask [N, L]`` (1 on
    model tokens), ``token_mask [N, L]``, ``old_logprobs [N, L]`` (float64), ``turn_ids [N, L]`` (-1
    on padding)) plus ``images [M, 3, px, px]``: every rollout's images in order, the placeholder
    order of ``input_ids``."""
    from ..rl.rollout import collate as collate_tokens

    out = collate_tokens(rollouts, pad)
    out["images"] = image_tensor([im for r in rollouts for im in r.images])
    return out


def response_logprobs(model, batch: dict, temperature: float = 1.0, *, with_entropy: bool = False):
    """Policy log-probs ``[N, L]`` of ``batch["response"]`` (one forward without a cache), and the
    per-token entropy ``[N, L]`` when asked."""
    from ..rl.sampling import entropy

    ids = batch["input_ids"]
    L = batch["response"].shape[1]
    logits = model(ids, batch["images"])  # [N, T, V]
    idx = (batch["prompt_lens"][:, None] + torch.arange(L) - 1).clamp(max=ids.shape[1] - 1)
    lp_all = policy_logprobs(byte_logits(logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))), temperature)
    lp = lp_all.gather(-1, batch["response"][..., None]).squeeze(-1)
    lp = torch.where(batch["response"] < 256, lp, torch.zeros_like(lp))  # padding: -inf under byte_logits
    return lp, (entropy(lp_all) if with_entropy else None)
