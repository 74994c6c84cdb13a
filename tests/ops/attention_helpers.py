"""Shared pieces of the attention op tests: inputs and cases of the reference, per-sequence
length, pad and registered-op tests."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk


def _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype=torch.float64):
    return (
        torch.randn(B, Hq, Sq, Dqk, dtype=dtype),
        torch.randn(B, Hkv, Sk, Dqk, dtype=dtype),
        torch.randn(B, Hkv, Sk, Dv, dtype=dtype),
    )


# (B, Hq, Hkv, Sq, Sk, D, block_size, causal, lengths)
CASES = {
    "decode-bs16": (3, 4, 2, 1, 50, 16, 16, True, (50, 17, 1)),
    "verify-Sq3-bs8": (3, 2, 1, 3, 40, 16, 8, True, (40, 9, 3)),
    "lens-below-Sq-bs16": (2, 2, 2, 4, 33, 16, 16, True, (33, 2)),
    "noncausal-bs16": (2, 2, 1, 3, 40, 16, 16, False, (23, 40)),
    "empty-sequence-bs8": (2, 2, 1, 1, 24, 16, 8, True, (0, 24)),
    # odd lengths, 0 and Sk in one batch, GQA group 2, a last block cut short
    "odd-0-Sk-gqa-bs16": (4, 4, 2, 1, 45, 16, 16, True, (45, 0, 31, 17)),
    "verify-odd-Sq2-bs16": (3, 4, 2, 2, 37, 8, 16, True, (1, 37, 19)),
    "noncausal-empty-bs16": (3, 2, 2, 2, 35, 8, 16, False, (0, 35, 16)),
}
ARGS = "B,Hq,Hkv,Sq,Sk,D,block_size,causal,lengths"
ALL = [pytest.param(*c, id=name) for name, c in CASES.items()]


def _lens_inputs(B, Hq, Hkv, Sq, Sk, D, lengths, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Sq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Sk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Sk, D, generator=g).to(dtype)
    # what lies past a sequence's length must never matter: fill it with NaN
    for b, n in enumerate(lengths):
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("nan")
    return q, k, v, torch.tensor(lengths, dtype=torch.int32)


B, HQ, HKV, S, D, BS, K = 1, 4, 2, 70, 16, 16, 3  # 5 blocks


def _pads_inputs(sq=S):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, HQ, sq, D, generator=g)
    k, v = torch.randn(B, HKV, S, D, generator=g), torch.randn(B, HKV, S, D, generator=g)
    sink = torch.randn(HQ, generator=g)
    scores = torch.rand(B, HKV, sq, -(-S // BS), generator=g)
    idx = hk.topk_blocks(scores, K, block_size=BS, seqlen_k=S, backend="reference")
    return q, k, v, sink, idx, g


def _inputs(B=1, Hq=4, Hkv=2, Sq=9, Sk=9, Dqk=8, Dv=6, dtype=torch.float64, grad=False):
    t = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=grad)  # noqa: E731
    return t(B, Hq, Sq, Dqk), t(B, Hkv, Sk, Dqk), t(B, Hkv, Sk, Dv)
