"""Verifiable tasks, generated offline and deterministic by seed (train / dev / heldout splits).

``get_task("lookup")`` (multi-hop lookup QA with a search tool), ``"arith"`` (two-operand
arithmetic), ``"countdown"`` (reach a target with the given numbers), ``"arith30"`` (operands
below 30), ``"mixed"`` (arith30 and lookup interleaved), ``"toolmix"`` (arithmetic with ``+ - *``
and lookup, with a calculator, a search tool and a distractor under per-episode names; option
``names``).
"""

from __future__ import annotations

from .arith import Arithmetic, Countdown, evaluate_expression
from .base import OUTCOMES, SPLITS, Example, Segment, Task, Verdict
from .lookup import ABSTAIN, FactBase, LookupQA
from .mixed import MixedTask, SmallArithmetic, ToolMix

TASKS: dict[str, type[Task]] = {"lookup": LookupQA, "arith": Arithmetic, "countdown": Countdown, "arith30": SmallArithmetic,
                                 "mixed": MixedTask, "toolmix": ToolMix}


def get_task(name: str, seed: int = 0, **options) -> Task:
    """The task ``name`` built with ``seed`` (and task options)."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](seed, **options)


__all__ = ["TASKS", "get_task", "Task", "Example", "Segment", "Verdict", "SPLITS", "OUTCOMES", "LookupQA", "FactBase",
           "ABSTAIN", "Arithmetic", "Countdown", "evaluate_expression", "MixedTask", "ToolMix"]
