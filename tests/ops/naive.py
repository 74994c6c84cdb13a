"""Row-by-row float64 formulas, written independently of the reference's vectorised code.

Each function walks (batch, head, query) one at a time and states the definition directly, so
the reference is checked against the math rather than against itself.
"""

from __future__ import annotations

import math

import torch


def row_attention(q_row, keys, values, visible, scale, sink=None):
    """One query: returns (out [Dv], lse, probs [Sk]) over the visible keys."""
    logits = [scale * float(q_row @ keys[j]) for j in range(keys.shape[0]) if visible[j]]
    idx = [j for j in range(keys.shape[0]) if visible[j]]
    terms = logits + ([float(sink)] if sink is not None else [])
    probs = torch.zeros(keys.shape[0], dtype=torch.float64)
    if not terms:
        return torch.zeros(values.shape[1], dtype=torch.float64), -math.inf, probs
    m = max(terms)
    denom = sum(math.exp(t - m) for t in terms)
    for j, a in zip(idx, logits):
        probs[j] = math.exp(a - m) / denom
    return probs @ values, m + math.log(denom), probs


def attention(q, k, v, *, causal=True, window=None, sink=None, scale=None, visible_fn=None):
    """out [B, Hq, Sq, Dv], lse [B, Hq, Sq], probs [B, Hq, Sq, Sk] in float64.

    ``visible_fn(b, g, i, j) -> bool`` overrides the causal/window rule (used for sparse masks).
    """
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    scale = D**-0.5 if scale is None else scale
    out = torch.zeros(B, Hq, Sq, v.shape[-1], dtype=torch.float64)
    lse = torch.zeros(B, Hq, Sq, dtype=torch.float64)
    probs = torch.zeros(B, Hq, Sq, Sk, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            g = h // group
            for i in range(Sq):
                pos = Sk - Sq + i
                if visible_fn is not None:
                    visible = [visible_fn(b, g, i, j) for j in range(Sk)]
                else:
                    visible = [
                        (not causal or j <= pos) and (window is None or j > pos - window) for j in range(Sk)
                    ]
                s = None if sink is None else sink[h].double()
                out[b, h, i], lse[b, h, i], probs[b, h, i] = row_attention(q[b, h, i], k[b, g], v[b, g], visible, scale, s)
    return out, lse, probs
