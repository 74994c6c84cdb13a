"""Shared pieces of the TVM attention tests: inputs, cases and the tolerance check against
the float64 reference."""

from __future__ import annotations

import torch

from hysparse_kernels.ops.attention import reference as ref
from hysparse_kernels.testing import assert_close_to_reference


ATOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _tvm_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype):
    q = torch.randn(B, Hq, Sq, Dqk)
    k = torch.randn(B, Hkv, Sk, Dqk)
    v = torch.randn(B, Hkv, Sk, Dv)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _check(name, got, ref_fn, args, dtype):
    """Compare every output of `got` with ref_fn in float64 (and in bf16 for the baseline error)."""
    want = ref_fn(*[a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args])
    low = None
    if dtype != torch.float32:
        low = ref_fn(*args, compute_dtype=dtype)
    for i, (g, w) in enumerate(zip(got, want)):
        lw = low[i] if low is not None else None
        if i == 1:  # lse: fp32 statistics in every backend; the bf16 rounding enters through q, k
            lw = None if dtype == torch.float32 else lw
        assert_close_to_reference(g, w, lw, atol=ATOL[dtype], name=f"{name}[{i}]")


def _indices(B, Hkv, Sq, Sk, bs, kk, dup=True):
    """Random visible blocks per query, -1 padding, and (dup) some blocks listed twice."""
    nvis = ref.visible_blocks(Sq, Sk, bs)
    idx = torch.full((B, Hkv, Sq, kk), -1, dtype=torch.int32)
    for i in range(Sq):
        n = int(nvis[i])
        for b in range(B):
            for h in range(Hkv):
                sel = torch.randperm(max(n, 1))[: min(kk, n)] if n else torch.tensor([], dtype=torch.long)
                idx[b, h, i, : len(sel)] = sel.int()
    if dup and kk >= 3:
        idx[..., -1] = torch.where(idx[..., 0] >= 0, idx[..., 0], idx[..., -1])
    return idx


TVM_BWD_ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
NAMES = ("dq", "dk", "dv", "dsink")


def _tvm_bwd_inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, sink):
    q = torch.randn(B, Hq, Sq, Dqk).to(dtype)
    k = torch.randn(B, Hkv, Sk, Dqk).to(dtype)
    v = torch.randn(B, Hkv, Sk, Dv).to(dtype)
    s = torch.randn(Hq) if sink else None
    return q, k, v, s


def _double(args):
    return [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]


def _check_grads(got, ref_fn, args, dtype, tag):
    """Each gradient within 2x the fp32 reference's error (+ atol) of the float64 reference."""
    want = ref_fn(*_double(args))
    low = ref_fn(*args)  # the reference in float32 arithmetic (bf16 inputs: fp32 compute, rounded outputs)
    for name, g, w, lw in zip(NAMES, got, want, low):
        if w is None:
            assert g is None, f"{tag}: {name} should be None without a sink"
            continue
        assert g.dtype == lw.dtype and g.shape == w.shape, f"{tag}: {name} {g.dtype} {tuple(g.shape)}"
        assert_close_to_reference(g, w, lw, atol=TVM_BWD_ATOL[dtype] * max(1.0, float(w.abs().max())), name=f"{tag} {name}")


def _tvm_bwd_indices(B, Hkv, Sq, Sk, bs, kk, seed=0):
    """Random blocks per query: visible ones, some listed twice, -1 pads, and blocks after the
    query (which select no key: the forward skips them)."""
    g = torch.Generator().manual_seed(seed)
    nb = -(-Sk // bs)
    nvis = ref.visible_blocks(Sq, Sk, bs)
    idx = torch.randint(0, nb, (B, Hkv, Sq, kk), generator=g, dtype=torch.int32)
    own = (nvis - 1).clamp(min=0).view(1, 1, Sq, 1).to(torch.int32)
    idx[..., :1] = torch.where(nvis.view(1, 1, Sq, 1) > 0, own, torch.full_like(own, -1))  # the query's own block
    if kk >= 3:
        idx[..., 1] = idx[..., 0]  # listed twice
        idx[:, :, ::3, 2] = -1  # padding
    return idx
