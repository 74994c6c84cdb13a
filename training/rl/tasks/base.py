"""What every verifiable task provides: deterministic examples by seed and split, the text format
of a demonstration (for SFT), a tool (for multi-turn rollouts), and a verifier.

A rollout of a task is a sequence of *turns*. Each turn is one line the model writes; the
rollout engine stops the turn at one of the task's ``stop`` strings and asks
:meth:`Task.observe` what comes back: an observation (the tool's output, appended to the context
and masked out of the loss) or ``None`` (the rollout is finished). :meth:`Task.verify` judges the
whole response.

Splits: ``train`` (RL prompts and SFT demonstrations), ``dev`` (for choosing settings) and
``heldout`` (only for the numbers reported). An example belongs to exactly one split, decided by
a hash of its content, so the same question never appears in two splits.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

SPLITS = ("train", "dev", "heldout")
# Shares of the example space per split (by content hash).
SPLIT_SHARES = {"train": 0.8, "dev": 0.1, "heldout": 0.1}

OUTCOMES = ("correct", "wrong", "abstain", "invalid")


@dataclass(frozen=True)
class Example:
    """One question. ``prompt``: the text the model is given; ``answer``: the gold answer
    (``"unknown"`` for an unanswerable question); ``meta``: task-specific facts (hops, path, ...)."""

    id: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Verdict:
    """The verifier's judgement of one response.

    ``outcome``: ``correct``, ``wrong`` (an answer, not the gold one), ``abstain`` (answered
    ``unknown`` to an answerable question) or ``invalid`` (no parsable answer). ``reward``: the
    task's default scalar reward; ``answer``: the parsed answer (``None`` when invalid).
    """

    outcome: str
    reward: float
    answer: str | None = None

    @property
    def success(self) -> bool:
        return self.outcome == "correct"


@dataclass(frozen=True)
class Segment:
    """A piece of a demonstration: ``text`` and whether the model writes it (``model=True``,
    trained on) or the environment does (prompt, observations: masked out)."""

    text: str
    model: bool


def split_of(key: str, seed: int) -> str:
    """The split an example with content ``key`` belongs to (stable across machines)."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name in SPLITS:
        acc += SPLIT_SHARES[name]
        if h < acc:
            return name
    return SPLITS[-1]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


class Task(ABC):
    """A verifiable task. Subclasses set ``name``, ``stop`` (strings that end a turn) and
    ``max_turns``, and implement the methods below. Everything is a function of ``seed``."""

    name: str = ""
    stop: tuple[str, ...] = ("\n",)
    max_turns: int = 1
    max_new_tokens: int = 32  # model tokens a rollout may write (all turns)
    max_total_tokens: int = 64  # response including observations

    def __init__(self, seed: int = 0):
        self.seed = seed

    @abstractmethod
    def examples(self, split: str, n: int | None = None) -> list[Example]:
        """The first ``n`` examples of ``split`` (all of them when ``n`` is None), in a fixed order."""

    @abstractmethod
    def demonstration(self, example: Example) -> list[Segment]:
        """A correct transcript: prompt, then the model's turns and the observations between them."""

    def observe(self, example: Example, turn_text: str) -> str | None:
        """The observation after a turn that ended with ``turn_text`` (stop string included), or
        None when the rollout is finished. Tasks without tools end after the first turn."""
        return None

    @abstractmethod
    def verify(self, example: Example, response: str) -> Verdict:
        """Judge ``response`` (everything after the prompt, observations included)."""

    def describe(self) -> dict:
        """Settings that define the task (recorded in run configs)."""
        return {"name": self.name, "seed": self.seed}
