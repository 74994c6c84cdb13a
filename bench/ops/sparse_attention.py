"""CPU benchmark of ``sparse_attention``: index lists padded to 100,000 entries of mostly ``-1``
cost what their distinct blocks cost (TVM with the short lists, TVM and the reference with the
padded ones), in one process.

``python bench/ops/sparse_attention.py [--threads N]`` prints the table (``bench/ops/harness.py``);
``bench/ops/test_sparse_attention.py`` is the pytest-benchmark face.
"""

from __future__ import annotations

import sys

import torch

import hysparse_kernels as hk
from harness import Case, main


def sparse_pads_case(s: int = 256, topk: int = 4, width: int = 100_000, block: int = 16) -> Case:
    """HySparse sparse attention whose index lists are ``width`` entries of mostly ``-1`` pads
    (the same ``topk`` blocks per query): pads must cost nothing next to the short lists. The
    lists are ``Hkv * s * width`` int32 (205 MB here): only reading them once is left to pay."""
    g = torch.Generator().manual_seed(0)
    hq, hkv, d = 8, 2, 64
    q = torch.randn(1, hq, s, d, generator=g)
    k, v = torch.randn(1, hkv, s, d, generator=g), torch.randn(1, hkv, s, d, generator=g)
    scores = torch.rand(1, hkv, s, s // block, generator=g)
    idx = hk.topk_blocks(scores, topk, block_size=block, seqlen_k=s, backend="reference")
    wide = torch.full((1, hkv, s, width), -1, dtype=torch.int32)
    wide[..., width // 2: width // 2 + topk] = idx
    case = Case(f"sparse attention S={s}, top-{topk} of {s // block} blocks, lists padded to {width}",
                4.0 * hq * d * s * topk * block, rounds=5)
    case.impls["tvm k=4"] = lambda: hk.sparse_attention(q, k, v, idx, block_size=block, backend="tvm")
    case.impls[f"tvm k={width} (pads)"] = lambda: hk.sparse_attention(q, k, v, wide, block_size=block, backend="tvm")
    case.impls[f"reference k={width} (pads)"] = lambda: hk.sparse_attention(q, k, v, wide, block_size=block,
                                                                             backend="reference")
    return case


def all_cases(quick: bool = False) -> list[Case]:
    return [sparse_pads_case()]


if __name__ == "__main__":
    main(all_cases, sys.argv[1:], __doc__)
