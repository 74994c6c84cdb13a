"""TVM TensorIR kernels of the MoE family for the CPU (``llvm``): grouped GEMM and the fused
expert MLP over expert-sorted rows. Built by ``tvm.py``; this module only writes the PrimFuncs.

The micro-kernel is a *dot-product* register tile: ``MR`` rows of X times ``NR`` rows of W,
``MR * NR`` accumulators of one AVX2 register each (8 float32 / 4 float64 lanes), walking K a
register at a time and
reduced across lanes once at the end. It reads W in its stored ``[N, K]`` layout (K contiguous),
so the weights are never repacked per call: for a MoE layer they are the 400 MB that dominate the
traffic, and a repack would cost as much as the GEMM itself at small T. While a tile walks K it
prefetches the next block of NR weight rows a cache line at a time (a row of 2-4 KiB is too short
for the hardware prefetchers to ramp up): E=64, top-8, D=1024, I=512 on the AVX-512 host, T=16
17.1-17.6 -> 14.7-15.0 ms, T=64 24.4-24.9 -> 20.5 ms.

Loop nest (per kernel call)::

    for job in parallel(P * E):          # P slices of the N columns, one per thread
        p, e = divmod(job, E)            # a thread walks every expert on its slice, so any routing
        for mt in row tiles of MT:       #   keeps both threads busy (T = 1 included)
            for nb in column blocks of p:    # W block [NR, K] reused from L1 across the tile
                for mb in row blocks of MR:  # X tile [MT, K] stays in L2 across the column blocks
                    acc[MR, NR, 8] += X[rows, k:k+8] * W[e, cols, k:k+8]

Rows past the segment's end are clamped to its last row for the loads (cheap, always in bounds)
and skipped at the store. The accumulator is a ``global``-scope buffer under 1 KiB inside the
parallel body: TVM then keeps it on the stack (a ``local`` buffer would go through
``TVMBackendAllocWorkspace`` on every iteration) and LLVM promotes it to registers.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from ....backends.tvm.target import cpu_target_spec

VECTOR_BYTES = 32  # one AVX2 register: 8 float32 or 4 float64 lanes


def acc_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


def lanes(dtype: str) -> int:
    return VECTOR_BYTES // (8 if acc_dtype(dtype) == "float64" else 4)


def _prefetch(addr):
    """Read prefetch of the cache line at ``addr`` into every cache level."""
    return T.call_llvm_intrin("void", "llvm.prefetch.p0", addr, 0, 3, 1)


def _lane_sum(acc, base, V):
    s = acc[base]
    for i in range(1, V):
        s = s + acc[base + i]
    return s


def _exp_f32(x):
    """exp(x) for float32 scalars as plain arithmetic (Cephes ``expf``: range reduction by ln 2 in
    two parts, a degree-6 polynomial, scaling by 2^n through the exponent bits; about 1 ulp).
    TVM lowers ``T.exp`` to a libm call per element, which cost the gate/up kernel a tenth of
    its time in the SiLU epilogue."""
    x = T.max(T.min(x, T.float32(88.0)), T.float32(-87.0))
    n = T.floor(x * T.float32(1.44269504088896341) + T.float32(0.5))
    r = x - n * T.float32(0.693359375) - n * T.float32(-2.12194440e-4)
    poly = (((((T.float32(1.9875691500e-4) * r + T.float32(1.3981999507e-3)) * r + T.float32(8.3334519073e-3)) * r
              + T.float32(4.1665795894e-2)) * r + T.float32(1.6666665459e-1)) * r + T.float32(5.0000001201e-1))
    y = poly * (r * r) + r + T.float32(1.0)
    return y * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def grouped_gemm_func(E: int, N: int, K: int, *, mode: str, MR: int, NR: int, MT: int, P: int, dtype: str = "float32"):
    """PrimFunc of a grouped GEMM over expert-sorted rows.

    mode ``"plain"``:   (X [M, K], W [E, N, K], OFF [E+1], Y [M, N]); ``Y = X W_e^T``.
    mode ``"gate_up"``: (X [T, K], ROWTOK [M], W [E, 2N, K], OFF, H [M, N]); row r reads token
        ``ROWTOK[r]`` of X (the permutation is fused into the loads) and
        ``H = SiLU(X W_e[:N]^T) * (X W_e[N:]^T)`` (split gate/up layout).
    mode ``"down"``:    (X [M, K], W [E, N, K], OFF, SCALE [M], Y [M, N]); ``Y = SCALE * X W_e^T``
        (the routing weight of each row applied in the epilogue; Y in the accumulation dtype so
        the combine adds unrounded terms, as the reference does).
    Every signature carries (X, ROWTOK, W, OFF, SCALE, Y); the modes ignore what they do not use.
    """
    V = lanes(dtype)
    acc_t = acc_dtype(dtype)
    assert K % V == 0, f"K must be a multiple of {V}, got {K}"
    assert N % (NR * P) == 0, f"N = {N} must be a multiple of NR * P = {NR * P}"
    KV = K // V
    NB = N // (NR * P)  # column blocks per thread slice
    gate_up = mode == "gate_up"
    WN = 2 * N if gate_up else N
    nacc = MR * NR * (2 if gate_up else 1)
    f32 = acc_t

    def load(buf, *idx_and_k):
        *idx, k = idx_and_k
        v = buf[(*idx, T.Ramp(k * V, 1, V))]
        return v if dtype == acc_t else T.Cast(f"{acc_t}x{V}", v)

    @T.prim_func
    def kernel(x_h: T.handle, rowtok_h: T.handle, w_h: T.handle, off_h: T.handle, scale_h: T.handle, y_h: T.handle):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        M = T.int64()
        TX = T.int64()
        X = T.match_buffer(x_h, (TX, K), dtype)
        ROWTOK = T.match_buffer(rowtok_h, (M,), "int64")
        W = T.match_buffer(w_h, (E, WN, K), dtype)
        OFF = T.match_buffer(off_h, (E + 1,), "int64")
        SCALE = T.match_buffer(scale_h, (M,), acc_t)
        Y = T.match_buffer(y_h, (M, N), acc_t if mode == "down" else dtype)
        for job in T.parallel(P * E):
            acc = T.alloc_buffer((nacc * V,), f32, scope="global")
            p = T.bind(job // E)
            e = T.bind(job % E)
            lo = T.bind(OFF[e])
            cnt = T.bind(OFF[e + 1] - lo)
            for mt in T.serial((cnt + MT - 1) // MT):
                rows = T.bind(T.min(cnt - mt * MT, T.int64(MT)))
                for nb in T.serial(NB):
                    for mb in T.serial((rows + MR - 1) // MR):
                        for i in T.unroll(nacc):
                            acc[T.Ramp(i * V, 1, V)] = T.Broadcast(T.Cast(f32, 0), V)
                        for kk in T.serial(KV):
                            if kk % 2 == 0:
                                if nb + 1 < NB:
                                    for ni in T.unroll(NR):
                                        T.evaluate(_prefetch(T.address_of(W[e, (p * NB + nb + 1) * NR + ni, kk * V])))
                                        if gate_up:
                                            T.evaluate(_prefetch(T.address_of(W[e, N + (p * NB + nb + 1) * NR + ni, kk * V])))
                            for mi in T.unroll(MR):
                                for ni in T.unroll(NR):
                                    n = T.bind((p * NB + nb) * NR + ni)
                                    r = T.bind(lo + mt * MT + T.min(mb * MR + mi, rows - 1))
                                    if gate_up:
                                        # (x is loaded twice, not let-bound: TVM's bf16 legalisation
                                        # miscompiles a let-bound bf16->f32 vector; LLVM merges the loads)
                                        a = T.bind((mi * NR + ni) * 2 * V)
                                        acc[T.Ramp(a, 1, V)] = acc[T.Ramp(a, 1, V)] + load(X, ROWTOK[r], kk) * load(W, e, n, kk)
                                        acc[T.Ramp(a + V, 1, V)] = acc[T.Ramp(a + V, 1, V)] + load(X, ROWTOK[r], kk) * load(W, e, N + n, kk)
                                    else:
                                        a = T.bind((mi * NR + ni) * V)
                                        acc[T.Ramp(a, 1, V)] = acc[T.Ramp(a, 1, V)] + load(X, r, kk) * load(W, e, n, kk)
                        for mi in T.unroll(MR):
                            if mb * MR + mi < rows:
                                for ni in T.unroll(NR):
                                    n = T.bind((p * NB + nb) * NR + ni)
                                    r = T.bind(lo + mt * MT + mb * MR + mi)
                                    if gate_up:
                                        a = T.bind((mi * NR + ni) * 2 * V)
                                        g = T.bind(_lane_sum(acc, a, V))
                                        u = T.bind(_lane_sum(acc, a + V, V))
                                        if acc_t == "float32":
                                            Y[r, n] = T.Cast(dtype, g / (T.float32(1) + _exp_f32(-g)) * u)
                                        else:
                                            Y[r, n] = T.Cast(dtype, g / (T.Cast(f32, 1) + T.exp(-g)) * u)
                                    elif mode == "down":
                                        Y[r, n] = _lane_sum(acc, (mi * NR + ni) * V, V) * SCALE[r]
                                    else:
                                        Y[r, n] = T.Cast(dtype, _lane_sum(acc, (mi * NR + ni) * V, V))

    return kernel


def combine_func(D: int, K_SLOTS: int, P: int, dtype: str = "float32", YS: int | None = None):
    """out[t] = sum_j Y[INV[t, j], :D] (the rows already carry their routing weight): ``[T, D]``;
    ``Y [M, YS]`` (row stride ``YS >= D``, default ``D``)."""
    YS = D if YS is None else YS
    V = lanes(dtype)
    acc_t = acc_dtype(dtype)
    assert D % V == 0

    @T.prim_func
    def combine(y_h: T.handle, inv_h: T.handle, out_h: T.handle):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        M = T.int64()
        TT = T.int64()
        Y = T.match_buffer(y_h, (M, YS), acc_t)  # weighted expert outputs, kept in the accumulation dtype
        INV = T.match_buffer(inv_h, (TT, K_SLOTS), "int64")
        OUT = T.match_buffer(out_h, (TT, D), dtype)
        for t in T.parallel(TT):
            for dv in T.serial(D // V):
                s = T.alloc_buffer((V,), acc_t, scope="global")
                s[T.Ramp(0, 1, V)] = T.Broadcast(T.Cast(acc_t, 0), V)
                for j in T.unroll(K_SLOTS):
                    s[T.Ramp(0, 1, V)] = s[T.Ramp(0, 1, V)] + Y[INV[t, j], T.Ramp(dv * V, 1, V)]
                OUT[t, T.Ramp(dv * V, 1, V)] = T.Cast(f"{dtype}x{V}", s[T.Ramp(0, 1, V)])

    return combine


def target(num_cores: int) -> "tvm.target.Target":
    """The CPU target of every TVM kernel (``HYSPARSE_TVM_TARGET``, else llvm for this host) with
    ``num_cores`` (JSON form; TVM 0.27 rejects target strings)."""
    return tvm.target.Target({**cpu_target_spec(), "num-cores": num_cores})
