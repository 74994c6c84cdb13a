"""The search of one bucket with a fake kernel: coordinate descent, dropped candidates, budget, confirm."""

import pytest
import torch

from hysparse_kernels.autotune import runner


class FakeTask:
    """Output depends on nothing unless ``wrong``; "time" is a table lookup; ``boom`` raises."""

    def __init__(self, times, wrong=(), boom=()):
        self.times, self.wrong, self.boom = times, wrong, boom

    def runner(self, cfg):
        key = tuple(sorted(cfg.items()))

        def fn():
            if key in self.boom:
                raise RuntimeError("out of resources")
            return torch.ones(4) * (2 if key in self.wrong else 1)
        fn.key = key
        return fn


def k(**cfg):
    return tuple(sorted(cfg.items()))


def timer_for(task):
    return lambda fn: task.times[fn.key]


def test_coordinate_descent_drops_failures_and_wrong_results():
    times = {k(a=1, b=1): 10.0, k(a=2, b=1): 5.0, k(a=3, b=1): 1.0, k(a=4, b=1): 0.5,
             k(a=2, b=2): 4.0, k(a=2, b=3): 6.0}
    task = FakeTask(times, wrong=[k(a=4, b=1)], boom=[k(a=3, b=1)])
    groups = [[{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}], [{"b": 1}, {"b": 2}, {"b": 3}]]
    res = runner.tune_bucket(task, groups, {"a": 1, "b": 1}, timer=timer_for(task))
    assert res.complete and res.best == {"a": 2, "b": 2} and res.best_ms == 4.0 and res.heuristic_ms == 10.0
    reasons = {tuple(sorted(f["config"].items())): f["reason"] for f in res.failed}
    assert "out of resources" in reasons[k(a=3, b=1)] and "differs" in reasons[k(a=4, b=1)]
    assert res.speedup == pytest.approx(2.5)


def test_deadline_stops_incomplete_and_max_candidates_completes():
    task = FakeTask({k(a=i): float(10 - i) for i in range(1, 6)})
    groups = [[{"a": i} for i in range(1, 6)]]
    res = runner.tune_bucket(task, groups, {"a": 1}, timer=timer_for(task), deadline=5.0, now=lambda: 5.0)
    assert not res.complete and res.best == {"a": 1} and len(res.candidates) == 1
    t = [0.0]  # each timing takes one second on the injected clock: two candidates fit before 2.5

    def timer(fn):
        t[0] += 1.0
        return task.times[fn.key]

    res = runner.tune_bucket(task, groups, {"a": 1}, timer=timer, deadline=2.5, now=lambda: t[0])
    assert not res.complete and [c["config"] for c in res.candidates] == [{"a": 1}, {"a": 2}, {"a": 3}]
    res = runner.tune_bucket(task, groups, {"a": 1}, timer=timer_for(task), max_candidates=2)
    assert res.complete and res.best == {"a": 3} and len(res.candidates) == 3


def test_confirm_keeps_the_heuristic_when_the_win_does_not_repeat():
    task = FakeTask({k(a=1): 10.0, k(a=2): 9.0})
    res = runner.tune_bucket(task, [[{"a": 2}]], {"a": 1}, timer=timer_for(task))
    assert res.best == {"a": 2}
    task.times[k(a=2)] = 11.0  # the re-check says otherwise
    res = runner.confirm(task, res, timer=timer_for(task))
    assert res.best == {"a": 1} and res.best_ms == res.heuristic_ms == 10.0
    task.times[k(a=2)] = 8.0
    res = runner.tune_bucket(task, [[{"a": 2}]], {"a": 1}, timer=timer_for(task))
    assert runner.confirm(task, res, timer=timer_for(task)).best == {"a": 2}
