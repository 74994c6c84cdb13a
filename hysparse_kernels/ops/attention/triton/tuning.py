"""The autotuner's entry points of the Triton attention kernels: the heuristic config of a
tunable op and a run of its kernel on exactly a given config (no lookup, no fallback).

The search space is the tuner's (``autotune/spaces.py``): it is pruned by the GPU's limits.
"""

from __future__ import annotations

import torch

from .attention import attention_fwd
from .attention_decode import attention_decode
from .config import heuristic_config, run_with_config as _with_config

__all__ = ["TUNABLE", "heuristic_config", "run_with_config"]

TUNABLE = ("attention_fwd", "attention_decode")


def run_with_config(op: str, config: dict, q, k, v, *, window=None, block_size=None):
    """Causal attention (``attention_fwd``) or a decode step over full caches (``attention_decode``)
    of ``q [B, Hq, Sq, Dqk]``, ``k``/``v [B, Hkv, Sk, D]`` with every launch on ``config``."""
    scale = q.shape[-1] ** -0.5
    if op == "attention_decode":
        lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)
        return _with_config(config, attention_decode, q, k, v, lens, None, window, scale)
    if op == "attention_fwd":
        return _with_config(config, attention_fwd, q, k, v, None, True, window, scale)
    raise KeyError(f"op: no triton tuning entry for {op!r}")
