"""TVM sliding-window prefill (band kernel, ``tvm/attention_swa.py``) against the float64 reference, and the
dense kernel that keeps windows above ``SWA_MAX_WINDOW``.

Tolerance (hysparse_kernels.testing): fp32 within a small atol of the float64 reference; bf16 and
fp16 within 2x the error of the reference itself run in that precision, plus a small atol.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'hysparse-kernels[tvm]')")

import hysparse_kernels as hk  # noqa: E402
from hysparse_kernels.ops.attention import reference as ref  # noqa: E402
from hysparse_kernels.ops.attention.tvm import launch  # noqa: E402
from hysparse_kernels.testing import assert_close_to_reference  # noqa: E402

ATOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype):
    return (torch.randn(B, Hq, Sq, Dqk).to(dtype), torch.randn(B, Hkv, Sk, Dqk).to(dtype),
            torch.randn(B, Hkv, Sk, Dv).to(dtype))


def _check(got, args, dtype, tag):
    want = ref.attention_fwd(*[a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args])
    low = ref.attention_fwd(*args, compute_dtype=dtype) if dtype != torch.float32 else (None, None)
    assert_close_to_reference(got[0], want[0], low[0], atol=ATOL[dtype], name=f"{tag} out")
    assert_close_to_reference(got[1], want[1], None, atol=ATOL[dtype] if dtype == torch.float32 else 2e-2, name=f"{tag} lse")


# (B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, sink)
CASES = [
    (1, 4, 1, 37, 37, 16, 16, 1, False),     # a window of one key: the query itself
    (2, 8, 2, 100, 100, 64, 64, 16, True),
    (1, 4, 2, 30, 300, 64, 64, 128, True),    # Sq < Sk: queries at the end of the keys
    (1, 4, 2, 100, 30, 64, 64, 8, True),      # Sq > Sk: early queries see nothing (lse = sink)
    (1, 4, 2, 100, 30, 64, 64, 8, False),     # ... and without a sink (out 0, lse -inf)
    (1, 8, 1, 257, 257, 48, 40, 100, True),   # GQA 8, Dqk != Dv, odd sizes
    (1, 4, 4, 65, 65, 32, 32, 3, False),      # a window smaller than a query block
    (1, 2, 1, 600, 600, 32, 32, 512, True),   # the largest window of the band kernel
]


def _id(c):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, w, s = c
    return f"B{B}-H{Hq}x{Hkv}-S{Sq}x{Sk}-D{Dqk}x{Dv}-W{w}" + ("-sink" if s else "")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_swa_band_kernel_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, has_sink = case
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    sink = torch.randn(Hq) if has_sink else None
    got = hk.attention(q, k, v, window=window, sink=sink, return_lse=True, backend="tvm")
    _check(got, (q, k, v, sink, True, window, Dqk**-0.5), dtype, _id(case))


def test_swa_float16():
    q, k, v = _qkv(1, 8, 2, 70, 70, 64, 32, torch.float16)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, window=20, sink=sink, return_lse=True, backend="tvm")
    _check(got, (q, k, v, sink, True, 20, 64**-0.5), torch.float16, "fp16")


def test_window_above_the_band_kernel_runs_dense(monkeypatch):
    """Windows above SWA_MAX_WINDOW take the dense kernel (here with the limit lowered)."""
    monkeypatch.setattr(launch, "SWA_MAX_WINDOW", 8)
    q, k, v = _qkv(1, 8, 2, 100, 100, 64, 64, torch.float32)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, window=16, sink=sink, return_lse=True, backend="tvm")
    _check(got, (q, k, v, sink, True, 16, 0.125), torch.float32, "dense-window")


def test_band_kernel_equals_dense_kernel():
    q, k, v = _qkv(2, 8, 2, 130, 130, 32, 32, torch.float32)
    sink = torch.randn(8)
    band = launch.attention_fwd(q, k, v, sink, True, 40, 0.2)
    dense = launch._run_dense(q, k, v, sink, True, 40, 0.2)[:2]
    for a, b in zip(band, dense):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_nan_in_v_reaches_exactly_the_queries_that_see_it():
    """NaN in one V element of a key at the band's edge: the queries whose window holds the key
    get NaN in that column, the others are untouched (P = 0 never multiplies it)."""
    q, k, v = _qkv(1, 4, 2, 60, 60, 16, 16, torch.float32)
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


def test_nan_in_a_masked_key_never_reaches_a_query():
    q, k, v = _qkv(1, 2, 1, 40, 40, 16, 16, torch.float32)
    k2, v2 = k.clone(), v.clone()
    k2[0, 0, 5] = float("nan")
    v2[0, 0, 5] = float("nan")
    out, lse = hk.attention(q, k2, v2, window=4, return_lse=True, backend="tvm")
    clean, clean_lse = hk.attention(q, k, v, window=4, return_lse=True, backend="tvm")
    far = torch.ones(40, dtype=torch.bool)
    far[5:9] = False  # queries 5..8 see key 5
    assert torch.equal(out[:, :, far], clean[:, :, far]) and torch.equal(lse[:, :, far], clean_lse[:, :, far])
    assert torch.isnan(out[:, :, ~far]).all()
