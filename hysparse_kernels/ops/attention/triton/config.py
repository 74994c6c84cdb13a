"""Launch configurations of the Triton attention kernels and the one way a launcher gets one.

* ``default_config(op, shape)``: the heuristic config (a comment on every choice).
* ``launch(op, shape, run)``: what each kernel module calls: ``run(config)`` with the tuned config
  of the shape's bucket on this GPU, else the heuristic; a tuned config that fails at launch is
  blacklisted and the heuristic runs (``hysparse_kernels.tuned.launch``, as for TVM).
* ``run_with_config(config, fn, *args)``: ``fn(*args)`` with every launch on ``config`` (the
  autotuner's timing path); ``heuristic_config`` gives the tuner's baseline. The search space
  lives with the tuner (``autotune/spaces.py``: it is pruned by the device's limits).
* Under the interpreter (``TRITON_INTERPRET=1``) a single config is used and nothing is looked
  up: numpy does not care about tile shapes beyond speed.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Callable, TypeVar

import torch

from .... import tuned

T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """Tile sizes and launch parameters of one kernel launch (a tuned entry's ``config``)."""

    block_m: int = 64  # query rows per program (or rows of the score tile)
    block_n: int = 64  # keys per KV tile
    num_warps: int = 4
    num_stages: int = 2

    def launch(self) -> dict:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


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


# ---------------------------------------------------------------- the heuristic


def _cuda_default(op: str, dmax: int, sk: int) -> Config:
    if op in ("attention_fwd", "attention_with_block_scores"):
        if dmax > 128:
            # 64x64, 4 warps: large head dims (Dqk = 192/256) where 128 rows spill.
            return Config(64, 64, 4, 2)
        if dmax <= 64 and sk >= 1024:
            # 128x128 for D <= 64 where registers allow the wider KV tile.
            return Config(128, 128, 8, 2)
        # 128x64 with 8 warps: the FlashAttention-2 sweet spot for D = 64..128; on sm90 the
        # 128-row tile maps onto two warpgroups of wgmma.
        return Config(128, 64, 8, 3)
    if op == "attention_bwd":
        # The dk/dv program holds two [BLOCK_N, D] fp32 accumulators: keep the tiles at 64 (32
        # query rows for the wide heads).
        return Config(32, 64, 4, 2) if dmax > 128 else Config(64, 64, 4, 2)
    if op in ("sparse_attention", "sparse_attention_bwd"):
        # block_m = rows = (queries sharing the union of their blocks) x (heads of the KV group):
        # 64 rows reach wgmma on sm90 and let ~16 / G neighbouring queries share each gathered block.
        return Config(64, 64, 4, 2)
    if op == "decode":
        # Rows are the query heads of one KV group x the new tokens, padded to 16.
        return Config(16, 64, 4, 2)
    if op == "topk_blocks":
        return Config(16, 0, 4, 1)
    raise KeyError(f"op: no triton configs for {op!r}")


def default_config(op: str, shape: dict) -> Config:
    """The heuristic config of ``op`` for ``shape`` (keys: ``dqk``, ``dv``, ``sq``, ``sk``, ...)."""
    if interpreted():
        # One config; small tiles keep numpy's temporaries small. Block sizes that the op fixes
        # (block scores: block_n = block_size) are set by the launcher.
        block_m = {"sparse_attention": 16, "sparse_attention_bwd": 16, "decode": 16, "topk_blocks": 128}.get(op, 32)
        return Config(block_m=block_m, block_n=32, num_warps=4, num_stages=1)
    config = _cuda_default(op, max(shape.get("dqk", 64), shape.get("dv", 64)), shape.get("sk", 0))
    if torch.version.hip is not None:
        # AMD (wave64): fewer, wider warps; no software pipelining stages.
        config = replace(config, num_warps=max(4, config.num_warps // 2), num_stages=1)
    return config


# ---------------------------------------------------------------- tuned configs and the launch

# launcher op name -> op name of the dispatch registry / the cache files
OPS = {"sparse_attention": "sparse_attention_fwd", "decode": "attention_decode"}
# launcher shape names -> the cache's names
_KEYS = {"dqk": "qk_dim", "dv": "v_dim", "sq": "seq_q", "sk": "seq_k", "group": "group",
         "block_size": "block_size", "n_blocks": "seq_k", "k": "topk"}
_fixed: ContextVar[Config | None] = ContextVar("hysparse_triton_config", default=None)


def cache_shape(shape: dict) -> dict:
    """The launcher's shape dict in the cache's names (``dqk`` -> ``qk_dim``, ``sk`` -> ``seq_k``, ...)."""
    return {_KEYS[k]: v for k, v in shape.items() if k in _KEYS and v is not None}


def launch(op: str, shape: dict, run: Callable[[Config], T]) -> T:
    """``run(config)`` for launcher op ``op`` and ``shape`` (launcher names): the tuned config of
    the nearest bucket on the current GPU (missing fields from the heuristic), else the heuristic
    with one warning per device; a tuned config that raises is blacklisted and the heuristic runs
    (an error there is the input's, raised as is). Inside ``run_with_config``: that config."""
    fixed = _fixed.get()
    if fixed is not None:
        return run(fixed)
    heuristic = default_config(op, shape)
    if interpreted():
        return run(heuristic)
    return tuned.launch(OPS.get(op, op), backend="triton", device="cuda", shape=cache_shape(shape),
                        heuristic=asdict(heuristic), run=lambda config: run(Config(**config)))


def run_with_config(config: dict, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` with every Triton attention launch inside it on ``config`` (no
    lookup, no fallback): the autotuner times candidates this way."""
    token = _fixed.set(Config(**config))
    try:
        return fn(*args, **kwargs)
    finally:
        _fixed.reset(token)


def heuristic_config(op: str, shape: dict) -> dict:
    """The heuristic config of registry op ``op`` for a cache-named ``shape`` (the tuner's baseline)."""
    name = {v: k for k, v in OPS.items()}.get(op, op)
    config = default_config(name, {"dqk": shape.get("qk_dim", 64), "dv": shape.get("v_dim", 64),
                                   "sk": int(shape.get("seq_k", 0))})
    return asdict(config)
