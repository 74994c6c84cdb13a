"""TVM plumbing: the CPU target to build for, and a build cache in memory and on disk.

Imports ``tvm`` only when a function here is called, so ``import hysparse_kernels`` never needs it.

* :func:`cpu_target` — JSON target ``{"kind": "llvm", "mcpu": <host cpu>}`` when LLVM detects the
  host CPU, else the generic ``{"kind": "llvm"}``; ``HYSPARSE_TVM_TARGET`` (a JSON object)
  overrides both.
* :func:`get_module` — compiled modules keyed by (op, pattern flags, dtypes, head dims, target),
  see :mod:`hysparse_kernels.backends.tvm.cache`.
* :mod:`~hysparse_kernels.backends.tvm.threads` — the thread policy: TVM's pool sized to the usable
  cores before it starts, threads per launch following ``torch.get_num_threads()``, small kernels
  on the calling thread, no spinning.
"""

from __future__ import annotations

from . import threads
from .cache import cache_dir, cache_stats, clear_memory_cache, get_module
from .target import cpu_target, cpu_target_spec, cuda_target

__all__ = ["threads", "cache_dir", "cache_stats", "clear_memory_cache", "cpu_target", "cpu_target_spec", "cuda_target", "get_module"]
