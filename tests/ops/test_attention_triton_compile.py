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
