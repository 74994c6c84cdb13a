"""Search spaces of the tunable kernels, pruned by the device's limits before anything is timed.

A space is a list of *groups*; each group is a list of partial configs. The tuner walks the
groups in order (coordinate descent): every partial config of a group is tried on top of the
best config so far, and the best is kept. A space with one group is an exhaustive search.

* Triton attention (GPU): ``block_m x block_n x num_warps x num_stages`` in one group, pruned
  by an estimate of shared memory (``num_stages`` buffered K/V tiles plus the Q tile) and of
  registers per thread (the fp32 score tile and accumulator spread over the warps).
* TVM attention (CPU): ``rows`` (query rows of a dense task) x ``kv_tile`` (keys per tile).
* TVM MoE (CPU): register tiles of the gate/up and down GEMMs (accumulators + operand vectors
  must fit the ISA's vector registers), then the L2 row tile ``mt``.

Example::

    from hysparse_kernels.autotune import spaces, device
    groups = spaces.space("attention_fwd", "triton", {"qk_dim": 128, "v_dim": 128, "group": 8}, "bf16", device.GPUS["a100"])
"""

from __future__ import annotations

import itertools

from .device import Device

TRITON_OPS = ("attention_fwd", "attention_decode")
TVM_OPS = ("attention_fwd", "attention_decode", "attention_with_block_scores", "moe_fwd")
_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "bfloat16": 2, "float16": 2, "float32": 4}


def _pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(int(n) - 1, 0).bit_length())


def tunable(op: str, backend: str) -> bool:
    return op in (TRITON_OPS if backend == "triton" else TVM_OPS if backend == "tvm" else ())


# ---------------------------------------------------------------- Triton


def triton_smem(cfg: dict, dqk: int, dv: int, elem: int) -> int:
    """Shared memory of one attention program (bytes): the Q tile plus ``num_stages`` K and V tiles."""
    dq, dvp = _pow2_at_least(dqk), _pow2_at_least(dv)
    return elem * (cfg["block_m"] * dq + cfg["num_stages"] * cfg["block_n"] * (dq + dvp))


def triton_regs_per_thread(cfg: dict, dqk: int, dv: int) -> int:
    """Registers a thread needs: fp32 accumulator [block_m, Dv], scores [block_m, block_n] and the
    Q fragment, spread over ``32 * num_warps`` threads, plus ~40 for addresses and softmax state."""
    dq, dvp = _pow2_at_least(dqk), _pow2_at_least(dv)
    m, n = cfg["block_m"], cfg["block_n"]
    values = m * dvp + m * n + m * dq // 2
    return values // (32 * cfg["num_warps"]) + 40


def triton_fits(cfg: dict, shape: dict, dtype: str, dev: Device) -> tuple[bool, str]:
    """Whether ``cfg`` fits ``dev`` for ``shape``; the reason when it does not."""
    dqk, dv = int(shape.get("qk_dim", 128)), int(shape.get("v_dim", shape.get("qk_dim", 128)))
    smem = triton_smem(cfg, dqk, dv, _BYTES.get(dtype, 2))
    if smem > dev.smem_per_block:
        return False, f"shared memory {smem} > {dev.smem_per_block}"
    regs = triton_regs_per_thread(cfg, dqk, dv)
    if regs > dev.regs_per_thread:
        return False, f"registers/thread {regs} > {dev.regs_per_thread}"
    if regs * 32 * cfg["num_warps"] > dev.regs_per_block:
        return False, f"registers/program {regs * 32 * cfg['num_warps']} > {dev.regs_per_block}"
    if cfg["block_m"] < 8 * cfg["num_warps"]:
        # mma tiles are 16 rows; below 8 rows per warp the extra warps only replicate work.
        return False, f"block_m {cfg['block_m']} < 8 rows per warp x {cfg['num_warps']} warps"
    return True, ""


def triton_space(op: str, shape: dict, dtype: str, dev: Device) -> list[dict]:
    """Every Triton attention config for ``op`` that fits ``dev`` (unpruned product minus misfits)."""
    if op == "attention_decode":
        # Rows are the group's query heads (x new tokens), padded to 16: 16 or 32 rows suffice.
        product = itertools.product((16, 32), (32, 64, 128, 256), (2, 4, 8), (1, 2, 3, 4))
    else:
        product = itertools.product((32, 64, 128, 256), (32, 64, 128, 256), (2, 4, 8), (1, 2, 3, 4))
    keys = ("block_m", "block_n", "num_warps", "num_stages")
    return [c for c in (dict(zip(keys, p)) for p in product) if triton_fits(c, shape, dtype, dev)[0]]


# ---------------------------------------------------------------- TVM (CPU)


def tvm_attention_space(op: str, shape: dict) -> list[dict]:
    group = int(shape.get("group") or int(shape.get("q_heads", 1)) // max(1, int(shape.get("kv_heads", 1))))
    tiles = (16, 32, 64, 128)
    if op == "attention_decode" or (op == "attention_fwd" and int(shape.get("seq_q", 1 << 30)) <= 8):
        return [{"kv_tile": t} for t in tiles + (256,)]
    rows = [r for r in (16, 32, 64, 128) if r >= group]
    if op == "attention_with_block_scores":  # the KV tile is the block
        return [{"rows": r} for r in rows]
    return [{"rows": r, "kv_tile": t} for r in rows for t in tiles]


def moe_tiles(gate_up: bool, registers: int) -> list[tuple[int, int]]:
    """(MR, NR) register tiles whose accumulators (x2 for gate/up) plus W and X vectors fit."""
    out = []
    for mr, nr in itertools.product((1, 2, 4), (1, 2, 4)):
        need = mr * nr * (2 if gate_up else 1) + nr * (2 if gate_up else 1) + mr
        if need <= registers:
            out.append((mr, nr))
    return out


def space(op: str, backend: str, shape: dict, dtype: str, dev: Device) -> list[list[dict]]:
    """The groups of partial configs to try for ``op`` on ``backend`` (see the module docstring)."""
    if not tunable(op, backend):
        raise KeyError(f"op: no {backend} search space for {op!r}; tunable: "
                       f"{', '.join(TRITON_OPS if backend == 'triton' else TVM_OPS)}")
    if backend == "triton":
        return [triton_space(op, shape, dtype, dev)]
    if op == "moe_fwd":
        regs = dev.vector_registers or 16
        return [[{"gate_up_mr": m, "gate_up_nr": n} for m, n in moe_tiles(True, regs)],
                [{"down_mr": m, "down_nr": n} for m, n in moe_tiles(False, regs)],
                [{"mt": t} for t in (32, 64, 128, 256)]]
    return [tvm_attention_space(op, shape)]


def heuristic(op: str, backend: str, shape: dict) -> dict:
    """The config the kernel runs without a tuned entry (the baseline of every speed-up): the
    kernel module's own ``heuristic_config``."""
    from .tasks import heuristic as kernel_heuristic

    return kernel_heuristic(op, backend, shape)
