"""Shared pieces of the MoE op tests: naive formulas, inputs and cases."""

from __future__ import annotations

import math

import torch

import hysparse_kernels as hk

REF = "reference"


def make_moe(T, E, k, D, I, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g, dtype=torch.float64).to(dtype)
    wgu = (torch.randn(E, 2 * I, D, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    wd = (torch.randn(E, D, I, generator=g, dtype=torch.float64) / math.sqrt(I)).to(dtype)
    logits = torch.randn(T, E, generator=g, dtype=torch.float64)
    w, ids = hk.route(logits, top_k=k, backend=REF)
    return x, wgu, wd, w.to(torch.float32), ids


TVM = "tvm"
TRI = "triton"
DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float64, 1e-12)]

