"""What is timed: inputs of one shape and a callable that runs the kernel with a given config.

``make_task(op, backend, shape, dtype, device)`` returns a :class:`Task`; ``task.runner(config)``
gives a zero-argument callable that launches the kernel with exactly that config (bypassing
the cache), so every candidate is timed the same way the kernel runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

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


def make_task(op: str, backend: str, shape: dict, dtype: str = "bf16", device: str = "cpu") -> Task:
    """Inputs for ``shape`` and the per-config runner of ``op`` on ``backend``."""
    dt = torch_dtype(dtype)
    gen = torch.Generator().manual_seed(0)
    nbytes = input_bytes(op, shape, dtype)
    if op == "moe_fwd":
        if backend != "tvm":
            raise KeyError(f"op: moe_fwd is tuned on the tvm backend only, not {backend!r}")
        from hysparse_kernels.ops.moe.tvm import moe as moe_tvm

        T, D, E, k, I = shape["tokens"], shape["hidden"], shape["experts"], shape["top_k"], shape["intermediate"]
        x = torch.randn(T, D, generator=gen).to(dt)
        wgu = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(dt)
        wd = (torch.randn(E, D, I, generator=gen) / I**0.5).to(dt)
        logits = torch.randn(T, E, generator=gen)
        weights, ids = torch.softmax(logits, -1).topk(k, -1)
        return Task(op, backend, shape, lambda c: (lambda: moe_tvm._moe(x, wgu, wd, weights, ids, c)), nbytes)
    q, k, v = _attention_inputs(shape, dt, device, gen)
    scale = q.shape[-1] ** -0.5
    window = shape.get("window")
    if backend == "tvm":
        from hysparse_kernels.ops.attention.tvm import launch as L

        if op == "attention_block_scores":
            bs = int(shape["block_size"])
            return Task(op, backend, shape, lambda c: (lambda: L._run_dense(q, k, v, None, True, None, scale, bs,
                                                                            {**c, "kv_tile": bs})), nbytes)
        lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32)
        rows_op = op == "attention_decode" or q.shape[2] <= L.FEW_QUERIES
        if rows_op:
            return Task(op, backend, shape, lambda c: (lambda: L._run_rows(op, q, k, v, lens, None, None, None, window,
                                                                           scale, c)), nbytes)
        return Task(op, backend, shape, lambda c: (lambda: L._run_dense(q, k, v, None, True, window, scale, config=c)),
                    nbytes)
    if backend == "triton":
        import hysparse_kernels as hk
        from hysparse_kernels.ops.attention.triton import config as tc

        def runner(c):
            cfg = tc.Config(**c)

            def run():
                # The provider answers this config for every launch of the call (restored after).
                previous = tc._provider
                tc.set_config_provider(lambda _op, _shape: cfg)
                try:
                    if op == "attention_decode":
                        lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)
                        return hk.attention_decode(q, k, v, lens, window=window, backend="triton")
                    return hk.attention(q, k, v, causal=True, window=window, backend="triton")
                finally:
                    tc.set_config_provider(previous)
            return run
        return Task(op, backend, shape, runner, nbytes)
    raise KeyError(f"backend: no tuner for {op!r} on {backend!r}")
