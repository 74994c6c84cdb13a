"""What the tuner tunes for: the device (detected, or a named description) and its resource limits.

``detect("cpu")`` -> model, widest ISA, cores, vector registers; ``detect("cuda")`` -> the GPU's
name and capability, with the limits of the matching description. ``GPUS`` holds descriptions
of known GPUs so that search-space pruning can be tested (and planned) without one.

Example::

    d = GPUS["h100"]; d.smem_per_block   # 232448 bytes (227 KiB opt-in)
    detect("cpu").key                    # 'cpu-amd-epyc-avx2-2c'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hysparse_kernels import tuned


@dataclass(frozen=True)
class Device:
    """A device and the limits the search spaces are pruned with."""

    key: str
    name: str
    type: str  # "cpu" or "cuda"
    capability: tuple[int, int] | None = None
    smem_per_block: int = 0  # bytes of shared memory one program may use (opt-in maximum)
    regs_per_block: int = 0  # 32-bit registers of one program (65536 on sm80 / sm90)
    regs_per_thread: int = 0  # most registers a thread may hold before spilling (255)
    sms: int = 0
    isa: str = ""
    cores: int = 0
    vector_registers: int = 0  # architectural SIMD registers (16 ymm with AVX2, 32 zmm with AVX-512)
    flags: tuple[str, ...] = field(default=(), repr=False)


# Public datasheet limits (CUDA programming guide, compute capability tables).
GPUS = {
    "h100": Device(key="cuda-nvidia-h100-80gb-hbm3-sm90", name="NVIDIA H100 80GB HBM3", type="cuda", capability=(9, 0),
                   smem_per_block=227 * 1024, regs_per_block=65536, regs_per_thread=255, sms=132),
    "a100": Device(key="cuda-nvidia-a100-sxm4-80gb-sm80", name="NVIDIA A100-SXM4-80GB", type="cuda", capability=(8, 0),
                   smem_per_block=163 * 1024, regs_per_block=65536, regs_per_thread=255, sms=108),
}


def detect(device: str = "cpu") -> Device:
    """The device the kernels run on: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``."""
    desc = tuned.device_description(str(device))
    if desc["type"] == "cpu":
        flags = tuned.cpu_flags()
        return Device(key=desc["key"], name=desc["name"], type="cpu", isa=desc["isa"], cores=desc["cores"],
                      vector_registers=32 if desc["isa"] == "avx512f" or desc["isa"] == "asimd" else 16, flags=flags)
    import torch

    idx = int(str(device).partition(":")[2] or 0)
    props = torch.cuda.get_device_properties(idx)
    cap = tuple(desc["capability"])
    smem = getattr(props, "shared_memory_per_block_optin", 0) or (227 * 1024 if cap >= (9, 0) else 163 * 1024)
    regs = getattr(props, "regs_per_multiprocessor", 65536) or 65536
    base = GPUS["h100"] if cap >= (9, 0) else GPUS["a100"]
    return replace(base, key=desc["key"], name=desc["name"], capability=cap, smem_per_block=int(smem),
                   regs_per_block=min(int(regs), 65536), sms=props.multi_processor_count)
