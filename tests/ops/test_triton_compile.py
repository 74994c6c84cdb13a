"""Compile the Triton attention kernels for sm_80 and sm_90 without a GPU (catches what the
interpreter cannot: layouts, shared memory over budget, unsupported ops), and check that the
sm_90 attention forward uses Hopper's warpgroup MMA (``wgmma``).

Compilation runs in a subprocess with ``TRITON_INTERPRET=0``: under the interpreter,
``@triton.jit`` builds functions that cannot be lowered."""

import json
import os
import subprocess
import sys

import pytest

from backend_params import requires

pytest.importorskip("triton")


def _compile(*args):
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, "-m", "hysparse_kernels.ops.attention.triton.compile_check", "--json", *args],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert records, f"no kernel compiled:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    failed = [r for r in records if not r["ok"]]
    assert not failed, "\n".join(f"sm_{r['arch']} {r['kernel']}: {r['error']}" for r in failed)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return records


def _check(records, archs):
    kernels = {r["kernel"] for r in records}
    assert {r["arch"] for r in records} == set(archs)
    for r in records:
        assert r["cubin_bytes"] > 0
        if r["kernel"].startswith("attn_fwd") and r["arch"] == 90:
            assert r["wgmma"], f"sm_90 PTX of {r['kernel']} has no wgmma"
        if r["kernel"].startswith("attn_fwd") and r["arch"] == 80:
            assert r["mma"], f"sm_80 PTX of {r['kernel']} has no mma.sync"
    return kernels


def test_every_kernel_compiles_for_sm90_and_forward_for_sm80():
    """One shipped config of every kernel for sm_90 (forward with window, sink and block scores;
    backward dq and dk/dv; sparse forward/decode and backward; split-KV decode and its merge;
    top-k) and the forward for sm_80. All configs of all kernels on both: the slow test below."""
    kernels = _check(_compile("90", "--quick"), (90,))
    prefixes = ("attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv", "sparse_fwd", "sparse_bwd", "decode_split",
                "decode_combine", "topk_blocks")
    for p in prefixes:
        assert any(k.startswith(p) for k in kernels), f"{p} was not compiled"
    _check(_compile("80", "--quick", "--only", "attn_fwd"), (80,))


@pytest.mark.slow
def test_all_shipped_configs_compile_for_sm80_and_sm90():
    _check(_compile("90", "80"), (90, 80))


# ---------------------------------------------------------------- MoE kernels (sm_80 / sm_90 PTX)


_MOE_COMPILE_SCRIPT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hysparse_kernels.ops.moe.triton import moe as fused, route as routing

common = {"p_blk_e": "*i32", "p_blk_start": "*i32", "p_blk_end": "*i32"}
kernels = [
    (fused._moe_gate_up_kernel,
     {"p_x": "*bf16", "p_rowtok": "*i32", "p_w": "*bf16", "p_h": "*bf16", **common, "INTER": "i32", "K": "i32",
      "stride_x": "i32", "stride_we": "i32", "stride_wn": "i32", "stride_h": "i32"},
     {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "DOT_F32": False, "ACC": tl.float32}, "mma"),
    (fused._grouped_gemm_kernel,
     {"p_x": "*bf16", "p_rowsrc": "*i32", "p_w": "*bf16", "p_y": "*fp32", "p_scale": "*fp32", "p_rowdst": "*i32",
      **common, "N": "i32", "K": "i32", "stride_x": "i32", "stride_we": "i32", "stride_wn": "i32", "stride_y": "i32"},
     {"GATHER": False, "SCALE": True, "SCATTER": True, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64,
      "DOT_F32": False, "ACC": tl.float32}, "mma"),
    (routing._route_kernel,
     {"p_logits": "*fp32", "p_bias": "*fp32", "p_w": "*fp32", "p_ids": "*i32", "T": "i32", "E": "i32",
      "stride_l": "i32", "scaling": "fp32"},
     {"TOP_K": 8, "K_P2": 8, "SIGMOID": True, "HAS_BIAS": True, "N_GROUP": 8, "TOPK_GROUP": 4, "RENORM": True,
      "BLOCK_T": 16, "BLOCK_E": 256, "ACC": tl.float32}, None),
]
import sys
which = sys.argv[1]
for fn, sig, const, needle in (kernels[:2] if which == "gemm" else kernels[2:]):
    for cc in (80, 90):
        k = triton.compile(ASTSource(fn, {**sig, **{c: "constexpr" for c in const}}, const), target=GPUTarget("cuda", cc, 32))
        ptx = k.asm["ptx"]
        assert needle is None or needle in ptx, (fn.__name__, cc, "no tensor-core mma in the PTX")
        print(fn.__name__, cc, len(k.asm["cubin"]))
"""


def _compile_moe(which: str, expected_lines: int):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _MOE_COMPILE_SCRIPT, which], env=env, capture_output=True, text=True, timeout=900)
    if r.returncode and ("ptxas" in r.stderr and "not found" in r.stderr):
        pytest.skip(f"triton cannot compile for CUDA here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("\n") == expected_lines, r.stdout


@requires("triton", usable=True)
def test_gemm_kernels_compile_for_sm80_and_sm90():
    """Compile-only, no GPU: the fused GEMM kernels lower to PTX and a cubin for sm_80 and sm_90
    with tensor-core mma (catching layout and shared-memory errors the interpreter cannot see).
    Runs in a subprocess: compiling needs triton without TRITON_INTERPRET (about 10 s)."""
    _compile_moe("gemm", 4)


@requires("triton", usable=True)
@pytest.mark.slow
def test_route_kernel_compiles_for_sm80_and_sm90():
    """Compile-only: the routing kernel at MiMo-V2-Flash shape (E = 256, 8 groups); minutes here."""
    _compile_moe("route", 2)
