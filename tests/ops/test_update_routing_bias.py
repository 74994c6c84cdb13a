"""``update_routing_bias``: the auxiliary-loss-free bias update moves the load toward balance."""

from __future__ import annotations

import torch

import hysparse_kernels as hk

from moe_helpers import REF


# ---------------------------------------------------------------- reference


def test_bias_update_moves_load_toward_balance():
    T, E, k = 1024, 16, 2
    g = torch.Generator().manual_seed(1)
    # A skewed router: experts 0-3 get a large logit offset and take most of the load.
    skew = torch.zeros(E)
    skew[:4] = 2.0
    bias = torch.zeros(E)

    def step(bias):
        logits = torch.randn(T, E, generator=g) + skew
        _, ids = hk.route(logits, top_k=k, scoring="sigmoid", bias=bias, backend=REF)
        counts = hk.expert_load(ids, E)
        return counts, float(counts[:4].sum()) / (T * k), float(counts.max()) / (T * k / E)

    counts, share0, peak0 = step(bias)
    shares, peaks = [], []
    for _ in range(80):
        bias = hk.update_routing_bias(bias, counts, 0.02)
        counts, share, peak = step(bias)
        shares.append(share)
        peaks.append(peak)
    share_end, peak_end = sum(shares[-10:]) / 10, sum(peaks[-10:]) / 10
    assert share0 > 0.6 and peak0 > 3.0  # experts 0-3 hold most of the load at the start
    assert abs(share_end - 4 / E) < 0.05, f"share of the skewed experts went from {share0:.2f} to {share_end:.2f}"
    assert peak_end < 1.5, f"max/mean load went from {peak0:.2f} to {peak_end:.2f}"
    assert float(bias[:4].max()) < 0 < float(bias[4:].min())
