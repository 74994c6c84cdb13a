"""Timing and the search of one shape bucket.

CPU: one warm-up run (it builds the kernel), then ``reps`` timed runs; the median counts.
GPU: ``triton.testing.do_bench`` (median of its repetitions, L2 flushed between them), CUDA-graph
replay for small shapes.
A candidate that fails to build or run, or whose output differs from the heuristic config's,
is dropped with its reason; the best of the rest is kept if it still beats the heuristic when
the two are re-timed alternately (``confirm``).

Example::

    result = tune_bucket(task, groups, heuristic, deadline=clock() + 60)
    result.best, result.best_ms, result.heuristic_ms
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


class BudgetExceeded(Exception):
    """The time budget ran out; the partial result is attached."""


def clock() -> float:
    """Seconds on the clock that budgets and deadlines are measured by (``time.monotonic``).

    Looked up at call time (``runner.clock()``), so a test can replace it and decide when a
    budget runs out instead of the machine's speed and load deciding.
    """
    return time.monotonic()


def time_cpu(fn: Callable[[], object], reps: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds over ``reps`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# Below this many ms a launch is dominated by CPU-side launch overhead: replay it in a CUDA graph.
GRAPH_BELOW_MS = 0.05


def time_gpu(fn: Callable[[], object], reps: int = 50) -> float:
    """Median time in milliseconds: ``triton.testing.do_bench``; for small shapes (faster than
    ``GRAPH_BELOW_MS``) ``do_bench_cudagraph`` so launch overhead does not decide the ranking
    (kept on ``do_bench``'s number if the call cannot be captured)."""
    import triton.testing

    ms = float(triton.testing.do_bench(fn, rep=reps, return_mode="median"))
    if ms < GRAPH_BELOW_MS:
        try:
            ms = float(triton.testing.do_bench_cudagraph(fn, rep=reps, return_mode="median"))
        except Exception:  # not capturable (host synchronisation inside the call)
            pass
    return ms


def _close(a, b) -> bool:
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    tol = 2e-2 if a.dtype in (torch.bfloat16, torch.float16) else 1e-3
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol))


@dataclass
class BucketResult:
    heuristic: dict
    heuristic_ms: float | None = None
    best: dict | None = None
    best_ms: float | None = None
    candidates: list = field(default_factory=list)  # [{"config", "ms"}]
    failed: list = field(default_factory=list)  # [{"config", "reason"}]
    complete: bool = False

    @property
    def speedup(self) -> float | None:
        if self.heuristic_ms and self.best_ms:
            return self.heuristic_ms / self.best_ms
        return None


def tune_bucket(task, groups: list[list[dict]], heuristic: dict, *, timer=time_cpu, deadline: float | None = None,
                max_candidates: int | None = None, on_candidate: Callable[[BucketResult], None] | None = None,
                now: Callable[[], float] | None = None) -> BucketResult:
    """Coordinate descent over ``groups`` from ``heuristic``; stops early once ``now()`` reaches
    ``deadline`` (``now`` defaults to :func:`clock`).

    Returns the result with ``complete=False`` when the budget cut it short (``max_candidates``
    ends the search as complete: it is the search that was asked for).
    """
    now = now or clock
    res = BucketResult(dict(heuristic))
    reference = task.runner(heuristic)()
    res.heuristic_ms = timer(task.runner(heuristic))
    res.best, res.best_ms = dict(heuristic), res.heuristic_ms
    res.candidates.append({"config": dict(heuristic), "ms": res.heuristic_ms})
    seen = {tuple(sorted(heuristic.items()))}
    tried = 0
    if on_candidate:
        on_candidate(res)
    for group in groups:
        base = dict(res.best)
        for partial in group:
            cfg = {**base, **partial}
            key = tuple(sorted(cfg.items()))
            if key in seen:
                continue
            seen.add(key)
            if deadline is not None and now() >= deadline:
                return res  # incomplete: --resume searches this bucket again
            if max_candidates is not None and tried >= max_candidates:
                res.complete = True  # the search that was asked for is done
                return res
            tried += 1
            try:
                fn = task.runner(cfg)
                if not _close(fn(), reference):
                    raise ValueError("output differs from the heuristic config's")
                ms = timer(fn)
            except Exception as e:  # does not build, out of resources, wrong result: drop it
                res.failed.append({"config": cfg, "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
            else:
                res.candidates.append({"config": cfg, "ms": ms})
                if ms < res.best_ms:
                    res.best, res.best_ms = cfg, ms
            if on_candidate:
                on_candidate(res)
    res.complete = True
    return res


def confirm(task, res: BucketResult, *, timer=time_cpu, rounds: int = 3) -> BucketResult:
    """Re-time the winner against the heuristic, alternating the two ``rounds`` times; keep the
    winner only if its median still beats the heuristic's (a noisy machine otherwise crowns
    whichever candidate had a quiet moment). Both medians replace the search's numbers."""
    if res.best is None or res.best == res.heuristic:
        return res
    best_fn, heur_fn = task.runner(res.best), task.runner(res.heuristic)
    tb, th = [], []
    for _ in range(rounds):
        th.append(timer(heur_fn))
        tb.append(timer(best_fn))
    res.heuristic_ms, best_ms = statistics.median(th), statistics.median(tb)
    if best_ms < res.heuristic_ms:
        res.best_ms = best_ms
    else:
        res.best, res.best_ms = dict(res.heuristic), res.heuristic_ms
    return res


def count(groups: list[list[dict]]) -> int:
    return sum(len(g) for g in groups)
