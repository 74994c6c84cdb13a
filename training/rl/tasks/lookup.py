"""Multi-hop lookup QA over a generated fact base, answered with a ``search`` tool.

The fact base holds ``(subject, relation, object)`` facts between generated people (``Tari
mentor Poku``); each person has each relation with probability ``p_fact``, so some chains break
and their questions are unanswerable. A question names a start person and a path of 1–3
relations, read left to right: ``Q: Tari friend boss`` asks for the boss of Tari's friend.

Transcript (the model writes the ``search:`` and ``answer:`` lines; ``>`` lines are the tool's)::

    Q: Tari friend boss
    search: Tari friend
    > Tari friend Poku
    search: Poku boss
    > Poku boss Lemi
    answer: Lemi

``search(query)`` returns the facts whose subject and relation are both named in the query (the
subject's facts when only a person is named; ``none`` when nothing matches). An unanswerable
question ends with ``> none`` at the missing hop and ``answer: unknown``.

Built for the recipes that need more than an outcome: every fact is checkable
(:meth:`FactBase.check`), a reasoning step such as ``Tari's mentor is Poku`` or ``Tari mentor
Poku`` is verified against the base (:meth:`LookupQA.verify_step`), and the gold answer can be
found in a tool observation (:meth:`LookupQA.gold_in`: the turn where it first appears).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .base import Example, Segment, Task, Verdict, check_split, split_of

ABSTAIN = "unknown"
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_STEP = re.compile(r"^\s*(\w+?)(?:'s)?\s+(\w+)\s+(?:is\s+)?(\w+)\s*\.?\s*$")


def make_names(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct two-syllable names (``Tari``), drawn with ``rng``."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    pool = sorted({(a + b).capitalize() for a in syllables for b in syllables})
    if n > len(pool):
        raise ValueError(f"n_entities: expected at most {len(pool)}, got {n}")
    return rng.sample(pool, n)


@dataclass(frozen=True)
class FactBase:
    """Facts ``(subject, relation) -> object`` among ``entities``. Deterministic by seed."""

    entities: tuple[str, ...]
    relations: tuple[str, ...]
    facts: dict

    @classmethod
    def generate(cls, seed: int = 0, n_entities: int = 60, relations=("mentor", "friend", "boss"),
                 p_fact: float = 0.9) -> "FactBase":
        if not 0 < p_fact <= 1:
            raise ValueError(f"p_fact: expected a probability in (0, 1], got {p_fact}")
        if n_entities < 2:
            raise ValueError(f"n_entities: expected at least 2, got {n_entities}")
        rng = random.Random(f"factbase:{seed}")
        names = make_names(n_entities, rng)
        facts = {}
        for s in names:
            for r in relations:
                if rng.random() < p_fact:
                    facts[(s, r)] = rng.choice([o for o in names if o != s])
        return cls(tuple(names), tuple(relations), facts)

    def lookup(self, subject: str, relation: str) -> str | None:
        return self.facts.get((subject, relation))

    def check(self, subject: str, relation: str, obj: str) -> bool:
        """Whether the fact ``subject relation obj`` is in the base."""
        return self.facts.get((subject, relation)) == obj

    def search(self, query: str) -> list[str]:
        """Facts matching ``query`` as ``"S r O"`` lines: subject and relation both named → that
        fact; only a subject → all its facts; otherwise none."""
        words = query.replace("'s", " ").split()
        subjects = [w for w in words if w in self._entity_set]
        relations = [w for w in words if w in self.relations]
        if not subjects:
            return []
        s = subjects[0]
        rels = relations[:1] if relations else list(self.relations)
        return [f"{s} {r} {self.facts[(s, r)]}" for r in rels if (s, r) in self.facts]

    @property
    def _entity_set(self) -> frozenset:
        return frozenset(self.entities)

    def parse_step(self, text: str) -> tuple[str, str, str] | None:
        """``"Tari's mentor is Poku"`` or ``"Tari mentor Poku"`` -> ``("Tari", "mentor", "Poku")``;
        None when the text is not a step about this base's people and relations."""
        m = _STEP.match(text)
        if m is None:
            return None
        s, r, o = m.groups()
        if s not in self._entity_set or r not in self.relations or o not in self._entity_set:
            return None
        return s, r, o

    def follow(self, start: str, path) -> list[str | None]:
        """People along ``path`` from ``start`` (``None`` from the first missing fact on)."""
        chain, cur = [start], start
        for r in path:
            cur = None if cur is None else self.lookup(cur, r)
            chain.append(cur)
        return chain


class LookupQA(Task):
    """Multi-hop questions over a :class:`FactBase`, with the ``search`` tool."""

    name = "lookup"
    stop = ("\n",)

    def __init__(self, seed: int = 0, *, n_entities: int = 60, relations=("mentor", "friend", "boss"),
                 p_fact: float = 0.9, max_hops: int = 3):
        super().__init__(seed)
        if not 1 <= max_hops <= 4:
            raise ValueError(f"max_hops: expected 1..4, got {max_hops}")
        self.base = FactBase.generate(seed, n_entities, tuple(relations), p_fact)
        self.max_hops = max_hops
        self.max_turns = max_hops + 2  # every hop, the answer, one spare search
        self.max_new_tokens = 28 * (max_hops + 1)
        self.max_total_tokens = 64 * (max_hops + 1)
        self._cache: dict[str, list[Example]] = {}

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "n_entities": len(self.base.entities),
                "relations": list(self.base.relations), "max_hops": self.max_hops, "facts": len(self.base.facts)}

    # ------------------------------------------------------------------ examples

    def _all(self) -> list[tuple[str, tuple[str, ...]]]:
        import itertools

        out = []
        for hops in range(1, self.max_hops + 1):
            for path in itertools.product(self.base.relations, repeat=hops):
                out += [(s, path) for s in self.base.entities]
        return out

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        check_split(split)
        if split not in self._cache:
            chosen = [(s, p) for s, p in self._all() if split_of(f"{s} {' '.join(p)}", self.seed) == split]
            random.Random(f"order:{self.seed}:{split}").shuffle(chosen)
            self._cache[split] = [self._example(s, p) for s, p in chosen]
        items = self._cache[split]
        if n is not None and n > len(items):
            raise ValueError(f"n: expected at most {len(items)} examples in split {split!r}, got {n}")
        return items if n is None else items[:n]

    def _example(self, start: str, path: tuple[str, ...]) -> Example:
        chain = self.base.follow(start, path)
        answer = chain[-1] if chain[-1] is not None else ABSTAIN
        missing = next((i for i, c in enumerate(chain) if c is None), None)
        return Example(id=f"{start}:{'.'.join(path)}", prompt=f"Q: {start} {' '.join(path)}\n", answer=answer,
                       meta={"start": start, "path": list(path), "hops": len(path), "chain": chain,
                             "answerable": chain[-1] is not None, "missing_hop": None if missing is None else missing - 1})

    # ------------------------------------------------------------------ format, tool, verifier

    def demonstration(self, example: Example) -> list[Segment]:
        segs = [Segment(example.prompt, False)]
        chain, path = example.meta["chain"], example.meta["path"]
        for hop, rel in enumerate(path):
            query = f"{chain[hop]} {rel}"
            segs.append(Segment(f"search: {query}\n", True))
            segs.append(Segment(self.tool_output(query), False))
            if chain[hop + 1] is None:
                break
        segs.append(Segment(f"answer: {example.answer}\n", True))
        return segs

    def tool_output(self, query: str) -> str:
        """What ``search(query)`` shows the model: ``> fact; fact\\n`` or ``> none\\n``."""
        found = self.base.search(query)
        return "> " + ("; ".join(found) if found else "none") + "\n"

    def observe(self, example: Example, turn_text: str) -> str | None:
        line = turn_text.strip()
        if line.startswith("search:"):
            return self.tool_output(line[len("search:"):].strip())
        return None  # an answer (or anything else) ends the rollout

    def verify(self, example: Example, response: str) -> Verdict:
        answers = [ln[len("answer:"):].strip() for ln in response.splitlines() if ln.startswith("answer:")]
        if not answers or not answers[-1]:
            return Verdict("invalid", 0.0, None)
        got = answers[-1]
        if got.lower() == example.answer.lower():
            return Verdict("correct", 1.0, got)
        if got.lower() == ABSTAIN:
            return Verdict("abstain", 0.0, got)
        return Verdict("wrong", 0.0, got)

    def verify_step(self, text: str) -> bool | None:
        """Whether a reasoning step (``"Tari's mentor is Poku"``) holds in the fact base; None when
        ``text`` is not a step about this base."""
        step = self.base.parse_step(text)
        return None if step is None else self.base.check(*step)

    def judge_steps(self, example: Example, turn_texts: list[str], near_duplicate: float = 0.8) -> list[bool | None]:
        """Step verification of a rollout, one entry per turn: None for the ``answer:`` turn (not
        a step), else whether the step is supported by the fact base.

        The model's reasoning steps are its turns before the answer, numbered by order. A search
        step ``search: S r`` (step k) claims how the model got to ``S``: step 1 claims ``S`` is
        the question's start person; step k > 1 claims the fact ``S' r' S``, where ``S' r'`` is
        step k-1's query, and is supported when the base holds that fact (a person taken from a
        ``> none`` observation, or from thin air, is not). A step that is not a parsable search
        (subject and relation of this base) is unsupported, and so is a near-duplicate of an
        earlier step, which adds no evidence: the same person and relation when both steps parse
        (two names a letter apart are two people, so string similarity would mislead there),
        else a ``difflib`` ratio of the two texts above ``near_duplicate``."""
        import difflib

        labels: list[bool | None] = []
        queries: list[tuple[str, tuple[str, str] | None]] = []
        prev: tuple[str, str] | None = None
        for text in turn_texts:
            line = text.strip()
            if line.startswith("answer:"):
                labels.append(None)
                continue
            query = line[len("search:"):].strip() if line.startswith("search:") else None
            parsed = self._parse_query(query) if query is not None else None
            if parsed is None:
                ok = False
            elif prev is None:
                ok = not queries and parsed[0] == example.meta["start"]
            else:
                ok = self.base.check(prev[0], prev[1], parsed[0])
            text_ = query if query is not None else line
            if any(parsed == p if parsed is not None and p is not None
                   else difflib.SequenceMatcher(None, text_, q).ratio() > near_duplicate for q, p in queries):
                ok = False
            labels.append(ok)
            queries.append((text_, parsed))
            prev = parsed
        return labels

    def _parse_query(self, query: str) -> tuple[str, str] | None:
        """``"Tari friend"`` -> ``("Tari", "friend")``; None unless it is exactly a person and a
        relation of this base."""
        words = query.split()
        if len(words) != 2 or words[0] not in self.base._entity_set or words[1] not in self.base.relations:
            return None
        return words[0], words[1]

    @staticmethod
    def gold_in(example: Example, observation: str) -> bool:
        """Whether the gold answer appears (as a whole word) in a tool observation. Always False for
        unanswerable questions (their answer is an abstention, not a fact)."""
        if not example.meta.get("answerable", True):
            return False
        return re.search(rf"\b{re.escape(example.answer)}\b", observation) is not None
