"""The autotuner's entry points of the Triton attention kernels: the heuristic config of a
tunable op, its search space, and a run of its kernel on exactly a given config (no lookup, no
fallback).

The space is ``block_m x block_n x num_warps x num_stages`` in one group, pruned by the GPU's
limits before anything is timed: an estimate of shared memory (``num_stages`` buffered K/V tiles
plus the Q tile) and of registers per thread (the fp32 score tile and accumulator spread over
the warps). ``device`` is any object with ``smem_per_block``, ``regs_per_thread`` and
``regs_per_block`` (``hysparse_kernels.autotune.device.Device``).
"""

from __future__ import annotations

import itertools

import torch

from .attention import attention_fwd
from .attention_decode import attention_decode
from .config import heuristic_config, run_with_config as _with_config

__all__ = ["TUNABLE", "fits", "heuristic_config", "regs_per_thread", "run_with_config", "search_space", "smem_bytes"]

TUNABLE = ("attention_fwd", "attention_decode")
_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "bfloat16": 2, "float16": 2, "float32": 4}
_KEYS = ("block_m", "block_n", "num_warps", "num_stages")


def _pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(int(n) - 1, 0).bit_length())


def smem_bytes(cfg: dict, dqk: int, dv: int, elem: int) -> int:
    """Shared memory of one attention program (bytes): the Q tile plus ``num_stages`` K and V tiles."""
    dq, dvp = _pow2_at_least(dqk), _pow2_at_least(dv)
    return elem * (cfg["block_m"] * dq + cfg["num_stages"] * cfg["block_n"] * (dq + dvp))


def regs_per_thread(cfg: dict, dqk: int, dv: int) -> int:
    """Registers a thread needs: fp32 accumulator [block_m, Dv], scores [block_m, block_n] and the
    Q fragment, spread over ``32 * num_warps`` threads, plus ~40 for addresses and softmax state."""
    dq, dvp = _pow2_at_least(dqk), _pow2_at_least(dv)
    m, n = cfg["block_m"], cfg["block_n"]
    return (m * dvp + m * n + m * dq // 2) // (32 * cfg["num_warps"]) + 40


def fits(cfg: dict, shape: dict, dtype: str, device) -> tuple[bool, str]:
    """Whether ``cfg`` fits ``device`` for ``shape``; the reason when it does not."""
    dqk, dv = int(shape.get("qk_dim", 128)), int(shape.get("v_dim", shape.get("qk_dim", 128)))
    smem = smem_bytes(cfg, dqk, dv, _BYTES.get(dtype, 2))
    if smem > device.smem_per_block:
        return False, f"shared memory {smem} > {device.smem_per_block}"
    regs = regs_per_thread(cfg, dqk, dv)
    if regs > device.regs_per_thread:
        return False, f"registers/thread {regs} > {device.regs_per_thread}"
    if regs * 32 * cfg["num_warps"] > device.regs_per_block:
        return False, f"registers/program {regs * 32 * cfg['num_warps']} > {device.regs_per_block}"
    if cfg["block_m"] < 8 * cfg["num_warps"]:
        # mma tiles are 16 rows; below 8 rows per warp the extra warps only replicate work.
        return False, f"block_m {cfg['block_m']} < 8 rows per warp x {cfg['num_warps']} warps"
    return True, ""


def search_space(op: str, shape: dict, dtype: str, device) -> list[list[dict]]:
    """One group: every config of ``op`` that fits ``device`` (the product minus misfits)."""
    if op == "attention_decode":
        # Rows are the group's query heads (x new tokens), padded to 16: 16 or 32 rows suffice.
        product = itertools.product((16, 32), (32, 64, 128, 256), (2, 4, 8), (1, 2, 3, 4))
    elif op == "attention_fwd":
        product = itertools.product((32, 64, 128, 256), (32, 64, 128, 256), (2, 4, 8), (1, 2, 3, 4))
    else:
        raise KeyError(f"op: no triton tuning entry for {op!r}")
    return [[c for c in (dict(zip(_KEYS, p)) for p in product) if fits(c, shape, dtype, device)[0]]]


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
