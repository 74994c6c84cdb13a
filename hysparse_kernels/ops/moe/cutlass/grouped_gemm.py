"""CUTLASS backend of the MoE family: the grouped GEMM ``y[seg e] = x_sorted[seg e] @ w[e].T``.

The kernel is emitted by ``cutlass_cppgen`` (package ``nvidia-cutlass``): a ``GemmGrouped`` with
device-side scheduling (one launch for all experts; a persistent grid walks the problems). We add
a small C entry point (``hk_grouped_gemm``) that fills ``GemmGrouped::Arguments`` from device
arrays, compile the whole file with nvcc into a shared library and call it with ``ctypes``. No
PyTorch extension build is involved, so the same source compiles on a machine without a GPU
(tests check that) and runs on an sm80/sm90 one.

Layouts: x_sorted ``[M, K]`` row-major is A; ``w[e]`` ``[N, K]`` row-major is B ``[K, N]``
column-major (ld = K), so no transposed copy of the weights is made; y ``[M, N]`` row-major.

Two quirks of ``cutlass_cppgen`` 4.2 are handled here:

* it queries the GPU at import and breaks on cuda-python 13 without one; its module state is set
  by hand (nvcc version, an option registry for the wanted compute capability);
* ``GroupedGemm.construct`` builds operand A's description with B's layout, so the operation is
  constructed here from the same public pieces with A's own layout. Its grouped kernel is an
  sm80-style (``cp.async`` + ``mma.sync``) kernel, which also runs on sm90.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import threading

import torch
from torch import Tensor

_lock = threading.Lock()
_libs: dict[tuple, ctypes.CDLL] = {}

_ELEMENT = {torch.bfloat16: "bf16", torch.float16: "f16"}

_LAUNCHER = r"""
#include "cutlass/gemm/device/gemm_grouped.h"

using HkKernel = KERNEL_NAME;
using HkGemm = cutlass::gemm::device::GemmGrouped<HkKernel>;

// problem_sizes: device GemmCoord[groups]; ptr_*: device arrays of pointers; ld*: device int64.
extern "C" int hk_grouped_gemm(int groups, void* problem_sizes, void* ptr_a, void* ptr_b, void* ptr_c,
                               void* ptr_d, void* lda, void* ldb, void* ldc, void* ldd,
                               int threadblock_count, void* stream) {
  using EA = typename HkGemm::ElementA;
  using EB = typename HkGemm::ElementB;
  using EC = typename HkGemm::ElementC;
  typename HkGemm::EpilogueOutputOp::Params epilogue(1.0f, 0.0f);  // D = A B (alpha 1, beta 0)
  typename HkGemm::Arguments args(
      static_cast<cutlass::gemm::GemmCoord*>(problem_sizes), groups, threadblock_count, epilogue,
      static_cast<EA**>(ptr_a), static_cast<EB**>(ptr_b), static_cast<EC**>(ptr_c), static_cast<EC**>(ptr_d),
      static_cast<int64_t*>(lda), static_cast<int64_t*>(ldb), static_cast<int64_t*>(ldc), static_cast<int64_t*>(ldd));
  HkGemm gemm;
  size_t workspace_bytes = gemm.get_workspace_size(args);  // 0 with device-side scheduling
  void* workspace = nullptr;
  if (workspace_bytes && cudaMalloc(&workspace, workspace_bytes) != cudaSuccess) return 3;
  cutlass::Status status = gemm.initialize(args, workspace, static_cast<cudaStream_t>(stream));
  if (status == cutlass::Status::kSuccess) status = gemm.run(static_cast<cudaStream_t>(stream));
  if (workspace) cudaFree(workspace);
  return status == cutlass::Status::kSuccess ? 0 : 1;
}
"""


def nvcc_path() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None and "CUDA_HOME" in os.environ:
        cand = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        nvcc = cand if os.path.exists(cand) else None
    return nvcc


def _cppgen(cc: int):
    """Import cutlass_cppgen and set the module state it would read from a GPU (slow: ~15 s)."""
    # cutlass_cppgen opens a `compiled_cache.db` in the working directory when first imported:
    # import it from the build cache so it never litters the user's directory.
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(cache)
    try:
        import cutlass_cppgen
        import cutlass_library.generator  # noqa: F401  (OptionRegistry reads it; not imported by the package)
        from cutlass_cppgen.library_defaults import OptionRegistry
    finally:
        os.chdir(cwd)

    if getattr(cutlass_cppgen.this, "_nvcc_version", None) is None:
        cutlass_cppgen.this._nvcc_version = cutlass_cppgen.nvcc_version()
    registry = getattr(cutlass_cppgen.this, "_option_registry", None)
    if registry is None or getattr(registry, "_hk_cc", None) != cc:
        registry = OptionRegistry(cc)
        registry._hk_cc = cc
        cutlass_cppgen.this._option_registry = registry
    return cutlass_cppgen


def include_dirs() -> list[str]:
    import cutlass_library

    root = pathlib.Path(cutlass_library.__file__).parent / "source"
    return [str(root / "include"), str(root / "tools" / "util" / "include")]


def emit_source(element: str = "bf16", cc: int = 80) -> tuple[str, str]:
    """(kernel name, full C++ source) of the grouped GEMM for ``element`` in {bf16, f16}."""
    _cppgen(cc)
    import cutlass_library as cl
    from cutlass_cppgen import op
    from cutlass_cppgen.backend.gemm_operation import GemmOperationGrouped
    from cutlass_cppgen.backend.library import SchedulerMode, TensorDescription
    from cutlass_cppgen.utils import datatypes

    dt = {"bf16": cl.DataType.bf16, "f16": cl.DataType.f16}[element]
    plan = op.GroupedGemm(element=dt, element_accumulator=cl.DataType.f32, layout_A=cl.LayoutType.RowMajor,
                          layout_B=cl.LayoutType.ColumnMajor, layout_C=cl.LayoutType.RowMajor, cc=cc)
    align = 8  # 16-byte vector loads of 16-bit elements: K and N must be multiples of 8
    plan.epilogue_functor = plan._reset_epilogue_functor_alignment(align, plan.epilogue_functor)
    best = plan.possible_operations.operations(align, align, align, plan._math_operation)[0]
    operation = GemmOperationGrouped(
        arch=plan.current_cc, tile_description=datatypes.td_from_profiler_op(best),
        A=TensorDescription(dt, cl.LayoutType.RowMajor, align),
        B=TensorDescription(dt, cl.LayoutType.ColumnMajor, align),
        C=TensorDescription(dt, cl.LayoutType.RowMajor, align),
        epilogue_functor=plan.epilogue_functor, swizzling_functor=plan._swizzling_functor,
        precompute_mode=SchedulerMode.Device,
    )
    name = operation.procedural_name()
    includes = "".join(f'#include "{h}"\n' for h in operation.rt_module.emitter.includes)
    kernel = operation.rt_module.emit()
    return name, includes + kernel + _LAUNCHER.replace("KERNEL_NAME", f"{name}_type")


def compile_source(source: str, out: pathlib.Path, *, arch: str = "sm_80", mode: str = "shared") -> pathlib.Path:
    """nvcc ``source`` into ``out``: ``mode`` "shared" (a loadable library), "object" or "cubin"."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("cutlass backend: nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".cu")
    src.write_text(source)
    flags = {"shared": ["-shared", "-Xcompiler", "-fPIC"], "object": ["-c", "-Xcompiler", "-fPIC"], "cubin": ["-cubin"]}[mode]
    cmd = [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-DNDEBUG", f"-arch={arch}",
           *[f"-I{d}" for d in include_dirs()], *flags, str(src), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cutlass backend: nvcc failed ({' '.join(cmd[:6])} ...):\n{r.stderr[-4000:]}")
    return out


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("HYSPARSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hysparse-kernels")
    return pathlib.Path(base) / "cutlass"


def _library(element: str, device: torch.device) -> ctypes.CDLL:
    major, minor = torch.cuda.get_device_capability(device)
    cc = 80 if major == 8 else 90
    arch = "sm_90a" if major == 9 else f"sm_{major}{minor}"
    key = (element, arch)
    with _lock:
        if key not in _libs:
            name, source = emit_source(element, cc)
            digest = hashlib.sha1(source.encode()).hexdigest()[:12]
            path = _cache_dir() / f"{name}_{arch}_{digest}.so"
            if not path.exists():
                compile_source(source, path, arch=arch, mode="shared")
            lib = ctypes.CDLL(str(path))
            lib.hk_grouped_gemm.restype = ctypes.c_int
            lib.hk_grouped_gemm.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 9 + [ctypes.c_int, ctypes.c_void_p]
            _libs[key] = lib
    return _libs[key]


def grouped_gemm(x_sorted: Tensor, w: Tensor, expert_offsets: Tensor) -> Tensor:
    """y[r] = x_sorted[r] @ w[e].T per expert segment: ``[M, N]`` (see ``api.grouped_gemm``).

    16-bit operands with 16-byte aligned rows only (``accepts_grouped_gemm``); dispatch runs other
    inputs on the next backend of the auto order."""
    M, K = x_sorted.shape
    E, N, _ = w.shape
    y = torch.zeros(M, N, dtype=x_sorted.dtype, device=x_sorted.device)
    counts = (expert_offsets[1:] - expert_offsets[:-1]).cpu()
    experts = torch.nonzero(counts).flatten()  # empty experts are not launched
    if experts.numel() == 0:
        return y
    dev = x_sorted.device
    starts = expert_offsets[:-1].cpu()[experts]
    g = experts.numel()
    sizes = torch.stack([counts[experts], torch.full((g,), N), torch.full((g,), K)], 1).to(torch.int32)
    esize = x_sorted.element_size()
    ptr_a = x_sorted.data_ptr() + starts * K * esize
    ptr_b = w.data_ptr() + experts * N * K * esize
    ptr_d = y.data_ptr() + starts * N * esize
    i64 = lambda t: t.to(torch.int64).to(dev)  # noqa: E731
    args = [sizes.to(dev), i64(ptr_a), i64(ptr_b), i64(ptr_d), i64(ptr_d),
            i64(torch.full((g,), K)), i64(torch.full((g,), K)), i64(torch.full((g,), N)), i64(torch.full((g,), N))]
    lib = _library(_ELEMENT[x_sorted.dtype], dev)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    stream = torch.cuda.current_stream(dev).cuda_stream
    rc = lib.hk_grouped_gemm(g, *[a.data_ptr() for a in args], sms * 2, stream)
    if rc:
        raise RuntimeError(f"cutlass grouped GEMM failed (status {rc})")
    return y


def accepts_grouped_gemm(x_sorted: Tensor, w: Tensor, expert_offsets: Tensor) -> bool:
    """The tensor-core kernel takes rows of 16-byte multiples: ``K % 8 == 0`` and ``N % 8 == 0``."""
    return x_sorted.shape[1] % 8 == 0 and w.shape[1] % 8 == 0
