"""The autotune cache as the config provider of the Triton attention kernels.

``config.config_for(op, shape)`` asks :func:`from_cache` first (outside the interpreter): it
translates the launcher's op and shape names into the cache's (``hysparse_kernels.tuned``) and
returns the tuned :class:`Config` of the nearest bucket on the current GPU, or ``None``
(then the heuristic default runs, with one warning per op and device).

:func:`guarded` wraps a launcher: if a launch that used a tuned config raises (e.g. out of
shared memory on a smaller GPU than the one it was tuned on), the config is reported and
blacklisted, and the launch is repeated with the heuristic default.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, fields

from .... import tuned


@dataclass(frozen=True)
class Config:
    """Tile sizes and launch parameters of one Triton kernel launch (a tuned entry's ``config``)."""

    block_m: int = 64  # query rows per program (or rows of the score tile)
    block_n: int = 64  # keys per KV tile
    num_warps: int = 4
    num_stages: int = 2

    def launch(self) -> dict:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


# launcher op name -> op name of the dispatch registry / the cache files
OPS = {"sparse_attention": "sparse_attention_fwd", "decode": "attention_decode"}
_KEYS = {"dqk": "qk_dim", "dv": "v_dim", "sq": "seq_q", "sk": "seq_k", "group": "group",
         "block_size": "block_size", "n_blocks": "seq_k", "k": "topk"}
_FIELDS = {f.name for f in fields(Config)}
_state = threading.local()  # .tuned: [(op, config)] handed out in this launch; .bypass: heuristic only


def cache_shape(shape: dict) -> dict:
    """The launcher's shape dict in the cache's names (``dqk`` -> ``qk_dim``, ``sk`` -> ``seq_k``, ...)."""
    return {_KEYS[k]: v for k, v in shape.items() if k in _KEYS and v is not None}


def from_cache(op: str, shape: dict, device: str = "cuda") -> Config | None:
    """The tuned config of launcher op ``op`` for ``shape`` on the current GPU, or None."""
    name = OPS.get(op, op)
    if getattr(_state, "bypass", False):
        return None
    found = tuned.lookup(name, backend="triton", device=device, shape=cache_shape(shape))
    if found is None or not set(found) <= _FIELDS:
        tuned.warn_heuristic(name, "triton", device)
        return None
    if getattr(_state, "tuned", None) is not None:
        _state.tuned.append((name, found))
    return Config(**found)


def guarded(launch):
    """``launch()``; if it raises after a tuned config was used, blacklist that config and run
    ``launch()`` again on the heuristic defaults (an error there is the input's, raised as is)."""
    outer = getattr(_state, "tuned", None)
    _state.tuned = used = []
    try:
        return launch()
    except Exception as e:
        if not used:
            raise
        _state.bypass = True
        try:
            out = launch()
        finally:
            _state.bypass = False
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        for name, cfg in used:
            warnings.warn(f"tuned config {cfg} of {name} (triton) failed at launch ({reason}); blacklisted, "
                          f"using the heuristic default", tuned.TunedConfigWarning, stacklevel=3)
            tuned.blacklist(name, backend="triton", device="cuda", config=cfg, reason=reason)
        return out
    finally:
        _state.tuned = outer
