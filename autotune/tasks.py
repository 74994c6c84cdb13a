"""What is timed: inputs of one shape and a callable that runs the kernel with a given config.

``make_task(op, backend, shape, dtype, device)`` returns a :class:`Task`; ``task.runner(config)``
gives a zero-argument callable that launches the kernel with exactly that config (bypassing
the cache), so every candidate is timed the same way the kernel runs it. The tuner reaches a
backend only through the two entry points its kernel module exports (``KERNELS``):
``heuristic_config(op, shape)`` and ``run_with_config(op, config, *inputs, **options)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from hysparse_kernels import tuned

_DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
       "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DT[name]
    except KeyError:
        raise ValueError(f"dtype: expected one of {sorted(_DT)}, got {name!r}") from None


@dataclass
class Task:
    op: str
    backend: str
    shape: dict
    runner: Callable[[dict], Callable[[], object]]
    nbytes: int


def input_bytes(op: str, shape: dict, dtype: str) -> int:
    """Bytes the inputs of one shape take (to skip shapes that do not fit the machine)."""
    e = torch_dtype(dtype).itemsize
    if op == "moe_fwd":
        E, D, I, T = shape["experts"], shape["hidden"], shape["intermediate"], shape["tokens"]
        return e * (3 * E * D * I + T * D) + 4 * T * shape["top_k"] * (D + I)
    B, Hq, Hkv = shape.get("batch", 1), shape["q_heads"], shape["kv_heads"]
    Sq, Sk, Dqk, Dv = shape["seq_q"], shape["seq_k"], shape["qk_dim"], shape.get("v_dim", shape["qk_dim"])
    return e * B * (Hq * Sq * (Dqk + Dv) + Hkv * Sk * (Dqk + Dv)) + 4 * B * Hkv * Sk * (Dqk + Dv)


def _attention_inputs(shape, dtype, device, gen):
    B, Hq, Hkv = shape.get("batch", 1), shape["q_heads"], shape["kv_heads"]
    Sq, Sk, Dqk, Dv = shape["seq_q"], shape["seq_k"], shape["qk_dim"], shape.get("v_dim", shape["qk_dim"])
    mk = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    return mk(B, Hq, Sq, Dqk), mk(B, Hkv, Sk, Dqk), mk(B, Hkv, Sk, Dv)


# (op family, backend) -> the kernel module that exports ``heuristic_config(op, shape)`` and
# ``run_with_config(op, config, *inputs, **options)`` for its tunable ops.
KERNELS = {
    ("attention", "tvm"): "hysparse_kernels.ops.attention.tvm.launch",
    ("attention", "triton"): "hysparse_kernels.ops.attention.triton.tuning",
    ("moe", "tvm"): "hysparse_kernels.ops.moe.tvm.moe",
    ("moe", "triton"): "hysparse_kernels.ops.moe.triton.moe",
}


def kernel_module(op: str, backend: str):
    """The kernel module that tunes ``op`` on ``backend`` (imported on first use)."""
    target = KERNELS.get((tuned.op_family(op), backend))
    if target is None:
        raise KeyError(f"backend: no tuner for {op!r} on {backend!r}")
    return importlib.import_module(target)


def _moe_inputs(shape, dt, gen):
    T, D, E, k, I = shape["tokens"], shape["hidden"], shape["experts"], shape["top_k"], shape["intermediate"]
    x = torch.randn(T, D, generator=gen).to(dt)
    wgu = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(dt)
    wd = (torch.randn(E, D, I, generator=gen) / I**0.5).to(dt)
    logits = torch.randn(T, E, generator=gen)
    weights, ids = torch.softmax(logits, -1).topk(k, -1)
    return x, wgu, wd, weights, ids


def make_task(op: str, backend: str, shape: dict, dtype: str = "bf16", device: str = "cpu") -> Task:
    """Inputs for ``shape`` and the per-config runner of ``op`` on ``backend``: the kernel module's
    own ``run_with_config``, the same for every backend."""
    module = kernel_module(op, backend)
    dt = torch_dtype(dtype)
    gen = torch.Generator().manual_seed(0)
    nbytes = input_bytes(op, shape, dtype)
    if op == "moe_fwd":
        inputs, options = _moe_inputs(shape, dt, gen), {}
    else:
        inputs = _attention_inputs(shape, dt, device, gen)
        options = {"block_size": int(shape["block_size"])} if op == "attention_with_block_scores" else {"window": shape.get("window")}
    return Task(op, backend, shape, lambda c: (lambda: module.run_with_config(op, c, *inputs, **options)), nbytes)


def heuristic(op: str, backend: str, shape: dict) -> dict:
    """The config the kernel runs without a tuned entry (the baseline of every speed-up)."""
    return kernel_module(op, backend).heuristic_config(op, shape)
