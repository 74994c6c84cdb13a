"""``attention`` (``hysparse::attention_fwd`` / ``attention_bwd``: full causal, sliding window,
sink, GQA) on every backend against the float64 reference: the reference against row-by-row
formulas, the TVM prefill and band kernels, the Triton forward and backward (the reference's
gradients and the TVM backward kernel: test_attention_bwd.py).

Tolerance (hysparse_kernels.testing): fp32 within a small atol of the float64 reference; bf16 /
fp16 within 2x the error of the reference itself run in that precision, plus a small atol.
Triton runs in its interpreter without a GPU (tests/conftest.py), on a GPU when there is one."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import dispatch
from hysparse_kernels.ops.attention import reference, reference as ref
from hysparse_kernels.ops.attention.tvm import launch
from hysparse_kernels.testing import assert_close_to_reference

from attention_helpers import _qkv
from backend_params import requires
from triton_helpers import DTYPES, DTYPE_IDS, R, _gpu_inputs, check, f64, inputs, lowp, reference_grads, run_grads
from tvm_helpers import _check, _tvm_qkv
import naive


# ---------------------------------------------------------------- reference (float64 formulas)


CASES = [
    # B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, sink
    (1, 2, 2, 1, 1, 16, 16, None, False),
    (1, 4, 1, 7, 7, 16, 8, None, True),
    (2, 8, 1, 7, 100, 24, 16, 5, True),
    (1, 8, 2, 100, 100, 16, 16, 16, False),
    (1, 4, 4, 100, 100, 32, 16, 128, True),
    (1, 4, 1, 257, 257, 8, 8, 64, True),
    (1, 2, 2, 33, 257, 12, 8, None, False),
    (1, 4, 2, 20, 10, 16, 16, None, True),  # Sq > Sk: the first queries see no key
]


def _id(c):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, w, s = c
    return f"B{B}-H{Hq}/{Hkv}-Sq{Sq}-Sk{Sk}-D{Dqk}/{Dv}-w{w}-{'sink' if s else 'nosink'}"


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_attention_matches_formula(case):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, with_sink = case
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv)
    sink = torch.randn(Hq, dtype=torch.float64) if with_sink else None
    out, lse = hk.attention(q, k, v, window=window, sink=sink, return_lse=True, backend="reference")
    exp_out, exp_lse, _ = naive.attention(q, k, v, window=window, sink=sink)
    torch.testing.assert_close(out, exp_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, exp_lse, rtol=1e-10, atol=1e-10)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_noncausal_and_scale():
    q, k, v = _qkv(1, 2, 1, 9, 13, 8, 8)
    out = hk.attention(q, k, v, causal=False, scale=0.3, backend="reference")
    exp, _, _ = naive.attention(q, k, v, causal=False, scale=0.3)
    torch.testing.assert_close(out, exp, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_unseen_rows_are_zero_with_lse_minus_inf_or_sink():
    q, k, v = _qkv(1, 2, 1, 6, 3, 8, 8)
    out, lse = hk.attention(q, k, v, return_lse=True, backend="reference")
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    assert torch.isneginf(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 3:]).all()
    sink = torch.tensor([0.5, -1.0], dtype=torch.float64)
    out, lse = hk.attention(q, k, v, sink=sink, return_lse=True, backend="reference")
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    torch.testing.assert_close(lse[0, :, 0], sink)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_low_precision_output_dtype_and_lse_float32():
    q, k, v = _qkv(1, 4, 2, 10, 10, 16, 16, dtype=torch.bfloat16)
    out, lse = hk.attention(q, k, v, return_lse=True, backend="reference")
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_matches_torch_sdpa():
    q, k, v = _qkv(2, 8, 2, 50, 50, 32, 32, dtype=torch.float32)
    out = hk.attention(q, k, v, backend="reference")
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
def test_reference_low_precision_emulation_differs_from_fp32():
    """compute_dtype=bfloat16 is the low-precision baseline the kernel tests measure against."""
    q, k, v = _qkv(1, 2, 1, 64, 64, 32, 32, dtype=torch.bfloat16)
    hi, _ = reference.attention_fwd(q, k, v, None, True, None, 32**-0.5)
    lo, _ = reference.attention_fwd(q, k, v, None, True, None, 32**-0.5, compute_dtype=torch.bfloat16)
    assert hi.dtype == lo.dtype == torch.bfloat16
    assert (hi.double() - lo.double()).abs().max() > 0


# ---------------------------------------------------------------- TVM (CPU, llvm)


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, sink)
PREFILL = [
    (1, 4, 1, 1, 1, 64, 64, None, False),
    (2, 2, 2, 7, 7, 64, 64, None, True),
    (1, 8, 1, 63, 63, 64, 32, None, False),
    (1, 4, 4, 65, 65, 64, 64, None, True),
    (1, 8, 2, 100, 100, 64, 64, 16, True),
    (1, 4, 1, 130, 130, 192, 128, None, False),
    (1, 8, 8, 257, 257, 32, 32, 16, False),
    (2, 4, 1, 30, 100, 64, 64, None, True),  # Sq < Sk
    (1, 4, 2, 100, 30, 64, 64, 8, True),  # Sq > Sk: early queries see nothing (lse = sink)
    (1, 8, 1, 100, 257, 192, 128, 16, False),
]


def _tvm_id(case):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, w, s = case
    return f"B{B}-H{Hq}x{Hkv}-S{Sq}x{Sk}-D{Dqk}x{Dv}" + (f"-W{w}" if w else "") + ("-sink" if s else "")


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", PREFILL, ids=[_tvm_id(c) for c in PREFILL])
def test_prefill_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, has_sink = case
    q, k, v = _tvm_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    sink = torch.randn(Hq) if has_sink else None
    scale = Dqk**-0.5
    got = hk.attention(q, k, v, window=window, sink=sink, return_lse=True, backend="tvm")
    _check("attention", got, ref.attention_fwd, (q, k, v, sink, True, window, scale), dtype)


@requires("tvm")
@pytest.mark.parametrize("wide", [False, True], ids=["avx2-tiles", "avx512-tiles"])
@pytest.mark.parametrize("case", [PREFILL[2], PREFILL[4], PREFILL[5]], ids=[_tvm_id(c) for c in (PREFILL[2], PREFILL[4], PREFILL[5])])
def test_prefill_both_register_tilings(case, wide, monkeypatch):
    """The dense kernel's 16-lane (AVX2) and 32-lane (AVX-512) register tiles, whichever this
    machine has: the tiling is part of the build's key."""
    monkeypatch.setattr(launch, "wide_registers", lambda: wide)
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, has_sink = case
    q, k, v = _tvm_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, torch.float32)
    sink = torch.randn(Hq) if has_sink else None
    got = launch._run_dense(q, k, v, sink, True, window, Dqk**-0.5)[:2]
    _check("attention", got, ref.attention_fwd, (q, k, v, sink, True, window, Dqk**-0.5), torch.float32)


@requires("tvm")
def test_float16_prefill_and_decode():
    q, k, v = _tvm_qkv(1, 8, 2, 70, 70, 64, 32, torch.float16)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, window=16, sink=sink, return_lse=True, backend="tvm")
    _check("fp16", got, ref.attention_fwd, (q, k, v, sink, True, 16, 64**-0.5), torch.float16)
    lens = torch.tensor([70], dtype=torch.int32)
    step = hk.attention_decode(q[:, :, -1:], k, v, lens, window=16, sink=sink, return_lse=True, backend="tvm")
    _check("fp16-decode", step, ref.attention_decode, (q[:, :, -1:], k, v, lens, sink, 16, 64**-0.5), torch.float16)


@requires("tvm")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_long_kv_tiles(monkeypatch, causal):
    """The 128-key tiles of long prefill, exercised on a short sequence."""
    from hysparse_kernels.ops.attention.tvm import launch

    monkeypatch.setattr(launch, "LONG_KV", 64)
    q, k, v = _tvm_qkv(1, 8, 2, 100, 257, 64, 32, torch.float32)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, causal=causal, sink=sink, return_lse=True, backend="tvm")
    _check("long-tiles", got, ref.attention_fwd, (q, k, v, sink, causal, None, 64**-0.5), torch.float32)


@requires("tvm")
def test_non_causal_and_no_visible_key():
    q, k, v = _tvm_qkv(1, 4, 2, 70, 90, 64, 48, torch.float32)
    got = hk.attention(q, k, v, causal=False, return_lse=True, backend="tvm")
    _check("non-causal", got, ref.attention_fwd, (q, k, v, None, False, None, 64**-0.5), torch.float32)
    # Sq > Sk without a sink: the first queries see no key -> out 0, lse -inf
    q, k, v = _tvm_qkv(1, 2, 1, 20, 5, 32, 32, torch.float32)
    out, lse = hk.attention(q, k, v, return_lse=True, backend="tvm")
    assert torch.all(out[:, :, :15] == 0) and torch.all(torch.isneginf(lse[:, :, :15]))
    assert torch.isfinite(lse[:, :, 15:]).all()


@requires("tvm")
def test_float64_goes_to_the_reference_and_tvm_refuses_it_by_name():
    q, k, v = _tvm_qkv(1, 4, 2, 33, 33, 32, 32, torch.float64)
    sink = torch.randn(4, dtype=torch.float64)
    got = hk.attention(q, k, v, sink=sink, window=8)  # auto: the TVM kernels are single precision
    want = hk.attention(q, k, v, sink=sink, window=8, backend="reference")
    assert got.dtype == torch.float64 and torch.equal(got, want)
    with pytest.raises(dispatch.BackendUnavailableError, match="kernels take"):
        hk.attention(q, k, v, sink=sink, window=8, backend="tvm")


@requires("tvm")
def test_auto_picks_tvm_on_cpu():
    for op in ("attention_fwd", "attention_with_block_scores", "sparse_attention_fwd", "attention_decode", "sparse_attention_decode"):
        assert dispatch.resolve(op, "cpu") == "tvm"


# ---------------------------------------------------------------- TVM sliding-window band kernel


SWA_ATOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _swa_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype):
    return (torch.randn(B, Hq, Sq, Dqk).to(dtype), torch.randn(B, Hkv, Sk, Dqk).to(dtype),
            torch.randn(B, Hkv, Sk, Dv).to(dtype))


def _swa_check(got, args, dtype, tag):
    want = ref.attention_fwd(*[a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args])
    low = ref.attention_fwd(*args, compute_dtype=dtype) if dtype != torch.float32 else (None, None)
    assert_close_to_reference(got[0], want[0], low[0], atol=SWA_ATOL[dtype], name=f"{tag} out")
    assert_close_to_reference(got[1], want[1], None, atol=SWA_ATOL[dtype] if dtype == torch.float32 else 2e-2, name=f"{tag} lse")


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, sink)
SWA_CASES = [
    (1, 4, 1, 37, 37, 16, 16, 1, False),     # a window of one key: the query itself
    (2, 8, 2, 100, 100, 64, 64, 16, True),
    (1, 4, 2, 30, 300, 64, 64, 128, True),    # Sq < Sk: queries at the end of the keys
    (1, 4, 2, 100, 30, 64, 64, 8, True),      # Sq > Sk: early queries see nothing (lse = sink)
    (1, 4, 2, 100, 30, 64, 64, 8, False),     # ... and without a sink (out 0, lse -inf)
    (1, 8, 1, 257, 257, 48, 40, 100, True),   # GQA 8, Dqk != Dv, odd sizes
    (1, 4, 4, 65, 65, 32, 32, 3, False),      # a window smaller than a query block
    (1, 2, 1, 600, 600, 32, 32, 512, True),   # the largest window of the band kernel
]


def _swa_id(c):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, w, s = c
    return f"B{B}-H{Hq}x{Hkv}-S{Sq}x{Sk}-D{Dqk}x{Dv}-W{w}" + ("-sink" if s else "")


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", SWA_CASES, ids=[_swa_id(c) for c in SWA_CASES])
def test_swa_band_kernel_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, has_sink = case
    q, k, v = _swa_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    sink = torch.randn(Hq) if has_sink else None
    got = hk.attention(q, k, v, window=window, sink=sink, return_lse=True, backend="tvm")
    _swa_check(got, (q, k, v, sink, True, window, Dqk**-0.5), dtype, _swa_id(case))


@requires("tvm")
def test_swa_float16():
    q, k, v = _swa_qkv(1, 8, 2, 70, 70, 64, 32, torch.float16)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, window=20, sink=sink, return_lse=True, backend="tvm")
    _swa_check(got, (q, k, v, sink, True, 20, 64**-0.5), torch.float16, "fp16")


@requires("tvm")
@pytest.mark.parametrize("wide", [False, True], ids=["avx2-tiles", "avx512-tiles"])
@pytest.mark.parametrize("case", [SWA_CASES[1], SWA_CASES[5]], ids=[_swa_id(SWA_CASES[1]), _swa_id(SWA_CASES[5])])
def test_swa_band_kernel_both_register_tilings(case, wide, monkeypatch):
    """Both register tilings of the band kernel (AVX2's 16 registers, AVX-512's 32), whichever
    this machine has: the tiling is part of the build's key."""
    from hysparse_kernels.ops.attention.tvm import launch_swa

    monkeypatch.setattr(launch_swa, "wide_registers", lambda: wide)
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, has_sink = case
    q, k, v = _swa_qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, torch.float32)
    sink = torch.randn(Hq) if has_sink else None
    got = hk.attention(q, k, v, window=window, sink=sink, return_lse=True, backend="tvm")
    _swa_check(got, (q, k, v, sink, True, window, Dqk**-0.5), torch.float32, _swa_id(case))


@requires("tvm")
def test_window_above_the_band_kernel_runs_dense(monkeypatch):
    """Windows above SWA_MAX_WINDOW take the dense kernel (here with the limit lowered)."""
    monkeypatch.setattr(launch, "SWA_MAX_WINDOW", 8)
    q, k, v = _swa_qkv(1, 8, 2, 100, 100, 64, 64, torch.float32)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, window=16, sink=sink, return_lse=True, backend="tvm")
    _swa_check(got, (q, k, v, sink, True, 16, 0.125), torch.float32, "dense-window")


@requires("tvm")
def test_band_kernel_equals_dense_kernel():
    q, k, v = _swa_qkv(2, 8, 2, 130, 130, 32, 32, torch.float32)
    sink = torch.randn(8)
    band = launch.attention_fwd(q, k, v, sink, True, 40, 0.2)
    dense = launch._run_dense(q, k, v, sink, True, 40, 0.2)[:2]
    for a, b in zip(band, dense):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


@requires("tvm")
def test_nan_in_v_reaches_exactly_the_queries_that_see_it():
    """NaN in one V element of a key at the band's edge: the queries whose window holds the key
    get NaN in that column, the others are untouched (P = 0 never multiplies it)."""
    q, k, v = _swa_qkv(1, 4, 2, 60, 60, 16, 16, torch.float32)
    clean = hk.attention(q, k, v, window=8, backend="tvm")
    v2 = v.clone()
    v2[0, 0, 20, 3] = float("nan")
    v2[0, 1, 33] = float("nan")
    out = hk.attention(q, k, v2, window=8, backend="tvm")
    want = ref.attention_fwd(q.double(), k.double(), v2.double(), None, True, 8, 0.25)[0]
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    seen = torch.zeros(60, dtype=torch.bool)
    seen[20:28] = True  # queries 20..27 see key 20 (window 8)
    assert torch.isnan(out[0, :2, seen, 3]).all() and not torch.isnan(out[0, :2, ~seen]).any()
    assert torch.equal(out[0, :2, ~seen], clean[0, :2, ~seen])


@requires("tvm")
def test_nan_in_a_masked_key_never_reaches_a_query():
    q, k, v = _swa_qkv(1, 2, 1, 40, 40, 16, 16, torch.float32)
    k2, v2 = k.clone(), v.clone()
    k2[0, 0, 5] = float("nan")
    v2[0, 0, 5] = float("nan")
    out, lse = hk.attention(q, k2, v2, window=4, return_lse=True, backend="tvm")
    clean, clean_lse = hk.attention(q, k, v, window=4, return_lse=True, backend="tvm")
    far = torch.ones(40, dtype=torch.bool)
    far[5:9] = False  # queries 5..8 see key 5
    assert torch.equal(out[:, :, far], clean[:, :, far]) and torch.equal(lse[:, :, far], clean_lse[:, :, far])
    assert torch.isnan(out[:, :, ~far]).all()


# ---------------------------------------------------------------- Triton (interpreter without a GPU)


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, causal, window, sink)
TRITON_CASES = {
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
ALL = [pytest.param(*c, id=name) for name, c in TRITON_CASES.items()] + [
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
BWD = [pytest.param(*c, torch.float32, 2e-5, id=f"{n}-fp32") for n, c in TRITON_CASES.items()] + [
    pytest.param(*TRITON_CASES[n], torch.bfloat16, 2e-3, id=f"{n}-bf16") for n in BWD_BF16
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


def test_float64_is_refused_with_a_clear_error():
    q, k, v, _ = inputs(1, 2, 2, 8, 8, 16, 16, torch.float64)
    # dispatch knows the kernels' dtypes and refuses before launching
    with pytest.raises(hk.BackendUnavailableError, match=r"kernels take .*float32.*got torch.float64; use backend='reference'"):
        hk.attention(q, k, v, backend="triton")
    # and the launcher itself still refuses, for a caller that reaches it directly
    from hysparse_kernels.ops.attention.triton import attention as fwd

    with pytest.raises(TypeError, match="q: the triton backend takes float16, bfloat16 or float32, got torch.float64"):
        fwd.attention_fwd(q, k, v, None, True, None, 0.25)


def test_float16_forward():
    q, k, v, sink = inputs(1, 2, 1, 40, 40, 32, 32, torch.float16, sink=True)
    out = hk.attention(q, k, v, window=16, sink=sink, backend="triton")
    ref, _ = R.attention_fwd(*f64(q, k, v, sink), True, 16, 32**-0.5)
    low, _ = R.attention_fwd(q, k, v, sink, True, 16, 32**-0.5, compute_dtype=torch.float16)
    check(out, ref, low, torch.float16, 1e-3, "out")


# ---------------------------------------------------------------- Triton on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-3), (torch.float16, 1e-3)], ids=["bf16", "fp16"])
@pytest.mark.parametrize("S,Dqk,Dv,window,with_sink", [
    (1024, 128, 128, None, False), (2047, 64, 64, 256, True), (1000, 192, 128, None, True),
], ids=["S1024-D128", "S2047-D64-W256-sink", "S1000-D192v128-sink"])
def test_forward_backward_on_gpu(S, Dqk, Dv, window, with_sink, dtype, atol):
    q, k, v = _gpu_inputs(1, 8, 2, S, Dqk, Dv, dtype)
    sink = torch.randn(8, device="cuda") if with_sink else None
    scale = Dqk**-0.5
    dout, dlse = torch.randn(1, 8, S, Dv, device="cuda").to(dtype), torch.randn(1, 8, S, device="cuda")
    fn = lambda q, k, v, s: hk.attention(q, k, v, window=window, sink=s, return_lse=True, backend="triton")  # noqa: E731
    grads, out, lse = run_grads(fn, (q, k, v, sink), (dout, dlse))
    ref_fn = lambda q, k, v, s: R.attention_fwd(q, k, v, s, True, window, scale)  # noqa: E731
    low_fn = lambda q, k, v, s: R.attention_fwd(q, k, v, s, True, window, scale, compute_dtype=lowp(dtype))  # noqa: E731
    ref, low = ref_fn(*f64(q, k, v, sink)), low_fn(q, k, v, sink)
    check(out, ref[0], low[0], dtype, atol, "out")
    check(lse, ref[1], low[1], dtype, atol, "lse")
    rg = reference_grads(ref_fn, f64(q, k, v, sink), f64(dout, dlse))
    lg = reference_grads(low_fn, (q, k, v, sink), (dout, dlse))
    for name, g, r, lo in zip(("dq", "dk", "dv", "dsink"), grads, rg, lg):
        check(g, r, lo, dtype, atol * (S if name == "dsink" else 1), name)
