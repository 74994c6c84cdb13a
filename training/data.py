"""An offline corpus the project generates itself, and a byte-level tokenizer.

The corpus mixes four kinds of lines, each with a verifiable structure a tiny model can learn
and a multi-token-prediction head can draft several tokens ahead of:

* letter runs:  ``run g: g h i j k l m``
* counting:     ``count 17: 17 18 19 20 21``
* arithmetic:   ``add 12 + 35 = 47``
* sentences from a small grammar: ``the quick cat sees a red ball .``

Everything is seeded: the same seed gives the same bytes on every machine.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import torch

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259  # bytes + three specials; fits every tiny twin's vocabulary


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus ``BOS``/``EOS``/``PAD``."""

    bos, eos, pad, vocab_size = BOS, EOS, PAD, VOCAB

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        return ([BOS] if bos else []) + list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


_ADJ = ["quick", "red", "small", "old", "green", "happy", "tall", "dark"]
_NOUN = ["cat", "dog", "bird", "ball", "tree", "house", "river", "book"]
_VERB = ["sees", "finds", "likes", "takes", "moves", "holds"]
_DET = ["the", "a"]


def _line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        start = rng.randrange(0, 16)
        n = rng.randrange(6, 26 - start + 1) if 26 - start >= 6 else 26 - start
        letters = [chr(ord("a") + start + i) for i in range(max(n, 1))]
        return f"run {letters[0]}: " + " ".join(letters)
    if kind < 0.55:
        start = rng.randrange(0, 90)
        return f"count {start}: " + " ".join(str(start + i) for i in range(rng.randrange(5, 11)))
    if kind < 0.75:
        a, b = rng.randrange(0, 50), rng.randrange(0, 50)
        return f"add {a} + {b} = {a + b}"
    words = [rng.choice(_DET), rng.choice(_ADJ), rng.choice(_NOUN), rng.choice(_VERB), rng.choice(_DET)]
    words += [rng.choice(_ADJ)] if rng.random() < 0.5 else []
    return " ".join(words + [rng.choice(_NOUN), "."])


def make_corpus(num_lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n".join(_line(rng) for _ in range(num_lines)) + "\n"


def unigram_entropy(ids: list[int]) -> float:
    """Cross-entropy (nats/token) of the corpus' own unigram distribution: the baseline a model
    that ignores context reaches."""
    counts = Counter(ids)
    total = len(ids)
    return -sum(c / total * math.log(c / total) for c in counts.values())


class TokenStream:
    """Random windows of ``seq_len`` tokens from one long token tensor, drawn with its own
    generator so a resumed run sees the same batches (its state goes into the checkpoint).

    ``batch`` is the global batch. With ``world`` data-parallel ranks every rank draws the same
    window starts (the generators stay equal) and keeps its own ``batch / world`` rows:
    rank ``r`` the rows ``[r * batch / world, (r + 1) * batch / world)``, so the ranks together
    see exactly the batch one process would.
    """

    def __init__(self, ids: list[int], seq_len: int, batch: int, seed: int = 0, *, rank: int = 0, world: int = 1):
        if len(ids) <= seq_len:
            raise ValueError(f"seq_len: expected fewer than the corpus' {len(ids)} tokens, got {seq_len}")
        if batch % world:
            raise ValueError(f"batch: expected a multiple of the {world} data-parallel ranks, got {batch}")
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.seq_len, self.batch = seq_len, batch
        self.rows = slice(rank * batch // world, (rank + 1) * batch // world)
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> torch.Tensor:
        """This rank's rows of the next global batch: ``[batch / world, seq_len]``."""
        starts = torch.randint(0, len(self.ids) - self.seq_len, (self.batch,), generator=self.generator)
        return torch.stack([self.ids[s:s + self.seq_len] for s in starts[self.rows].tolist()])
