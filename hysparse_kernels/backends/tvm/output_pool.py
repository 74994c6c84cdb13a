"""Large CPU kernel outputs reuse memory the caller has dropped (a bounded caching allocator).

Why: glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free, so a
128 MiB attention output (``[1, 32, 8192, 128]`` fp32) is new memory on every call. On the
development VM the kernel populates a new 4 KiB page in 1.2-1.6 us (``MADV_POPULATE_WRITE`` is no
faster than touching: the cost is in the page allocation, not the trap) and unmaps it in 0.3 us:
about 60 ms of faults and 10 ms of ``munmap`` per 128 MiB, on the order of the SWA-128 prefill
kernel itself. Blocks up to 32 MiB glibc already keeps (its mmap threshold rises with what is
freed), so only larger blocks are pooled here.

How: the pool holds the storage of every large output it handed out (up to a byte budget). The
caller's tensor (and any view, autograd's saved tensors, a NumPy array made from it) holds a
reference to that storage; a block is free again only when the pool's own reference is the last
one (``_storage_Use_Count == 1``), which is exactly when the caller can no longer reach the memory
in this process; a block moved to shared memory (sent to another process) leaves the pool.
A free block is handed out again for a request of at least half its size. Contents of a pooled
output are undefined, as for ``torch.empty``.

Settings: ``HYSPARSE_OUTPUT_POOL_MB`` (default 512) is the most memory the pool keeps, in use or
free; ``0`` turns it off (every output a new ``torch.empty``). :func:`release` drops the free
blocks (their memory goes back to the OS). Where torch lacks the use-count hook the pool is off.
"""

from __future__ import annotations

import os
import threading

import torch

from .threads import env_int

ENV_POOL_MB = "HYSPARSE_OUTPUT_POOL_MB"
DEFAULT_POOL_MB = 512
# Smallest pooled block: glibc's largest mmap threshold (4 Mi x sizeof(long)); below it freed
# memory stays in glibc's heap and comes back without faults.
MIN_BYTES = 32 << 20

_use_count = getattr(torch._C, "_storage_Use_Count", None)
_lock = threading.Lock()
_blocks: list[torch.UntypedStorage] = []  # every pooled storage, in use or free


def budget_bytes() -> int:
    """The pool's byte budget from ``HYSPARSE_OUTPUT_POOL_MB`` (0: off). Bad values raise."""
    mb = env_int(os.environ, ENV_POOL_MB, minimum=0)  # MiB; 0 turns the pool off
    mb = DEFAULT_POOL_MB if mb is None else mb
    return mb << 20 if _use_count is not None else 0


def _free(s: torch.UntypedStorage) -> bool:
    return _use_count(s._cdata) == 1  # only the pool's reference is left


def _drop_shared() -> None:
    """Forget blocks a caller moved to shared memory (``share_memory_``, sending the tensor to
    another process): another process may still read them, whatever this one holds. Under _lock."""
    _blocks[:] = [s for s in _blocks if not s.is_shared()]


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def take(shape, dtype: torch.dtype) -> torch.Tensor | None:
    """A contiguous CPU tensor of ``shape`` / ``dtype`` on pooled memory, or ``None`` when the
    request is small (below :data:`MIN_BYTES`), the pool is off, or its budget is spent by blocks
    in use (the caller then allocates as usual)."""
    shape = tuple(int(n) for n in shape)
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    if nbytes < MIN_BYTES:
        return None
    budget = budget_bytes()
    if nbytes > budget:
        return None
    with _lock:
        _drop_shared()
        free = [s for s in _blocks if _free(s) and nbytes <= s.nbytes() <= 2 * nbytes]
        if free:
            block = min(free, key=lambda s: s.nbytes())
        else:
            held = sum(s.nbytes() for s in _blocks)
            # make room: drop free blocks that do not fit this request, largest first
            for s in sorted((s for s in _blocks if _free(s)), key=lambda s: -s.nbytes()):
                if held + nbytes <= budget:
                    break
                _blocks.remove(s)
                held -= s.nbytes()
            if held + nbytes > budget:
                return None
            block = torch.UntypedStorage(nbytes)
            _blocks.append(block)
        return torch.empty(0, dtype=dtype).set_(block, 0, shape)


def release() -> int:
    """Drop the pool's free blocks (the memory of blocks still in use stays with their tensors and
    is freed when they are). Returns the bytes released."""
    with _lock:
        gone = [s for s in _blocks if _free(s)]
        for s in gone:
            _blocks.remove(s)
    return sum(s.nbytes() for s in gone)


def describe() -> dict:
    """The pool's budget and what it holds now (for ``hysparse info``)."""
    with _lock:
        in_use = [s.nbytes() for s in _blocks if not _free(s)]
        free = [s.nbytes() for s in _blocks if _free(s)]
    return {"budget_mb": budget_bytes() >> 20, "min_block_mb": MIN_BYTES >> 20, "blocks": len(in_use) + len(free),
            "in_use_mb": sum(in_use) / 2**20, "free_mb": sum(free) / 2**20, "available": _use_count is not None}
