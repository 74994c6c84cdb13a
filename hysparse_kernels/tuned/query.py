"""The kernels' entry point: the tuned config for a shape (:func:`lookup`) and a launch that falls
back to the heuristic and blacklists a tuned config that fails (:func:`launch`)."""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Callable

from . import cache
from .buckets import _distance, split_shape
from .cache import ENV_CACHE, TunedConfigWarning, _warn_once, blacklist, cache_root, entries
from .device import device_description, device_key


@lru_cache(maxsize=1)
def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def lookup(op: str, *, backend: str, device="cpu", shape: dict) -> dict | None:
    """The tuned config of ``op`` on ``backend`` for the bucket nearest ``shape`` on ``device``, or None.

    Only entries whose fixed sizes equal the shape's are candidates; among them the nearest
    bucket of the run-time sizes wins (ties: the same dtype, then the smaller bucket).
    Blacklisted configs are skipped. Answers are cached in memory per bucket.
    """
    root = os.environ.get(ENV_CACHE) or ""
    # Fast path: this exact shape was asked before (the common case of a kernel in a loop).
    raw = (root, op, backend, device, tuple(shape.items()))
    try:
        hit = cache._raw_answers[raw]
        return None if hit is None else dict(hit)
    except (KeyError, TypeError):  # TypeError: an unhashable device or size; take the slow path
        pass
    if str(device).startswith("cuda") and not _cuda_present():
        return None  # planning for a GPU this machine lacks: its configs cannot be told apart
    fixed, varying, dtype = split_shape(shape)
    memo = (root, op, backend, str(device), tuple(sorted(fixed.items())), tuple(sorted(varying.items())), dtype)
    try:
        hit = cache._answers[memo]
        return None if hit is None else dict(hit)
    except KeyError:
        pass
    table = entries(op, backend=backend, device=device)
    banned = cache._blacklisted(cache_root(), device_key(device), op, backend) if table else []
    best, best_rank = None, None
    for entry in table.values():
        if entry.get("fixed") != fixed or entry["config"] in banned:
            continue
        rank = (_distance(entry.get("bucket") or {}, varying), entry.get("dtype") != dtype,
                sum((entry.get("bucket") or {}).values()))
        if best_rank is None or rank < best_rank:
            best, best_rank = entry["config"], rank
    with cache._lock:
        cache._answers[memo] = best
        if len(cache._raw_answers) > 4096:  # decode walks through lengths: keep the exact-shape memo bounded
            cache._raw_answers.clear()
        try:
            cache._raw_answers[raw] = best
        except TypeError:
            pass
    return None if best is None else dict(best)




def warn_heuristic(op: str, backend: str, device="cpu", heuristic=None) -> None:
    """The one warning per process and device that kernels run heuristic configs (no tuned entry).

    One line, not one per op: on an untuned machine every op is untuned, and a list of them says
    nothing more than "this machine is not tuned"; ``hysparse ir MODEL`` shows per op whether
    its config is tuned or heuristic.
    """
    _warn_once(("heuristic", device_key(device)),
               f"no tuned config for {op} ({backend}) on {device_description(str(device))['name']}: it and any other "
               f"untuned kernel run heuristic defaults (said once per process); `hysparse autotune` tunes this "
               f"machine, `hysparse ir MODEL` shows which ops are tuned",
               stacklevel=5)


def launch(op: str, *, backend: str, device="cpu", shape: dict, heuristic: dict, run: Callable[[dict], object]):
    """Run ``run(config)`` with the tuned config for ``shape`` (missing knobs from ``heuristic``).

    No tuned config: ``run(heuristic)`` with one :class:`TunedConfigWarning` per process and device.
    A tuned config that raises: the heuristic runs; if it succeeds the tuned config is reported
    and blacklisted, if it fails too the error is the input's and is raised unchanged.
    """
    config = lookup(op, backend=backend, device=device, shape=shape)
    if config is None:
        warn_heuristic(op, backend, device, heuristic)
        return run(dict(heuristic))
    tuned = config
    config = {**heuristic, **tuned}
    try:
        return run(config)
    except Exception as e:
        out = run(dict(heuristic))
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"tuned config {config} of {op} ({backend}) failed at launch ({reason}); blacklisted, "
                      f"using the heuristic {heuristic}", TunedConfigWarning, stacklevel=3)
        try:
            blacklist(op, backend=backend, device=device, config=tuned, reason=reason)
        except OSError as w:  # a read-only cache: still fall back, just not persisted
            warnings.warn(f"could not persist the blacklist ({w})", TunedConfigWarning, stacklevel=3)
        return out
