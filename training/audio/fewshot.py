"""Few-shot in-context tasks, generated offline, none of them in the pretraining corpus as such.

Every episode is built with its largest number of shots (4); the prompt with ``k`` shots keeps
the first ``k`` of them, so the curve over ``k = 0, 1, 2, 4`` compares the same queries. Prompts
start with ``BOS`` (as pretraining documents do). Audio is generated greedily (temperature 0) with
the audio span forced open, as many patches as the answer has, and decoded by the tokenizer.

* **rhythm**: a held-out 8-step beat (never in the corpus; its two halves differ). Shots: whole
  bars of it, each its own span, the drum transposed from bar to bar. Query: an open span with
  the first half bar; the answer is the second half. Score: fraction of its 4 steps whose hit /
  no-hit (``features.step_hits``) matches the beat.
* **pitch** / **tempo** / **timbre**: pairs ``x -> T(x)`` of short melodies, one ``T`` per
  episode: transpose by -7, -5, +5 or +7 semitones; change the note length 3 <-> 6 frames (half
  or double tempo); re-voice from timbre A to timbre B ("voice conversion"). Query: ``x`` then an
  open span. Scores: frame-wise pitch accuracy (YIN within 1 semitone) against ``T(x)`` for all
  three, and for ``timbre`` whether the nearest-centroid timbre classifier hears B.
* **classify**: 3 sound kinds out of tone / chirp / syllable / noise, named by 3 words of the
  held-out pool. Shots: ``k`` labelled clips per class (``<|sosp|> clip <|eosp|> word``).
  Query: a new clip; the answer is the word of highest likelihood. Score: accuracy (chance 1/3),
  and how often the pick is the label written last in the prompt (a recency heuristic).

Reference rows: ``oracle`` (the true answer through the tokenizer), ``copy`` (the query itself as
the answer; for the beat, its first half again), ``silence`` (the beat task) and chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hysparse_kernels.models.audio import BOS, AudioLM, AudioTokenizer, encode_text
from hysparse_kernels.models.audio.generate import generate
from . import features, synth
from .corpus import EVAL_WORDS, assemble, encode_clips, eval_pattern

TASKS = ("rhythm", "pitch", "tempo", "timbre", "classify")
MAX_SHOTS = 4


@dataclass
class Episode:
    task: str
    shots: list  # MAX_SHOTS shot units, each a list of segments
    query: list  # segments after the shots (ending with an open span for generation tasks)
    answer: np.ndarray | None = None  # the expected continuation (generation tasks)
    candidates: list = field(default_factory=list)  # classification: candidate words
    label: int = -1
    meta: dict = field(default_factory=dict)

    def prompt(self, k: int) -> list:
        return [seg for shot in self.shots[:k] for seg in shot] + self.query


def _split_bar(rng, pattern, step_frames, sound, transpose=0.0):
    audio, _ = synth.rhythm(rng, pattern=pattern, step_frames=step_frames, sound=sound, bars=1, transpose=[transpose])
    half = 4 * step_frames * synth.FRAME
    return audio, audio[:half], audio[half:]


def rhythm_episode(rng) -> Episode:
    pattern, step = eval_pattern(rng), int(rng.integers(3, 7))
    sound = synth.random_hit_sound(rng)
    shots = [[("audio", _split_bar(rng, pattern, step, sound, float(rng.choice([0, 2, 3, 5, -2, -4])))[0])]
             for _ in range(MAX_SHOTS)]
    _, first, second = _split_bar(rng, pattern, step, sound)
    return Episode("rhythm", shots, [("open", first)], answer=second,
                   meta={"pattern": pattern, "step_frames": step, "first": first})


def _melody_pair(rng, task: str, params: dict):
    notes = synth.random_melody_notes(rng, 3, 57, 71)
    if task == "pitch":
        x = synth.melody(rng, notes=notes, step_frames=params["step"], timbre=params["timbre"])[0]
        y = synth.melody(rng, notes=[n + params["interval"] for n in notes], step_frames=params["step"], timbre=params["timbre"])[0]
    elif task == "tempo":
        x = synth.melody(rng, notes=notes, step_frames=params["step_in"], timbre=params["timbre"])[0]
        y = synth.melody(rng, notes=notes, step_frames=params["step_out"], timbre=params["timbre"])[0]
    else:
        x = synth.melody(rng, notes=notes, step_frames=params["step"], timbre=params["source"])[0]
        y = synth.melody(rng, notes=notes, step_frames=params["step"], timbre=params["target"])[0]
    return x, y


def transform_episode(rng, task: str) -> Episode:
    if task == "pitch":
        params = {"interval": int(rng.choice([-7, -5, 5, 7])), "step": int(rng.integers(3, 6)), "timbre": str(rng.choice(synth.TIMBRES))}
    elif task == "tempo":
        step_in, step_out = (3, 6) if rng.random() < 0.5 else (6, 3)
        params = {"step_in": step_in, "step_out": step_out, "timbre": str(rng.choice(synth.TIMBRES))}
    elif task == "timbre":
        source, target = rng.choice(synth.TIMBRES, size=2, replace=False)
        params = {"source": str(source), "target": str(target), "step": int(rng.integers(3, 6))}
    else:
        raise ValueError(f"task: expected pitch, tempo or timbre, got {task!r}")
    shots = [[("audio", x), ("audio", y)] for x, y in (_melody_pair(rng, task, params) for _ in range(MAX_SHOTS))]
    x, y = _melody_pair(rng, task, params)
    return Episode(task, shots, [("audio", x), ("open", None)], answer=y, meta={**params, "query": x})


CLASS_KINDS = ("tone", "chirp", "syllable", "noise")


def classify_episode(rng) -> Episode:
    kinds = list(rng.choice(CLASS_KINDS, size=3, replace=False))
    words = list(rng.choice(EVAL_WORDS, size=3, replace=False))
    examples = [(c, synth.random_clip(rng, kinds[c])[0]) for _ in range(MAX_SHOTS) for c in rng.permutation(3)]
    # shot unit j = one labelled clip of each class (order shuffled), so k shots = k per class
    shots = [[seg for c, clip in examples[3 * j:3 * j + 3] for seg in (("audio", clip), ("text", f" {words[c]}\n"))]
             for j in range(MAX_SHOTS)]
    label = int(rng.integers(3))
    query = synth.random_clip(rng, kinds[label])[0]
    return Episode("classify", shots, [("audio", query)], candidates=words, label=label, meta={"kinds": kinds})


def make_episodes(task: str, n: int, seed: int) -> list[Episode]:
    """``n`` episodes of ``task`` from ``default_rng((seed, task index, i))``."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    out = []
    for i in range(n):
        rng = np.random.default_rng((seed, TASKS.index(task), i))
        if task == "rhythm":
            out.append(rhythm_episode(rng))
        elif task == "classify":
            out.append(classify_episode(rng))
        else:
            out.append(transform_episode(rng, task))
    return out


# ------------------------------------------------------------------------------ running


def _tokens(tokenizer: AudioTokenizer, segments: list, group_size: int):
    """``BOS`` + segments -> (text [G], audio [G, P, C])."""
    clips = [v for kind, v in segments if kind in ("audio", "open") and v is not None]
    text, audio = assemble(segments, encode_clips(tokenizer, clips, group_size), tokenizer.cfg.codebook_sizes, group_size)
    empty = torch.tensor(tokenizer.cfg.codebook_sizes).expand(1, group_size, -1)
    return torch.cat([torch.tensor([BOS]), text]), torch.cat([empty, audio])


def _patches(audio: np.ndarray, group_size: int) -> int:
    return -(-len(audio) // (group_size * synth.FRAME))


def _roundtrip(tokenizer: AudioTokenizer, audio: np.ndarray, group_size: int) -> np.ndarray:
    codes = encode_clips(tokenizer, [audio], group_size)[0]
    return tokenizer.decode(codes[None])[0].numpy()


class Scorer:
    """Scores of the generation tasks on decoded audio; the timbre classifier is fitted on
    melodies of each timbre passed through the tokenizer (what the model's output is made of)."""

    def __init__(self, tokenizer: AudioTokenizer, group_size: int, seed: int = 99):
        self.tokenizer, self.group_size = tokenizer, group_size
        rng = np.random.default_rng(seed)
        self.timbre = features.TimbreClassifier().fit(
            [(_roundtrip(tokenizer, synth.melody(rng, timbre=t)[0], group_size), t) for t in synth.TIMBRES for _ in range(6)])

    def score(self, ep: Episode, output: np.ndarray) -> dict:
        if ep.task == "rhythm":
            step, pattern = ep.meta["step_frames"], np.array(ep.meta["pattern"], dtype=bool)
            first = _roundtrip(self.tokenizer, ep.meta["first"], self.group_size)
            ref = features.step_rms(first, step, 4)[pattern[:4]].mean()
            hits = features.step_hits(output, step, 4, ref)
            return {"step_accuracy": float(np.mean(hits == pattern[4:]))}
        target = features.pitch_track(ep.answer)
        out = {"pitch_accuracy": features.pitch_accuracy(features.pitch_track(output), target)}
        if ep.task == "timbre":
            out["timbre_accuracy"] = float(self.timbre.predict(output) == ep.meta["target"])
        return out


@torch.no_grad()
def run_generation(lm: AudioLM, tokenizer: AudioTokenizer, episodes: list[Episode], k: int, batch: int = 8) -> list[np.ndarray]:
    """Greedy continuations (decoded audio) of each episode's ``k``-shot prompt."""
    P = lm.cfg.group_size
    outputs: list = [None] * len(episodes)
    by_len: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_len.setdefault(_patches(ep.answer, P), []).append(i)
    for n, idx in by_len.items():
        for s in range(0, len(idx), batch):
            chunk = idx[s:s + batch]
            prompts = [_tokens(tokenizer, episodes[i].prompt(k), P) for i in chunk]
            gen = generate(lm, prompts, n, force_audio=True)
            for i, (_, audio) in zip(chunk, gen):
                outputs[i] = tokenizer.decode(audio.reshape(1, n * P, -1))[0].numpy()[: len(episodes[i].answer)]
    return outputs


@torch.no_grad()
def run_classification(lm: AudioLM, tokenizer: AudioTokenizer, episodes: list[Episode], k: int) -> list[int]:
    """The candidate word of highest log-likelihood after each ``k``-shot prompt."""
    P = lm.cfg.group_size
    preds = []
    for ep in episodes:
        text, audio = _tokens(tokenizer, ep.prompt(k), P)
        seqs = [encode_text(" " + w) for w in ep.candidates]
        T = torch.stack([torch.cat([text, torch.tensor(s)]) for s in seqs])
        empty = torch.tensor(tokenizer.cfg.codebook_sizes).expand(len(seqs[0]), P, -1)
        A = torch.cat([audio, empty])[None].expand(len(seqs), -1, -1, -1)
        logp = torch.log_softmax(lm.text_logits(lm.hidden_states(T, A)).float(), -1)
        n = len(seqs[0])
        picked = logp[:, -n - 1:-1].gather(-1, T[:, -n:, None]).squeeze(-1).sum(-1)
        preds.append(int(picked.argmax()))
    return preds


def evaluate(lm: AudioLM, tokenizer: AudioTokenizer, *, seed: int, episodes: int = 24, shots=(0, 1, 2, 4),
             tasks=TASKS, progress: bool = False) -> dict:
    """Scores per task and number of shots (means over episodes) and the reference rows."""
    lm.eval()
    P = lm.cfg.group_size
    scorer = Scorer(tokenizer, P)
    results: dict = {}
    todo = [(t, k) for t in tasks for k in shots]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="few-shot", unit="task x shots")
    for task in tasks:
        eps = make_episodes(task, episodes * (2 if task == "classify" else 1), seed)
        row: dict = {"shots": {}}
        if task == "classify":
            for k in shots:
                preds = run_classification(lm, tokenizer, eps, k)
                # how often the pick is the label written last in the prompt (a recency heuristic)
                recent = [ep.candidates[p] == _last_label(ep, k) for p, ep in zip(preds, eps)] if k else [float("nan")]
                row["shots"][str(k)] = {"accuracy": float(np.mean([p == ep.label for p, ep in zip(preds, eps)])),
                                        "picks_last_label": float(np.mean(recent))}
                bar.update(1) if bar else None
            row["chance"] = {"accuracy": 1 / 3}
        else:
            for k in shots:
                outs = run_generation(lm, tokenizer, eps, k)
                row["shots"][str(k)] = _mean([scorer.score(ep, o) for ep, o in zip(eps, outs)])
                bar.update(1) if bar else None
            row["oracle"] = _mean([scorer.score(ep, _roundtrip(tokenizer, ep.answer, P)[: len(ep.answer)]) for ep in eps])
            if task != "rhythm":
                row["copy"] = _mean([scorer.score(ep, _fit(ep.meta["query"], len(ep.answer))) for ep in eps])
            else:  # silence as the answer; the prompt's half bar again as the answer
                row["silence"] = _mean([scorer.score(ep, np.zeros(len(ep.answer))) for ep in eps])
                row["copy"] = _mean([scorer.score(ep, _fit(ep.meta["first"], len(ep.answer))) for ep in eps])
                row["chance"] = {"step_accuracy": 0.5}
        results[task] = row
    if bar is not None:
        bar.close()
    return results


def _last_label(ep: Episode, k: int) -> str:
    return [v for kind, v in ep.prompt(k) if kind == "text"][-1].strip()


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    return np.pad(audio, (0, max(0, n - len(audio))))[:n]


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
