"""Device identity: what the machine is, read once, and the key its tuned configs are filed under.

The CPU's model name and ISA flags come from one parse of ``/proc/cpuinfo`` (``hysparse info``
reads the same answer); a device's key (``cpu-amd-epyc-7b13-avx2-2c``, ``cuda-nvidia-h100-sm90``)
names its folder of tuned configs, so it must not change for a machine that did not change.
"""

from __future__ import annotations

import os
import pathlib
import platform
import re
from functools import lru_cache


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@lru_cache(maxsize=1)
def cpuinfo() -> tuple[str, ...]:
    """The lines of ``/proc/cpuinfo``, read once per process (empty where there is none)."""
    try:
        return tuple(pathlib.Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def _field(prefixes: tuple[str, ...]) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line that starts with one of ``prefixes``."""
    for line in cpuinfo():
        if line.startswith(prefixes) and ":" in line:
            return line.split(":", 1)[1]
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    value = _field(("model name", "Model", "Hardware"))
    if value is not None:
        return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> tuple[str, ...]:
    """The CPU's ISA flags (``/proc/cpuinfo`` ``flags`` / ``Features``), empty where unknown."""
    value = _field(("flags", "Features"))
    return tuple(value.split()) if value is not None else ()


def cpu_isa(flags=None) -> str:
    """The widest vector ISA the kernels can use: avx512f, avx2, asimd (NEON), sse4_2 or generic."""
    flags = set(cpu_flags() if flags is None else flags)
    for isa in ("avx512f", "avx2", "asimd", "sse4_2"):
        if isa in flags:
            return isa
    return "generic"


@lru_cache(maxsize=None)
def device_description(device: str = "cpu") -> dict:
    """``{"key", "name", "type", ...}`` of a device ("cpu", "cuda", "cuda:1"): the folder name of its configs.

    CPU: model, widest ISA and core count (the kernels' thread split depends on it).
    CUDA: the GPU's name and compute capability.
    """
    kind, _, index = str(device).partition(":")
    if kind == "cpu":
        name, isa, cores = cpu_model(), cpu_isa(), os.cpu_count() or 1
        return {"key": _slug(f"cpu-{name}-{isa}-{cores}c"), "name": name, "type": "cpu", "isa": isa, "cores": cores}
    if kind == "cuda":
        import torch

        idx = int(index or 0)
        name = torch.cuda.get_device_name(idx)
        major, minor = torch.cuda.get_device_capability(idx)
        return {"key": _slug(f"cuda-{name}-sm{major}{minor}"), "name": name, "type": "cuda", "capability": [major, minor]}
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def device_key(device="cpu") -> str:
    return device_description(str(device))["key"]
