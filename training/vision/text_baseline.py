"""The text-centric baseline: a zoo decoder LM that reads the puzzle image as patch embeddings
and writes the solution's text form token by token.

Sequence: ``[patch_1 .. patch_L, BOS, y_1 .. y_T, EOS]`` where ``patch_i = W p_i + pos_i`` (the
same ``[L, 3 p p]`` patches the DiT sees) and ``y`` are characters of the text answer. Loss: the
masked next-token cross-entropy on ``y`` and EOS (the image and BOS are never predicted)::

    L(θ) = - 1/Σ m Σ_t m_t log π_θ(y_t | image, y_<t)

Decoding: greedy for the first sample, temperature sampling for further samples; a puzzle counts
as solved at N when any of its first N answers passes ``verify_text``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import Tensor, nn

from hysparse_kernels.models import HybridLM, get_config
from hysparse_kernels.models.vision import patchify
from .data import PuzzleSet
from .diffthinker import lr_at
from .puzzles import verify_text

CHARS = "0123456789UDLR \n"
PAD, BOS, EOS = len(CHARS), len(CHARS) + 1, len(CHARS) + 2
VOCAB = len(CHARS) + 3


def encode(text: str) -> list[int]:
    return [CHARS.index(ch) for ch in text]


def decode(ids) -> str:
    return "".join(CHARS[i] for i in ids if i < len(CHARS))


class TextReasoner(nn.Module):
    """``forward(images [B, 3, px, px], ids [B, T]) -> logits [B, T, VOCAB]``: the logits at the
    BOS and answer positions (position ``t`` predicts ``ids[:, t+1]``; ``ids[:, 0]`` is BOS)."""

    def __init__(self, px: int = 32, patch: int = 4, hidden: int = 128, layers: int = 4, heads: int = 4,
                 intermediate: int = 640):
        super().__init__()
        config = dataclasses.replace(
            get_config("tiny-mimo-7b"), vocab_size=VOCAB, hidden_size=hidden, num_attention_heads=heads,
            num_key_value_heads=heads, head_dim=hidden // heads, v_head_dim=hidden // heads,
            intermediate_size=intermediate, layer_types=("full_attention",) * layers, num_nextn_predict_layers=0,
            name="vision-text-lm")
        self.lm = HybridLM(config.to_graph())
        self.patch = patch
        self.embed_patch = nn.Linear(3 * patch * patch, hidden)
        self.pos = nn.Parameter(torch.randn(1, (px // patch) ** 2, hidden) * 0.02)
        self.settings = dict(px=px, patch=patch, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate)

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        prefix = self.embed_patch(patchify(images, self.patch)) + self.pos  # [B, L, D]
        embeds = torch.cat([prefix, self.lm.model.embed_tokens(ids)], dim=1)  # [B, L + T, D]
        hidden = self.lm.hidden_states(None, inputs_embeds=embeds)
        return self.lm.logits(hidden[:, prefix.shape[1]:])


def batch_ids(texts: list[str]) -> tuple[Tensor, Tensor]:
    """``[BOS] + text + [EOS]`` padded: ``ids [B, T]`` and the loss mask ``[B, T]`` (1 where the
    next token is a target)."""
    seqs = [[BOS] + encode(t) + [EOS] for t in texts]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), T)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s) - 1] = 1.0
    return ids, mask


def train_text(model: TextReasoner, data: PuzzleSet, *, steps: int, batch: int, lr: float, seed: int,
               log=None) -> list[dict]:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    texts = [p.solution_text for p in data.puzzles]
    metrics = []
    start = time.perf_counter()
    for step in range(steps):
        idx = np.random.default_rng((seed, step)).integers(0, len(texts), size=batch)
        ids, mask = batch_ids([texts[i] for i in idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=max(1, steps // 20))
        logits = model(data.cond[torch.from_numpy(idx)], ids)  # [B, T, V]
        nll = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * mask[:, :-1].reshape(-1)).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        metrics.append({"step": step, "loss": float(loss.detach()), "seconds": time.perf_counter() - start})
        if log is not None:
            log(metrics[-1])
    return metrics


@torch.no_grad()
def generate_answers(model: TextReasoner, images: Tensor, *, max_len: int, temperature: float,
                     generator: torch.Generator | None = None) -> list[str]:
    """Answers for ``images`` ``[B, 3, px, px]``: greedy when ``temperature == 0``, else sampled."""
    model.eval()
    B = images.shape[0]
    ids = torch.full((B, 1), BOS, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_len):
        logits = model(images, ids)[:, -1, :EOS + 1].clone()  # no PAD/BOS
        logits[:, PAD] = logits[:, BOS] = -float("inf")
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return [decode(row[1:].tolist()) for row in _cut_eos(ids)]


def _cut_eos(ids: Tensor) -> list[Tensor]:
    out = []
    for row in ids:
        hits = (row == EOS).nonzero()
        out.append(row[:int(hits[0])] if len(hits) else row)
    return out


def sample_texts(model: TextReasoner, data: PuzzleSet, *, n_samples: int, seed: int, temperature: float = 1.0,
                 chunk: int = 100) -> list[list[str]]:
    """``n_samples`` lists of N answers: sample 0 greedy, the others at ``temperature``."""
    max_len = max(len(p.solution_text) for p in data.puzzles) + 8
    out = []
    for s in range(n_samples):
        gen = torch.Generator().manual_seed(seed * 1000 + s)
        answers = []
        for i in range(0, len(data.keys), chunk):
            answers += generate_answers(model, data.cond[i:i + chunk], max_len=max_len,
                                        temperature=0.0 if s == 0 else temperature, generator=gen)
        out.append(answers)
    return out


def score_texts(data: PuzzleSet, answers: list[list[str]]) -> np.ndarray:
    """``[n_samples, N]`` bool verdicts of ``verify_text``."""
    return np.array([[verify_text(p, a) for p, a in zip(data.puzzles, sample)] for sample in answers])
