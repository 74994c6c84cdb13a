"""Triton dense attention (backend="triton") against the float64 reference: forward, block
scores, top-k and backward (full, sliding window, sink, GQA, Dqk != Dv, ragged lengths).

Runs in Triton's interpreter without a GPU (tests/conftest.py), on a GPU when there is one."""

import pytest
import torch

import hysparse_kernels as hk
from triton_helpers import DTYPE_IDS, DTYPES, R, check, f64, inputs, lowp, reference_grads, run_grads

# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, sink)
CASES = {
    "B1-H2-S63-D64": (1, 2, 2, 63, 63, 64, 64, True, None, False),
    "B1-H4kv1-Sq65-Sk130-D192v128-sink": (1, 4, 1, 65, 130, 192, 128, True, None, True),
    "B1-H4kv1-S100-W16-sink": (1, 4, 1, 100, 100, 32, 32, True, 16, True),
    "B2-H2kv1-Sq1-Sk65": (2, 2, 1, 1, 65, 64, 64, True, None, False),
    "B1-H2-Sq70-Sk33-rows-see-nothing-sink": (1, 2, 1, 70, 33, 32, 32, True, None, True),
    "B1-H2-Sq33-Sk70-noncausal-Dv32": (1, 2, 1, 33, 70, 64, 32, False, None, False),
}
SLOW_CASES = {
    "B1-H8kv2-S130-D192v128-W64-sink": (1, 8, 2, 130, 130, 192, 128, True, 64, True),
    "B2-H4kv4-S130-D64": (2, 4, 4, 130, 130, 64, 64, True, None, False),
}
ALL = [pytest.param(*c, id=name) for name, c in CASES.items()] + [
    pytest.param(*c, id=name, marks=pytest.mark.slow) for name, c in SLOW_CASES.items()
]
ARGS = "B,Hq,Hkv,Sq,Sk,Dqk,Dv,causal,window,with_sink"


@pytest.mark.parametrize("dtype,atol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(ARGS, ALL)
def test_forward_matches_reference(B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, with_sink, dtype, atol):
    q, k, v, sink = inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, with_sink)
    out, lse = hk.attention(q, k, v, causal=causal, window=window, sink=sink, return_lse=True, backend="triton")
    assert out.dtype == dtype and out.shape == (B, Hq, Sq, Dv) and lse.dtype == torch.float32
    scale = Dqk**-0.5
    ref_out, ref_lse = R.attention_fwd(*f64(q, k, v, sink), causal, window, scale)
    low_out, low_lse = R.attention_fwd(q, k, v, sink, causal, window, scale, compute_dtype=lowp(dtype))
    check(out, ref_out, low_out, dtype, atol, "out")
    check(lse, ref_lse, low_lse, dtype, atol, "lse")


# Backward: every case in fp32; bf16 on the two that stress it most (Dqk 192 / Dv 128, window + sink).
BWD_BF16 = ("B1-H4kv1-Sq65-Sk130-D192v128-sink", "B1-H4kv1-S100-W16-sink")
BWD = [pytest.param(*c, torch.float32, 2e-5, id=f"{n}-fp32") for n, c in CASES.items()] + [
    pytest.param(*CASES[n], torch.bfloat16, 2e-3, id=f"{n}-bf16") for n in BWD_BF16
] + [pytest.param(*c, dt, tol, id=f"{n}-{i}", marks=pytest.mark.slow)
     for n, c in SLOW_CASES.items() for (dt, tol), i in zip(DTYPES, DTYPE_IDS)]


@pytest.mark.parametrize(ARGS + ",dtype,atol", BWD)
def test_backward_matches_reference(B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, with_sink, dtype, atol):
    q, k, v, sink = inputs(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype, with_sink)
    scale = Dqk**-0.5
    dout = torch.randn(B, Hq, Sq, Dv).to(dtype)
    dlse = torch.randn(B, Hq, Sq)  # the lse cotangent must be honoured too
    fn = lambda q, k, v, s: hk.attention(  # noqa: E731
        q, k, v, causal=causal, window=window, sink=s, return_lse=True, backend="triton")
    grads, _, _ = run_grads(fn, (q, k, v, sink), (dout, dlse))
    ref = reference_grads(lambda q, k, v, s: R.attention_fwd(q, k, v, s, causal, window, scale),
                          f64(q, k, v, sink), f64(dout, dlse))
    low = reference_grads(lambda q, k, v, s: R.attention_fwd(q, k, v, s, causal, window, scale, compute_dtype=lowp(dtype)),
                          (q, k, v, sink), (dout, dlse))
    for name, g, r, lo in zip(("dq", "dk", "dv", "dsink"), grads, ref, low):
        assert g.shape == r.shape
        # dsink sums over every query of a head: its size grows with B * Sq, so scale atol with it
        check(g, r, lo, dtype, atol * (B * Sq if name == "dsink" else 1), name)


# (B, Hq, Hkv, Sq, Sk, D, causal, block_size)
SCORE_CASES = [
    pytest.param(1, 4, 1, 65, 130, 64, True, 32, id="B1-H4kv1-Sq65-Sk130-bs32"),
    pytest.param(1, 2, 2, 63, 63, 32, True, 16, id="B1-H2-S63-bs16"),
    pytest.param(1, 2, 1, 33, 70, 32, False, 16, id="B1-H2-Sq33-Sk70-noncausal-bs16"),
    pytest.param(2, 8, 2, 130, 130, 64, True, 64, id="B2-H8kv2-S130-bs64", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("dtype,atol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B,Hq,Hkv,Sq,Sk,D,causal,block_size", SCORE_CASES)
def test_block_scores_match_reference(B, Hq, Hkv, Sq, Sk, D, causal, block_size, dtype, atol):
    q, k, v, _ = inputs(B, Hq, Hkv, Sq, Sk, D, D, dtype)
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=block_size, causal=causal, backend="triton")
    assert scores.shape == (B, Hkv, Sq, -(-Sk // block_size)) and scores.dtype == torch.float32
    ref = R.attention_with_block_scores(*f64(q, k, v), block_size, causal, D**-0.5)
    low = R.attention_with_block_scores(q, k, v, block_size, causal, D**-0.5, compute_dtype=lowp(dtype))
    for name, got, r, lo in zip(("out", "lse", "block_scores"), (out, lse, scores), ref, low):
        check(got, r, lo, dtype, atol, name)
    if causal:  # blocks after the query's own block are invisible: exactly zero
        nvis = R.visible_blocks(Sq, Sk, block_size)
        invisible = torch.arange(scores.shape[-1])[None, :] >= nvis[:, None]
        assert torch.all(scores[..., invisible] == 0)


# (B, Hkv, Sq, Sk, block_size, k): k above the number of visible blocks included
TOPK_CASES = [
    pytest.param(2, 2, 65, 130, 16, 3, id="Sq65-Sk130-bs16-k3"),
    pytest.param(1, 2, 130, 130, 32, 8, id="S130-bs32-k8-more-than-visible"),
    pytest.param(1, 1, 70, 33, 16, 5, id="Sq70-Sk33-rows-with-no-block"),
    pytest.param(1, 2, 1, 65, 16, 20, id="Sq1-k20-more-than-blocks"),
]


@pytest.mark.parametrize("B,Hkv,Sq,Sk,block_size,k", TOPK_CASES)
def test_topk_blocks_equal_reference(B, Hkv, Sq, Sk, block_size, k):
    n_blocks = -(-Sk // block_size)
    scores = torch.round(torch.rand(B, Hkv, Sq, n_blocks) * 4) / 4  # many ties: lower index must win
    scores[0, 0, -1, 0] = float("nan")
    scores[0, -1, 0, :] = 0.0
    got = hk.topk_blocks(scores, k, block_size=block_size, seqlen_k=Sk, backend="triton")
    want = R.topk_blocks(scores, k, block_size, Sk)
    assert got.dtype == torch.int32
    assert torch.equal(got, want)


def test_topk_of_kernel_block_scores_never_selects_invisible_blocks():
    q, k, v, _ = inputs(1, 4, 2, 65, 130, 32, 32, torch.float32)
    _, _, scores = hk.attention_with_block_scores(q, k, v, block_size=16, backend="triton")
    idx = hk.topk_blocks(scores, 12, block_size=16, seqlen_k=130, backend="triton")
    nvis = R.visible_blocks(65, 130, 16)[None, None, :, None]
    assert torch.all((idx == -1) | ((idx >= 0) & (idx < nvis)))
    assert torch.equal(idx, R.topk_blocks(scores, 12, 16, 130))


def test_float64_is_refused_with_a_clear_error():
    q, k, v, _ = inputs(1, 2, 2, 8, 8, 16, 16, torch.float64)
    # dispatch knows the kernels' dtypes and refuses before launching
    with pytest.raises(hk.BackendUnavailableError, match=r"kernels take .*float32.*got torch.float64; use backend='reference'"):
        hk.attention(q, k, v, backend="triton")
    # and the launcher itself still refuses, for a caller that reaches it directly
    from hysparse_kernels.ops.attention.triton import attention as fwd

    with pytest.raises(TypeError, match="q: the triton backend takes float16, bfloat16 or float32, got torch.float64"):
        fwd.attention_fwd(q, k, v, None, True, None, 0.25)


def test_block_size_below_16_runs_the_reference_path():
    """Any power of two is a valid block (README); the kernel's tile needs 16, smaller blocks run
    the reference path, and the launcher itself still refuses them."""
    q, k, v, _ = inputs(1, 2, 2, 8, 8, 16, 16, torch.float32)
    got = hk.attention_with_block_scores(q, k, v, block_size=8, backend="triton")
    want = R.attention_with_block_scores(q, k, v, 8, True, 16**-0.5)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    from hysparse_kernels.ops.attention.triton import attention as fwd

    with pytest.raises(ValueError, match="block_size: .* >= 16, got 8"):
        fwd._launch_fwd(q, k, v, None, True, None, 0.25, block_size=8)


def test_float16_forward():
    q, k, v, sink = inputs(1, 2, 1, 40, 40, 32, 32, torch.float16, sink=True)
    out = hk.attention(q, k, v, window=16, sink=sink, backend="triton")
    ref, _ = R.attention_fwd(*f64(q, k, v, sink), True, 16, 32**-0.5)
    low, _ = R.attention_fwd(q, k, v, sink, True, 16, 32**-0.5, compute_dtype=torch.float16)
    check(out, ref, low, torch.float16, 1e-3, "out")
