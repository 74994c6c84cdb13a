"""``sparse_attention`` (HySparse attention over selected KV blocks, forward and backward) on
every backend against the float64 reference, ``-1`` pads and repeats in the index lists."""

from __future__ import annotations

import math

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import ops, reference as R, reference as ref
from hysparse_kernels.ops.attention.tvm import launch_bwd
from hysparse_kernels.testing import assert_close_to_reference

from attention_helpers import B, BS, D, S, _inputs, _pads_inputs, _qkv
from backend_params import ATTENTION, requires
from triton_helpers import DTYPES, DTYPE_IDS, _gpu_inputs, check, f64, inputs, lowp, random_indices, reference_grads, run_grads
from tvm_helpers import _check, _check_grads, _indices, _tvm_bwd_indices, _tvm_bwd_inputs, _tvm_qkv
import naive


# ---------------------------------------------------------------- reference (float64 formulas)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_sparse_with_all_blocks_equals_causal_attention():
    B, Hq, Hkv, S, bs = 1, 4, 2, 100, 16
    q, k, v = _qkv(B, Hq, Hkv, S, S, 16, 8)
    sink = torch.randn(Hq, dtype=torch.float64)
    nb = math.ceil(S / bs)
    idx = torch.arange(nb, dtype=torch.int32).expand(B, Hkv, S, nb).contiguous()
    out = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, backend="reference")
    full = hk.attention(q, k, v, sink=sink, backend="reference")
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize("Sq,Sk,bs,k", [(63, 63, 16, 2), (9, 130, 32, 3), (1, 100, 16, 7)])
def test_sparse_equals_masked_attention(Sq, Sk, bs, k):
    B, Hq, Hkv = 2, 4, 2
    q, k_, v = _qkv(B, Hq, Hkv, Sq, Sk, 16, 8)
    sink = torch.randn(Hq, dtype=torch.float64)
    _, _, scores = hk.attention_with_block_scores(q, k_, v, block_size=bs, backend="reference")
    idx = hk.topk_blocks(torch.rand_like(scores), k, block_size=bs, seqlen_k=Sk, backend="reference")
    out, lse = hk.sparse_attention(q, k_, v, idx, block_size=bs, sink=sink, return_lse=True, backend="reference")

    def visible(b, g, i, j):
        return (j // bs) in idx[b, g, i].tolist() and j <= Sk - Sq + i

    exp_out, exp_lse, _ = naive.attention(q, k_, v, sink=sink, visible_fn=visible)
    torch.testing.assert_close(out, exp_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, exp_lse, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_sparse_duplicate_indices_count_once():
    q, k, v = _qkv(1, 2, 1, 4, 32, 8, 8)
    once = torch.tensor([0, 1, -1], dtype=torch.int32).expand(1, 1, 4, 3).contiguous()
    twice = torch.tensor([0, 1, 1], dtype=torch.int32).expand(1, 1, 4, 3).contiguous()
    torch.testing.assert_close(
        hk.sparse_attention(q, k, v, once, block_size=16, backend="reference"),
        hk.sparse_attention(q, k, v, twice, block_size=16, backend="reference"),
    )


# ---------------------------------------------------------------- -1 pads and block sizes, every backend


def _padded(idx, width, g):
    """``idx`` scattered into ``width`` entries of -1 pads, with each block listed twice."""
    out = torch.full((*idx.shape[:-1], width), -1, dtype=idx.dtype)
    slots = torch.randperm(width, generator=g)[: 2 * idx.shape[-1]]
    out[..., slots[: idx.shape[-1]]] = idx
    out[..., slots[idx.shape[-1]:]] = idx
    return out


@pytest.mark.filterwarnings(
    "ignore::hysparse_kernels.BackendFallbackWarning", "ignore::hysparse_kernels.tuned.TunedConfigWarning"
)
def test_compact_indices_keeps_the_selection():
    _, _, _, _, idx, g = _pads_inputs()
    wide = _padded(idx, 2000, g)
    small = ops.compact_indices(wide, -(-S // BS))
    assert small.shape == (*idx.shape[:-1], -(-S // BS)) and small.dtype == idx.dtype
    assert torch.equal(R.sparse_mask(small, S, S, BS), R.sparse_mask(idx, S, S, BS))
    valid = small[small >= 0]
    assert valid.numel() == (idx >= 0).sum()  # each block once, pads at the end
    assert ops.compact_indices(idx, -(-S // BS)) is idx  # short lists are left alone


@pytest.mark.filterwarnings(
    "ignore::hysparse_kernels.BackendFallbackWarning", "ignore::hysparse_kernels.tuned.TunedConfigWarning"
)
@pytest.mark.parametrize("backend", ATTENTION)
def test_long_padded_lists_give_the_short_lists_result(backend):
    q, k, v, sink, idx, g = _pads_inputs()
    wide = _padded(idx, 3000, g)  # 3000 entries for 5 blocks
    want = R.sparse_attention_fwd(*(t.double() for t in (q, k, v)), idx, BS, sink.double(), D**-0.5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    out, lse = hk.sparse_attention(*leaves[:3], wide, block_size=BS, sink=leaves[3], return_lse=True, backend=backend)
    assert_close_to_reference(out.detach(), want[0], atol=2e-5, name="out")
    assert_close_to_reference(lse.detach(), want[1], atol=2e-5, name="lse")
    (out.square().sum() + lse.sum()).backward()
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v, sink)]
    o, l = R.sparse_attention_fwd(*ref_leaves[:3], idx, BS, ref_leaves[3], D**-0.5)
    (o.square().sum() + l.sum()).backward()
    for name, a, b in zip("q k v sink".split(), leaves, ref_leaves):
        # dsink sums over every query of a head (as in the Triton backward tests: atol x B * Sq)
        assert_close_to_reference(a.grad, b.grad, atol=2e-5 * (B * S if name == "sink" else 1), name=f"d{name}")
    # decode over a padded cache: the same lists for the last 2 queries
    lens = torch.tensor([S], dtype=torch.int32)
    got = hk.sparse_attention_decode(q[:, :, -2:], k, v, lens, wide[:, :, -2:], block_size=BS, sink=sink,
                                     return_lse=True, backend=backend)
    want = R.sparse_attention_decode(*(t.double() for t in (q[:, :, -2:], k, v)), lens, idx[:, :, -2:], BS,
                                     sink.double(), D**-0.5)
    assert_close_to_reference(got[0], want[0], atol=2e-5, name="decode out")


@pytest.mark.filterwarnings(
    "ignore::hysparse_kernels.BackendFallbackWarning", "ignore::hysparse_kernels.tuned.TunedConfigWarning"
)
@pytest.mark.parametrize("block_size", [1, 2, 8])
@pytest.mark.parametrize("backend", ATTENTION)
def test_every_power_of_two_block_size_runs(backend, block_size):
    """README: block_size is any power of two; below a backend's smallest kernel tile (TVM 8,
    Triton 16) the reference path runs."""
    q, k, v, sink, _, g = _pads_inputs(sq=20)
    k, v = k[:, :, :20].contiguous(), v[:, :, :20].contiguous()
    scale = D**-0.5
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=block_size, backend=backend)
    want = R.attention_with_block_scores(q.double(), k.double(), v.double(), block_size, True, scale)
    for name, a, b in zip(("out", "lse", "scores"), (out, lse, scores), want):
        assert_close_to_reference(a, b, atol=2e-5, name=name)
    idx = hk.topk_blocks(scores, 3, block_size=block_size, seqlen_k=20)
    out = hk.sparse_attention(q, k, v, idx, block_size=block_size, sink=sink, backend=backend)
    want = R.sparse_attention_fwd(q.double(), k.double(), v.double(), idx, block_size, sink.double(), scale)
    assert_close_to_reference(out, want[0], atol=2e-5, name="sparse out")


# ---------------------------------------------------------------- registered op (reference): gradcheck


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_gradcheck_sparse_attention():
    q, k, v = _inputs(Sq=5, Sk=12, grad=True)
    sink = torch.randn(4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 2], [1, -1], [2, 0], [0, -1], [2, 1]], dtype=torch.int32).expand(1, 2, 5, 2).contiguous()
    fn = lambda q, k, v, s: hk.sparse_attention(q, k, v, idx, block_size=4, sink=s, return_lse=True, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, sink))


# ---------------------------------------------------------------- TVM (CPU, llvm)


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [(1, 8, 2, 100, 100, 64, 64, 16, 4, True), (2, 4, 1, 7, 257, 192, 128, 64, 3, False),
                                  (1, 4, 4, 130, 130, 32, 32, 32, 5, True)],
                         ids=["S100-bs16-k4-sink", "S7x257-D192x128-bs64-k3", "S130-bs32-k5-sink"])
def test_sparse_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, bs, kk, has_sink = case
    q, k, v = _tvm_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    idx = _indices(B, Hkv, Sq, Sk, bs, kk)
    sink = torch.randn(Hq) if has_sink else None
    got = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, return_lse=True, backend="tvm")
    _check("sparse", got, ref.sparse_attention_fwd, (q, k, v, idx, bs, sink, Dqk**-0.5), dtype)


@requires("tvm")
def test_sparse_with_all_blocks_equals_full_causal():
    q, k, v = _tvm_qkv(1, 4, 2, 65, 65, 32, 32, torch.float32)
    nb = 5  # ceil(65 / 16)
    idx = torch.arange(nb, dtype=torch.int32).expand(1, 2, 65, nb).contiguous()
    got = hk.sparse_attention(q, k, v, idx, block_size=16, backend="tvm")
    want = hk.attention(q, k, v, backend="tvm")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- TVM backward


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, block, k, sink)
SPARSE = [
    (1, 8, 2, 100, 100, 64, 64, 16, 4, True),
    (2, 4, 1, 7, 257, 64, 32, 64, 3, False),   # few queries at the end of a long cache
    (1, 4, 4, 130, 130, 32, 32, 32, 5, True),
    (8, 8, 2, 96, 96, 16, 16, 16, 2, True),    # the tiny twin's sparse branch
    (1, 2, 1, 70, 70, 16, 16, 8, 9, False),    # k larger than the blocks a query has
]


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", SPARSE, ids=[f"B{c[0]}-H{c[1]}x{c[2]}-S{c[3]}x{c[4]}-D{c[5]}x{c[6]}-bs{c[7]}-k{c[8]}"
                                                + ("-sink" if c[9] else "") for c in SPARSE])
def test_tvm_bwd_sparse_backward_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, bs, kk, has_sink = case
    q, k, v, sink = _tvm_bwd_inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, has_sink)
    idx = _tvm_bwd_indices(B, Hkv, Sq, Sk, bs, kk)
    scale = Dqk**-0.5
    out, lse = ref.sparse_attention_fwd(q, k, v, idx, bs, sink, scale)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    args = (dout, dlse, q, k, v, idx, sink, out, lse, bs, scale)
    got = launch_bwd.sparse_attention_bwd(*args)
    _check_grads(got, ref.sparse_attention_bwd, args, dtype, f"sparse {case}")


@requires("tvm")
def test_query_lists_drop_pads_duplicates_and_later_blocks():
    idx = torch.tensor([[[[0, 2, -1], [1, 0, 2], [2, 1, 1]]]], dtype=torch.int32)  # [1, 1, 3 queries, 3]
    # Sk = 6, blocks of 2: query i sits at key i + 3, in block (i + 3) // 2 = 1, 2, 2
    qoff, qidx = launch_bwd.query_lists(idx, 6, 2)
    lists = [qidx[int(qoff[b]):int(qoff[b + 1])].tolist() for b in range(3)]
    # block 2 starts after query 0 (dropped); query 2 lists block 1 twice (once); -1 pads nothing
    assert lists == [[0, 1], [1, 2], [1, 2]]


@requires("tvm")
def test_nan_in_unselected_blocks_never_reaches_sparse_gradients():
    q, k, v, sink = _tvm_bwd_inputs(1, 4, 2, 64, 64, 16, 16, torch.float32, True)
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


# ---------------------------------------------------------------- Triton (interpreter without a GPU)


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, block_size, k, mode, sink)
CASES = {
    "B1-H4kv1-Sq65-Sk130-bs16-k3-raw-sink": (1, 4, 1, 65, 130, 32, 32, 16, 3, "raw", True),
    "B1-H2kv2-Sq33-Sk63-D192v128-bs16-k4-topk": (1, 2, 2, 33, 63, 192, 128, 16, 4, "topk", False),
    "B2-H4kv4-Sq1-Sk65-bs32-k2-raw": (2, 4, 4, 1, 65, 32, 32, 32, 2, "raw", False),
    "B1-H4kv2-Sq10-Sk70-bs16-k8-more-than-visible-sink": (1, 4, 2, 10, 70, 32, 32, 16, 8, "topk", True),
}
SLOW_CASES = {
    "B2-H8kv2-S130-D64-bs32-k4-topk-sink": (2, 8, 2, 130, 130, 64, 64, 32, 4, "topk", True),
    "B1-H4kv1-Sq63-Sk63-D192v128-bs16-k3-raw": (1, 4, 1, 63, 63, 192, 128, 16, 3, "raw", False),
}
# The interpreter runs one program per (query, KV group) and block: the two larger cases run in
# fp32 by default and in bf16 under `slow`; the small ones in both.
_BF16_DEFAULT = ("B2-H4kv4-Sq1-Sk65-bs32-k2-raw", "B1-H4kv2-Sq10-Sk70-bs16-k8-more-than-visible-sink")
FWD = [pytest.param(*c, dt, tol, id=f"{n}-{i}",
                    marks=() if i == "fp32" or n in _BF16_DEFAULT else pytest.mark.slow)
       for n, c in CASES.items() for (dt, tol), i in zip(DTYPES, DTYPE_IDS)] + [
    pytest.param(*c, dt, tol, id=f"{n}-{i}", marks=pytest.mark.slow)
    for n, c in SLOW_CASES.items() for (dt, tol), i in zip(DTYPES, DTYPE_IDS)
]
ARGS = "B,Hq,Hkv,Sq,Sk,Dqk,Dv,block_size,k,mode,with_sink"


@pytest.mark.parametrize(ARGS + ",dtype,atol", FWD)
def test_sparse_forward_matches_reference(B, Hq, Hkv, Sq, Sk, Dqk, Dv, block_size, k, mode, with_sink, dtype, atol):
    q, kk, v, sink = inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, with_sink)
    idx = random_indices(B, Hkv, Sq, Sk, block_size, k, mode)
    out, lse = hk.sparse_attention(q, kk, v, idx, block_size=block_size, sink=sink, return_lse=True, backend="triton")
    scale = Dqk**-0.5
    ref = R.sparse_attention_fwd(*f64(q, kk, v), idx, block_size, f64(sink)[0], scale)
    low = R.sparse_attention_fwd(q, kk, v, idx, block_size, sink, scale, compute_dtype=lowp(dtype))
    check(out, ref[0], low[0], dtype, atol, "out")
    check(lse, ref[1], low[1], dtype, atol, "lse")


BWD = [
    pytest.param(*CASES["B1-H4kv1-Sq65-Sk130-bs16-k3-raw-sink"], torch.float32, 2e-5, id="Sq65-Sk130-raw-sink-fp32"),
    pytest.param(*CASES["B1-H2kv2-Sq33-Sk63-D192v128-bs16-k4-topk"], torch.float32, 2e-5, id="D192v128-topk-fp32"),
    pytest.param(*CASES["B1-H4kv2-Sq10-Sk70-bs16-k8-more-than-visible-sink"], torch.bfloat16, 2e-3,
                 id="Sq10-k8-sink-bf16"),
    pytest.param(*SLOW_CASES["B2-H8kv2-S130-D64-bs32-k4-topk-sink"], torch.bfloat16, 2e-3, id="S130-sink-bf16",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize(ARGS + ",dtype,atol", BWD)
def test_sparse_backward_matches_reference(B, Hq, Hkv, Sq, Sk, Dqk, Dv, block_size, k, mode, with_sink, dtype, atol):
    q, kk, v, sink = inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, with_sink)
    idx = random_indices(B, Hkv, Sq, Sk, block_size, k, mode)
    scale = Dqk**-0.5
    dout, dlse = torch.randn(B, Hq, Sq, Dv).to(dtype), torch.randn(B, Hq, Sq)
    fn = lambda q, k_, v, s: hk.sparse_attention(  # noqa: E731
        q, k_, v, idx, block_size=block_size, sink=s, return_lse=True, backend="triton")
    grads, _, _ = run_grads(fn, (q, kk, v, sink), (dout, dlse))
    ref = reference_grads(lambda q, k_, v, s: R.sparse_attention_fwd(q, k_, v, idx, block_size, s, scale),
                          f64(q, kk, v, sink), f64(dout, dlse))
    low = reference_grads(
        lambda q, k_, v, s: R.sparse_attention_fwd(q, k_, v, idx, block_size, s, scale, compute_dtype=lowp(dtype)),
        (q, kk, v, sink), (dout, dlse))
    for name, g, r, lo in zip(("dq", "dk", "dv", "dsink"), grads, ref, low):
        check(g, r, lo, dtype, atol * (B * Sq if name == "dsink" else 1), name)


def test_sparse_with_every_block_equals_dense_causal():
    B, Hq, Hkv, S, D, bs = 1, 2, 1, 40, 32, 16
    q, k, v, sink = inputs(B, Hq, Hkv, S, S, D, D, torch.float32, sink=True)
    n_blocks = -(-S // bs)
    idx = torch.arange(n_blocks, dtype=torch.int32).expand(B, Hkv, S, n_blocks).contiguous()
    sparse = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, backend="triton")
    dense = hk.attention(q, k, v, sink=sink, backend="triton")
    torch.testing.assert_close(sparse, dense, atol=2e-6, rtol=0)


# ---------------------------------------------------------------- Triton on a GPU


@pytest.mark.gpu
def test_block_scores_topk_sparse_and_decode_on_gpu():
    dtype, atol, S, bs = torch.bfloat16, 2e-3, 1024, 64
    q, k, v = _gpu_inputs(1, 8, 2, S, 128, 128, dtype)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=bs, backend="triton")
    ref = R.attention_with_block_scores(*f64(q, k, v), bs, True, 128**-0.5)
    low = R.attention_with_block_scores(q, k, v, bs, True, 128**-0.5, compute_dtype=torch.bfloat16)
    check(scores, ref[2], low[2], dtype, atol, "block_scores")
    idx = hk.topk_blocks(scores, 4, block_size=bs, seqlen_k=S, backend="triton")
    assert torch.equal(idx, R.topk_blocks(scores, 4, bs, S))
    sink = torch.randn(8, device="cuda")
    sp = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, backend="triton")
    ref_sp, _ = R.sparse_attention_fwd(*f64(q, k, v), idx, bs, sink.double(), 128**-0.5)
    low_sp, _ = R.sparse_attention_fwd(q, k, v, idx, bs, sink, 128**-0.5, compute_dtype=torch.bfloat16)
    check(sp, ref_sp, low_sp, dtype, atol, "sparse out")
    lens = torch.tensor([S], device="cuda", dtype=torch.int32)
    dec = hk.attention_decode(q[:, :, -3:], k, v, lens, window=256, sink=sink, backend="triton")
    pre = hk.attention(q, k, v, window=256, sink=sink, backend="triton")[:, :, -3:]
    torch.testing.assert_close(dec.float(), pre.float(), atol=1e-2, rtol=0)
