"""Which TVM target the kernels are built for (TVM 0.27 takes targets as JSON objects only)."""

from __future__ import annotations

import json
import os
from functools import lru_cache

ENV_TARGET = "HYSPARSE_TVM_TARGET"


@lru_cache(maxsize=1)
def cpu_target_spec() -> dict:
    """The CPU target as a JSON-able dict: ``HYSPARSE_TVM_TARGET`` if set, else llvm for this host.

    ``mcpu`` is LLVM's name for the host CPU (e.g. ``znver3``, ``sapphirerapids``), which enables
    its vector extensions (AVX2/FMA, AVX-512); where LLVM cannot tell (``generic`` or an error)
    the generic x86-64/aarch64 target is used, which is slower but runs anywhere.
    """
    override = os.environ.get(ENV_TARGET)
    if override:
        try:
            spec = json.loads(override)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ENV_TARGET}: expected a JSON object such as {{\"kind\": \"llvm\"}}, got {override!r} ({e})") from None
        if not isinstance(spec, dict) or spec.get("kind") != "llvm":
            raise ValueError(f"{ENV_TARGET}: expected a JSON object with \"kind\": \"llvm\", got {override!r}")
        return spec
    spec = {"kind": "llvm"}
    try:
        from tvm.target import codegen

        cpu = str(codegen.llvm_get_system_cpu())
    except Exception:  # an LLVM build without host detection: stay generic
        cpu = ""
    if cpu and cpu != "generic":
        spec["mcpu"] = cpu
    return spec


def cpu_target():
    """``tvm.target.Target`` for the CPU kernels (see :func:`cpu_target_spec`)."""
    import tvm

    return tvm.target.Target(dict(cpu_target_spec()))


@lru_cache(maxsize=None)
def wide_registers(target_kind: str = "llvm") -> bool:
    """Whether the CPU target has AVX-512 (32 vector registers of 16 fp32 lanes, against AVX2's
    16 of 8): the kernels' register tiles may then be twice as wide without spilling. False for
    the CUDA emission and where LLVM cannot tell."""
    if target_kind != "llvm":
        return False
    try:
        from tvm.target import codegen

        return bool(codegen.target_has_features("avx512f", cpu_target()))
    except Exception:  # an LLVM without feature queries: keep the narrow tiles
        return False


def cuda_target(arch: str = "sm_90a"):
    """``tvm.target.Target`` for emitting CUDA source (``arch`` like ``sm_80`` or ``sm_90a``)."""
    import tvm

    return tvm.target.Target({"kind": "cuda", "arch": arch})
