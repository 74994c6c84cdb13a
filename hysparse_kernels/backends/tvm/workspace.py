"""Scratch tensors the CPU kernels reuse from call to call (per thread, per name).

A fresh allocation of tens of MB comes back from the kernel as untouched pages, and the first
write to each 4 KiB page faults: on the 2-core development VM about 6 us per page, 50 ms for a
32 MB tensor, as much as a third of a sliding-window prefill or of a large MoE call. Workspaces
that never leave a kernel launcher (K^T chunks, MoE intermediates) are therefore kept per thread
and handed out again when the next request fits; outputs returned to the caller are always new.

Example::

    kt = workspace("swa.kt", n, torch.float32)   # a float32 tensor of n elements, contents undefined
"""

from __future__ import annotations

import threading

import torch

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
    buf = torch.empty(numel, dtype=dtype)
    if numel * buf.element_size() <= KEEP_BYTES:
        bufs[(name, dtype)] = buf
    return buf
