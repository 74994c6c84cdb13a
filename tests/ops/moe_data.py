"""Shared inputs of the MoE backend tests: float64 tokens, expert weights and a sigmoid routing."""

import math

import torch

import hysparse_kernels as hk


def moe_inputs(T, E, k, D, I, seed=0):
    """x ``[T, D]``, w_gate_up ``[E, 2I, D]``, w_down ``[E, D, I]``, routing weights and ids ``[T, k]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g, dtype=torch.float64)
    wgu = torch.randn(E, 2 * I, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    wd = torch.randn(E, D, I, generator=g, dtype=torch.float64) / math.sqrt(I)
    w, ids = hk.route(torch.randn(T, E, generator=g), top_k=k, scoring="sigmoid", backend="reference")
    return x, wgu, wd, w, ids
