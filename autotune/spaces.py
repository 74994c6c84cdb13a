"""Search spaces of the tunable kernels, asked of the kernel modules themselves.

Every kernel module the tuner knows (``tasks.KERNELS``) exports ``TUNABLE`` (its tunable ops) and
``search_space(op, shape, dtype, device)``, beside ``heuristic_config`` and ``run_with_config``;
this module only routes to them. A space is a list of *groups*; each group is a list of partial
configs. The tuner walks the groups in order (coordinate descent): every partial config of a
group is tried on top of the best config so far, and the best is kept. A space with one group
is an exhaustive search. Spaces are pruned by the device's limits (``device.Device``: shared
memory and registers of a GPU, vector registers of a CPU) before anything is timed.

Example::

    from hysparse_kernels.autotune import spaces, device
    groups = spaces.space("attention_fwd", "triton", {"qk_dim": 128, "v_dim": 128, "group": 8}, "bf16", device.GPUS["a100"])
"""

from __future__ import annotations

import importlib

from hysparse_kernels import tuned

from .device import Device
from .tasks import KERNELS, kernel_module


def tunable_ops(backend: str) -> tuple[str, ...]:
    """The ops ``backend`` can tune (every family's kernel module on that backend)."""
    return tuple(op for (family, b) in KERNELS if b == backend for op in kernel_module_for(family, b).TUNABLE)


def kernel_module_for(family: str, backend: str):
    """The kernel module of ``family`` on ``backend`` (a clear error when the backend is not installed)."""
    try:
        return importlib.import_module(KERNELS[(family, backend)])
    except ImportError as e:
        raise ValueError(f"backend: tuning {family} on {backend!r} needs that backend installed ({e})") from None


def tunable(op: str, backend: str) -> bool:
    family = tuned.op_family(op)
    if (family, backend) not in KERNELS:
        return False
    return op in kernel_module_for(family, backend).TUNABLE


def space(op: str, backend: str, shape: dict, dtype: str, dev: Device) -> list[list[dict]]:
    """The groups of partial configs to try for ``op`` on ``backend`` (see the module docstring)."""
    if not tunable(op, backend):
        raise KeyError(f"op: no {backend} search space for {op!r}; tunable: {', '.join(tunable_ops(backend))}")
    return kernel_module(op, backend).search_space(op, shape, dtype, dev)


def heuristic(op: str, backend: str, shape: dict) -> dict:
    """The config the kernel runs without a tuned entry (the baseline of every speed-up): the
    kernel module's own ``heuristic_config``."""
    return kernel_module(op, backend).heuristic_config(op, shape)
