"""Attention backward in TensorIR (dense causal / full, sliding window, sink; sparse over blocks).

With ``P = exp(scale * Q K^T - lse)`` recomputed from the forward's lse, ``Delta_i = dO_i . O_i -
dlse_i`` (computed by the launcher) and visible pairs only::

    dP = dO V^T      dS = P * (dP - Delta)
    dV = P^T dO      dK = scale * dS^T Q      dQ = scale * dS K

(dK and dV summed over the query heads of each KV group; the sink's gradient needs only lse and
Delta and is summed by the launcher.)

Layout of the work
------------------
One kernel, ``main``: ``parallel`` over (batch, KV head, chunk). A task walks the KV blocks of
its chunk (block ``n`` belongs to chunk ``n % C``); for each block it holds K (row-major, for dQ),
K^T and V^T (for the two logit-shaped GEMMs) and the block's dK / dV accumulators in scratch, and
visits only the queries that see the block, in tiles of ``BM`` queries x the ``G`` heads of the
group (``R = G * BM`` rows):

* dense: the queries whose window / causal range meets the block (a contiguous range, from the
  positions: queries are bottom-right aligned, query ``i`` at key position ``Sk - Sq + i``);
* sparse: the queries that selected the block, listed by the launcher (``qoff`` / ``qidx``: per
  (batch, KV head, block) an ascending list, each query once, blocks after the query dropped).

Per tile: S = Qs K^T and dP = dO V^T (register tiles of RT rows x JV keys, outer products over
the head dim), P and dS elementwise, then dV += P^T dO and dK += dS^T Qs (register tiles of JT keys
x a head-dim vector, outer products over the R rows) and dQ[rows] += dS K into the chunk's fp32
partial ``dqp`` (the launcher sums the chunks and applies the scale). Each output element is
written by exactly one task: no atomics, and any thread count gives the same bits.

Non-finite values: a pair (query, key) the query cannot see contributes nothing to any gradient,
whatever its q, k, v or dO rows hold. P and dS are *selected* to 0 there (never computed as
exp(-inf) or multiplied). In a tile where some pairs are masked (the causal diagonal, the
window's edges) and the K block or the tile's Q / dO rows hold a non-finite value (flags taken
while loading them into scratch), the three accumulating GEMMs also select each product by
visibility, because 0 * NaN would still be NaN; every other tile multiplies plainly (selecting
in every masked tile cost 25-40% of the whole kernel), so NaN in a visible input reaches every
gradient it feeds.

All arithmetic is fp32 (bf16 / fp16 inputs widened on load, dK / dV rounded on store).
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .common import f32, fast_exp as _exp, loop_kinds, register_lanes, row_tile, vec_width


def build_backward(*, dqk: int, dv: int, group: int, bm: int, bn: int, dtype: str, causal: bool,
                   has_window: bool, sparse: bool, target_kind: str = "llvm", wide: bool | None = None) -> tvm.IRModule:
    """IRModule with ``main`` for one specialisation (batch, heads, lengths, chunks stay symbolic).

    ``main(q, k, v, do, lse, delta, qoff, qidx, dqp, dk, dv, window, scale)``:
    q ``[B, Hq, Sq, dqk]``, k ``[B, Hkv, Sk, dqk]``, v ``[B, Hkv, Sk, dv]``, do ``[B, Hq, Sq, dv]``
    (``dtype``); lse, delta ``[B, Hq, Sq]`` float32; qoff int32 ``[B * Hkv * nblocks + 1]`` and
    qidx int32 ``[n]`` (sparse: the queries of block ``(b, hk, blk)`` are
    ``qidx[qoff[i]:qoff[i + 1]]`` with ``i = (b * Hkv + hk) * nblocks + blk``; placeholders otherwise); dqp float32 ``[C, B, Hq, Sq, dqk]``
    (zeroed by the caller, unscaled); dk, dv like k, v (fully written). ``wide``: 32-lane register
    tiles for AVX-512's 32 registers (default: whether the target has it).
    """
    G, BM, BN, DQK, DV = group, bm, bn, dqk, dv
    R = G * BM  # rows of a query tile: G heads x BM queries, row r = g * BM + query slot
    RT = row_tile(R, (6, 4, 2, 1))  # rows per register tile of the R-row GEMMs
    lanes = register_lanes(target_kind, wide)
    JV = vec_width(bn, lanes)  # lanes over keys in S and dP
    QV = vec_width(dqk, lanes)  # lanes over the qk head dim (dK, dQ)
    EV = vec_width(dv, lanes)  # lanes over the v head dim (dV)
    JT = row_tile(bn, (4, 2, 1))  # keys per register tile of dK / dV
    CR = max(RT * JV, JT * QV, JT * EV, RT * QV)
    FL = vec_width(dqk, (8, 4, 2, 1))  # lanes of the finite checks (at most one AVX2 register)
    FLV = vec_width(dv, tuple(w for w in (8, 4, 2, 1) if w <= FL))
    CAUSAL, WIN, SPARSE = causal, has_window, sparse
    PAR, VEC, SCOPE = loop_kinds(target_kind)

    @T.prim_func
    def main(q_h: T.handle, k_h: T.handle, v_h: T.handle, do_h: T.handle, lse_h: T.handle, delta_h: T.handle,
             qoff_h: T.handle, qidx_h: T.handle, dqp_h: T.handle, dk_h: T.handle, dv_h: T.handle,
             window: T.int32, scale: T.float32):
        B = T.int32()
        Hq = T.int32()
        Hkv = T.int32()
        Sq = T.int32()
        Sk = T.int32()
        C = T.int32()
        NOFF = T.int32()
        NIDX = T.int32()
        Q = T.match_buffer(q_h, (B, Hq, Sq, DQK), dtype)
        K = T.match_buffer(k_h, (B, Hkv, Sk, DQK), dtype)
        V = T.match_buffer(v_h, (B, Hkv, Sk, DV), dtype)
        DO = T.match_buffer(do_h, (B, Hq, Sq, DV), dtype)
        Lse = T.match_buffer(lse_h, (B, Hq, Sq), "float32")
        Delta = T.match_buffer(delta_h, (B, Hq, Sq), "float32")
        QOff = T.match_buffer(qoff_h, (NOFF,), "int32")
        QIdx = T.match_buffer(qidx_h, (NIDX,), "int32")
        DQp = T.match_buffer(dqp_h, (C, B, Hq, Sq, DQK), "float32")
        DK = T.match_buffer(dk_h, (B, Hkv, Sk, DQK), dtype)
        DVo = T.match_buffer(dv_h, (B, Hkv, Sk, DV), dtype)
        for task in PAR(B * Hkv * C):
            Kr = T.alloc_buffer((BN, DQK), "float32", scope=SCOPE)  # K block, row-major (dQ)
            Kt = T.alloc_buffer((DQK, BN), "float32", scope=SCOPE)  # K block transposed (S)
            Vt = T.alloc_buffer((DV, BN), "float32", scope=SCOPE)  # V block transposed (dP)
            dKa = T.alloc_buffer((BN, DQK), "float32", scope=SCOPE)  # dK of the block (scaled by Qs)
            dVa = T.alloc_buffer((BN, DV), "float32", scope=SCOPE)
            Qs = T.alloc_buffer((R, DQK), "float32", scope=SCOPE)  # scaled queries of the tile
            dOs = T.alloc_buffer((R, DV), "float32", scope=SCOPE)
            Ls = T.alloc_buffer((R,), "float32", scope=SCOPE)
            Dl = T.alloc_buffer((R,), "float32", scope=SCOPE)
            Ps = T.alloc_buffer((R, BN), "float32", scope=SCOPE)  # logits, then probabilities
            dSs = T.alloc_buffer((R, BN), "float32", scope=SCOPE)  # dP, then dS
            Qi = T.alloc_buffer((BM,), "int32", scope=SCOPE)  # query index of each slot, -1: empty
            Creg = T.alloc_buffer((CR,), "float32", scope=SCOPE)
            Ib = T.alloc_buffer((4,), "int32", scope=SCOPE)  # query list [lo, hi), select-in-GEMMs flag
            Fl = T.alloc_buffer((FL,), "float32", scope=SCOPE)  # lane flags: a non-finite value seen
            Sc = T.alloc_buffer((2,), "float32", scope=SCOPE)  # flags: K block, K block or tile rows
            b = task // (Hkv * C)
            hk = task // C % Hkv
            c = task % C
            off = Sk - Sq  # key position of query 0
            NB = T.ceildiv(Sk, BN)
            for nn in range(T.ceildiv(NB - c, C)):
                n = c + nn * C
                j0 = n * BN
                nv = T.min(BN, Sk - j0)  # keys of this block present
                for l in VEC(FL):
                    Fl[l] = f32(0.0)
                for j in range(BN):
                    for d in VEC(DQK):
                        Kr[j, d] = T.if_then_else(j < nv, T.Cast("float32", K[b, hk, T.min(j0 + j, Sk - 1), d]), f32(0.0))
                    for do in range(DQK // FL):
                        for l in VEC(FL):
                            Fl[l] = T.max(Fl[l], T.Select(T.abs(Kr[j, do * FL + l]) <= T.max_value("float32"), f32(0.0), f32(1.0)))
                    for d in range(DQK):
                        Kt[d, j] = Kr[j, d]
                    for e in range(DV):
                        Vt[e, j] = T.if_then_else(j < nv, T.Cast("float32", V[b, hk, T.min(j0 + j, Sk - 1), e]), f32(0.0))
                    for d in VEC(DQK):
                        dKa[j, d] = f32(0.0)
                    for e in VEC(DV):
                        dVa[j, e] = f32(0.0)
                Sc[0] = f32(0.0)  # 1: the block's K holds NaN or +-inf
                for l in range(FL):
                    Sc[0] = T.max(Sc[0], Fl[l])
                # the queries that see this block: entries [lo, hi) of the list
                if SPARSE:
                    Ib[0] = QOff[(b * Hkv + hk) * NB + n]
                    Ib[1] = QOff[(b * Hkv + hk) * NB + n + 1]
                else:
                    Ib[0] = 0
                    Ib[1] = Sq
                    if CAUSAL:
                        Ib[0] = T.max(j0 - off, 0)
                    if WIN:
                        Ib[1] = T.min(j0 + nv - 1 + window - off, Sq)
                    Ib[1] = T.max(Ib[1], Ib[0])
                for t in range(T.ceildiv(Ib[1] - Ib[0], BM)):
                    for s in range(BM):
                        if SPARSE:
                            Qi[s] = T.if_then_else(Ib[0] + t * BM + s < Ib[1], QIdx[T.min(Ib[0] + t * BM + s, Ib[1] - 1)], -1)
                        else:
                            Qi[s] = T.if_then_else(Ib[0] + t * BM + s < Ib[1], Ib[0] + t * BM + s, -1)
                    for r in range(R):
                        for d in VEC(DQK):
                            Qs[r, d] = T.if_then_else(
                                Qi[r % BM] >= 0, T.Cast("float32", Q[b, hk * G + r // BM, T.max(Qi[r % BM], 0), d]) * scale, f32(0.0))
                        for e in VEC(DV):
                            dOs[r, e] = T.if_then_else(
                                Qi[r % BM] >= 0, T.Cast("float32", DO[b, hk * G + r // BM, T.max(Qi[r % BM], 0), e]), f32(0.0))
                        Ls[r] = Lse[b, hk * G + r // BM, T.max(Qi[r % BM], 0)]
                        Dl[r] = Delta[b, hk * G + r // BM, T.max(Qi[r % BM], 0)]
                    # The accumulating GEMMs select by visibility only where it matters: in a tile
                    # with masked pairs (queries ascend: the first has the smallest position) whose
                    # K block or Q / dO rows hold a non-finite value (0 * NaN = NaN).
                    Ib[2] = 0
                    if CAUSAL or SPARSE:
                        if j0 + nv - 1 > off + Qi[0]:
                            Ib[2] = 1
                    if WIN:
                        if j0 <= off + Qi[T.min(Ib[1] - Ib[0] - t * BM, BM) - 1] - window:
                            Ib[2] = 1
                    if Ib[2] == 1:
                        Sc[1] = Sc[0]
                        if Sc[1] == f32(0.0):
                            for l in VEC(FL):
                                Fl[l] = f32(0.0)
                            for r in range(R):
                                for do in range(DQK // FL):
                                    for l in VEC(FL):
                                        Fl[l] = T.max(Fl[l], T.Select(T.abs(Qs[r, do * FL + l]) <= T.max_value("float32"), f32(0.0), f32(1.0)))
                                for eo in range(DV // FLV):
                                    for l in VEC(FLV):
                                        Fl[l] = T.max(Fl[l], T.Select(T.abs(dOs[r, eo * FLV + l]) <= T.max_value("float32"), f32(0.0), f32(1.0)))
                            for l in range(FL):
                                Sc[1] = T.max(Sc[1], Fl[l])
                        if Sc[1] == f32(0.0):
                            Ib[2] = 0
                    # S = Qs @ K^T -> Ps, dP = dO @ V^T -> dSs  ([R, D] @ [D, BN]; RT x JV register tiles)
                    for jo in range(BN // JV):
                        for ro in range(R // RT):
                            for ri in T.unroll(RT):
                                for ji in VEC(JV):
                                    Creg[ri * JV + ji] = f32(0.0)
                            for d in range(DQK):
                                for ri in T.unroll(RT):
                                    for ji in VEC(JV):
                                        Creg[ri * JV + ji] = Creg[ri * JV + ji] + Qs[ro * RT + ri, d] * Kt[d, jo * JV + ji]
                            for ri in T.unroll(RT):
                                for ji in VEC(JV):
                                    Ps[ro * RT + ri, jo * JV + ji] = Creg[ri * JV + ji]
                            for ri in T.unroll(RT):
                                for ji in VEC(JV):
                                    Creg[ri * JV + ji] = f32(0.0)
                            for e in range(DV):
                                for ri in T.unroll(RT):
                                    for ji in VEC(JV):
                                        Creg[ri * JV + ji] = Creg[ri * JV + ji] + dOs[ro * RT + ri, e] * Vt[e, jo * JV + ji]
                            for ri in T.unroll(RT):
                                for ji in VEC(JV):
                                    dSs[ro * RT + ri, jo * JV + ji] = Creg[ri * JV + ji]
                    # P = exp(S - lse), dS = P * (dP - Delta); exactly 0 where the pair is masked
                    for r in range(R):
                        for j in VEC(BN):
                            Ps[r, j] = T.Select(
                                Qi[r % BM] >= 0 and j < nv
                                and (not (CAUSAL or SPARSE) or j0 + j <= off + Qi[r % BM])
                                and (not WIN or j0 + j > off + Qi[r % BM] - window),
                                _exp(Ps[r, j] - Ls[r]), f32(0.0))
                            dSs[r, j] = T.Select(
                                Qi[r % BM] >= 0 and j < nv
                                and (not (CAUSAL or SPARSE) or j0 + j <= off + Qi[r % BM])
                                and (not WIN or j0 + j > off + Qi[r % BM] - window),
                                Ps[r, j] * (dSs[r, j] - Dl[r]), f32(0.0))
                    # dV += P^T dO, dK += dS^T Qs  ([BN, R] @ [R, D]; JT keys x a D vector)
                    for jo in range(BN // JT):
                        for eo in range(DV // EV):
                            for ji in T.unroll(JT):
                                for ei in VEC(EV):
                                    Creg[ji * EV + ei] = dVa[jo * JT + ji, eo * EV + ei]
                            if Ib[2] == 0:
                                for r in range(R):
                                    for ji in T.unroll(JT):
                                        for ei in VEC(EV):
                                            Creg[ji * EV + ei] = Creg[ji * EV + ei] + Ps[r, jo * JT + ji] * dOs[r, eo * EV + ei]
                            else:
                                for r in range(R):
                                    for ji in T.unroll(JT):
                                        for ei in VEC(EV):
                                            Creg[ji * EV + ei] = Creg[ji * EV + ei] + T.Select(
                                                Qi[r % BM] >= 0
                                                and (not (CAUSAL or SPARSE) or j0 + jo * JT + ji <= off + Qi[r % BM])
                                                and (not WIN or j0 + jo * JT + ji > off + Qi[r % BM] - window),
                                                Ps[r, jo * JT + ji] * dOs[r, eo * EV + ei], f32(0.0))
                            for ji in T.unroll(JT):
                                for ei in VEC(EV):
                                    dVa[jo * JT + ji, eo * EV + ei] = Creg[ji * EV + ei]
                        for do in range(DQK // QV):
                            for ji in T.unroll(JT):
                                for di in VEC(QV):
                                    Creg[ji * QV + di] = dKa[jo * JT + ji, do * QV + di]
                            if Ib[2] == 0:
                                for r in range(R):
                                    for ji in T.unroll(JT):
                                        for di in VEC(QV):
                                            Creg[ji * QV + di] = Creg[ji * QV + di] + dSs[r, jo * JT + ji] * Qs[r, do * QV + di]
                            else:
                                for r in range(R):
                                    for ji in T.unroll(JT):
                                        for di in VEC(QV):
                                            Creg[ji * QV + di] = Creg[ji * QV + di] + T.Select(
                                                Qi[r % BM] >= 0
                                                and (not (CAUSAL or SPARSE) or j0 + jo * JT + ji <= off + Qi[r % BM])
                                                and (not WIN or j0 + jo * JT + ji > off + Qi[r % BM] - window),
                                                dSs[r, jo * JT + ji] * Qs[r, do * QV + di], f32(0.0))
                            for ji in T.unroll(JT):
                                for di in VEC(QV):
                                    dKa[jo * JT + ji, do * QV + di] = Creg[ji * QV + di]
                    # dQ[rows] += dS @ K  ([R, BN] @ [BN, Dqk]; RT rows x a Dqk vector), unscaled
                    for ro in range(R // RT):
                        for do in range(DQK // QV):
                            for ri in T.unroll(RT):
                                for di in VEC(QV):
                                    Creg[ri * QV + di] = f32(0.0)
                            if Ib[2] == 0:
                                for j in range(BN):
                                    for ri in T.unroll(RT):
                                        for di in VEC(QV):
                                            Creg[ri * QV + di] = Creg[ri * QV + di] + dSs[ro * RT + ri, j] * Kr[j, do * QV + di]
                            else:
                                for j in range(BN):
                                    for ri in T.unroll(RT):
                                        for di in VEC(QV):
                                            Creg[ri * QV + di] = Creg[ri * QV + di] + T.Select(
                                                Qi[(ro * RT + ri) % BM] >= 0
                                                and (not (CAUSAL or SPARSE) or j0 + j <= off + Qi[(ro * RT + ri) % BM])
                                                and (not WIN or j0 + j > off + Qi[(ro * RT + ri) % BM] - window),
                                                dSs[ro * RT + ri, j] * Kr[j, do * QV + di], f32(0.0))
                            for ri in T.unroll(RT):
                                if Qi[(ro * RT + ri) % BM] >= 0:
                                    for di in VEC(QV):
                                        DQp[c, b, hk * G + (ro * RT + ri) // BM, Qi[(ro * RT + ri) % BM], do * QV + di] = (
                                            DQp[c, b, hk * G + (ro * RT + ri) // BM, Qi[(ro * RT + ri) % BM], do * QV + di]
                                            + Creg[ri * QV + di])
                # the block's gradients are complete: every query that sees it has been visited
                for j in range(nv):
                    for d in VEC(DQK):
                        DK[b, hk, j0 + j, d] = T.Cast(dtype, dKa[j, d])
                    for e in VEC(DV):
                        DVo[b, hk, j0 + j, e] = T.Cast(dtype, dVa[j, e])

    return tvm.IRModule({"main": main})
