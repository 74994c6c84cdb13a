"""``attention_decode`` (decode / verification steps over a padded cache) on every backend
against the reference and against the last rows of the prefill."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.ops.attention import reference as ref

from attention_helpers import _qkv
from backend_params import requires
from triton_helpers import DTYPES, DTYPE_IDS, R, check, f64, lowp, padded_cache
from tvm_helpers import _check, _tvm_qkv


# ---------------------------------------------------------------- reference (float64 formulas)


@pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")
@pytest.mark.parametrize("window,sink", [(None, False), (5, True)], ids=["full", "swa5-sink"])
def test_decode_matches_prefill(window, sink):
    B, Hq, Hkv, Smax, D = 3, 4, 2, 40, 16
    q, k, v = _qkv(B, Hq, Hkv, Smax, Smax, D, D)
    s = torch.randn(Hq, dtype=torch.float64) if sink else None
    lens = torch.tensor([40, 17, 3], dtype=torch.int32)
    for Sq in (1, 3):
        dq = torch.stack([q[b, :, int(lens[b]) - Sq:int(lens[b])] for b in range(B)])
        out = hk.attention_decode(dq, k, v, lens, window=window, sink=s, backend="reference")
        for b in range(B):
            L = int(lens[b])
            pre = hk.attention(q[b:b + 1, :, :L], k[b:b + 1, :, :L], v[b:b + 1, :, :L], window=window, sink=s, backend="reference")
            torch.testing.assert_close(out[b:b + 1], pre[:, :, L - Sq:], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- TVM (CPU, llvm)


@requires("tvm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window,has_sink,sq", [(None, False, 1), (16, True, 1), (None, True, 3)], ids=["full", "W16-sink", "Sq3-sink"])
def test_decode_matches_reference(window, has_sink, sq, dtype):
    B, Hq, Hkv, Smax, D = 3, 8, 2, 130, 64
    q, k, v = _tvm_qkv(B, Hq, Hkv, sq, Smax, D, D, dtype)
    lens = torch.tensor([130, 65, 7], dtype=torch.int32)
    sink = torch.randn(Hq) if has_sink else None
    got = hk.attention_decode(q, k, v, lens, window=window, sink=sink, return_lse=True, backend="tvm")
    _check("decode", got, ref.attention_decode, (q, k, v, lens, sink, window, D**-0.5), dtype)


@requires("tvm")
def test_decode_equals_last_rows_of_prefill():
    q, k, v = _tvm_qkv(1, 8, 2, 100, 100, 64, 64, torch.float32)
    sink = torch.randn(8)
    full = hk.attention(q, k, v, window=16, sink=sink, backend="tvm")
    lens = torch.tensor([100], dtype=torch.int32)
    step = hk.attention_decode(q[:, :, -1:], k, v, lens, window=16, sink=sink, backend="tvm")
    torch.testing.assert_close(step, full[:, :, -1:], atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- Triton (interpreter without a GPU)


@pytest.mark.parametrize("Sq", [1, 3], ids=["Sq1", "Sq3-draft2"])
@pytest.mark.parametrize("window,with_sink", [(None, False), (16, True)], ids=["full", "W16-sink"])
def test_decode_equals_prefill(Sq, window, with_sink):
    B, Hq, Hkv, Smax, D = 2, 4, 2, 100, 32
    lens = torch.tensor([100, 37])
    q = torch.randn(B, Hq, Sq, D)
    k_cache, v_cache = padded_cache(B, Hkv, Smax, D), padded_cache(B, Hkv, Smax, D)
    sink = torch.randn(Hq) if with_sink else None
    out, lse = hk.attention_decode(q, k_cache, v_cache, lens, window=window, sink=sink, return_lse=True, backend="triton")
    for b in range(B):
        L = int(lens[b])
        pre_out, pre_lse = hk.attention(q[b:b + 1], k_cache[b:b + 1, :, :L], v_cache[b:b + 1, :, :L], window=window,
                                        sink=sink, return_lse=True, backend="triton")
        torch.testing.assert_close(out[b:b + 1], pre_out, atol=2e-6, rtol=0)
        torch.testing.assert_close(lse[b:b + 1], pre_lse, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype,atol", DTYPES, ids=DTYPE_IDS)
def test_decode_matches_reference_dqk192_dv128(dtype, atol):
    B, Hq, Hkv, Sq, Smax = 3, 4, 1, 2, 130
    q = torch.randn(B, Hq, Sq, 192).to(dtype)
    k_cache, v_cache = torch.randn(B, Hkv, Smax, 192).to(dtype), torch.randn(B, Hkv, Smax, 128).to(dtype)
    lens, sink = torch.tensor([130, 65, 2]), torch.randn(Hq)
    out, lse = hk.attention_decode(q, k_cache, v_cache, lens, sink=sink, return_lse=True, backend="triton")
    ref = R.attention_decode(*f64(q, k_cache, v_cache), lens, sink.double(), None, 192**-0.5)
    low = R.attention_decode(q, k_cache, v_cache, lens, sink, None, 192**-0.5, compute_dtype=lowp(dtype))
    check(out, ref[0], low[0], dtype, atol, "out")
    check(lse, ref[1], low[1], dtype, atol, "lse")
