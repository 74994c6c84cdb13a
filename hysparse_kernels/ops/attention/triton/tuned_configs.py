"""The autotune cache as the config provider of the Triton attention kernels.

``config.config_for(op, shape)`` asks :func:`from_cache` first (outside the interpreter): it
translates the launcher's op and shape names into the cache's (``hysparse_kernels.tuned``) and
returns the tuned :class:`~.config.Config` of the nearest bucket on the current GPU, or ``None``
(then the heuristic default runs, with one warning per op and device).
"""

from __future__ import annotations

from dataclasses import fields

from .... import tuned
from .config import Config

# launcher op name -> op name of the dispatch registry / the cache files
OPS = {"sparse_attention": "sparse_attention_fwd", "decode": "attention_decode"}
_KEYS = {"dqk": "qk_dim", "dv": "v_dim", "sq": "seq_q", "sk": "seq_k", "group": "group",
         "block_size": "block_size", "n_blocks": "seq_k", "k": "topk"}
_FIELDS = {f.name for f in fields(Config)}


def cache_shape(shape: dict) -> dict:
    """The launcher's shape dict in the cache's names (``dqk`` -> ``qk_dim``, ``sk`` -> ``seq_k``, ...)."""
    return {_KEYS[k]: v for k, v in shape.items() if k in _KEYS and v is not None}


def from_cache(op: str, shape: dict, device: str = "cuda") -> Config | None:
    """The tuned config of launcher op ``op`` for ``shape`` on the current GPU, or None."""
    name = OPS.get(op, op)
    found = tuned.lookup(name, backend="triton", device=device, shape=cache_shape(shape))
    if found is None or not set(found) <= _FIELDS:
        tuned.warn_heuristic(name, "triton", device)
        return None
    return Config(**found)
