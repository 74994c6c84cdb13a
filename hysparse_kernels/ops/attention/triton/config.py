"""Launch configurations of the Triton attention kernels: vendor config lists, the heuristic
default, and the hook through which tuned configs will be supplied.

* ``cuda_configs(op)`` / ``hip_configs(op)``: the candidate configs per vendor (one function each,
  a comment on every choice). These are the search space of an autotuner.
* ``config_for(op, shape)``: the config a launcher uses. Today it returns the heuristic default
  (``default_config``); the autotune cache (its own issue) plugs in through ``set_config_provider``
  and may answer with a tuned config for the shape bucket, or ``None`` to keep the default.
* Under the interpreter (``TRITON_INTERPRET=1``) a single config is used: multi-config
  ``triton.autotune`` needs a driver, and numpy does not care about tile shapes beyond speed.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, Optional

import torch

from .tuned_configs import Config, from_cache


def interpreted() -> bool:
    """True when Triton runs kernels on numpy (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# The smallest HySparse block the Triton kernels take: a block is a KV tile, and tl.dot needs
# tiles of at least 16. Smaller blocks (any power of two is valid) run the reference path.
MIN_BLOCK = 16  # smaller blocks are not accepted (``accepts_*`` of the kernel modules): dispatch runs them elsewhere


def head_block(d: int) -> int:
    """Padded constexpr head dim: next power of two, at least 16 (``tl.dot`` needs K >= 16).

    Dqk = 192 runs as a 256-wide tile with the last 64 columns masked to zero.
    """
    return max(16, next_pow2(d))


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The interpreter multiplies bf16 ``tl.dot`` operands wrongly: cast them to fp32 there only."""
    return interpreted() and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use exact fp32 dots ("ieee"), not TF32, so they match an fp32 reference."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_dtype(name: str, t: torch.Tensor) -> None:
    """The Triton kernels compute in fp32 with bf16/fp16/fp32 inputs; float64 is not offered."""
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(
            f"{name}: the triton backend takes float16, bfloat16 or float32, got {t.dtype} "
            f"(use backend='reference' for float64)"
        )


# ---------------------------------------------------------------- vendor config lists


def cuda_configs(op: str) -> list[Config]:
    """Candidate configs on NVIDIA GPUs (sm80 / sm90)."""
    if op in ("attention_fwd", "attention_block_scores"):
        return [
            # 128x64 with 8 warps: the FlashAttention-2 sweet spot for D = 64..128; on sm90 the
            # 128-row tile maps onto two warpgroups of wgmma.
            Config(128, 64, 8, 3),
            # 128x128 for D <= 64 where registers allow the wider KV tile.
            Config(128, 128, 8, 2),
            # 64x64, 4 warps: large head dims (Dqk = 192/256) where 128 rows spill.
            Config(64, 64, 4, 2),
        ]
    if op == "attention_bwd":
        # The dk/dv program holds two [BLOCK_N, D] fp32 accumulators: keep the tiles at 64.
        return [Config(64, 64, 4, 2), Config(32, 64, 4, 2), Config(64, 128, 8, 2)]
    if op in ("sparse_attention", "sparse_attention_bwd"):
        # block_m = rows = (queries sharing the union of their blocks) x (heads of the KV group):
        # 64 rows reach wgmma on sm90 and let ~16 / G neighbouring queries share each gathered
        # block; 16 rows is the one-query-per-program fallback.
        return [Config(64, 64, 4, 2), Config(128, 64, 8, 2), Config(16, 64, 4, 2)]
    if op == "decode":
        # Rows are the query heads of one KV group x the new tokens, padded to 16.
        return [Config(16, 64, 4, 2), Config(16, 128, 4, 2), Config(32, 64, 4, 3)]
    if op == "topk_blocks":
        return [Config(16, 0, 4, 1), Config(4, 0, 4, 1)]
    raise KeyError(f"op: no triton configs for {op!r}")


def hip_configs(op: str) -> list[Config]:
    """Candidate configs on AMD GPUs (wave64: fewer, wider warps; no software pipelining stages)."""
    return [replace(c, num_warps=max(4, c.num_warps // 2), num_stages=1) for c in cuda_configs(op)]


def vendor_configs(op: str) -> list[Config]:
    hip = torch.version.hip is not None
    return hip_configs(op) if hip else cuda_configs(op)


# ---------------------------------------------------------------- the heuristic default and the hook


def default_config(op: str, shape: dict) -> Config:
    """The heuristic config of ``op`` for ``shape`` (keys: ``dqk``, ``dv``, ``sq``, ``sk``, ...)."""
    if interpreted():
        # One config; small tiles keep numpy's temporaries small. Block sizes that the op fixes
        # (block scores: block_n = block_size) are set by the launcher.
        block_m = {"sparse_attention": 16, "sparse_attention_bwd": 16, "decode": 16, "topk_blocks": 128}.get(op, 32)
        return Config(block_m=block_m, block_n=32, num_warps=4, num_stages=1)
    configs = vendor_configs(op)
    dmax = max(shape.get("dqk", 64), shape.get("dv", 64))
    if op in ("attention_fwd", "attention_block_scores"):
        if dmax > 128:
            return configs[2]
        if dmax <= 64 and shape.get("sk", 0) >= 1024:
            return configs[1]
        return configs[0]
    if op == "attention_bwd":
        return configs[1] if dmax > 128 else configs[0]
    return configs[0]


_provider: Optional[Callable[[str, dict], Optional[Config]]] = None


def set_config_provider(provider: Optional[Callable[[str, dict], Optional[Config]]]) -> None:
    """Install the source of tuned configs (the autotune cache): ``provider(op, shape) -> Config | None``."""
    global _provider
    _provider = provider


def config_for(op: str, shape: dict) -> Config:
    """The config a launcher uses: the provider's answer for the shape, else the heuristic default."""
    if _provider is not None and not interpreted():
        tuned = _provider(op, shape)
        if tuned is not None:
            return tuned
    return default_config(op, shape)


# The autotune cache answers by default.
set_config_provider(from_cache)
