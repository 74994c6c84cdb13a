"""A/B of the TVM attention kernels between two source trees, one process per tree, alternated.

Prints one JSON line of median seconds per case for the ``hysparse_kernels`` it imports. To
compare a branch with ``main``::

    git archive main hysparse_kernels | tar -x -C /tmp/main-tree
    for i in 1 2 3 4; do
      PYTHONPATH=/tmp/main-tree HYSPARSE_CACHE=/tmp/main-cache python bench/tvm_attention_ab.py | sed 's/^/old /'
      python bench/tvm_attention_ab.py | sed 's/^/new /'
    done

Alternating processes puts both trees under the same load; compare the ratios pair by pair.
Shapes: Hq 32 / Hkv 8, D 128, batch 1 (as ``bench/ops/attention.py``).
"""

from __future__ import annotations

import json
import statistics
import time
import warnings

import torch

import hysparse_kernels as hk

HQ, HKV, D, CTX = 32, 8, 128, 32768


def cases() -> dict:
    g = torch.Generator().manual_seed(0)

    def qkv(s, dt):
        return [torch.randn(1, h, s, D, generator=g).to(dt) for h in (HQ, HKV, HKV)]

    q1, k1, v1 = qkv(1024, torch.float32)
    qb, kb, vb = qkv(1024, torch.bfloat16)
    q2, k2, v2 = qkv(2048, torch.float32)
    q4, k4, v4 = qkv(4096, torch.float32)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q1, k1, v1))
    dout = torch.randn(1, HQ, 1024, D, generator=g)

    def train_step():
        hk.attention(qg, kg, vg, backend="tvm").backward(dout)
    qd = torch.randn(1, HQ, 1, D, generator=g)
    kc, vc = torch.randn(1, HKV, CTX, D, generator=g), torch.randn(1, HKV, CTX, D, generator=g)
    lens = torch.tensor([CTX], dtype=torch.int32)
    idx = torch.stack([torch.randperm(CTX // 64 - 1, generator=g)[:16] for _ in range(HKV)]).to(torch.int32)
    idx = idx.view(1, HKV, 1, 16)
    sink = torch.zeros(HQ)
    return {
        "prefill-1K-fp32": lambda: hk.attention(q1, k1, v1, backend="tvm"),
        "prefill-1K-bf16": lambda: hk.attention(qb, kb, vb, backend="tvm"),
        "prefill-4K-fp32": lambda: hk.attention(q4, k4, v4, backend="tvm"),
        "fwd+bwd-1K-fp32": train_step,
        "swa128-2K-fp32": lambda: hk.attention(q2, k2, v2, window=128, sink=sink, backend="tvm"),
        "decode-32K": lambda: hk.attention_decode(qd, kc, vc, lens, backend="tvm"),
        "sparse-decode-32K": lambda: hk.sparse_attention_decode(qd, kc, vc, lens, idx, block_size=64, backend="tvm"),
    }


def main() -> None:
    warnings.simplefilter("ignore")
    result = {}
    for name, fn in cases().items():
        fn()
        fn()  # warm-up: builds, caches
        times = []
        for _ in range(9 if "decode" in name else 5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        result[name] = statistics.median(times)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
