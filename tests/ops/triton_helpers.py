"""Shared pieces of the Triton attention tests: inputs, float64 / low-precision references, and
the tolerance rule of ``hysparse_kernels.testing`` (error <= 2 x the reference's own error in
the same precision + atol)."""

from __future__ import annotations

import torch

from hysparse_kernels.ops.attention import reference as R
from hysparse_kernels.testing import assert_close_to_reference

# (dtype, atol): fp32 must match the float64 reference to fp32 accuracy; bf16 within twice the
# error of the reference computed in bf16 (plus a small atol for near-zero reference errors).
DTYPES = [(torch.float32, 2e-5), (torch.bfloat16, 2e-3)]
DTYPE_IDS = ["fp32", "bf16"]


def inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, sink=False):
    q = torch.randn(B, Hq, Sq, Dqk).to(dtype)
    k = torch.randn(B, Hkv, Sk, Dqk).to(dtype)
    v = torch.randn(B, Hkv, Sk, Dv).to(dtype)
    s = torch.randn(Hq) if sink else None
    return q, k, v, s


def f64(*ts):
    return tuple(t.double() if t is not None else None for t in ts)


def lowp(dtype):
    """compute_dtype of the low-precision reference (None: fp32 inputs compute in fp32)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else None


def check(out, ref64, ref_lowp, dtype, atol, name):
    """The tolerance rule. For fp32 the bound is ``2 x |ref32 - ref64| + atol``."""
    assert_close_to_reference(out, ref64, ref_lowp, factor=2.0, atol=atol, name=name)


def reference_grads(fn, leaves, cotangents):
    """Autograd through a reference forward ``fn(*leaves) -> (out, lse)``."""
    with torch.enable_grad():
        xs = [t.detach().requires_grad_() if t is not None else None for t in leaves]
        out, lse = fn(*xs)
        used = [x for x in xs if x is not None]
        grads = torch.autograd.grad((out, lse), used, cotangents, allow_unused=True)
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, used)]


def run_grads(fn, leaves, cotangents):
    """Autograd through a public-API call ``fn(*leaves) -> (out, lse)`` on the triton backend."""
    xs = [t.detach().requires_grad_() if t is not None else None for t in leaves]
    out, lse = fn(*xs)
    torch.autograd.backward((out, lse), cotangents)
    return [x.grad for x in xs if x is not None], out, lse


def random_indices(B, Hkv, Sq, Sk, block_size, k, mode):
    """``topk``: what the oracle picks (visible, -1 pads); ``raw``: any ids, -1, duplicates and
    blocks after the query (which the causal mask must empty)."""
    n_blocks = -(-Sk // block_size)
    if mode == "topk":
        return R.topk_blocks(torch.rand(B, Hkv, Sq, n_blocks), k, block_size, Sk)
    idx = torch.randint(-1, n_blocks, (B, Hkv, Sq, k), dtype=torch.int32)
    idx[..., -1] = idx[..., 0]  # a block listed twice counts once
    return idx


def padded_cache(B, Hkv, Smax, D):
    return torch.randn(B, Hkv, Smax, D)  # garbage beyond each sequence's length must be ignored


def _gpu_inputs(B, Hq, Hkv, S, Dqk, Dv, dtype):
    g = lambda *s: torch.randn(*s, device="cuda").to(dtype)  # noqa: E731
    return g(B, Hq, S, Dqk), g(B, Hkv, S, Dqk), g(B, Hkv, S, Dv)


__all__ = ["R", "DTYPES", "DTYPE_IDS", "inputs", "f64", "lowp", "check", "reference_grads", "run_grads",
           "random_indices", "padded_cache", "_gpu_inputs"]
