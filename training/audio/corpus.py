"""The audio LM's pretraining corpus: documents of synthetic audio and text, tokenized.

A document is a list of segments, ``("text", str)`` or ``("audio", float32 [N])``. Audio spans are
written ``<|sosp|>`` + patches + ``<|eosp|>`` (MiMo-Audio's layout). Documents are *bursty*: what
a document holds repeats inside it (a beat, a voice, named sound sources), the data property
under which in-context learning is known to appear. Five kinds, equally likely:

* **loop**: one span of 3-5 bars of an 8-step beat (drum bars transposed bar to bar), sometimes
  with its caption (``a beat x.x.xx..``) before it.
* **voice**: 3-6 short melodies by one voice (timbre, register, tempo), each its own span.
* **captions**: 2-5 clips with their captions, audio then text or text then audio ("tone
  sequence <-> its description").
* **named**: 2-3 sound sources, each with a made-up name from the *training* word pool; 4-9
  events ``<|sosp|> sound <|eosp|> name`` in random order (each event a slight variation).
* **echo**: 2-4 pairs of a clip and its repetition, half of them re-voiced in another timbre.

No document applies one transformation across pairs (pitch shift, tempo change or timbre
conversion), uses words of the evaluation pool, or labels sound *categories* with arbitrary words:
those are the few-shot tasks of ``fewshot.py``.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from hysparse_kernels.models.audio import BOS, EMPTY, EOSP, PAD, SOSP, AudioTokenizer, encode_text
from . import synth

CONSONANTS, VOWEL_LETTERS = "bdfgklmnprstvz", "aeiou"
DOC_KINDS = ("loop", "voice", "captions", "named", "echo")


def _word_pool(split: str) -> list[str]:
    words = ["".join(w) for w in itertools.product(CONSONANTS, VOWEL_LETTERS, CONSONANTS)]
    held_out = [w for w in words if int(hashlib.sha256(w.encode()).hexdigest(), 16) % 5 == 0]
    return held_out if split == "eval" else [w for w in words if w not in set(held_out)]


TRAIN_WORDS, EVAL_WORDS = _word_pool("train"), _word_pool("eval")


def _eval_pattern(pattern) -> bool:
    """Beats held out of pretraining (a fixed quarter of the patterns), used by the rhythm task."""
    return int(hashlib.sha256(bytes(pattern)).hexdigest(), 16) % 4 == 0


def train_pattern(rng) -> tuple[int, ...]:
    while True:
        p = synth.random_pattern(rng)
        if not _eval_pattern(p):
            return p


def eval_pattern(rng) -> tuple[int, ...]:
    while True:
        p = synth.random_pattern(rng)
        if _eval_pattern(p) and p[:4] != p[4:]:
            return p


def doc_loop(rng):
    bars = int(rng.integers(3, 6))
    audio, meta = synth.rhythm(rng, pattern=train_pattern(rng), bars=bars,
                               transpose=rng.choice([0, 0, 2, 3, 5, -2, -4], size=bars))
    segs = [("audio", audio)]
    return ([("text", synth.describe(meta) + " ")] + segs) if rng.random() < 0.3 else segs


def _source(rng):
    """A fixed sound (kind and parameters) and a generator of its slight variations."""
    kind = str(rng.choice(("tone", "chirp", "syllable", "noise", "melody")))
    _, meta = synth.random_clip(rng, kind)

    def variant(r):
        j = float(r.uniform(-0.3, 0.3))
        if kind == "tone":
            return synth.tone(r, midi=meta["midi"] + j, dur=meta["dur"] * r.uniform(0.9, 1.1), timbre=meta["timbre"])
        if kind == "chirp":
            return synth.chirp(r, start=meta["start"] + j, end=meta["end"] + j, dur=meta["dur"], timbre=meta["timbre"])
        if kind == "syllable":
            return synth.syllable(r, vowel=meta["vowel"], midi=meta["midi"] + j, contour=meta["contour"])
        if kind == "noise":
            return synth.noise_burst(r, center=meta["center"] * (1 + j / 10), bandwidth=600.0, dur=meta["dur"])
        return synth.melody(r, notes=meta["notes"], step_frames=meta["step_frames"], timbre=meta["timbre"])

    return variant


def doc_named(rng):
    n = int(rng.integers(2, 4))
    names = rng.choice(TRAIN_WORDS, size=n, replace=False)
    sources = [_source(rng) for _ in range(n)]
    segs = []
    for _ in range(int(rng.integers(4, 10))):
        i = int(rng.integers(n))
        segs += [("audio", sources[i](rng)[0]), ("text", f" {names[i]}\n")]
    return segs


def doc_voice(rng):
    timbre = str(rng.choice(synth.TIMBRES))
    low = int(rng.integers(48, 66))
    step = int(rng.integers(3, 7))
    return [("audio", synth.melody(rng, notes=synth.random_melody_notes(rng, int(rng.integers(2, 5)), low, low + 12),
                                   step_frames=step, timbre=timbre)[0]) for _ in range(int(rng.integers(3, 7)))]


def doc_captions(rng):
    segs = []
    for _ in range(int(rng.integers(2, 6))):
        audio, meta = synth.random_clip(rng)
        if meta["kind"] == "rhythm":
            audio, meta = synth.rhythm(rng, pattern=train_pattern(rng), bars=1)
        text = synth.describe(meta)
        segs += [("audio", audio), ("text", f" {text}\n")] if rng.random() < 0.5 else [("text", f"{text}: "), ("audio", audio), ("text", "\n")]
    return segs


def doc_echo(rng):
    segs = []
    for _ in range(int(rng.integers(2, 5))):
        notes = synth.random_melody_notes(rng, int(rng.integers(2, 5)))
        step, timbre = int(rng.integers(3, 7)), str(rng.choice(synth.TIMBRES))
        other = str(rng.choice([t for t in synth.TIMBRES if t != timbre])) if rng.random() < 0.5 else timbre
        segs += [("audio", synth.melody(rng, notes=notes, step_frames=step, timbre=timbre)[0]),
                 ("audio", synth.melody(rng, notes=notes, step_frames=step, timbre=other)[0])]
    return segs


DOCS = {"loop": doc_loop, "voice": doc_voice, "captions": doc_captions, "named": doc_named, "echo": doc_echo}


# ------------------------------------------------------------------------------ tokenization


def pad_to_patches(audio: np.ndarray, group_size: int) -> np.ndarray:
    """Zero-pad audio to whole patches (``group_size`` frames of 320 samples)."""
    n = group_size * synth.FRAME
    return np.pad(audio.astype(np.float32), (0, (-len(audio)) % n))


@torch.no_grad()
def encode_clips(tokenizer: AudioTokenizer, clips: list[np.ndarray], group_size: int, batch: int = 32) -> list[torch.Tensor]:
    """Codes long [T, C] of each clip (padded to whole patches), clips of equal length batched together."""
    padded = [pad_to_patches(c, group_size) for c in clips]
    out: list[torch.Tensor | None] = [None] * len(padded)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(padded):
        by_len.setdefault(len(c), []).append(i)
    for n, idx in by_len.items():
        for s in range(0, len(idx), batch):
            chunk = idx[s:s + batch]
            codes = tokenizer.encode(torch.from_numpy(np.stack([padded[i] for i in chunk])))
            for j, i in enumerate(chunk):
                out[i] = codes[j]
    return out


def assemble(segments, codes: list[torch.Tensor], empty_ids, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments with their audio codes (in order of the audio segments) -> (text [G], audio [G, P, C]).

    Segment kinds: ``text`` (a string), ``audio`` (a closed span), ``open`` (``<|sosp|>`` and the
    audio's patches if any, without ``<|eosp|>``: the model continues the span)."""
    C = len(empty_ids)
    empty = torch.tensor(empty_ids).expand(1, group_size, C)
    text, audio, k = [], [], 0
    for kind, value in segments:
        if kind == "text":
            ids = encode_text(value)
            text += ids
            audio += [empty.expand(len(ids), -1, -1)]
        elif kind == "open" and value is None:  # an audio span left open for the model to fill
            text += [SOSP]
            audio += [empty]
        else:
            c = codes[k]
            k += 1
            patches = c.view(-1, group_size, C)
            close = kind != "open"
            text += [SOSP] + [EMPTY] * len(patches) + [EOSP] * close
            audio += [empty, patches] + [empty] * close
    return torch.tensor(text, dtype=torch.long), torch.cat(audio).long()


def tokenize_documents(tokenizer: AudioTokenizer, docs: list, group_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    clips = [v for d in docs for kind, v in d if kind != "text" and v is not None]
    codes = encode_clips(tokenizer, clips, group_size)
    out, k = [], 0
    for d in docs:
        n = sum(kind != "text" and v is not None for kind, v in d)
        out.append(assemble(d, codes[k:k + n], tokenizer.cfg.codebook_sizes, group_size))
        k += n
    return out


@dataclass
class Corpus:
    """Tokenized documents: ``text`` [sum G] and ``audio`` [sum G, P, C] concatenated, ``offsets`` [D + 1]."""

    text: torch.Tensor
    audio: torch.Tensor
    offsets: torch.Tensor
    kinds: list

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.text[a:b], self.audio[a:b]

    def batch(self, rng: np.random.Generator, batch: int, max_len: int, empty_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` rows of exactly ``max_len`` positions, each random documents packed one after
        another, every one preceded by ``BOS`` (the last cut off): (text [B, L], audio [B, L, P, C])."""
        P, C = self.audio.shape[1:]
        bos_patch = torch.tensor(empty_ids, dtype=self.audio.dtype).expand(1, P, C)
        rows = []
        for _ in range(batch):
            texts, audios, n = [], [], 0
            while n < max_len:
                t, a = self.doc(int(rng.integers(len(self))))
                texts += [torch.tensor([BOS]), t]
                audios += [bos_patch, a]
                n += 1 + len(t)
            rows.append((torch.cat(texts)[:max_len], torch.cat(audios)[:max_len]))
        return stack_docs(rows, max_len, empty_ids)


def stack_docs(docs, max_len: int, empty_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents (text [G], audio [G, P, C]) cut to ``max_len`` and right-padded with ``PAD`` text
    and empty codes: (text [B, L], audio [B, L, P, C])."""
    L = min(max_len, max(len(t) for t, _ in docs))
    P, C = docs[0][1].shape[1:]
    text = torch.full((len(docs), L), PAD, dtype=torch.long)
    audio = torch.tensor(empty_ids).expand(len(docs), L, P, C).clone()
    for b, (t, a) in enumerate(docs):
        n = min(L, len(t))
        text[b, :n], audio[b, :n] = t[:n], a[:n].long()
    return text, audio


def build_corpus(tokenizer: AudioTokenizer, num_docs: int, seed: int, group_size: int = 4, progress: bool = False) -> Corpus:
    """``num_docs`` documents of random kinds from ``default_rng((seed, i))``, tokenized."""
    docs, kinds = [], []
    for i in range(num_docs):
        rng = np.random.default_rng((seed, i))
        kind = str(rng.choice(DOC_KINDS))
        docs.append(DOCS[kind](rng))
        kinds.append(kind)
    seqs = []
    chunks = range(0, num_docs, 64)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="tokenize corpus", unit="x64 docs")
    for s in chunks:
        seqs += tokenize_documents(tokenizer, docs[s:s + 64], group_size)
    lengths = torch.tensor([0] + [len(t) for t, _ in seqs])
    return Corpus(torch.cat([t for t, _ in seqs]), torch.cat([a for _, a in seqs]).to(torch.int16),
                  lengths.cumsum(0), kinds)
