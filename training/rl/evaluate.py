"""Rollouts of a task and their verdicts: the glue between a ``Task`` and the rollout engine, and
the held-out evaluation every recipe run reports in ``eval.json``.

``evaluate(model, task, split="heldout", n=200, temperature=1.0, samples=2)`` decodes the first
``n`` examples of the split ``samples`` times each with the given settings (a fixed generator
seed, so the starting and the final checkpoint are judged on the same questions with the same
decoding), and greedily once, and returns success and outcome rates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ..data import ByteTokenizer
from .rollout import Rollout, RolloutEngine, SamplingParams
from .tasks import OUTCOMES, Example, Task, Verdict


def task_sampling(task: Task, temperature: float = 1.0, top_p: float = 1.0, num_draft: int = 0) -> SamplingParams:
    """The task's rollout settings: its stop strings, turn and length limits."""
    return SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=task.max_new_tokens,
                          max_total_tokens=task.max_total_tokens, stop=task.stop, max_turns=task.max_turns,
                          num_draft=num_draft)


@dataclass
class TaskEnv:
    """The task's tool, per rollout row: row ``i`` answers ``examples[i]``."""

    task: Task
    examples: list[Example]

    def observe(self, row: int, turn_text: str) -> str | None:
        return self.task.observe(self.examples[row], turn_text)


def prompt_ids(example: Example, tok: ByteTokenizer) -> list[int]:
    return tok.encode(example.prompt, bos=True)


def run_task(engine: RolloutEngine, task: Task, examples: list[Example], tok: ByteTokenizer, generator=None,
             batch: int | None = None):
    """Roll out ``examples`` (in chunks of ``batch`` rows); returns (rollouts, verdicts, stats list)."""
    rollouts, verdicts, stats = [], [], []
    step = batch or len(examples)
    for i in range(0, len(examples), step):
        chunk = examples[i:i + step]
        outs, st = engine.generate([prompt_ids(e, tok) for e in chunk], TaskEnv(task, chunk), generator)
        rollouts += outs
        stats.append(st)
        verdicts += [task.verify(e, tok.decode(r.tokens)) for e, r in zip(chunk, outs)]
    return rollouts, verdicts, stats


def summarize(verdicts: list[Verdict], rollouts: list[Rollout], examples: list[Example]) -> dict:
    n = len(verdicts)
    counts = Counter(v.outcome for v in verdicts)
    out = {"success": sum(v.success for v in verdicts) / n, "reward": sum(v.reward for v in verdicts) / n}
    out.update({f"rate_{o}": counts.get(o, 0) / n for o in OUTCOMES})
    out["response_tokens"] = sum(r.num_model_tokens for r in rollouts) / n
    hops = sorted({e.meta["hops"] for e in examples if "hops" in e.meta})
    for h in hops:
        idx = [i for i, e in enumerate(examples) if e.meta.get("hops") == h]
        out[f"success_hops{h}"] = sum(verdicts[i].success for i in idx) / len(idx)
    for d in sorted({e.meta["domain"] for e in examples if "domain" in e.meta}):
        idx = [i for i, e in enumerate(examples) if e.meta.get("domain") == d]
        out[f"success_{d}"] = sum(verdicts[i].success for i in idx) / len(idx)
    return out


@torch.no_grad()
def evaluate(model, task: Task, *, split: str = "heldout", n: int = 200, temperature: float = 1.0, top_p: float = 1.0,
             samples: int = 2, seed: int = 1234, batch: int = 128, greedy: bool = True, judge=None) -> dict:
    """Success of ``model`` on the first ``n`` examples of ``split``: sampled (``samples`` per
    example, the policy's own distribution) and greedy. Keys: ``success`` (sampled),
    ``success_greedy``, ``reward``, ``rate_<outcome>``, ``response_tokens``, per-hop success,
    per-domain success (``success_<meta["domain"]>``) and the task's ``rollout_metrics`` if it has them.
    ``judge(examples, rollouts, verdicts) -> dict``: more metrics of the sampled rollouts (a
    recipe's, e.g. step faithfulness), merged in."""
    tok = ByteTokenizer()
    examples = task.examples(split, n)
    gen = torch.Generator().manual_seed(seed)
    sampled = RolloutEngine(model, tok, task_sampling(task, temperature, top_p))
    reps = [e for e in examples for _ in range(samples)]
    rollouts, verdicts, _ = run_task(sampled, task, reps, tok, gen, batch)
    out = summarize(verdicts, rollouts, reps)
    if hasattr(task, "rollout_metrics"):  # a task's own measurements (tool calls per domain, ...)
        out.update(task.rollout_metrics(reps, rollouts, verdicts))
    if judge is not None:
        out.update(judge(reps, rollouts, verdicts))
    out.update({"n": len(examples), "samples": samples, "temperature": temperature, "top_p": top_p, "split": split})
    if not greedy:
        return out
    greedy = RolloutEngine(model, tok, task_sampling(task, 0.0))
    g_rollouts, g_verdicts, _ = run_task(greedy, task, examples, tok, None, batch)
    g = summarize(g_verdicts, g_rollouts, examples)
    out.update({f"{k}_greedy": v for k, v in g.items() if k in ("success", "reward", "rate_abstain", "rate_invalid")})
    return out
