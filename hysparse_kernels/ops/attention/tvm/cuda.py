"""CUDA source emitted from the same TensorIR kernel builders (compile-only on machines without a GPU).

``emit_cuda`` builds a kernel for a ``{"kind": "cuda", "arch": ...}`` target and returns the CUDA
C++ that TVM generated; :func:`compile_cuda` turns it into a cubin with nvcc. The CUDA variant
keeps the CPU algorithm (one task per thread block, scratch in thread-local memory): it checks
that the kernels lower to valid CUDA for sm_80 / sm_90, it is not a tuned GPU schedule.

Example::

    src = emit_cuda("rows", arch="sm_90a", dqk=128, dv=128, group=4, bn=64, dtype="bfloat16",
                    sparse=True, has_window=False, has_sink=True)
    cubin = compile_cuda(src, arch="sm_90a")
"""

from __future__ import annotations

import contextlib
import os
import shutil


@contextlib.contextmanager
def _nvcc_callback(arch: str):
    """Let TVM's build compile the emitted CUDA with nvcc for ``arch``.

    TVM compiles CUDA while building through the global ``tvm_callback_cuda_compile`` (nvrtc by
    default, which minimal toolkits lack, and it looks for a GPU to learn the arch). The callback
    is swapped for one that runs nvcc for the requested arch, and restored afterwards.
    """
    import tvm_ffi
    from tvm.support import nvcc

    name = "tvm_callback_cuda_compile"
    old = tvm_ffi.get_global_func(name, allow_missing=True)

    from ....backends.tvm import cuda_target

    def _compile(code):
        with cuda_target(arch):  # nvcc's flags are read from the current target
            return nvcc.compile_cuda(code, target_format="fatbin", arch=arch, compiler="nvcc")

    tvm_ffi.register_global_func(name, _compile, override=True)
    try:
        yield
    finally:
        if old is not None:
            tvm_ffi.register_global_func(name, old, override=True)


def nvcc_path() -> str | None:
    """nvcc on PATH or under ``$CUDA_HOME/bin``, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = os.path.join(home, "bin", "nvcc") if home else None
    return cand if cand and os.path.exists(cand) else None


def emit_cuda(kernel: str, *, arch: str = "sm_90a", **params) -> str:
    """CUDA source of ``kernel`` (``"dense"`` or ``"rows"``) with the builder's ``params``."""
    import tvm

    from ....backends.tvm import cuda_target
    from .attention import build_dense
    from .sparse_attention import build_rows

    builders = {"dense": build_dense, "rows": build_rows}
    if kernel not in builders:
        raise ValueError(f"kernel: expected one of {sorted(builders)}, got {kernel!r}")
    mod = builders[kernel](target_kind="cuda", **params)
    if nvcc_path() is None:
        raise RuntimeError("nvcc not found on PATH or under $CUDA_HOME/bin: cannot build CUDA")
    with _nvcc_callback(arch):
        lib = tvm.tirx.build(mod, target=cuda_target(arch))
    return lib.imports[0].inspect_source()


def compile_cuda(source: str, *, arch: str = "sm_90a") -> bytes:
    """Compile emitted CUDA source to a cubin for ``arch`` with nvcc (raises if nvcc is missing)."""
    from tvm.support import nvcc

    from ....backends.tvm import cuda_target

    if nvcc_path() is None:
        raise RuntimeError("nvcc not found on PATH or under $CUDA_HOME/bin: cannot compile CUDA")
    with cuda_target(arch):  # nvcc's flags are read from the current target
        return bytes(nvcc.compile_cuda(source, target_format="cubin", arch=arch, compiler="nvcc"))
