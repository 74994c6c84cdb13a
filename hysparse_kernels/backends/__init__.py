"""Backend plumbing: which backends are installed, and why not when they are not.

Nothing here imports an optional backend at module import time; ``status()`` only looks the
packages up (``importlib.util.find_spec``), so ``import hysparse_kernels`` stays light.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache

import torch

BACKENDS = ("reference", "triton", "tvm", "cutlass")

# Which package provides each optional backend, and how to get it.
_PACKAGES = {
    "triton": ("triton", "triton", "hysparse-kernels[triton]"),
    "tvm": ("tvm", "apache-tvm", "hysparse-kernels[tvm]"),
    "cutlass": ("cutlass_cppgen", "nvidia-cutlass", "hysparse-kernels[cutlass]"),
}


@dataclass(frozen=True)
class BackendStatus:
    name: str
    installed: bool
    version: str | None
    devices: tuple[str, ...]  # device types it can run on here ("cpu", "cuda")
    reason: str  # why it cannot run (empty when it can), or a remark on how it runs

    @property
    def usable(self) -> bool:
        return self.installed and bool(self.devices)


def triton_interpreted() -> bool:
    """Triton runs kernels on numpy when TRITON_INTERPRET=1 (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@lru_cache(maxsize=None)  # importlib.metadata reads the disk: about 1 ms per op call otherwise
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def status(name: str) -> BackendStatus:
    """Report whether backend ``name`` is installed and on which device types it can run."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    cuda = torch.cuda.is_available()
    if name == "reference":
        devices = ("cpu", "cuda") if cuda else ("cpu",)
        return BackendStatus(name, True, torch.__version__, devices, "pure PyTorch, the ground truth")
    module, dist, extra = _PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        return BackendStatus(name, False, None, (), f"not installed: pip install '{extra}' (package {dist})")
    version = _version(dist)
    if name == "triton":
        devices = (("cuda",) if cuda else ()) + (("cpu",) if triton_interpreted() else ())
        if cuda:
            reason = "compiled for the GPU" + ("; CPU through the interpreter" if triton_interpreted() else "")
        elif devices:
            reason = "CPU through the interpreter (TRITON_INTERPRET=1): correctness, not speed"
        else:
            reason = "no CUDA device; set TRITON_INTERPRET=1 to run it on the CPU (slow)"
        return BackendStatus(name, True, version, devices, reason)
    if name == "tvm":
        devices = ("cpu",)
        return BackendStatus(name, True, version, devices, "compiled for the CPU (llvm); CUDA source emitted")
    # cutlass: emitted C++ compiled with nvcc, runs only on an sm80/sm90 GPU.
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if "CUDA_HOME" in os.environ else None)
    if not nvcc:
        return BackendStatus(name, True, version, (), "nvcc not found: kernels cannot be compiled")
    if not cuda:
        return BackendStatus(name, True, version, (), "compiles with nvcc; running needs an sm80/sm90 GPU")
    major, _ = torch.cuda.get_device_capability()
    if major not in (8, 9):
        return BackendStatus(name, True, version, (), f"GPU is sm{major}x; kernels are built for sm80/sm90")
    return BackendStatus(name, True, version, ("cuda",), "compiled with nvcc")


def all_status() -> list[BackendStatus]:
    return [status(name) for name in BACKENDS]
