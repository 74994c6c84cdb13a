"""Scratch tensors the CPU kernels reuse from call to call (per thread, per name).

A fresh allocation of tens of MB comes back from the kernel as untouched pages, and the first
write to each 4 KiB page faults: on the 2-core development VMs 1.2-1.6 us per page (6 us on one),
10-50 ms for a 32 MB tensor, as much as a third of a sliding-window prefill or of a large MoE call. Workspaces
that never leave a kernel launcher (K^T chunks, MoE intermediates) are therefore kept per thread
and handed out again when the next request fits. Outputs returned to the caller are new tensors;
above 32 MiB their memory comes from :mod:`.output_pool`, which reuses blocks only once no caller
holds them (glibc unmaps such blocks on free and keeps smaller ones itself).

With ``HYSPARSE_HUGE_PAGES=1``, :func:`fresh` (and a new workspace) asks
the OS for transparent huge pages on large ones (``madvise(MADV_HUGEPAGE)`` before the first
write): the kernel then faults in 2 MiB at a time. On the development VM a new 128 MiB output
(above glibc's 32 MiB mmap limit, so fresh pages every call) written once took 50 ms with 4 KiB
pages (1.6 us a page) and 7.4 ms with the hint, and an SWA-128 prefill at
S = 8K went from 100 to 68 ms; but the first calls of a process, and the first ones after a
large allocation elsewhere, took up to 217 ms (with free 2 MiB blocks to spare: not compaction).
Hence opt-in, as PyTorch's own ``THP_MEM_ALLOC_ENABLE``. Where the hint is unavailable (another OS, THP off)
nothing changes.

Example::

    kt = workspace("swa.kt", n, torch.float32)   # a float32 tensor of n elements, contents undefined
    out = fresh((B, H, S, D), torch.float32)      # a new tensor for the caller, contents undefined
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import torch

from . import output_pool

ENV_HUGE_PAGES = "HYSPARSE_HUGE_PAGES"
# Tensors from this size up get the huge-page hint (two huge pages: below that little is saved).
HUGE_BYTES = 4 << 20
_PAGE = 4096
_MADV_HUGEPAGE = 14  # linux/mman.h


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Hint the OS to back ``t``'s not yet touched pages with huge pages (large CPU tensors only;
    a no-op elsewhere). The hint covers whole 4 KiB pages inside the tensor; its result is
    ignored (it is advice: the memory works the same without it). Returns ``t``. Called by
    :func:`fresh` under ``HYSPARSE_HUGE_PAGES=1``; always applies when called directly."""
    nbytes = t.numel() * t.element_size()
    if _madvise is None or nbytes < HUGE_BYTES or t.device.type != "cpu":
        return t
    lo = -(-t.data_ptr() // _PAGE) * _PAGE
    hi = (t.data_ptr() + nbytes) // _PAGE * _PAGE
    if hi > lo:
        _madvise(lo, hi - lo, _MADV_HUGEPAGE)
    return t


def fresh(shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new contiguous CPU tensor (contents undefined) for a kernel output that goes to the caller:
    ``torch.empty``, or above 32 MiB a block of :mod:`.output_pool` no caller holds any more; with
    the huge-page hint when it is large and ``HYSPARSE_HUGE_PAGES=1``."""
    t = output_pool.take(shape, dtype)  # large outputs: memory a caller has dropped, when there is some
    if t is None:
        t = torch.empty(shape, dtype=dtype)
    return advise_huge_pages(t) if os.environ.get(ENV_HUGE_PAGES) == "1" else t

# Workspaces larger than this are not kept (the memory goes back when the call returns).
KEEP_BYTES = 256 << 20
_kept = threading.local()


def workspace(name: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 1-D tensor of ``numel`` elements of ``dtype`` (contents undefined), reused by the next
    request of this thread under the same ``name`` when it fits. Never hand one out twice at once:
    a caller owns its workspace until it returns."""
    bufs = getattr(_kept, "bufs", None)
    if bufs is None:
        bufs = _kept.bufs = {}
    buf = bufs.get((name, dtype))
    if buf is not None and buf.numel() >= numel:
        return buf[:numel]
    buf = fresh((numel,), dtype)
    if numel * buf.element_size() <= KEEP_BYTES:
        bufs[(name, dtype)] = buf
    return buf
