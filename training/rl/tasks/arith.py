"""Arithmetic and countdown: single-turn tasks with an exact verifier.

* ``arith``: ``Q: 37+48`` → ``answer: 85`` (two operands below ``max_operand``, ``+`` or ``-``).
* ``countdown``: ``Q: 3 7 12 -> 33`` → ``answer: 3*7+12``: an expression over the given numbers
  (each used at most once; ``+ - *`` and parentheses) that evaluates to the target. The
  verifier parses the expression (Python's ``ast``, nothing evaluated outside the four node
  kinds) and checks the numbers used.
"""

from __future__ import annotations

import ast
import random
from collections import Counter

from .base import Example, Segment, Task, Verdict, check_split, split_of


def _answer_line(response: str) -> str | None:
    answers = [ln[len("answer:"):].strip() for ln in response.splitlines() if ln.startswith("answer:")]
    return answers[-1] if answers and answers[-1] else None


class Arithmetic(Task):
    name = "arith"
    stop = ("\n",)
    max_turns = 1
    max_new_tokens = 16
    max_total_tokens = 16

    def __init__(self, seed: int = 0, *, max_operand: int = 100, ops: str = "+-"):
        super().__init__(seed)
        if max_operand < 2 or not ops or set(ops) - set("+-*"):
            raise ValueError(f"max_operand/ops: expected max_operand >= 2 and ops from '+-*', got {max_operand}, {ops!r}")
        self.max_operand, self.ops = max_operand, ops
        self._cache: dict[str, list[Example]] = {}

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "max_operand": self.max_operand, "ops": self.ops}

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        check_split(split)
        if split not in self._cache:
            items = [(a, op, b) for a in range(self.max_operand) for op in self.ops for b in range(self.max_operand)
                     if split_of(f"{a}{op}{b}", self.seed) == split]
            random.Random(f"order:{self.seed}:{split}").shuffle(items)
            self._cache[split] = [Example(f"{a}{op}{b}", f"Q: {a}{op}{b}\n", str(eval(f"{a}{op}{b}")),  # noqa: S307 (ints and + - * only)
                                          {"a": a, "b": b, "op": op}) for a, op, b in items]
        items = self._cache[split]
        if n is not None and n > len(items):
            raise ValueError(f"n: expected at most {len(items)} examples in split {split!r}, got {n}")
        return items if n is None else items[:n]

    def demonstration(self, example: Example) -> list[Segment]:
        return [Segment(example.prompt, False), Segment(f"answer: {example.answer}\n", True)]

    def verify(self, example: Example, response: str) -> Verdict:
        got = _answer_line(response)
        if got is None:
            return Verdict("invalid", 0.0, None)
        try:
            value = int(got)
        except ValueError:
            return Verdict("invalid", 0.0, got)
        return Verdict("correct", 1.0, got) if value == int(example.answer) else Verdict("wrong", 0.0, got)


_ALLOWED = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def evaluate_expression(text: str) -> tuple[int, list[int]]:
    """Value of an integer expression with ``+ - *`` and parentheses, and the numbers it uses.
    Raises ``ValueError`` for anything else."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an expression: {text!r}") from e
    used: list[int] = []

    def walk(node) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED:
            return _ALLOWED[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return node.value
        raise ValueError(f"only integers, + - * and parentheses are allowed: {text!r}")

    return walk(tree.body), used


class Countdown(Task):
    name = "countdown"
    stop = ("\n",)
    max_turns = 1
    max_new_tokens = 24
    max_total_tokens = 24

    def __init__(self, seed: int = 0, *, count: int = 3, max_number: int = 20):
        super().__init__(seed)
        if count < 2 or max_number < 2:
            raise ValueError(f"count/max_number: expected count >= 2 and max_number >= 2, got {count}, {max_number}")
        self.count, self.max_number = count, max_number
        self._cache: dict[str, list[Example]] = {}

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "count": self.count, "max_number": self.max_number}

    def _generate(self, index: int) -> Example:
        rng = random.Random(f"countdown:{self.seed}:{index}")
        nums = [rng.randrange(1, self.max_number + 1) for _ in range(self.count)]
        expr = str(nums[0])
        for x in nums[1:]:
            op = rng.choice("+-*")
            expr = f"({expr}){op}{x}" if op == "*" and ("+" in expr or "-" in expr) else f"{expr}{op}{x}"
        target, _ = evaluate_expression(expr)
        shown = sorted(nums)
        return Example(f"{' '.join(map(str, shown))}->{target}", f"Q: {' '.join(map(str, shown))} -> {target}\n", expr,
                       {"numbers": shown, "target": target})

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        check_split(split)
        want = n if n is not None else 2000
        out, seen, i = self._cache.setdefault(split, []), set(), 0
        seen.update(e.id for e in out)
        while len(out) < want and i < 200 * want:
            ex = self._generate(i)
            i += 1
            if ex.id not in seen and split_of(ex.id, self.seed) == split:
                seen.add(ex.id)
                out.append(ex)
        return out[:want]

    def demonstration(self, example: Example) -> list[Segment]:
        return [Segment(example.prompt, False), Segment(f"answer: {example.answer}\n", True)]

    def verify(self, example: Example, response: str) -> Verdict:
        got = _answer_line(response)
        if got is None:
            return Verdict("invalid", 0.0, None)
        try:
            value, used = evaluate_expression(got)
        except ValueError:
            return Verdict("invalid", 0.0, got)
        if Counter(used) - Counter(example.meta["numbers"]):  # a number not given, or used too often
            return Verdict("wrong", 0.0, got)
        return Verdict("correct", 1.0, got) if value == example.meta["target"] else Verdict("wrong", 0.0, got)
