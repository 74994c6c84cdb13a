"""TVM backend (CPU, llvm) against the float64 reference: prefill (full, SWA, sink), block
scores, sparse attention, decode; the build cache; CUDA source emitted and compiled with nvcc.

Tolerance (hysparse_kernels.testing): fp32 within a small atol of the float64 reference; bf16
within 2x the error of the reference itself run in bf16, plus a small atol.
"""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'hysparse-kernels[tvm]')")

import hysparse_kernels as hk  # noqa: E402
from hysparse_kernels.ops.attention import reference as ref  # noqa: E402
from hysparse_kernels.testing import assert_close_to_reference  # noqa: E402

ATOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype):
    q = torch.randn(B, Hq, Sq, Dqk)
    k = torch.randn(B, Hkv, Sk, Dqk)
    v = torch.randn(B, Hkv, Sk, Dv)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _check(name, got, ref_fn, args, dtype):
    """Compare every output of `got` with ref_fn in float64 (and in bf16 for the baseline error)."""
    want = ref_fn(*[a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args])
    low = None
    if dtype != torch.float32:
        low = ref_fn(*args, compute_dtype=dtype)
    for i, (g, w) in enumerate(zip(got, want)):
        lw = low[i] if low is not None else None
        if i == 1:  # lse: fp32 statistics in every backend; the bf16 rounding enters through q, k
            lw = None if dtype == torch.float32 else lw
        assert_close_to_reference(g, w, lw, atol=ATOL[dtype], name=f"{name}[{i}]")


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


def _id(case):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, w, s = case
    return f"B{B}-H{Hq}x{Hkv}-S{Sq}x{Sk}-D{Dqk}x{Dv}" + (f"-W{w}" if w else "") + ("-sink" if s else "")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", PREFILL, ids=[_id(c) for c in PREFILL])
def test_prefill_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, window, has_sink = case
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    sink = torch.randn(Hq) if has_sink else None
    scale = Dqk**-0.5
    got = hk.attention(q, k, v, window=window, sink=sink, return_lse=True, backend="tvm")
    _check("attention", got, ref.attention_fwd, (q, k, v, sink, True, window, scale), dtype)


def test_float16_prefill_and_decode():
    q, k, v = _qkv(1, 8, 2, 70, 70, 64, 32, torch.float16)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, window=16, sink=sink, return_lse=True, backend="tvm")
    _check("fp16", got, ref.attention_fwd, (q, k, v, sink, True, 16, 64**-0.5), torch.float16)
    lens = torch.tensor([70], dtype=torch.int32)
    step = hk.attention_decode(q[:, :, -1:], k, v, lens, window=16, sink=sink, return_lse=True, backend="tvm")
    _check("fp16-decode", step, ref.attention_decode, (q[:, :, -1:], k, v, lens, sink, 16, 64**-0.5), torch.float16)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_long_kv_tiles(monkeypatch, causal):
    """The 128-key tiles of long prefill, exercised on a short sequence."""
    from hysparse_kernels.ops.attention.tvm import launch

    monkeypatch.setattr(launch, "LONG_KV", 64)
    q, k, v = _qkv(1, 8, 2, 100, 257, 64, 32, torch.float32)
    sink = torch.randn(8)
    got = hk.attention(q, k, v, causal=causal, sink=sink, return_lse=True, backend="tvm")
    _check("long-tiles", got, ref.attention_fwd, (q, k, v, sink, causal, None, 64**-0.5), torch.float32)


def test_non_causal_and_no_visible_key():
    q, k, v = _qkv(1, 4, 2, 70, 90, 64, 48, torch.float32)
    got = hk.attention(q, k, v, causal=False, return_lse=True, backend="tvm")
    _check("non-causal", got, ref.attention_fwd, (q, k, v, None, False, None, 64**-0.5), torch.float32)
    # Sq > Sk without a sink: the first queries see no key -> out 0, lse -inf
    q, k, v = _qkv(1, 2, 1, 20, 5, 32, 32, torch.float32)
    out, lse = hk.attention(q, k, v, return_lse=True, backend="tvm")
    assert torch.all(out[:, :, :15] == 0) and torch.all(torch.isneginf(lse[:, :, :15]))
    assert torch.isfinite(lse[:, :, 15:]).all()


def test_float64_goes_to_the_reference_and_tvm_refuses_it_by_name():
    from hysparse_kernels import dispatch

    q, k, v = _qkv(1, 4, 2, 33, 33, 32, 32, torch.float64)
    sink = torch.randn(4, dtype=torch.float64)
    got = hk.attention(q, k, v, sink=sink, window=8)  # auto: the TVM kernels are single precision
    want = hk.attention(q, k, v, sink=sink, window=8, backend="reference")
    assert got.dtype == torch.float64 and torch.equal(got, want)
    with pytest.raises(dispatch.BackendUnavailableError, match="kernels take"):
        hk.attention(q, k, v, sink=sink, window=8, backend="tvm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [(1, 8, 2, 100, 100, 64, 64, 64), (1, 4, 1, 37, 130, 64, 32, 16), (2, 4, 4, 65, 65, 32, 32, 32)],
                         ids=["S100-bs64", "S37x130-bs16", "B2-S65-bs32"])
def test_block_scores_match_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, bs = case
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    got = hk.attention_with_block_scores(q, k, v, block_size=bs, backend="tvm")
    _check("block_scores", got, ref.attention_with_block_scores, (q, k, v, bs, True, Dqk**-0.5), dtype)


def _indices(B, Hkv, Sq, Sk, bs, kk, dup=True):
    """Random visible blocks per query, -1 padding, and (dup) some blocks listed twice."""
    nvis = ref.visible_blocks(Sq, Sk, bs)
    idx = torch.full((B, Hkv, Sq, kk), -1, dtype=torch.int32)
    for i in range(Sq):
        n = int(nvis[i])
        for b in range(B):
            for h in range(Hkv):
                sel = torch.randperm(max(n, 1))[: min(kk, n)] if n else torch.tensor([], dtype=torch.long)
                idx[b, h, i, : len(sel)] = sel.int()
    if dup and kk >= 3:
        idx[..., -1] = torch.where(idx[..., 0] >= 0, idx[..., 0], idx[..., -1])
    return idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [(1, 8, 2, 100, 100, 64, 64, 16, 4, True), (2, 4, 1, 7, 257, 192, 128, 64, 3, False),
                                  (1, 4, 4, 130, 130, 32, 32, 32, 5, True)],
                         ids=["S100-bs16-k4-sink", "S7x257-D192x128-bs64-k3", "S130-bs32-k5-sink"])
def test_sparse_matches_reference(case, dtype):
    B, Hq, Hkv, Sq, Sk, Dqk, Dv, bs, kk, has_sink = case
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, Dqk, Dv, dtype)
    idx = _indices(B, Hkv, Sq, Sk, bs, kk)
    sink = torch.randn(Hq) if has_sink else None
    got = hk.sparse_attention(q, k, v, idx, block_size=bs, sink=sink, return_lse=True, backend="tvm")
    _check("sparse", got, ref.sparse_attention_fwd, (q, k, v, idx, bs, sink, Dqk**-0.5), dtype)


def test_sparse_with_all_blocks_equals_full_causal():
    q, k, v = _qkv(1, 4, 2, 65, 65, 32, 32, torch.float32)
    nb = 5  # ceil(65 / 16)
    idx = torch.arange(nb, dtype=torch.int32).expand(1, 2, 65, nb).contiguous()
    got = hk.sparse_attention(q, k, v, idx, block_size=16, backend="tvm")
    want = hk.attention(q, k, v, backend="tvm")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window,has_sink,sq", [(None, False, 1), (16, True, 1), (None, True, 3)], ids=["full", "W16-sink", "Sq3-sink"])
def test_decode_matches_reference(window, has_sink, sq, dtype):
    B, Hq, Hkv, Smax, D = 3, 8, 2, 130, 64
    q, k, v = _qkv(B, Hq, Hkv, sq, Smax, D, D, dtype)
    lens = torch.tensor([130, 65, 7], dtype=torch.int32)
    sink = torch.randn(Hq) if has_sink else None
    got = hk.attention_decode(q, k, v, lens, window=window, sink=sink, return_lse=True, backend="tvm")
    _check("decode", got, ref.attention_decode, (q, k, v, lens, sink, window, D**-0.5), dtype)


def test_decode_equals_last_rows_of_prefill():
    q, k, v = _qkv(1, 8, 2, 100, 100, 64, 64, torch.float32)
    sink = torch.randn(8)
    full = hk.attention(q, k, v, window=16, sink=sink, backend="tvm")
    lens = torch.tensor([100], dtype=torch.int32)
    step = hk.attention_decode(q[:, :, -1:], k, v, lens, window=16, sink=sink, backend="tvm")
    torch.testing.assert_close(step, full[:, :, -1:], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sparse_decode_matches_reference(dtype):
    B, Hq, Hkv, Smax, D, bs = 2, 8, 2, 200, 64, 32
    q, k, v = _qkv(B, Hq, Hkv, 1, Smax, D, D, dtype)
    lens = torch.tensor([200, 90], dtype=torch.int32)
    idx = torch.empty(B, Hkv, 1, 4, dtype=torch.int32)
    idx[0, 0, 0] = torch.tensor([0, 3, -1, 5])
    idx[0, 1, 0] = torch.tensor([6, 6, 1, -1])  # a block listed twice counts once
    idx[1, :, 0] = torch.tensor([2, 0, -1, 1])  # length 90: block 2 holds the query
    sink = torch.randn(Hq)
    got = hk.sparse_attention_decode(q, k, v, lens, idx, block_size=bs, sink=sink, return_lse=True, backend="tvm")
    _check("sparse_decode", got, ref.sparse_attention_decode, (q, k, v, lens, idx, bs, sink, D**-0.5), dtype)


def test_auto_picks_tvm_on_cpu():
    from hysparse_kernels import dispatch

    for op in ("attention_fwd", "attention_with_block_scores", "sparse_attention_fwd", "attention_decode", "sparse_attention_decode"):
        assert dispatch.resolve(op, "cpu") == "tvm"


# ---------------------------------------------------------------- build cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    from hysparse_kernels.backends import tvm as btvm

    monkeypatch.setenv("HYSPARSE_CACHE", str(tmp_path))
    btvm.clear_memory_cache()
    yield btvm
    btvm.clear_memory_cache()


def _small_call():
    q, k, v = _qkv(1, 2, 1, 9, 9, 16, 16, torch.float32)
    return hk.attention_decode(q[:, :, -1:], k, v, torch.tensor([9], dtype=torch.int32), backend="tvm"), (q, k, v)


def test_cache_second_build_is_a_hit(fresh_cache):
    out1, _ = _small_call()
    assert fresh_cache.cache_stats()["builds"] == 1
    files = list(fresh_cache.cache_dir().glob("*.so"))
    assert len(files) == 1 and files[0].with_suffix(".json").exists()
    _small_call()
    assert fresh_cache.cache_stats()["memory_hits"] == 1
    fresh_cache.clear_memory_cache()  # as a new process would: only the disk entry is left
    out2, _ = _small_call()
    st = fresh_cache.cache_stats()
    assert st["disk_hits"] == 1 and st["builds"] == 0
    assert not list(fresh_cache.cache_dir().glob("*.tmp")) and len(list(fresh_cache.cache_dir().glob("*.so"))) == 1


@pytest.mark.slow  # a fresh interpreter importing torch and tvm: 5-15 s on two shared cores
def test_cache_hit_in_a_second_process(fresh_cache):
    import subprocess
    import sys

    _small_call()
    code = (
        "import torch, hysparse_kernels as hk\n"
        "from hysparse_kernels.backends import tvm as b\n"
        "q = torch.randn(1, 2, 1, 16); k = v = torch.randn(1, 1, 9, 16)\n"
        "hk.attention_decode(q, k, v, torch.tensor([9], dtype=torch.int32), backend='tvm')\n"
        "print(b.cache_stats())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'disk_hits': 1" in res.stdout and "'builds': 0" in res.stdout, res.stdout


def test_corrupt_cache_entry_is_rebuilt_with_a_warning(fresh_cache):
    from hysparse_kernels.backends.tvm.cache import TVMCacheWarning

    out1, (q, k, v) = _small_call()
    (path,) = fresh_cache.cache_dir().glob("*.so")
    # A new inode (write + rename): this process still maps the old library, and rewriting a
    # mapped file in place would crash it before the cache could even look.
    bad = path.with_name("corrupt.tmp")
    bad.write_bytes(b"\x7fELF truncated")
    bad.replace(path)
    fresh_cache.clear_memory_cache()
    with pytest.warns(TVMCacheWarning, match="unusable"):
        out2 = hk.attention_decode(q[:, :, -1:], k, v, torch.tensor([9], dtype=torch.int32), backend="tvm")
    st = fresh_cache.cache_stats()
    assert st["rebuilt_corrupt"] == 1 and st["builds"] == 1
    torch.testing.assert_close(out2, out1, rtol=0, atol=0)
    fresh_cache.clear_memory_cache()
    _small_call()  # the rebuilt file loads again
    assert fresh_cache.cache_stats()["disk_hits"] == 1


def test_cache_key_separates_specialisations(fresh_cache):
    q, k, v = _qkv(1, 4, 2, 20, 20, 32, 32, torch.float32)
    hk.attention(q, k, v, backend="tvm")
    hk.attention(q, k, v, window=4, backend="tvm")
    hk.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend="tvm")
    hk.attention(q, k, v, backend="tvm")
    st = fresh_cache.cache_stats()
    assert st["builds"] == 3 and st["memory_hits"] == 1


def test_target_is_json_llvm():
    from hysparse_kernels.backends.tvm import cpu_target, cpu_target_spec

    spec = cpu_target_spec()
    assert spec["kind"] == "llvm"
    assert cpu_target().kind.name == "llvm"


# ---------------------------------------------------------------- CUDA source, compiled with nvcc


def _nvcc_or_skip():
    from hysparse_kernels.ops.attention.tvm.cuda import nvcc_path

    if nvcc_path() is None:
        pytest.skip("nvcc not found on PATH or under $CUDA_HOME/bin: the emitted CUDA cannot be compiled here")


@pytest.mark.parametrize("kernel,arch", [("rows", "sm_80"), ("dense", "sm_90a")], ids=["sparse-decode-sm80", "prefill-swa-sink-sm90"])
def test_emitted_cuda_compiles_with_nvcc(kernel, arch):
    _nvcc_or_skip()
    from hysparse_kernels.ops.attention.tvm.cuda import compile_cuda, emit_cuda

    params = {
        "rows": dict(dqk=128, dv=128, group=4, bn=64, dtype="bfloat16", sparse=True, has_window=False, has_sink=True),
        "dense": dict(dqk=192, dv=128, group=4, bm=16, bn=64, dtype="bfloat16", causal=True, has_window=True,
                      has_sink=True, block_scores=False),
    }[kernel]
    src = emit_cuda(kernel, arch=arch, **params)
    assert "__global__" in src and "blockIdx.x" in src
    cubin = compile_cuda(src, arch=arch)
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 1000


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("kernel", ["rows-decode", "dense-block-scores"])
def test_emitted_cuda_compiles_every_variant(kernel, arch):
    _nvcc_or_skip()
    from hysparse_kernels.ops.attention.tvm.cuda import compile_cuda, emit_cuda

    if kernel == "rows-decode":
        src = emit_cuda("rows", arch=arch, dqk=64, dv=64, group=8, bn=64, dtype="float32", sparse=False,
                        has_window=True, has_sink=True)
    else:
        src = emit_cuda("dense", arch=arch, dqk=128, dv=128, group=1, bm=64, bn=64, dtype="float32", causal=True,
                        has_window=False, has_sink=False, block_scores=True)
    assert compile_cuda(src, arch=arch)[:4] == b"\x7fELF"


# ---------------------------------------------------------------- torch.library integration


def test_opcheck_with_tvm_backend():
    q, k, v = _qkv(1, 4, 2, 20, 20, 32, 16, torch.float32)
    sink = torch.randn(4)
    idx = _indices(1, 2, 20, 20, 8, 2)
    lens = torch.tensor([20], dtype=torch.int32)
    torch.library.opcheck(torch.ops.hysparse.attention_fwd, (q, k, v, sink, True, 8, 0.2, "tvm"))
    torch.library.opcheck(torch.ops.hysparse.sparse_attention_fwd, (q, k, v, idx, 8, None, 0.2, "tvm"))
    torch.library.opcheck(torch.ops.hysparse.attention_decode, (q[:, :, -1:], k, v, lens, sink, None, 0.2, "tvm"),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_matches_eager():
    q, k, v = _qkv(1, 4, 2, 33, 33, 32, 32, torch.float32)
    sink = torch.randn(4)

    def fn(q, k, v, s):
        return hk.attention(q, k, v, window=8, sink=s, backend="tvm") * 2

    eager = fn(q, k, v, sink)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v, sink)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
