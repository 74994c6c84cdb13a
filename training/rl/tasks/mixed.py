"""Tasks that mix domains: ``mixed`` (arithmetic and lookup QA, each in its own format) and
``toolmix`` (the same questions answered with tools whose names change per episode).

* ``mixed``: the examples of ``arith30`` (two operands below 30, ``+ -``: a tiny model learns
  them from its warm start; it hardly answers ``arith``'s operands below 100 without a tool) and
  ``lookup`` (same seed) interleaved one for one, the longer list cut to the shorter, so a split
  is half each. Every example keeps its own task's
  prompt, demonstration, tool and verifier; ``meta["domain"]`` says which (``evaluate`` reports
  ``success_<domain>``). The held-out split's first ``2k`` examples are the first ``k`` held-out
  examples of each domain.
* ``toolmix``: arithmetic (``arith``'s operands below 100, with ``+ - *``) and lookup questions
  interleaved the same way, and three tools per
  episode, described on the first line of the prompt under names drawn for that episode (listed
  in a fixed role order: with the order shuffled too, the tiny warm start did not learn to copy
  the right name in 400 SFT steps, dev success 0.0)::

      tools: kev=calculator rul=search zam=reverse
      Q: 37*48
      call: kev 37*48
      > 1776
      answer: 1776

  ``calculator`` evaluates an integer expression (helps on arithmetic), ``search`` is the lookup
  fact base's search (helps on lookup questions), ``reverse`` echoes its argument backwards (a
  distractor: it helps with nothing). A tool call is the line ``call: NAME ARGS``; the answer is
  ``answer: X``. Names are three-letter lowercase words; ``names="train"`` draws them from one
  half of the word pool, ``names="heldout"`` from the other half (names never seen in training,
  same questions). :meth:`ToolMix.parse_call` and :meth:`ToolMix.call_score` are what the
  ``tool_grpo`` reward reads; :meth:`ToolMix.rollout_metrics` counts calls per domain and tool
  role (``evaluate`` merges it into every held-out report of this task).
"""

from __future__ import annotations

import hashlib
import random
import re

from .arith import Arithmetic, evaluate_expression
from .base import Example, Segment, Task, Verdict
from .lookup import LookupQA

DOMAINS = ("arith", "lookup")
ROLES = ("calculator", "search", "reverse")
NAME_POOLS = ("train", "heldout")
_CALL = re.compile(r"^call:\s*([a-z]+)\s+(.+?)\s*$")


class SmallArithmetic(Arithmetic):
    """``arith30``: ``arith`` with operands below 30 (``+ -``)."""

    name = "arith30"

    def __init__(self, seed: int = 0):
        super().__init__(seed, max_operand=30, ops="+-")


def _interleave(a: list[Example], b: list[Example]) -> list[Example]:
    out = []
    for x, y in zip(a, b):
        out += [x, y]
    return out


def _tagged(example: Example, domain: str, prompt: str | None = None, **meta) -> Example:
    return Example(f"{domain}:{example.id}", prompt if prompt is not None else example.prompt, example.answer,
                   {**example.meta, "domain": domain, **meta})


class MixedTask(Task):
    """``arith`` and ``lookup`` questions interleaved (module docstring); ``domain(example)`` names
    the task an example comes from, ``tasks[domain]`` is that task."""

    name = "mixed"
    stop = ("\n",)

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.tasks = {"arith": SmallArithmetic(seed), "lookup": LookupQA(seed)}
        lk = self.tasks["lookup"]
        self.max_turns, self.max_new_tokens, self.max_total_tokens = lk.max_turns, lk.max_new_tokens, lk.max_total_tokens
        self._cache: dict[str, list[Example]] = {}

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "domains": {d: t.describe() for d, t in self.tasks.items()}}

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        if split not in self._cache:
            self._cache[split] = _interleave(*[[_tagged(e, d) for e in self.tasks[d].examples(split)] for d in DOMAINS])
        items = self._cache[split]
        if n is not None and n > len(items):
            raise ValueError(f"n: expected at most {len(items)} examples in split {split!r}, got {n}")
        return items if n is None else items[:n]

    @staticmethod
    def domain(example: Example) -> str:
        return example.meta["domain"]

    def demonstration(self, example: Example) -> list[Segment]:
        return self.tasks[self.domain(example)].demonstration(example)

    def observe(self, example: Example, turn_text: str) -> str | None:
        return self.tasks[self.domain(example)].observe(example, turn_text)

    def verify(self, example: Example, response: str) -> Verdict:
        return self.tasks[self.domain(example)].verify(example, response)


def name_pool(pool: str) -> list[str]:
    """The tool names of ``pool`` (``train`` or ``heldout``): consonant-vowel-consonant words,
    split in two halves by a hash of the word (disjoint, fixed across seeds)."""
    if pool not in NAME_POOLS:
        raise ValueError(f"names: expected one of {NAME_POOLS}, got {pool!r}")
    words = [a + v + b for a in "bdfgklmnprstvz" for v in "aeiou" for b in "bdfgklmnprstvz"]
    return [w for w in words if (hashlib.sha256(w.encode()).digest()[0] % 2 == 0) == (pool == "train")]


class ToolMix(Task):
    """Arithmetic and lookup questions with three tools under per-episode names (module docstring)."""

    name = "toolmix"
    stop = ("\n",)

    def __init__(self, seed: int = 0, *, names: str = "train"):
        super().__init__(seed)
        self.pool = name_pool(names)
        self.names = names
        self.arith = Arithmetic(seed, ops="+-*")
        self.lookup = LookupQA(seed)
        self.max_turns = self.lookup.max_turns
        self.max_new_tokens = self.lookup.max_new_tokens
        self.max_total_tokens = self.lookup.max_total_tokens
        self._cache: dict[str, list[Example]] = {}

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "names": self.names, "arith": self.arith.describe(),
                "lookup": self.lookup.describe()}

    def _episode(self, example: Example, domain: str) -> Example:
        rng = random.Random(f"tools:{self.seed}:{self.names}:{domain}:{example.id}")
        picked = rng.sample(self.pool, len(ROLES))
        tools = dict(zip(picked, ROLES))  # name -> role, listed in the fixed role order
        header = "tools: " + " ".join(f"{n}={r}" for n, r in tools.items()) + "\n"
        return _tagged(example, domain, header + example.prompt, tools=tools)

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        if split not in self._cache:
            self._cache[split] = _interleave([self._episode(e, "arith") for e in self.arith.examples(split)],
                                             [self._episode(e, "lookup") for e in self.lookup.examples(split)])
        items = self._cache[split]
        if n is not None and n > len(items):
            raise ValueError(f"n: expected at most {len(items)} examples in split {split!r}, got {n}")
        return items if n is None else items[:n]

    # ------------------------------------------------------------------ tools

    @staticmethod
    def tool_name(example: Example, role: str) -> str:
        return next(n for n, r in example.meta["tools"].items() if r == role)

    @staticmethod
    def parse_call(line: str) -> tuple[str, str] | None:
        """``"call: kev 37*48"`` -> ``("kev", "37*48")``; None when the line is not a call."""
        m = _CALL.match(line.strip())
        return None if m is None else (m.group(1), m.group(2))

    def args_valid(self, role: str, args: str) -> bool:
        """Whether ``args`` are valid for a tool of ``role``: an integer expression (calculator), a
        person and a relation of the fact base (search), anything non-empty (reverse)."""
        if role == "calculator":
            try:
                evaluate_expression(args)
            except ValueError:
                return False
            return True
        if role == "search":
            return self.lookup._parse_query(args) is not None
        return bool(args.strip())

    def call_score(self, example: Example, line: str) -> int:
        """The tool-call reward of one turn, 0..3: 0 not a ``call:`` line, 1 parsed, 2 the name is
        one of the episode's tools, 3 and its arguments are valid for that tool."""
        call = self.parse_call(line)
        if call is None:
            return 0
        name, args = call
        role = example.meta["tools"].get(name)
        if role is None:
            return 1
        return 3 if self.args_valid(role, args) else 2

    def run_tool(self, role: str, args: str) -> str:
        if role == "calculator":
            try:
                return f"> {evaluate_expression(args)[0]}\n"
            except ValueError:
                return "> error: not an expression\n"
        if role == "search":
            return self.lookup.tool_output(args)
        return f"> {args[::-1]}\n"

    def observe(self, example: Example, turn_text: str) -> str | None:
        call = self.parse_call(turn_text)
        if call is None:
            return None  # an answer (or a malformed line) ends the episode
        name, args = call
        role = example.meta["tools"].get(name)
        return f"> error: no tool {name}\n" if role is None else self.run_tool(role, args)

    def demonstration(self, example: Example) -> list[Segment]:
        segs = [Segment(example.prompt, False)]
        if example.meta["domain"] == "arith":
            expr = f"{example.meta['a']}{example.meta['op']}{example.meta['b']}"
            segs += [Segment(f"call: {self.tool_name(example, 'calculator')} {expr}\n", True),
                     Segment(self.run_tool("calculator", expr), False)]
        else:
            search = self.tool_name(example, "search")
            chain = example.meta["chain"]
            for hop, rel in enumerate(example.meta["path"]):
                query = f"{chain[hop]} {rel}"
                segs += [Segment(f"call: {search} {query}\n", True), Segment(self.lookup.tool_output(query), False)]
                if chain[hop + 1] is None:
                    break
        return segs + [Segment(f"answer: {example.answer}\n", True)]

    def verify(self, example: Example, response: str) -> Verdict:
        return (self.arith if example.meta["domain"] == "arith" else self.lookup).verify(example, response)

    # ------------------------------------------------------------------ measurement

    def turn_calls(self, example: Example, turn_texts: list[str]) -> list[str]:
        """The role called by each ``call:`` turn (``unknown`` for a name not among the episode's
        tools)."""
        out = []
        for t in turn_texts:
            call = self.parse_call(t)
            if call is not None:
                out.append(example.meta["tools"].get(call[0], "unknown"))
        return out

    @classmethod
    def well_formed(cls, turn_texts: list[str]) -> bool:
        """The format: every turn but the last parses as a call, the last is ``answer: X`` (X
        non-empty), and no other turn is an answer."""
        if not turn_texts:
            return False
        *calls, last = [t.strip() for t in turn_texts]
        if not last.startswith("answer:") or not last[len("answer:"):].strip():
            return False
        return all(cls.parse_call(t) is not None for t in calls)

    def rollout_metrics(self, examples: list[Example], rollouts: list, verdicts: list[Verdict]) -> dict:
        """``format_ok`` (share of well-formed episodes) and per domain d: ``calls_<d>_<role>``
        (calls of that tool per episode, ``unknown`` for names not offered) and ``used_<d>_<role>``
        (share of episodes calling it at least once)."""
        out = {"format_ok": sum(self.well_formed(r.turn_texts) for r in rollouts) / max(1, len(rollouts))}
        for d in DOMAINS:
            idx = [i for i, e in enumerate(examples) if e.meta["domain"] == d]
            if not idx:
                continue
            calls = [self.turn_calls(examples[i], rollouts[i].turn_texts) for i in idx]
            for role in ROLES + ("unknown",):
                out[f"calls_{d}_{role}"] = sum(c.count(role) for c in calls) / len(idx)
                out[f"used_{d}_{role}"] = sum(role in c for c in calls) / len(idx)
        return out
