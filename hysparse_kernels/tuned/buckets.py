"""Shapes and buckets: which sizes of a shape must match a tuned entry and which are bucketed.

The sizes that vary at run time (``seq_q``, ``seq_k``, ``tokens``) go to the next power of two
and are matched nearest (log2 distance); the others (head geometry, window, block size, MoE
dims; ``group = q_heads // kv_heads`` stands for the head counts) must match; ``batch``, the head
counts and ``dtype`` are recorded, not matched (dtype is preferred).
"""

from __future__ import annotations

import math

VARYING = ("seq_q", "seq_k", "tokens")  # bucketed to powers of two, matched nearest
IGNORED = ("batch", "q_heads", "kv_heads", "dtype")  # recorded, not matched (dtype: preferred)


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def split_shape(shape: dict) -> tuple[dict, dict, str | None]:
    """``(fixed, bucketed varying, dtype)`` of a shape (see the module docstring)."""
    s = dict(shape)
    if "group" not in s and "q_heads" in s and "kv_heads" in s:
        s["group"] = int(s["q_heads"]) // max(1, int(s["kv_heads"]))
    fixed = {k: v for k, v in s.items() if k not in VARYING and k not in IGNORED and v is not None}
    varying = {k: next_pow2(v) for k, v in s.items() if k in VARYING}
    return fixed, varying, s.get("dtype")


def bucket_key(shape: dict) -> str:
    """Stable string naming a shape's bucket, e.g. ``group=4,qk_dim=64,v_dim=64|seq_k=4096,seq_q=4096``."""
    fixed, varying, dtype = split_shape(shape)
    text = ",".join(f"{k}={fixed[k]}" for k in sorted(fixed)) + "|" + ",".join(f"{k}={varying[k]}" for k in sorted(varying))
    return text + (f"|dtype={dtype}" if dtype else "")


def _distance(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    return sum(abs(math.log2(a.get(k, 1)) - math.log2(b.get(k, 1))) if k in a and k in b else 8.0 for k in keys)
