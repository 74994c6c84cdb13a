"""CPU benchmark of ``sparse_attention_decode``: a HySparse decode step (sparse attention over the
top-16 blocks of 64 of a 32K shared cache, plus the SWA-128 branch with ``attention_decode``) vs a
full-attention decode over the same cache (TVM and torch SDPA), in one process.

``python bench/ops/sparse_attention_decode.py [--only NAME ...] [--threads N]`` prints the table
(``bench/ops/harness.py``); ``bench/ops/test_sparse_attention_decode.py`` is the pytest-benchmark face.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import hysparse_kernels as hk
from harness import HKV, HQ, D, Case, main


def decode_case(ctx: int, topk: int = 16, block: int = 64, window: int = 128, dtype=torch.float32) -> Case:
    """HySparse decode step vs full-attention decode over the same cache."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, HQ, 1, D, generator=g).to(dtype)
    k_cache = torch.randn(1, HKV, ctx, D, generator=g).to(dtype)
    v_cache = torch.randn(1, HKV, ctx, D, generator=g).to(dtype)
    k_swa = torch.randn(1, HKV, window, D, generator=g).to(dtype)
    v_swa = torch.randn(1, HKV, window, D, generator=g).to(dtype)
    lens = torch.tensor([ctx], dtype=torch.int32)
    lens_swa = torch.tensor([window], dtype=torch.int32)
    nblocks = ctx // block
    # top-16 blocks of the shared cache per KV head, the query's own (last) block included
    idx = torch.stack([torch.cat([torch.randperm(nblocks - 1, generator=g)[: topk - 1], torch.tensor([nblocks - 1])])
                       for _ in range(HKV)]).to(torch.int32).view(1, HKV, 1, topk)
    sink = torch.zeros(HQ)

    def hysparse_step():
        o_sparse = hk.sparse_attention_decode(q, k_cache, v_cache, lens, idx, block_size=block, sink=sink, backend="tvm")
        o_swa = hk.attention_decode(q, k_swa, v_swa, lens_swa, window=window, sink=sink, backend="tvm")
        return o_sparse, o_swa

    case = Case(f"decode step, {ctx // 1024}K context {str(dtype).split('.')[-1]}", 4.0 * HQ * D * (topk * block + window), rounds=21)
    case.impls["tvm hysparse step"] = hysparse_step
    case.impls["tvm full decode"] = lambda: hk.attention_decode(q, k_cache, v_cache, lens, backend="tvm")
    case.impls["sdpa full decode"] = lambda: F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
    return case


def all_cases(quick: bool = False) -> list[Case]:
    return [decode_case(32768)]


if __name__ == "__main__":
    main(all_cases, sys.argv[1:], __doc__)
