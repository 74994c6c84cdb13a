"""TVM attention backward (CPU) against the float64 reference: dense causal / full, sliding
window with sink, sparse over selected blocks; dispatch (the default on the CPU, float64 to the
reference), autograd through the public ops, non-finite inputs, opcheck.

Tolerance (hysparse_kernels.testing): the kernel's error against the float64 reference may be at
most twice the error of the reference computed in the kernel's precision (float32 arithmetic;
outputs rounded to the input dtype) plus a small atol.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'hysparse-kernels[tvm]')")

import hysparse_kernels as hk  # noqa: E402
from hysparse_kernels import dispatch  # noqa: E402
from hysparse_kernels.ops.attention import reference as ref  # noqa: E402
from hysparse_kernels.ops.attention.tvm import launch_bwd  # noqa: E402
from hysparse_kernels.testing import assert_close_to_reference  # noqa: E402

ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
NAMES = ("dq", "dk", "dv", "dsink")


def _inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, sink):
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
        assert_close_to_reference(g, w, lw, atol=ATOL[dtype] * max(1.0, float(w.abs().max())), name=f"{tag} {name}")


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


def _id(c):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, w, s = c
    return (f"B{B}-H{Hq}x{Hkv}-S{Sq}x{Sk}-D{Dqk}x{Dv}" + ("" if causal else "-full") + (f"-W{w}" if w else "")
            + ("-sink" if s else ""))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", DENSE, ids=[_id(c) for c in DENSE])
def test_dense_backward_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, has_sink = case
    q, k, v, sink = _inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, has_sink)
    scale = Dqk**-0.5
    out, lse = ref.attention_fwd(q, k, v, sink, causal, window, scale)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    args = (dout, dlse, q, k, v, sink, out, lse, causal, window, scale)
    got = launch_bwd.attention_bwd(*args)
    _check_grads(got, ref.attention_bwd, args, dtype, _id(case))


def _indices(B, Hkv, Sq, Sk, bs, kk, seed=0):
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


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, block, k, sink)
SPARSE = [
    (1, 8, 2, 100, 100, 64, 64, 16, 4, True),
    (2, 4, 1, 7, 257, 64, 32, 64, 3, False),   # few queries at the end of a long cache
    (1, 4, 4, 130, 130, 32, 32, 32, 5, True),
    (8, 8, 2, 96, 96, 16, 16, 16, 2, True),    # the tiny twin's sparse branch
    (1, 2, 1, 70, 70, 16, 16, 8, 9, False),    # k larger than the blocks a query has
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", SPARSE, ids=[f"B{c[0]}-H{c[1]}x{c[2]}-S{c[3]}x{c[4]}-D{c[5]}x{c[6]}-bs{c[7]}-k{c[8]}"
                                                + ("-sink" if c[9] else "") for c in SPARSE])
def test_sparse_backward_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, bs, kk, has_sink = case
    q, k, v, sink = _inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, has_sink)
    idx = _indices(B, Hkv, Sq, Sk, bs, kk)
    scale = Dqk**-0.5
    out, lse = ref.sparse_attention_fwd(q, k, v, idx, bs, sink, scale)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    args = (dout, dlse, q, k, v, idx, sink, out, lse, bs, scale)
    got = launch_bwd.sparse_attention_bwd(*args)
    _check_grads(got, ref.sparse_attention_bwd, args, dtype, f"sparse {case}")


def test_query_lists_drop_pads_duplicates_and_later_blocks():
    idx = torch.tensor([[[[0, 2, -1], [1, 0, 2], [2, 1, 1]]]], dtype=torch.int32)  # [1, 1, 3 queries, 3]
    # Sk = 6, blocks of 2: query i sits at key i + 3, in block (i + 3) // 2 = 1, 2, 2
    qoff, qidx = launch_bwd.query_lists(idx, 6, 2)
    lists = [qidx[int(qoff[b]):int(qoff[b + 1])].tolist() for b in range(3)]
    # block 2 starts after query 0 (dropped); query 2 lists block 1 twice (once); -1 pads nothing
    assert lists == [[0, 1], [1, 2], [1, 2]]


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


@pytest.mark.parametrize("kind", ["swa-sink", "causal", "sparse-sink"])
def test_autograd_through_public_ops(kind):
    """The default (auto) backward on CPU tensors equals the float64 reference's gradients."""
    q, k, v, _ = _inputs(2, 8, 2, 50, 50, 32, 16, torch.float32, False)
    sink = torch.randn(8)
    idx = _indices(2, 2, 50, 50, 16, 3)
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


def test_float64_backward_runs_the_reference_in_float64():
    q, k, v, sink = _inputs(1, 4, 2, 20, 20, 16, 16, torch.float64, True)
    sink = sink.double()
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    got = _grads(lambda: hk.attention(*leaves[:3], window=5, sink=leaves[3]), leaves)
    want = _grads(lambda: hk.attention(*leaves[:3], window=5, sink=leaves[3], backend="reference"), leaves)
    for g, w in zip(got, want):
        assert g.dtype == torch.float64 and torch.equal(g, w)


def test_chunks_and_blocks_do_not_change_the_result(monkeypatch):
    """The dQ partial of each chunk, summed: one chunk and many give the same gradients."""
    q, k, v, sink = _inputs(1, 2, 1, 200, 200, 16, 16, torch.float32, True)
    out, lse = ref.attention_fwd(q, k, v, sink, True, 40, 0.25)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    args = (dout, dlse, q, k, v, sink, out, lse, True, 40, 0.25)
    many = launch_bwd.attention_bwd(*args)  # B x Hkv = 1: chunks of KV blocks
    monkeypatch.setattr(launch_bwd, "TASKS", 1)
    one = launch_bwd.attention_bwd(*args)
    for a, b in zip(many, one):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- non-finite values


def test_nan_in_keys_a_query_cannot_see_never_reaches_its_gradients():
    """SWA 8: key 0 is visible to queries 0..7 only. NaN in its k and v rows must leave the
    gradients of every query >= 8 and of every key >= 8 finite and as with finite values there
    (up to rounding: tiles holding a non-finite value take the selecting GEMMs, which round the
    products before adding them)."""
    q, k, v, sink = _inputs(1, 4, 1, 40, 40, 16, 16, torch.float32, True)
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


def test_nan_query_reaches_only_the_keys_it_sees():
    q, k, v, _ = _inputs(1, 2, 1, 32, 32, 16, 16, torch.float32, False)
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


def test_nan_in_the_output_gradient_reaches_only_the_keys_its_query_sees():
    q, k, v, _ = _inputs(1, 2, 1, 40, 40, 16, 16, torch.float32, False)
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


def test_nan_in_unselected_blocks_never_reaches_sparse_gradients():
    q, k, v, sink = _inputs(1, 4, 2, 64, 64, 16, 16, torch.float32, True)
    idx = torch.zeros(1, 2, 64, 2, dtype=torch.int32)  # every query: block 0, and its own block
    idx[..., 1] = (torch.arange(64) // 16).view(1, 1, 64).to(torch.int32)
    idx[:, :, 16:32, 1] = -1  # block 1's queries select block 0 only: block 1 is seen by nobody
    out, lse = ref.sparse_attention_fwd(q, k, v, idx, 16, sink, 0.25)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    clean = launch_bwd.sparse_attention_bwd(dout, dlse, q, k, v, idx, sink, out, lse, 16, 0.25)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 16:32] = float("nan")
    v2[:, :, 16:32] = float("nan")
    got = launch_bwd.sparse_attention_bwd(dout, dlse, q, k2, v2, idx, sink, out, lse, 16, 0.25)
    for a, b in zip(got, clean):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert torch.equal(got[1][:, :, 16:32], torch.zeros_like(got[1][:, :, 16:32]))


# ---------------------------------------------------------------- torch.library integration


def test_opcheck_backward_ops_with_tvm_backend():
    q, k, v, sink = _inputs(1, 4, 2, 20, 20, 32, 16, torch.float32, True)
    out, lse = ref.attention_fwd(q, k, v, sink, True, 8, 0.2)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    torch.library.opcheck(torch.ops.hysparse.attention_bwd, (dout, dlse, q, k, v, sink, out, lse, True, 8, 0.2, "tvm"),
                          test_utils=("test_schema", "test_faketensor"))
    idx = _indices(1, 2, 20, 20, 8, 3)
    out, lse = ref.sparse_attention_fwd(q, k, v, idx, 8, None, 0.2)
    torch.library.opcheck(torch.ops.hysparse.sparse_attention_bwd,
                          (dout, dlse, q, k, v, idx, None, out, lse, 8, 0.2, "tvm"), test_utils=("test_schema", "test_faketensor"))
