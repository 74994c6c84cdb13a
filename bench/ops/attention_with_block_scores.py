"""CPU benchmark of ``attention_with_block_scores``: the block-scoring step of a HySparse decode over a
ragged batch (a padded cache, per-sequence lengths ``cache_seqlens``), then ``topk_blocks``, as the
full layers of the model zoo run it (``models/layers.py:_attend_and_select``).

Implementations, rounds interleaved in one process (``bench/ops/harness.py``):

* ``tvm ragged``: one ``attention_with_block_scores(..., cache_seqlens=lens, backend="tvm")`` call
  for the whole batch, then ``topk_blocks`` (the reference: a sort, no kernel); a decode step
  runs the decode kernel, which reads the cache in place;
* ``tvm ragged, prefill kernel``: the same call on the dense prefill kernel (what a decode step
  ran before the decode kernel took block scores: a K^T / V re-layout of the cache each call);
* ``tvm decode, no scores``: ``attention_decode`` on the same batch, then the same top-k on
  precomputed scores: the cost of the attention alone, the floor of a scoring step;
* ``reference ragged``: the same two calls on the reference backend (what a ragged batch ran on
  before the TVM kernel took ``cache_seqlens``);
* ``tvm per-sequence loop``: the TVM kernel once per sequence over its own keys.

Shape: Hq 32 / Hkv 8, D 128, fp32, one query per sequence, 4 sequences of 4096 / 2711 / 1029 / 77
keys in a 4096-slot cache, blocks of 64, top-16.

``python bench/ops/attention_with_block_scores.py [--threads N]`` prints the table;
``bench/ops/test_attention_with_block_scores.py`` is the pytest-benchmark face.
"""

from __future__ import annotations

import sys

import torch

import hysparse_kernels as hk
from harness import HKV, HQ, D, Case, main

LENGTHS = (4096, 2711, 1029, 77)


def ragged_decode_case(lengths=LENGTHS, block: int = 64, topk: int = 16, dtype=torch.float32) -> Case:
    """One decode query per sequence over a padded cache; the slots past each length hold zeros
    (as an allocated cache does)."""
    g = torch.Generator().manual_seed(0)
    B, smax = len(lengths), max(lengths)
    q = torch.randn(B, HQ, 1, D, generator=g).to(dtype)
    k = torch.randn(B, HKV, smax, D, generator=g).to(dtype)
    v = torch.randn(B, HKV, smax, D, generator=g).to(dtype)
    for b, n in enumerate(lengths):
        k[b, :, n:] = 0
        v[b, :, n:] = 0
    lens = torch.tensor(lengths, dtype=torch.int32)

    def step(backend):
        _, _, scores = hk.attention_with_block_scores(q, k, v, block_size=block, cache_seqlens=lens, backend=backend)
        return hk.topk_blocks(scores, topk, block_size=block, seqlen_k=smax, cache_seqlens=lens, backend="reference")

    def prefill_kernel():
        from hysparse_kernels.ops.attention.tvm import launch

        _, _, scores = launch._run_dense(q, k, v, None, True, None, D**-0.5, block,
                                         {"rows": launch.scores_rows(HQ // HKV, 1), "kv_tile": block}, kv_len=lens)
        return hk.topk_blocks(scores, topk, block_size=block, seqlen_k=smax, cache_seqlens=lens, backend="reference")

    fixed_scores = hk.attention_with_block_scores(q, k, v, block_size=block, cache_seqlens=lens, backend="reference")[2]

    def decode_only():
        hk.attention_decode(q, k, v, lens, backend="tvm")
        return hk.topk_blocks(fixed_scores, topk, block_size=block, seqlen_k=smax, cache_seqlens=lens,
                              backend="reference")

    def loop():
        out = []
        for b, n in enumerate(lengths):
            _, _, scores = hk.attention_with_block_scores(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                                          block_size=block, backend="tvm")
            out.append(hk.topk_blocks(scores, topk, block_size=block, seqlen_k=n, backend="reference"))
        return out

    name = f"ragged decode block scores + top-{topk}, B={B} lengths {'/'.join(map(str, lengths))}, {str(dtype).split('.')[-1]}"
    case = Case(name, 4.0 * HQ * D * sum(lengths), rounds=21)
    case.impls["tvm ragged"] = lambda: step("tvm")
    case.impls["tvm ragged, prefill kernel"] = prefill_kernel
    case.impls["tvm decode, no scores"] = decode_only
    case.impls["reference ragged"] = lambda: step("reference")
    case.impls["tvm per-sequence loop"] = loop
    return case


def all_cases(quick: bool = False) -> list[Case]:
    return [ragged_decode_case()]


if __name__ == "__main__":
    main(all_cases, sys.argv[1:], __doc__)
