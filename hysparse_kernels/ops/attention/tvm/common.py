"""Shared pieces of the TVM attention kernels: a vectorisable exp, constants, tile sizes.

Nothing here is a kernel by itself; ``attention.py`` and ``sparse_attention.py`` build TensorIR from these.
"""

from __future__ import annotations

from tvm import tirx

from ....backends.tvm.target import wide_registers

# "Minus infinity" of the running maxima and masked logits. A finite sentinel keeps every
# subtraction (m_old - m_new, s - m) free of inf - inf = NaN; the final lse turns it into -inf.
NEG = -1.0e30
# Below this argument exp() underflows fp32; fast_exp returns exactly 0 there, so a masked
# logit or an empty running max contributes nothing at all.
EXP_LO = -87.0

# Cephes-style expf: exp(x) = 2^n * exp(r), |r| <= ln2/2, degree-6 polynomial (about 1 ulp).
_LOG2E = 1.44269504088896341
_C1 = 0.693359375
_C2 = -2.12194440e-4
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def f32(x: float):
    return tirx.const(x, "float32")


def fast_exp(x):
    """exp(x) for a float32 TIR expression, built from ops that vectorise (floor, fma, shifts).

    LLVM lowers ``tirx.exp`` on a vector to one libm call per lane; this stays in SIMD registers.
    Exactly 0 for x < -87 (masked entries), accurate to about 1 ulp elsewhere, NaN for NaN (the
    clamp below would turn a NaN into a finite number: a NaN logit must reach the output).
    """
    # The clamp keeps a NaN: TVM lowers max(a, b) / min(a, b) to ``a > b ? a : b`` / ``a < b ? a : b``,
    # which give b when b is NaN, so x goes last. (An explicit isnan select cost 45% of a 1K
    # prefill, and x - x is folded to 0.) tests/ops/test_nonfinite.py guards this.
    xc = tirx.min(f32(88.0), tirx.max(f32(EXP_LO), x))
    n = tirx.floor(xc * f32(_LOG2E) + f32(0.5))
    r = xc - n * f32(_C1) - n * f32(_C2)
    y = f32(_P[0])
    for c in _P[1:]:
        y = y * r + f32(c)
    y = y * r * r + r + f32(1.0)
    # 2^n through the exponent bits: (n + 127) << 23 reinterpreted as float32.
    pow2 = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n) + 127, 23))
    return tirx.Select(x < f32(EXP_LO), f32(0.0), y * pow2)


def vec_width(n: int, widths=(16, 8, 4, 2, 1)) -> int:
    """Largest SIMD chunk in ``widths`` dividing ``n`` (16 fp32 lanes: one AVX-512 register, two AVX2 ones)."""
    for w in widths:
        if n % w == 0:
            return w
    return 1


def register_lanes(target_kind: str = "llvm", wide: bool | None = None) -> tuple[int, ...]:
    """fp32 vector widths a register tile may take, widest first: up to 32 lanes where the target
    has AVX-512's 32 registers (``wide`` overrides the target's answer), up to 16 on AVX2."""
    if wide is None:
        wide = wide_registers(target_kind)
    return (32, 16, 8, 4, 2, 1) if wide else (16, 8, 4, 2, 1)


def half_lanes(lanes: tuple[int, ...]) -> tuple[int, ...]:
    """The widths of ``lanes`` up to half the widest: row reductions and the softmax pass use one
    register (16 lanes on AVX-512, 8 on AVX2)."""
    return tuple(w for w in lanes if w <= lanes[0] // 2)


def row_tile(rows: int, prefer=(4, 2, 1)) -> int:
    """Rows per register tile: 4 rows x 16 lanes = 8 AVX2 accumulators, leaving room for loads."""
    for t in prefer:
        if rows % t == 0:
            return t
    return 1


def loop_kinds(target_kind: str):
    """``(parallel, vectorized, scratch scope)`` loop builders for a target kind.

    ``llvm``: tasks on TVM's CPU thread pool, SIMD inner loops, per-task scratch in workspace
    memory. ``cuda``: the same kernel with one task per thread block (``blockIdx.x``), inner loops
    serial and scratch in thread-local memory: a faithful emission of the CPU algorithm for the
    compile check, not a tuned GPU schedule (the GPU kernels of this toolkit are the Triton ones).
    """
    from tvm.script import tirx as T

    if target_kind == "llvm":
        return T.parallel, T.vectorized, "global"
    if target_kind == "cuda":
        return (lambda n: T.thread_binding(n, thread="blockIdx.x")), T.serial, "local"
    raise ValueError(f"target_kind: expected 'llvm' or 'cuda', got {target_kind!r}")
