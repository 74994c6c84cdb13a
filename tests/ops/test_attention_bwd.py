"""``attention_bwd`` (the backward of ``attention``): the registered op's gradients by gradcheck and
the sink's by finite differences, then the TVM backward kernel against the reference (dense,
SWA with sink, GQA, Dqk != Dv, non-finite inputs). The Triton backward is tested beside its
forward in test_attention.py.

Tolerance (hysparse_kernels.testing): fp32 within a small atol of the float64 reference; bf16
within 2x the error of the reference itself run in that precision, plus a small atol."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import dispatch
from hysparse_kernels.ops.attention import reference as ref
from hysparse_kernels.ops.attention.tvm import launch_bwd
from hysparse_kernels.testing import assert_close_to_reference

from attention_helpers import _inputs
from backend_params import requires
from tvm_helpers import NAMES, _check_grads, _tvm_bwd_indices, _tvm_bwd_inputs


# ---------------------------------------------------------------- registered op (reference): gradcheck


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize("window,with_sink", [(None, False), (None, True), (4, True)], ids=["causal", "sink", "swa4-sink"])
def test_gradcheck_attention(window, with_sink):
    q, k, v = _inputs(grad=True)
    sink = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_sink else None

    def fn(q, k, v, *rest):
        out, lse = hk.attention(q, k, v, window=window, sink=rest[0] if rest else None, return_lse=True, backend="reference")
        return out, lse

    args = (q, k, v) + ((sink,) if with_sink else ())
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_sink_gradient_is_nonzero_and_matches_finite_difference():
    q, k, v = _inputs(dtype=torch.float64)
    sink = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    hk.attention(q, k, v, sink=sink, backend="reference").square().sum().backward()
    eps = 1e-6
    for h in range(4):
        bump = torch.zeros(4, dtype=torch.float64)
        bump[h] = eps
        plus = hk.attention(q, k, v, sink=sink.detach() + bump, backend="reference").square().sum()
        minus = hk.attention(q, k, v, sink=sink.detach() - bump, backend="reference").square().sum()
        assert abs(float(sink.grad[h]) - float(plus - minus) / (2 * eps)) < 1e-6
    assert sink.grad.abs().min() > 0


# ---------------------------------------------------------------- TVM backward


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, sink)
DENSE = [
    (1, 4, 1, 1, 1, 16, 16, True, None, False),
    (2, 2, 2, 7, 7, 64, 64, True, None, True),
    (1, 8, 1, 63, 63, 64, 32, True, None, False),   # GQA 8, Dqk != Dv
    (1, 4, 4, 65, 65, 32, 32, False, None, True),   # not causal
    (2, 8, 2, 100, 100, 64, 64, True, 16, True),    # SWA with sink
    (1, 4, 1, 130, 130, 48, 40, True, 100, True),   # window between the block sizes, odd dims
    (2, 4, 1, 30, 100, 64, 64, True, None, True),   # Sq < Sk
    (1, 4, 2, 100, 30, 64, 64, True, 8, True),      # Sq > Sk: early queries see nothing (dsink only)
    (8, 8, 2, 96, 96, 16, 16, True, 16, True),      # the tiny twin's SWA branch
    (1, 2, 1, 300, 300, 16, 24, True, 300, False),  # window >= Sk: as causal, one KV head (chunks)
]


def _tvm_bwd_id(c):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, w, s = c
    return (f"B{B}-H{Hq}x{Hkv}-S{Sq}x{Sk}-D{Dqk}x{Dv}" + ("" if causal else "-full") + (f"-W{w}" if w else "")
            + ("-sink" if s else ""))


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", DENSE, ids=[_tvm_bwd_id(c) for c in DENSE])
def test_dense_backward_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, has_sink = case
    q, k, v, sink = _tvm_bwd_inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, has_sink)
    scale = Dqk**-0.5
    out, lse = ref.attention_fwd(q, k, v, sink, causal, window, scale)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    args = (dout, dlse, q, k, v, sink, out, lse, causal, window, scale)
    got = launch_bwd.attention_bwd(*args)
    _check_grads(got, ref.attention_bwd, args, dtype, _tvm_bwd_id(case))


@requires("tvm")
@pytest.mark.parametrize("wide", [False, True], ids=["avx2-tiles", "avx512-tiles"])
@pytest.mark.parametrize("case", [DENSE[2], DENSE[4], DENSE[5]], ids=[_tvm_bwd_id(c) for c in (DENSE[2], DENSE[4], DENSE[5])])
def test_dense_backward_both_register_tilings(case, wide, monkeypatch):
    """The backward kernel's 16-lane (AVX2) and 32-lane (AVX-512) register tiles."""
    monkeypatch.setattr(launch_bwd, "wide_registers", lambda: wide)
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, has_sink = case
    q, k, v, sink = _tvm_bwd_inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, torch.float32, has_sink)
    scale = Dqk**-0.5
    out, lse = ref.attention_fwd(q, k, v, sink, causal, window, scale)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    args = (dout, dlse, q, k, v, sink, out, lse, causal, window, scale)
    _check_grads(launch_bwd.attention_bwd(*args), ref.attention_bwd, args, torch.float32, _tvm_bwd_id(case))


@requires("tvm")
def test_backward_is_the_default_on_cpu_and_float64_goes_to_the_reference():
    for op in ("attention_bwd", "sparse_attention_bwd"):
        assert dispatch.resolve(op, "cpu", dtype=torch.float32) == "tvm"
        assert dispatch.resolve(op, "cpu", dtype=torch.bfloat16) == "tvm"
        assert dispatch.resolve(op, "cpu", dtype=torch.float64) == "reference"
        with pytest.raises(dispatch.BackendUnavailableError, match="kernels take"):
            dispatch.resolve(op, "cpu", "tvm", dtype=torch.float64)


def _grads(fn, tensors):
    for t in tensors:
        t.grad = None
    out = fn()
    torch.manual_seed(1)
    (out * torch.randn_like(out)).sum().backward()
    return [t.grad.clone() for t in tensors]


@requires("tvm")
@pytest.mark.parametrize("kind", ["swa-sink", "causal", "sparse-sink"])
def test_autograd_through_public_ops(kind):
    """The default (auto) backward on CPU tensors equals the float64 reference's gradients."""
    q, k, v, _ = _tvm_bwd_inputs(2, 8, 2, 50, 50, 32, 16, torch.float32, False)
    sink = torch.randn(8)
    idx = _tvm_bwd_indices(2, 2, 50, 50, 16, 3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    leaves64 = [t.double().requires_grad_() for t in (q, k, v, sink)]

    def run(qq, kk, vv, ss, backend=None):
        if kind == "swa-sink":
            return hk.attention(qq, kk, vv, window=12, sink=ss, backend=backend)
        if kind == "causal":
            return hk.attention(qq, kk, vv, backend=backend) + 0 * ss.sum()
        return hk.sparse_attention(qq, kk, vv, idx, block_size=16, sink=ss, backend=backend)

    got = _grads(lambda: run(*leaves), leaves)
    want = _grads(lambda: run(*leaves64, backend="reference"), leaves64)
    low = _grads(lambda: run(*leaves, backend="reference"), leaves)
    for name, g, w, lw in zip(NAMES, got, want, low):
        assert_close_to_reference(g, w, lw, atol=1e-5, name=f"{kind} {name}")


@requires("tvm")
def test_float64_backward_runs_the_reference_in_float64():
    q, k, v, sink = _tvm_bwd_inputs(1, 4, 2, 20, 20, 16, 16, torch.float64, True)
    sink = sink.double()
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    got = _grads(lambda: hk.attention(*leaves[:3], window=5, sink=leaves[3]), leaves)
    want = _grads(lambda: hk.attention(*leaves[:3], window=5, sink=leaves[3], backend="reference"), leaves)
    for g, w in zip(got, want):
        assert g.dtype == torch.float64 and torch.equal(g, w)


@requires("tvm")
def test_chunks_and_blocks_do_not_change_the_result(monkeypatch):
    """The dQ partial of each chunk, summed: one chunk and many give the same gradients."""
    q, k, v, sink = _tvm_bwd_inputs(1, 2, 1, 200, 200, 16, 16, torch.float32, True)
    out, lse = ref.attention_fwd(q, k, v, sink, True, 40, 0.25)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    args = (dout, dlse, q, k, v, sink, out, lse, True, 40, 0.25)
    many = launch_bwd.attention_bwd(*args)  # B x Hkv = 1: chunks of KV blocks
    monkeypatch.setattr(launch_bwd, "TASKS", 1)
    one = launch_bwd.attention_bwd(*args)
    for a, b in zip(many, one):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@requires("tvm")
def test_nan_in_keys_a_query_cannot_see_never_reaches_its_gradients():
    """SWA 8: key 0 is visible to queries 0..7 only. NaN in its k and v rows must leave the
    gradients of every query >= 8 and of every key >= 8 finite and as with finite values there
    (up to rounding: tiles holding a non-finite value take the selecting GEMMs, which round the
    products before adding them)."""
    q, k, v, sink = _tvm_bwd_inputs(1, 4, 1, 40, 40, 16, 16, torch.float32, True)
    W = 8
    out, lse = ref.attention_fwd(q, k, v, sink, True, W, 0.25)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    clean = launch_bwd.attention_bwd(dout, dlse, q, k, v, sink, out, lse, True, W, 0.25)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 0] = float("nan")
    v2[:, :, 0] = float("nan")
    out2, lse2 = out.clone(), lse.clone()
    out2[:, :, :W] = float("nan")  # what the forward gives the queries that see key 0
    lse2[:, :, :W] = float("nan")
    dq, dk, dv, dsink = launch_bwd.attention_bwd(dout, dlse, q, k2, v2, sink, out2, lse2, True, W, 0.25)
    for got, want in ((dq, clean[0]), (dk, clean[1]), (dv, clean[2])):
        assert torch.isfinite(got[:, :, W:]).all()
        torch.testing.assert_close(got[:, :, W:], want[:, :, W:], atol=1e-6, rtol=1e-6)
    assert torch.isnan(dq[:, :, :W]).all()  # ...and the queries that see it get NaN
    assert torch.isnan(dsink).all()


@requires("tvm")
def test_nan_query_reaches_only_the_keys_it_sees():
    q, k, v, _ = _tvm_bwd_inputs(1, 2, 1, 32, 32, 16, 16, torch.float32, False)
    W, i = 4, 20  # query 20 sees keys 17..20
    out, lse = ref.attention_fwd(q, k, v, None, True, W, 0.25)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    q2, out2, lse2 = q.clone(), out.clone(), lse.clone()
    q2[:, 0, i] = float("nan")
    out2[:, 0, i] = float("nan")
    lse2[:, 0, i] = float("nan")
    clean = launch_bwd.attention_bwd(dout, dlse, q, k, v, None, out, lse, True, W, 0.25)
    dq, dk, dv, _ = launch_bwd.attention_bwd(dout, dlse, q2, k, v, None, out2, lse2, True, W, 0.25)
    seen = torch.zeros(32, dtype=torch.bool)
    seen[i - W + 1:i + 1] = True
    assert torch.isnan(dk[0, 0, seen]).all() and torch.isnan(dv[0, 0, seen]).all()
    torch.testing.assert_close(dk[0, 0, ~seen], clean[1][0, 0, ~seen], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dv[0, 0, ~seen], clean[2][0, 0, ~seen], atol=1e-6, rtol=1e-6)
    assert torch.isnan(dq[0, 0, i]).all()
    others = torch.ones(32, dtype=torch.bool)
    others[i] = False
    torch.testing.assert_close(dq[0, :, others], clean[0][0, :, others], atol=1e-6, rtol=1e-6)


@requires("tvm")
def test_nan_in_the_output_gradient_reaches_only_the_keys_its_query_sees():
    q, k, v, _ = _tvm_bwd_inputs(1, 2, 1, 40, 40, 16, 16, torch.float32, False)
    W, i = 6, 25  # query 25 sees keys 20..25
    out, lse = ref.attention_fwd(q, k, v, None, True, W, 0.25)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    clean = launch_bwd.attention_bwd(dout, dlse, q, k, v, None, out, lse, True, W, 0.25)
    dout2 = dout.clone()
    dout2[0, 1, i, 2] = float("nan")
    dq, dk, dv, _ = launch_bwd.attention_bwd(dout2, dlse, q, k, v, None, out, lse, True, W, 0.25)
    seen = torch.zeros(40, dtype=torch.bool)
    seen[i - W + 1:i + 1] = True
    assert torch.isnan(dv[0, 0, seen, 2]).all() and torch.isnan(dk[0, 0, seen]).all()
    for got, want in ((dk, clean[1]), (dv, clean[2])):
        torch.testing.assert_close(got[0, 0, ~seen], want[0, 0, ~seen], atol=1e-6, rtol=1e-6)
    others = torch.ones(40, dtype=torch.bool)
    others[i] = False
    torch.testing.assert_close(dq[0, 1, others], clean[0][0, 1, others], atol=1e-6, rtol=1e-6)
