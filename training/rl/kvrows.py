"""Row operations on a ``models.KVCache`` that the rollout engine needs and the cache does not
offer: a view of a contiguous block of sequences (to prefill a group of identical prompts in one
forward), a compacted copy keeping only some sequences (to stop spending decode steps on
finished rollouts, or to run a few rows together), and writing such a copy back.

Both build a ``KVCache`` from the per-layer tensors the cache keeps (``k``, ``v``, ``lens``,
``window``), as ``KVCache.select`` does for one row.
"""

from __future__ import annotations

import torch

from hysparse_kernels.models import KVCache


def _like(cache: KVCache, batch: int, pick) -> KVCache:
    out = object.__new__(KVCache)
    out.batch, out.max_len, out.window = batch, cache.max_len, cache.window
    out.k = {i: pick(t) for i, t in cache.k.items()}
    out.v = {i: pick(t) for i, t in cache.v.items()}
    out.lens = {i: pick(t) for i, t in cache.lens.items()}
    return out


def row_slice(cache: KVCache, lo: int, hi: int) -> KVCache:
    """A view of sequences ``lo..hi-1`` (shares storage: writes land in ``cache``)."""
    if not 0 <= lo < hi <= cache.batch:
        raise ValueError(f"lo/hi: expected 0 <= lo < hi <= {cache.batch}, got {lo}, {hi}")
    return _like(cache, hi - lo, lambda t: t[lo:hi])


def take_rows(cache: KVCache, rows) -> KVCache:
    """A new cache holding copies of sequences ``rows`` (a list of indices), in that order."""
    index = torch.as_tensor(rows, dtype=torch.long, device=next(iter(cache.lens.values())).device)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= cache.batch:
        raise ValueError(f"rows: expected a non-empty list of indices in [0, {cache.batch}), got {list(rows)}")
    return _like(cache, index.numel(), lambda t: t.index_select(0, index))


def put_rows(cache: KVCache, rows, src: KVCache) -> None:
    """Write ``src`` (a ``take_rows(cache, rows)`` copy, since advanced) back into rows ``rows``."""
    index = torch.as_tensor(rows, dtype=torch.long, device=next(iter(cache.lens.values())).device)
    if src.batch != index.numel() or set(src.k) != set(cache.k):
        raise ValueError(f"src: expected a copy of {index.numel()} rows of this cache, got {src.batch} rows")
    for table, other in ((cache.k, src.k), (cache.v, src.v), (cache.lens, src.lens)):
        for i, t in table.items():
            t.index_copy_(0, index, other[i])
