"""CPU benchmark of ``attention`` (full causal and sliding-window prefill): the TVM kernels vs torch
SDPA, FlexAttention (compiled) and the reference, in one process.

* ``python bench/ops/attention.py [--quick] [--only NAME ...] [--threads N]``: every case with its
  implementations interleaved round by round, a markdown table (median of the rounds, GFLOP/s of
  useful work, ratios against the baselines measured in the same run) for ``bench/RESULTS.md``.
* ``bench/ops/test_attention.py``: the same cases under pytest-benchmark (``make bench``).

Shapes: Hq 32 / Hkv 8, D 128, batch 1; causal prefill at S = 1K / 4K (fp32, bf16) and SWA 128 at
S = 8K. The other attention ops have their own scripts: ``sparse_attention.py``,
``sparse_attention_decode.py`` (the HySparse decode step), ``attention_with_block_scores.py``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import hysparse_kernels as hk
from harness import HKV, HQ, D, Case, main


def causal_flops(s: int, d: int = D, h: int = HQ) -> float:
    """Useful FLOPs of causal attention: QK^T and PV over the lower triangle."""
    return 4.0 * h * d * s * (s + 1) / 2


def window_flops(s: int, w: int, d: int = D, h: int = HQ) -> float:
    keys = sum(min(i + 1, w) for i in range(s))
    return 4.0 * h * d * keys


def _qkv(s, dtype, sk=None):
    g = torch.Generator().manual_seed(0)
    sk = sk or s
    q = torch.randn(1, HQ, s, D, generator=g).to(dtype)
    k = torch.randn(1, HKV, sk, D, generator=g).to(dtype)
    v = torch.randn(1, HKV, sk, D, generator=g).to(dtype)
    return q, k, v


_FLEX = {}


def flex_attention_compiled():
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex_block_mask(s: int, window: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    if window is None:
        def mask(b, h, qi, kj):
            return kj <= qi
    else:
        def mask(b, h, qi, kj):
            return (kj <= qi) & (kj > qi - window)
    return create_block_mask(mask, None, None, s, s, device="cpu")


def prefill_case(s: int, dtype: torch.dtype, *, reference: bool, flex: bool) -> Case:
    q, k, v = _qkv(s, dtype)
    case = Case(f"causal prefill S={s // 1024}K {str(dtype).split('.')[-1]}", causal_flops(s), rounds=3 if s >= 4096 else 5)
    case.impls["tvm"] = lambda: hk.attention(q, k, v, backend="tvm")
    case.impls["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if flex:
        bm = flex_block_mask(s, None)
        fa = flex_attention_compiled()
        case.impls["flex"] = lambda: fa(q, k, v, block_mask=bm, enable_gqa=True)
    if reference:
        case.impls["reference"] = lambda: hk.attention(q, k, v, backend="reference")
    return case


def swa_case(s: int, window: int, dtype=torch.float32) -> Case:
    q, k, v = _qkv(s, dtype)
    case = Case(f"SWA {window} prefill S={s // 1024}K {str(dtype).split('.')[-1]}", window_flops(s, window), rounds=3)
    case.impls["tvm"] = lambda: hk.attention(q, k, v, window=window, backend="tvm")
    bm = flex_block_mask(s, window)
    fa = flex_attention_compiled()
    case.impls["flex"] = lambda: fa(q, k, v, block_mask=bm, enable_gqa=True)
    i = torch.arange(s)
    mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    case.impls["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    case.once = ("sdpa",)
    return case


def all_cases(quick: bool = False) -> list[Case]:
    cases = [prefill_case(1024, torch.float32, reference=True, flex=True),
             prefill_case(1024, torch.bfloat16, reference=False, flex=False)]
    if not quick:
        cases += [prefill_case(4096, torch.float32, reference=False, flex=True),
                  prefill_case(4096, torch.bfloat16, reference=False, flex=False),
                  swa_case(8192, 128)]
    return cases


if __name__ == "__main__":
    main(all_cases, sys.argv[1:], __doc__)
