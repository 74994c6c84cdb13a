"""The TVM build cache (hits across calls and processes, corrupt entries rebuilt, keys that
separate specialisations), the llvm target, and the CUDA source the kernels emit (compiled with
nvcc where there is one)."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk

from backend_params import requires
from tvm_helpers import _tvm_qkv


# ---------------------------------------------------------------- TVM (CPU, llvm)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    from hysparse_kernels.backends import tvm as btvm

    monkeypatch.setenv("HYSPARSE_CACHE", str(tmp_path))
    btvm.clear_memory_cache()
    yield btvm
    btvm.clear_memory_cache()


def _small_call():
    q, k, v = _tvm_qkv(1, 2, 1, 9, 9, 16, 16, torch.float32)
    return hk.attention_decode(q[:, :, -1:], k, v, torch.tensor([9], dtype=torch.int32), backend="tvm"), (q, k, v)


@requires("tvm")
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


@requires("tvm")
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


@requires("tvm")
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


@requires("tvm")
def test_cache_key_separates_specialisations(fresh_cache):
    q, k, v = _tvm_qkv(1, 4, 2, 20, 20, 32, 32, torch.float32)
    hk.attention(q, k, v, backend="tvm")
    hk.attention(q, k, v, window=4, backend="tvm")
    hk.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend="tvm")
    hk.attention(q, k, v, backend="tvm")
    st = fresh_cache.cache_stats()
    assert st["builds"] == 3 and st["memory_hits"] == 1


@requires("tvm")
def test_target_is_json_llvm():
    from hysparse_kernels.backends.tvm import cpu_target, cpu_target_spec

    spec = cpu_target_spec()
    assert spec["kind"] == "llvm"
    assert cpu_target().kind.name == "llvm"


def _nvcc_or_skip():
    from hysparse_kernels.ops.attention.tvm.cuda import nvcc_path

    if nvcc_path() is None:
        pytest.skip("nvcc not found on PATH or under $CUDA_HOME/bin: the emitted CUDA cannot be compiled here")


@requires("tvm")
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


@requires("tvm")
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
