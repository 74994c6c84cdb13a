"""How many threads TVM's kernels run on, and how TVM's pool shares the cores with torch's.

TVM sizes its thread pool once, when the pool starts (on the first parallel kernel, or the first
call to ``runtime.NumThreads`` / ``runtime.config_threadpool``): ``TVM_NUM_THREADS``, else
``OMP_NUM_THREADS``, else *half* the hardware threads on x86 (it assumes hyper-threading), so on a
2-core machine without SMT it would run every kernel on one core. This module sets the pool up
before it starts and picks the thread count of every launch:

* **pool size**: ``TVM_NUM_THREADS`` when the user set it (TVM reads it itself); else the cores
  this process may run on (``os.sched_getaffinity``), set through ``runtime.config_threadpool``
  (no environment variable is written, so child processes choose for themselves).
* **threads of a kernel**: ``TVM_NUM_THREADS`` when set; else ``torch.get_num_threads()`` at the
  time of the launch (so ``torch.set_num_threads`` and ``OMP_NUM_THREADS`` govern both engines),
  capped at the pool size. A launch whose work is below ``SMALL_WORK`` FLOPs runs on the calling
  thread alone: waking a worker and meeting it at the end costs more than such a kernel, and a
  worker descheduled by another process stalls the whole call (decode steps of small models).
* **small steps on one thread**: :func:`sized_for` runs a block (a decode step of a small model)
  with torch on one thread when its work is below ``SMALL_STEP`` FLOPs, and TVM follows torch.
  torch sizes its parallel regions per op, not per step: at a few rows per matmul MKL still splits
  the work over both threads, and every such region waits for the slower thread; with another
  process on the machine that is a scheduler time slice per op (speculative decoding of the demo
  model ran 3-6x slower than plain decoding that way).
* **a busy machine**: like OpenMP's dynamic adjustment (``OMP_DYNAMIC``), the load of *other*
  processes (the 1-minute load average less this process's own CPU use, averaged the same way)
  is taken into account: while they leave fewer free cores than a kernel's threads, kernels under
  ``BUSY_WORK`` FLOPs and steps under ``BUSY_STEP`` run on one thread. A parallel kernel ends by
  waiting for its slowest worker, and a worker the scheduler has not run yet costs up to a time
  slice: measured with other jobs on the 2-core machine, the 32K HySparse decode step took 12 ms
  on two threads and 1.8 ms on one. Larger kernels keep all their threads (the wait is amortised
  and two threads still get more CPU than one). ``HYSPARSE_TVM_DYNAMIC=0`` turns this off; a
  user's ``TVM_NUM_THREADS`` is never adjusted.
* **no spinning**: ``TVM_THREAD_POOL_SPIN_COUNT=0`` and ``TVM_BIND_THREADS=0`` unless the user
  set them (read when the pool starts). A spinning TVM worker steals the core that torch's
  OpenMP threads need for the next op, and the other way round; with the two pools at two
  threads each on two cores, speculative decoding ran slower than plain decoding.

:func:`plan_threads` is the pure policy (tested without touching TVM); :func:`prepare` applies
it once per process, :func:`before_launch` per kernel launch; :func:`describe` is what
``hysparse info`` prints.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Mapping

ENV_THREADS = "TVM_NUM_THREADS"
ENV_SPIN = "TVM_THREAD_POOL_SPIN_COUNT"
ENV_BIND = "TVM_BIND_THREADS"
ENV_DYNAMIC = "HYSPARSE_TVM_DYNAMIC"
# Kernels with less work than this (FLOPs) run on the calling thread only. A parallel launch
# costs a wake-up and a barrier (tens of microseconds without spinning, a scheduler time slice
# when a worker has been preempted); 2 MFLOP is about 50 us of one AVX2 core's work.
SMALL_WORK = 2.0e6
# A model step (one forward) with less work than this runs with torch (and TVM) on one thread.
SMALL_STEP = 16.0e6
# While other processes keep the cores busy, kernels / steps under these run on one thread
# (about 1.5 ms / 6 ms of one core's work: below that, a time slice waiting for a worker dominates).
BUSY_WORK = 64.0e6
BUSY_STEP = 256.0e6
# TVM's AffinityMode: -3 (kSpecifyThreadShareAllCore) sizes the pool from a list of cores and
# lets every worker run on all of them; 1 (kBig) keeps TVM's own choice of cores.
_SHARE_ALL_CORES, _BIG = -3, 1


@dataclass(frozen=True)
class ThreadPlan:
    """The thread policy for given settings.

    ``pool``: workers TVM's pool is created with; ``threads``: threads a large kernel runs on;
    ``source``: where ``threads`` comes from; ``spin_count`` / ``bind``: the pool's
    ``TVM_THREAD_POOL_SPIN_COUNT`` / ``TVM_BIND_THREADS`` (strings, as TVM reads them).
    """

    pool: int
    threads: int
    source: str
    spin_count: str
    bind: str


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def env_int(env: Mapping[str, str], name: str, minimum: int = 1) -> int | None:
    """The integer setting ``name`` of ``env`` (``None`` when unset or blank); a value that is not
    an integer, or is below ``minimum``, raises ``ValueError`` naming the variable."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected {want}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected {want}, got {raw!r}")
    return value


def plan_threads(env: Mapping[str, str], torch_threads: int, cores: int) -> ThreadPlan:
    """The policy, from the environment, ``torch.get_num_threads()`` and the usable cores.

    Example: ``plan_threads({}, torch_threads=2, cores=2)`` -> pool 2, threads 2;
    ``plan_threads({"TVM_NUM_THREADS": "1"}, 2, 2)`` -> pool 1, threads 1.
    """
    if torch_threads < 1:
        raise ValueError(f"torch_threads: expected >= 1, got {torch_threads}")
    if cores < 1:
        raise ValueError(f"cores: expected >= 1, got {cores}")
    spin = env.get(ENV_SPIN) or "0"
    bind = env.get(ENV_BIND) or "0"
    user = env_int(env, ENV_THREADS)
    if user is not None:
        return ThreadPlan(user, user, ENV_THREADS, spin, bind)
    return ThreadPlan(cores, min(torch_threads, cores), "torch.get_num_threads()", spin, bind)


# ---------------------------------------------------------------- applying the policy

_lock = threading.Lock()
_prepared: ThreadPlan | None = None
_cores: list[str] = []
_local = threading.local()  # TVM's pool is per calling thread: so is the count it was last given


def _runtime_func(name: str):
    import tvm  # loads TVM's runtime library, which registers its global functions

    return tvm.get_global_func(name)


def prepare() -> ThreadPlan:
    """Apply the policy before TVM's pool starts (idempotent; cheap after the first call).

    Sets the no-spin / no-bind defaults in the environment (TVM reads them when the pool starts)
    and starts this thread's pool: without ``TVM_NUM_THREADS``, sized to the usable cores. If
    something started the pool earlier in this process, its size stays as TVM chose it; the
    thread count per launch still follows the policy within it.
    """
    global _prepared
    if _prepared is not None:
        return _prepared
    import torch

    with _lock:
        if _prepared is not None:
            return _prepared
        os.environ.setdefault(ENV_SPIN, "0")
        os.environ.setdefault(ENV_BIND, "0")
        plan = plan_threads(os.environ, torch.get_num_threads(), available_cores())
        if plan.source != ENV_THREADS:
            try:
                cpus = sorted(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = list(range(plan.pool))
            _cores[:] = [str(c) for c in cpus]
        _prepared = plan
    use(plan.threads)
    return plan


def policy() -> ThreadPlan:
    """The policy now (``threads`` follows ``torch.get_num_threads()`` unless TVM_NUM_THREADS is set)."""
    import torch

    plan = prepare()
    if plan.source == ENV_THREADS:
        return plan
    return ThreadPlan(plan.pool, max(1, min(torch.get_num_threads(), plan.pool)), plan.source, plan.spin_count, plan.bind)


def threads_for(work: float | None) -> int:
    """Threads for a kernel of ``work`` FLOPs (None: a large kernel)."""
    if work is not None and work < SMALL_WORK:
        return 1
    plan = policy()
    if plan.threads > 1 and work is not None and work < BUSY_WORK and plan.source != ENV_THREADS and _meter.busy(plan.threads):
        return 1
    return plan.threads


def busy_for(threads: int, others: float, cores: int) -> bool:
    """Whether other processes, ``others`` runnable threads on average, leave fewer than
    ``threads`` of ``cores`` free (with half a thread of slack for background noise)."""
    return cores - others < threads - 0.5


class LoadMeter:
    """The average number of runnable threads of *other* processes: the kernel's 1-minute load
    average less this process's CPU use averaged the same way (an exponential average with a
    60 s time constant). Sampled at most every ``every`` seconds. ``read_load`` / ``read_cpu`` /
    ``clock`` are injectable for tests."""

    def __init__(self, read_load=None, read_cpu=None, clock=time.monotonic, every: float = 0.05, cores=None,
                 read_age=None):
        self.read_load = read_load or (lambda: os.getloadavg()[0])
        self.read_cpu = read_cpu or (lambda: sum(os.times()[:2]))
        self.read_age = read_age or _process_age
        self.clock = clock
        self.every = every
        self.cores = cores
        self.own = 0.0  # this process's busy threads, 1-minute exponential average
        self.others = 0.0
        self._t = self._cpu = None
        self._last = -math.inf

    def update(self) -> float:
        now = self.clock()
        if now - self._last < self.every:
            return self.others
        self._last = now
        cpu = self.read_cpu()
        if self._t is None:
            # what the load average holds of this process's work before the first sample: its
            # mean rate since it started, weighted as the average weights it
            age = self.read_age()
            if age > 0:
                self.own = cpu / age * (1.0 - math.exp(-age / 60.0))
        elif now > self._t:
            rate = (cpu - self._cpu) / (now - self._t)
            decay = math.exp(-(now - self._t) / 60.0)
            self.own = self.own * decay + rate * (1.0 - decay)
        self._t, self._cpu = now, cpu
        try:
            self.others = max(0.0, self.read_load() - self.own)
        except OSError:  # no load average on this system: never busy
            self.others = 0.0
        return self.others

    def busy(self, threads: int) -> bool:
        if os.environ.get(ENV_DYNAMIC, "1") == "0":
            return False
        return busy_for(threads, self.update(), self.cores or available_cores())


def _process_age() -> float:
    """Seconds since this process started (Linux: /proc), 0 where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


_meter = LoadMeter()


def use(n: int) -> None:
    """Run this thread's next TVM kernels on ``n`` threads (only calls into TVM when ``n`` changes)."""
    if getattr(_local, "threads", None) == n:
        return
    prepare()
    # config_threadpool sets the pool's size cap (the list of cores; empty: TVM_NUM_THREADS) and
    # the workers a launch uses; the first call in a thread creates that thread's pool.
    if _cores:
        _runtime_func("runtime.config_threadpool")(_SHARE_ALL_CORES, n, list(_cores))
    else:
        _runtime_func("runtime.config_threadpool")(_BIG, n)
    _local.threads = n


def before_launch(work: float | None = None) -> int:
    """Call right before launching a TVM kernel that does ``work`` FLOPs; returns its thread count."""
    n = threads_for(work)
    use(n)
    return n


@contextlib.contextmanager
def sized_for(work: float):
    """Run the block on one thread (torch's pool, and TVM's, which follows it) if it does less
    than ``SMALL_STEP`` FLOPs, or less than ``BUSY_STEP`` while other processes keep the cores
    busy; else as configured. torch's thread count is process-wide: it is restored on exit.

    Example::

        with threads.sized_for(2 * active_params * tokens):
            logits = model(ids, cache=cache)
    """
    import torch

    n = torch.get_num_threads()
    small = work < SMALL_STEP or (work < BUSY_STEP and _meter.busy(n))
    if n == 1 or not small:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def describe() -> dict:
    """Thread counts of both engines, for ``hysparse info``."""
    import torch

    plan = policy()
    info = {"torch_threads": torch.get_num_threads(), "cores": available_cores(), **asdict(plan),
            "small_work_flops": SMALL_WORK, "small_step_flops": SMALL_STEP, "busy_work_flops": BUSY_WORK,
            "busy_step_flops": BUSY_STEP, "dynamic": os.environ.get(ENV_DYNAMIC, "1") != "0",
            "other_load": round(_meter.update(), 2)}
    try:
        use(plan.threads)
        info["tvm_runtime_threads"] = int(_runtime_func("runtime.NumThreads")())
    except Exception as e:  # TVM not installed or not loadable: the policy alone
        info["tvm_runtime_threads"] = None
        info["tvm_error"] = f"{type(e).__name__}: {e}"
    return info
