"""Outer-product MoE kernels for segments of many rows (TVM TensorIR, CPU ``llvm``).

Each weight element is broadcast once and multiplied into a vector of ``MV`` rows:
``acc[NR weight rows][MV rows] += W[e, n, k] * XB[block, k, :]``. No lane reductions, and a block
of ``NR`` weight rows stays in L1 while it meets every row block of its expert.

Layout. The activations are packed in **blocks of MV rows, each expert's rows starting a new
block** (``XB [NB, K, MV]``; expert ``e`` owns blocks ``[BOFF[e], BOFF[e + 1])``, rows past its
count are zero): the K x MV tile a register tile walks is contiguous. The earlier layout, one
transposed matrix ``[K, Mp]`` with experts at any column, strode ``Mp * 4`` bytes (16 KiB at
T = 512) from one k to the next. The SiLU-and-mul result ``HB [NB, I, MV]`` is blocked the same
way (zero rows stay zero), and the down kernel writes ``Y [M, YS]`` row-major with its row
stride padded off multiples of 2 KiB: ``MV`` rows 4 KiB apart all map to one set of the L1 cache.

Weights are read in their stored ``[N, K]`` layout (never repacked per call): a segment of a few
row blocks uses each weight row block once or twice, where the hardware prefetchers, which ramp
up per 4 KiB page and per stream, cover little of a 2-4 KiB row. The kernels prefetch the next
weight row block one cache line per 16 k while they compute on the current one.

Measured on one core of an AVX-512 host (``mcpu=znver5``; E = 64, top-8, D = 1024, I = 512,
MV = 32), T = 512: gate/up 146 -> 193 GFLOP/s, down 93 -> 172; T = 4096: gate/up 161 -> 226,
down 111 -> 191. Register tiles: accumulators in two buffers (gate and up; the two halves of
the down tile), each under TVM's 1 KiB stack-allocation limit (a larger local buffer goes to the
heap workspace and out of registers): AVX-512 gate/up 4 weight rows (16 accumulators of 16
lanes), down 8; AVX2 3 and 6.
"""

from __future__ import annotations

from tvm.script import tirx as T

from .kernels import _exp_f32

OP_MV = 16  # rows per vector on AVX2 (two ymm registers); 32 where the target has AVX-512
LINE = 16  # k steps per prefetched cache line of float32 weights (bf16: two prefetches per line)


def y_stride(n: int) -> int:
    """Row stride of the down kernel's output: ``n``, plus one cache line where ``n`` floats are a
    multiple of 2 KiB (rows a multiple of 2 KiB apart share a few L1 sets)."""
    return n + 16 if n % 512 == 0 else n


def _prefetch(addr):
    """Read prefetch of the cache line at ``addr`` into every cache level."""
    return T.call_llvm_intrin("void", "llvm.prefetch.p0", addr, 0, 3, 1)


def _w(buf, e, n, k, dtype):
    v = buf[e, n, k]
    return v if dtype == "float32" else T.Cast("float32", v)


def pack_blocks_func(K: int, dtype: str = "float32", MV: int = 16):
    """``XB[b, k, j] = X[PROW[b * MV + j], k]`` in float32, 0 where ``PROW`` is -1 (rows past an
    expert's count): (X [TX, K], PROW [NB * MV] int64, XB [NB, K, MV])."""
    KB = 64 if K % 64 == 0 else K

    @T.prim_func
    def kernel(x_h: T.handle, prow_h: T.handle, xb_h: T.handle):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        TX = T.int64()
        NB = T.int64()
        X = T.match_buffer(x_h, (TX, K), dtype)
        PROW = T.match_buffer(prow_h, (NB * MV,), "int64")
        XB = T.match_buffer(xb_h, (NB, K, MV), "float32")
        for job in T.parallel(NB * (K // KB)):
            b = T.bind(job // (K // KB))
            kb = T.bind(job % (K // KB))
            for k in T.serial(KB):
                for j in T.vectorized(MV):
                    XB[b, kb * KB + k, j] = T.if_then_else(
                        PROW[b * MV + j] >= 0, T.Cast("float32", X[T.max(PROW[b * MV + j], 0), kb * KB + k]), T.float32(0))

    return kernel


def gate_up_blocks_func(E: int, N: int, K: int, *, NR: int, P: int, dtype: str = "float32", MV: int = 16):
    """``HB[b, n, :] = SiLU(XB[b] . W[e, n]) * (XB[b] . W[e, N + n])`` over the blocks ``b`` of
    expert ``e``: (XB [NB, K, MV] f32, W [E, 2N, K], BOFF [E+1], HB [NB, N, MV] f32). h is
    rounded to ``dtype`` and back, as the other kernels store it. Columns in P slices of whole NR
    blocks (the last slice also takes the ``N % NR`` tail)."""
    NBT, NRT = N // NR, N % NR
    KO, KR = K // LINE, K % LINE

    def h_of(g, u):
        hv = g / (T.float32(1) + _exp_f32(-g)) * u
        return hv if dtype == "float32" else T.Cast("float32", T.Cast(dtype, hv))

    @T.macro
    def step(ag, au, W, XB, e, row0, rows, blk, k):
        """One k of a register tile: weight rows [row0, row0 + rows) of gate and up, times the
        block's MV rows of x."""
        for i in T.unroll(rows):
            ag[T.Ramp(i * MV, 1, MV)] = ag[T.Ramp(i * MV, 1, MV)] + T.Broadcast(
                _w(W, e, row0 + i, k, dtype), MV) * XB[blk, k, T.Ramp(0, 1, MV)]
            au[T.Ramp(i * MV, 1, MV)] = au[T.Ramp(i * MV, 1, MV)] + T.Broadcast(
                _w(W, e, N + row0 + i, k, dtype), MV) * XB[blk, k, T.Ramp(0, 1, MV)]

    @T.prim_func
    def kernel(xb_h: T.handle, w_h: T.handle, boff_h: T.handle, hb_h: T.handle):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        NB = T.int64()
        XB = T.match_buffer(xb_h, (NB, K, MV), "float32")
        W = T.match_buffer(w_h, (E, 2 * N, K), dtype)
        BOFF = T.match_buffer(boff_h, (E + 1,), "int64")
        HB = T.match_buffer(hb_h, (NB, N, MV), "float32")
        for job in T.parallel(P * E):
            ag = T.alloc_buffer((NR * MV,), "float32", scope="global")  # gate accumulators
            au = T.alloc_buffer((NR * MV,), "float32", scope="global")  # up accumulators
            p = T.bind(job // E)
            e = T.bind(job % E)
            b0 = T.bind(BOFF[e])
            nblk = T.bind(BOFF[e + 1] - b0)
            c0 = T.bind(p * NBT // P)
            nc = T.bind((p + 1) * NBT // P - c0)
            for nb in T.serial(nc):
                for mb in T.serial(nblk):
                    for i in T.unroll(NR):
                        ag[T.Ramp(i * MV, 1, MV)] = T.Broadcast(T.float32(0), MV)
                        au[T.Ramp(i * MV, 1, MV)] = T.Broadcast(T.float32(0), MV)
                    for ko in T.serial(KO):
                        if nb + 1 < nc:
                            for i in T.unroll(NR):
                                T.evaluate(_prefetch(T.address_of(W[e, (c0 + nb + 1) * NR + i, ko * LINE])))
                                T.evaluate(_prefetch(T.address_of(W[e, N + (c0 + nb + 1) * NR + i, ko * LINE])))
                        for ki in T.serial(LINE):
                            step(ag, au, W, XB, e, (c0 + nb) * NR, NR, b0 + mb, ko * LINE + ki)
                    for kr in T.serial(KR):
                        step(ag, au, W, XB, e, (c0 + nb) * NR, NR, b0 + mb, KO * LINE + kr)
                    for i in T.unroll(NR):
                        for j in T.vectorized(MV):
                            HB[b0 + mb, (c0 + nb) * NR + i, j] = h_of(ag[i * MV + j], au[i * MV + j])
            if NRT > 0:
                if p == P - 1:
                    for i in T.serial(NRT):  # the N % NR tail, one weight row at a time
                        for mb in T.serial(nblk):
                            ag[T.Ramp(0, 1, MV)] = T.Broadcast(T.float32(0), MV)
                            au[T.Ramp(0, 1, MV)] = T.Broadcast(T.float32(0), MV)
                            for k in T.serial(K):
                                step(ag, au, W, XB, e, NBT * NR + i, 1, b0 + mb, k)
                            for j in T.vectorized(MV):
                                HB[b0 + mb, NBT * NR + i, j] = h_of(ag[j], au[j])

    return kernel


def down_blocks_func(E: int, N: int, K: int, *, NR: int, P: int, dtype: str = "float32", MV: int = 16):
    """``Y[m, n] = SCALE[m] * (HB[b, :, j] . W[e, n])`` for the rows ``m = OFF[e] + (b - BOFF[e]) * MV
    + j`` of expert ``e`` (rows past its count are not stored): (HB [NB, K, MV] f32, W [E, N, K],
    OFF [E+1], BOFF [E+1], SCALE [M] f32, Y [M, y_stride(N)] f32, columns ``[:N]`` written)."""
    NBT, NRT = N // NR, N % NR
    KO, KR = K // LINE, K % LINE
    HA = (NR + 1) // 2  # weight rows in the first accumulator buffer
    HBR = NR - HA  # and in the second
    HBN = max(HBR, 1)
    YS = y_stride(N)

    @T.macro
    def step(acc, W, HB, e, row0, rows, blk, k):
        """One k of a register tile: weight rows [row0, row0 + rows) times the block's MV rows of h."""
        for i in T.unroll(rows):
            acc[T.Ramp(i * MV, 1, MV)] = acc[T.Ramp(i * MV, 1, MV)] + T.Broadcast(
                _w(W, e, row0 + i, k, dtype), MV) * HB[blk, k, T.Ramp(0, 1, MV)]

    @T.prim_func
    def kernel(hb_h: T.handle, w_h: T.handle, off_h: T.handle, boff_h: T.handle, scale_h: T.handle, y_h: T.handle):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        NB = T.int64()
        M = T.int64()
        HB = T.match_buffer(hb_h, (NB, K, MV), "float32")
        W = T.match_buffer(w_h, (E, N, K), dtype)
        OFF = T.match_buffer(off_h, (E + 1,), "int64")
        BOFF = T.match_buffer(boff_h, (E + 1,), "int64")
        SCALE = T.match_buffer(scale_h, (M,), "float32")
        Y = T.match_buffer(y_h, (M, YS), "float32")
        for job in T.parallel(P * E):
            aa = T.alloc_buffer((HA * MV,), "float32", scope="global")
            ab = T.alloc_buffer((HBN * MV,), "float32", scope="global")
            p = T.bind(job // E)
            e = T.bind(job % E)
            lo = T.bind(OFF[e])
            cnt = T.bind(OFF[e + 1] - lo)
            b0 = T.bind(BOFF[e])
            c0 = T.bind(p * NBT // P)
            nc = T.bind((p + 1) * NBT // P - c0)
            for nb in T.serial(nc):
                for mb in T.serial(BOFF[e + 1] - b0):
                    for i in T.unroll(HA):
                        aa[T.Ramp(i * MV, 1, MV)] = T.Broadcast(T.float32(0), MV)
                    for i in T.unroll(HBR):
                        ab[T.Ramp(i * MV, 1, MV)] = T.Broadcast(T.float32(0), MV)
                    for ko in T.serial(KO):
                        if nb + 1 < nc:
                            for i in T.unroll(NR):
                                T.evaluate(_prefetch(T.address_of(W[e, (c0 + nb + 1) * NR + i, ko * LINE])))
                        for ki in T.serial(LINE):
                            step(aa, W, HB, e, (c0 + nb) * NR, HA, b0 + mb, ko * LINE + ki)
                            step(ab, W, HB, e, (c0 + nb) * NR + HA, HBR, b0 + mb, ko * LINE + ki)
                    for kr in T.serial(KR):
                        step(aa, W, HB, e, (c0 + nb) * NR, HA, b0 + mb, KO * LINE + kr)
                        step(ab, W, HB, e, (c0 + nb) * NR + HA, HBR, b0 + mb, KO * LINE + kr)
                    for j in T.serial(T.min(MV, cnt - mb * MV)):
                        for i in T.unroll(HA):
                            Y[lo + mb * MV + j, (c0 + nb) * NR + i] = aa[i * MV + j] * SCALE[lo + mb * MV + j]
                        for i in T.unroll(HBR):
                            Y[lo + mb * MV + j, (c0 + nb) * NR + HA + i] = ab[i * MV + j] * SCALE[lo + mb * MV + j]
            if NRT > 0:
                if p == P - 1:
                    for i in T.serial(NRT):  # the N % NR tail, one weight row at a time
                        for mb in T.serial(BOFF[e + 1] - b0):
                            aa[T.Ramp(0, 1, MV)] = T.Broadcast(T.float32(0), MV)
                            for k in T.serial(K):
                                step(aa, W, HB, e, NBT * NR + i, 1, b0 + mb, k)
                            for j in T.serial(T.min(MV, cnt - mb * MV)):
                                Y[lo + mb * MV + j, NBT * NR + i] = aa[j] * SCALE[lo + mb * MV + j]

    return kernel
