"""Thread policy of the TVM backend (hysparse_kernels.backends.tvm.threads).

The policy is a pure function of the environment, torch's thread count and the usable cores; it is
tested on given values, never on this machine's. The end-to-end checks run in a child process
(TVM's pool is per process and starts once) with a pretended CPU affinity, so they hold on any
machine: TVM's runtime reports the chosen counts and the kernels give the same result on any count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hysparse_kernels.backends.tvm import threads
from hysparse_kernels.backends.tvm.threads import plan_threads


@pytest.mark.parametrize("torch_threads, cores, pool, threads", [
    (2, 2, 2, 2),   # the 2-core machine: both cores (TVM alone would take half the hardware threads: 1)
    (1, 2, 2, 1),   # torch.set_num_threads(1) / OMP_NUM_THREADS=1: TVM follows
    (4, 2, 2, 2),   # more torch threads than usable cores: capped at the cores
    (8, 16, 16, 8),  # an affinity mask of 16 cores, torch on 8
    (1, 1, 1, 1),   # taskset to one core
])
def test_plan_follows_torch_and_affinity(torch_threads, cores, pool, threads):
    plan = plan_threads({}, torch_threads=torch_threads, cores=cores)
    assert (plan.pool, plan.threads, plan.source) == (pool, threads, "torch.get_num_threads()")
    assert plan.spin_count == "0" and plan.bind == "0"  # no spinning, no pinning by default


@pytest.mark.parametrize("value", ["1", "3", "12"])
def test_user_tvm_num_threads_wins(value):
    plan = plan_threads({"TVM_NUM_THREADS": value}, torch_threads=2, cores=2)
    assert (plan.pool, plan.threads, plan.source) == (int(value), int(value), "TVM_NUM_THREADS")


def test_user_spin_and_bind_are_kept():
    plan = plan_threads({"TVM_THREAD_POOL_SPIN_COUNT": "300000", "TVM_BIND_THREADS": "1"}, 2, 2)
    assert (plan.spin_count, plan.bind) == ("300000", "1")


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_tvm_num_threads_is_named(value):
    with pytest.raises(ValueError, match="TVM_NUM_THREADS: expected a positive integer"):
        plan_threads({"TVM_NUM_THREADS": value}, 2, 2)


@pytest.mark.parametrize("kw", [dict(torch_threads=0, cores=2), dict(torch_threads=2, cores=0)])
def test_bad_counts_are_named(kw):
    with pytest.raises(ValueError, match="expected >= 1"):
        plan_threads({}, **kw)


_CHILD = textwrap.dedent("""
    import json, os, sys
    cores = json.loads(sys.argv[1])
    if cores is not None:
        os.sched_getaffinity = lambda pid: set(range(cores))  # pretend this affinity mask
    import torch
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    import tvm
    from hysparse_kernels.backends.tvm import threads
    import hysparse_kernels as hk
    nthreads = tvm.get_global_func("runtime.NumThreads")
    out = {"plan": threads.prepare().__dict__, "runtime_after_prepare": nthreads(),
           "spin_env": os.environ.get("TVM_THREAD_POOL_SPIN_COUNT")}
    torch.manual_seed(0)
    q = torch.randn(1, 4, 40, 32); k = torch.randn(1, 2, 40, 32); v = torch.randn(1, 2, 40, 32)
    outs = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        out[f"threads_for_large_at_torch_{n}"] = threads.before_launch(None)
        out[f"runtime_at_torch_{n}"] = nthreads()
        outs.append(hk.attention(q, k, v, backend="tvm"))
    out["small"] = threads.before_launch(threads.SMALL_WORK / 2)
    out["runtime_small"] = nthreads()
    out["same_results"] = all(bool((o == outs[0]).all()) for o in outs)
    print(json.dumps(out))
""")


def _child(env_extra: dict, cores, torch_threads=None) -> dict:
    pytest.importorskip("tvm", reason="apache-tvm is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")}
    env.update(env_extra)
    args = [sys.executable, "-c", _CHILD, json.dumps(cores)] + ([str(torch_threads)] if torch_threads else [])
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_pool_sized_to_the_affinity_and_following_torch():
    # A pretended 3-core mask: the pool gets 3 workers whatever the machine has (TVM alone would
    # size it to half the hardware threads), and each launch uses torch's current count.
    out = _child({}, cores=3, torch_threads=3)
    assert out["plan"]["pool"] == 3 and out["runtime_after_prepare"] == 3
    assert out["spin_env"] == "0"
    for n in (1, 2, 3):
        assert out[f"threads_for_large_at_torch_{n}"] == n and out[f"runtime_at_torch_{n}"] == n
    assert out["small"] == 1 and out["runtime_small"] == 1  # small kernels on the calling thread
    assert out["same_results"]  # each task writes its own rows: any thread count, same bits


def test_user_settings_respected_in_process():
    out = _child({"TVM_NUM_THREADS": "2", "TVM_THREAD_POOL_SPIN_COUNT": "1000"}, cores=3, torch_threads=3)
    assert out["plan"]["source"] == "TVM_NUM_THREADS" and out["plan"]["pool"] == 2
    assert out["runtime_after_prepare"] == 2 and out["spin_env"] == "1000"
    for n in (1, 2, 3):  # the user's count holds whatever torch is set to
        assert out[f"threads_for_large_at_torch_{n}"] == 2 and out[f"runtime_at_torch_{n}"] == 2
    assert out["same_results"]


def test_sized_for_runs_small_steps_on_one_thread_and_restores(monkeypatch):
    monkeypatch.setenv("HYSPARSE_TVM_DYNAMIC", "0")  # whatever else runs on this machine
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.sized_for(threads.SMALL_STEP / 10):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads.sized_for(threads.SMALL_STEP * 10):
            assert torch.get_num_threads() == 2  # large steps keep the configured count
        with pytest.raises(RuntimeError, match="inside"):
            with threads.sized_for(0.0):
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2  # restored on an exception too
    finally:
        torch.set_num_threads(before)


def test_decoding_a_small_model_runs_on_one_thread(monkeypatch):
    """generate() sizes its decode steps: the tiny zoo models' steps are below SMALL_STEP."""
    from hysparse_kernels.models import build_model, generate

    monkeypatch.setenv("HYSPARSE_TVM_DYNAMIC", "0")  # whatever else runs on this machine
    model = build_model("tiny-mimo-7b").eval()
    seen = []
    real = model.hidden_states  # generate's forward: hidden states, then logits of the last position

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "hidden_states", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate(model, [[1, 2, 3]], 3)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "SMALL_STEP", 0.0)  # every step large: the configured count
        seen.clear()
        generate(model, [[1, 2, 3]], 3)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("others, cores, threads_, busy", [
    (0.0, 2, 2, False),   # a quiet machine
    (0.3, 2, 2, False),   # background noise
    (1.0, 2, 2, True),    # one other CPU-bound process: one core left for two threads
    (1.0, 4, 2, False),   # ... on four cores there is room
    (6.0, 2, 1, True),    # heavily loaded: even one thread has to share
])
def test_busy_when_others_leave_fewer_free_cores_than_threads(others, cores, threads_, busy):
    assert threads.busy_for(threads_, others, cores) is busy


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_load_meter_subtracts_this_process_own_use():
    clock, cpu = _Clock(), [0.0]
    meter = threads.LoadMeter(read_load=lambda: 2.0, read_cpu=lambda: cpu[0], clock=clock, every=0.0, cores=2,
                              read_age=lambda: 0.0)
    assert meter.update() == 2.0  # nothing known of this process yet: all load is others'
    for _ in range(600):  # ten minutes of this process using two cores: the average converges on 2
        clock.t += 1.0
        cpu[0] += 2.0
        meter.update()
    assert abs(meter.own - 2.0) < 1e-3 and meter.others < 1e-3
    assert not meter.busy(2)  # the load is this process's own work


def test_load_meter_counts_the_history_before_its_first_sample():
    meter = threads.LoadMeter(read_load=lambda: 1.0, read_cpu=lambda: 600.0, clock=_Clock(), every=0.0, cores=2,
                              read_age=lambda: 600.0)  # ten minutes at one core on average
    assert abs(meter.update()) < 1e-3


def test_medium_kernels_run_on_one_thread_while_the_machine_is_busy(monkeypatch):
    meter = threads.LoadMeter(read_load=lambda: 3.0, read_cpu=lambda: 0.0, clock=_Clock(), every=0.0, cores=2,
                              read_age=lambda: 0.0)
    monkeypatch.setattr(threads, "_meter", meter)
    monkeypatch.setattr(threads, "policy", lambda: threads.ThreadPlan(2, 2, "torch.get_num_threads()", "0", "0"))
    monkeypatch.delenv("HYSPARSE_TVM_DYNAMIC", raising=False)
    assert threads.threads_for(threads.BUSY_WORK / 2) == 1
    assert threads.threads_for(threads.BUSY_WORK * 2) == 2  # large kernels keep their threads
    assert threads.threads_for(None) == 2
    monkeypatch.setenv("HYSPARSE_TVM_DYNAMIC", "0")
    assert threads.threads_for(threads.BUSY_WORK / 2) == 2
    monkeypatch.delenv("HYSPARSE_TVM_DYNAMIC")
    monkeypatch.setattr(threads, "policy", lambda: threads.ThreadPlan(2, 2, "TVM_NUM_THREADS", "0", "0"))
    assert threads.threads_for(threads.BUSY_WORK / 2) == 2  # the user's count is never adjusted
    quiet = threads.LoadMeter(read_load=lambda: 0.0, read_cpu=lambda: 0.0, clock=_Clock(), every=0.0, cores=2,
                              read_age=lambda: 0.0)
    monkeypatch.setattr(threads, "_meter", quiet)
    monkeypatch.setattr(threads, "policy", lambda: threads.ThreadPlan(2, 2, "torch.get_num_threads()", "0", "0"))
    assert threads.threads_for(threads.BUSY_WORK / 2) == 2


def test_sized_for_runs_medium_steps_on_one_thread_while_the_machine_is_busy(monkeypatch):
    busy = threads.LoadMeter(read_load=lambda: 3.0, read_cpu=lambda: 0.0, clock=_Clock(), every=0.0, cores=2,
                             read_age=lambda: 0.0)
    monkeypatch.setattr(threads, "_meter", busy)
    monkeypatch.delenv("HYSPARSE_TVM_DYNAMIC", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.sized_for(threads.BUSY_STEP / 2):
            assert torch.get_num_threads() == 1
        with threads.sized_for(threads.BUSY_STEP * 2):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
