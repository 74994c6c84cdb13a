"""Decode and sparse kernel in TensorIR: few query rows against many (or selected) KV tiles.

One task per (batch, KV head, query): its rows are the ``group`` query heads that share the KV
head, so each K/V row is read once for the whole GQA group. Decode is memory bound, so K and V
are read in place from the torch cache (no transposed copy): ``Q @ K^T`` is computed as dot
products over the contiguous head dimension (16-lane partial sums, one chain per row, reduced at
the end), ``P @ V`` as an outer product over contiguous V rows.

Two tile sources:
* ``sparse=False`` (decode): the contiguous KV tiles the query can see, bounded by its position
  (``cache_seqlens[b] - Sq + i``) and the window.
* ``sparse=True``: the blocks listed in ``indices[b, hk, i, :]``; ``-1`` pads and a block listed
  twice counts once. Keys after the query are masked (causal inside its own block).

``scores=True`` (decode tiles, no window or sink; the tile is the HySparse block) also writes the
block scores of ``attention_with_block_scores`` for a few queries per sequence: each tile's max
logit per head goes to ``tmax [B, Hq, Sq, nblocks]``; once the row's lse is known,
``score [B, Hkv, Sq, nblocks]`` = max over the group of ``exp(tmax - lse)``, 0 for blocks the
query cannot see. The cache is read in place, as for decode: no K^T / V workspace.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .common import NEG, fast_exp, f32, loop_kinds, row_tile, vec_width


def build_rows(*, dqk: int, dv: int, group: int, bn: int, dtype: str, sparse: bool,
               has_window: bool, has_sink: bool, scores: bool = False, target_kind: str = "llvm") -> tvm.IRModule:
    """IRModule with ``main`` for one specialisation (batch, heads and lengths stay symbolic)."""
    G, DQK, DV, BN = group, dqk, dv, bn
    DW = vec_width(dqk)  # lanes of the dot products
    EV = vec_width(dv)  # lanes of P @ V
    RT = row_tile(G)
    VL = vec_width(bn, (8, 4, 2, 1))
    CR = max(G * DW, RT * EV)
    SPARSE, WIN, SINK, BS = sparse, has_window, has_sink, scores
    if scores and (sparse or has_window or has_sink):
        raise ValueError("scores: block scores are built for decode tiles without window or sink")
    WIN_I = 1 if has_window else 0
    NEGC = f32(NEG)
    PAR, VEC, SCOPE = loop_kinds(target_kind)

    @T.prim_func
    def main(q_h: T.handle, k_h: T.handle, v_h: T.handle, kvlen_h: T.handle, idx_h: T.handle,
             sink_h: T.handle, out_h: T.handle, lse_h: T.handle, tmax_h: T.handle, score_h: T.handle,
             window: T.int32, scale: T.float32):
        B = T.int32()
        Hq = T.int32()
        Hkv = T.int32()
        Sq = T.int32()
        Sk = T.int32()
        Hs = T.int32()
        IB = T.int32()
        IH = T.int32()
        IS = T.int32()
        NK = T.int32()
        # block-score buffers have their own dims: without scores the launcher passes placeholders
        TB = T.int32()
        TH = T.int32()
        TS = T.int32()
        NB = T.int32()
        SB = T.int32()
        SH = T.int32()
        SS = T.int32()
        NBs = T.int32()
        Q = T.match_buffer(q_h, (B, Hq, Sq, DQK), dtype)
        K = T.match_buffer(k_h, (B, Hkv, Sk, DQK), dtype)
        V = T.match_buffer(v_h, (B, Hkv, Sk, DV), dtype)
        KvLen = T.match_buffer(kvlen_h, (B,), "int32")
        Idx = T.match_buffer(idx_h, (IB, IH, IS, NK), "int32")  # [B, Hkv, Sq, k] when sparse
        Sink = T.match_buffer(sink_h, (Hs,), "float32")
        Out = T.match_buffer(out_h, (B, Hq, Sq, DV), dtype)
        Lse = T.match_buffer(lse_h, (B, Hq, Sq), "float32")
        Tmax = T.match_buffer(tmax_h, (TB, TH, TS, NB), "float32")  # [B, Hq, Sq, nblocks]
        Score = T.match_buffer(score_h, (SB, SH, SS, NBs), "float32")  # [B, Hkv, Sq, nblocks]
        for task in PAR(B * Hkv * Sq):
            Qs = T.alloc_buffer((G, DQK), "float32", scope=SCOPE)
            Ss = T.alloc_buffer((G, BN), "float32", scope=SCOPE)
            Acc = T.alloc_buffer((G, DV), "float32", scope=SCOPE)
            Mx = T.alloc_buffer((G,), "float32", scope=SCOPE)
            Ls = T.alloc_buffer((G,), "float32", scope=SCOPE)
            Al = T.alloc_buffer((G,), "float32", scope=SCOPE)
            Red = T.alloc_buffer((VL,), "float32", scope=SCOPE)
            Sc = T.alloc_buffer((4,), "float32", scope=SCOPE)
            Creg = T.alloc_buffer((CR,), "float32", scope=SCOPE)
            Ib = T.alloc_buffer((4,), "int32", scope=SCOPE)  # tile range / current block / keep flag
            b = task // (Hkv * Sq)
            hk = task // Sq % Hkv
            i = task % Sq
            L = KvLen[b]
            pos = L - Sq + i  # key position of this query (the cache holds it)
            for g in range(G):
                for d in VEC(DQK):
                    Qs[g, d] = T.Cast("float32", Q[b, hk * G + g, i, d]) * scale
                for e in VEC(DV):
                    Acc[g, e] = f32(0.0)
                Mx[g] = NEGC
                Ls[g] = f32(0.0)
            if SPARSE:
                Ib[0] = 0
                Ib[1] = NK
            else:
                Ib[0] = 0
                Ib[1] = T.ceildiv(T.max(T.min(pos + 1, T.min(L, Sk)), 0), BN)
                if WIN:
                    Ib[0] = T.max(pos - window + 1, 0) // BN
            for t in range(T.max(Ib[1] - Ib[0], 0)):
                Ib[3] = 1
                if SPARSE:
                    Ib[2] = Idx[b, hk, i, t]
                    if Ib[2] < 0 or Ib[2] * BN > pos:
                        Ib[3] = 0  # padding, or a block entirely after the query
                    for u in range(t):
                        if Idx[b, hk, i, u] == Ib[2]:
                            Ib[3] = 0  # listed before: each block counts once
                else:
                    Ib[2] = Ib[0] + t
                if Ib[3] == 1:
                    j0 = Ib[2] * BN
                    nv = T.min(BN, Sk - j0)  # keys of this tile present in the cache
                    # Only the keys this query sees, [jlo, jhi) of the tile, are read: a masked
                    # key's probability is 0, but 0 * NaN (an unwritten cache slot, a future key)
                    # is NaN, so masked keys must never enter P @ V. (pos < L: keys past the
                    # length are after the query.)
                    jlo = T.max(pos - window + 1 - j0, 0) * WIN_I
                    jhi = T.min(nv, pos + 1 - j0)
                    # S[g, j] = Qs[g, :] . K[j, :]  (dot products over Dqk, DW-lane partial sums)
                    for jj in range(T.max(jhi - jlo, 0)):
                        j = jlo + jj
                        for g in T.unroll(G):
                            for l in VEC(DW):
                                Creg[g * DW + l] = f32(0.0)
                        for dd in range(DQK // DW):
                            for g in T.unroll(G):
                                for l in VEC(DW):
                                    Creg[g * DW + l] = Creg[g * DW + l] + Qs[g, dd * DW + l] * T.Cast("float32", K[b, hk, j0 + j, dd * DW + l])
                        # horizontal sums as a tree of vector adds (16 -> 8 -> 4 -> 2 -> 1 lanes):
                        # a scalar chain of 16 dependent adds per row would cost more than the FMAs
                        for g in T.unroll(G):
                            if DW >= 16:
                                for l in VEC(8):
                                    Creg[g * DW + l] = Creg[g * DW + l] + Creg[g * DW + 8 + l]
                            if DW >= 8:
                                for l in VEC(4):
                                    Creg[g * DW + l] = Creg[g * DW + l] + Creg[g * DW + 4 + l]
                            if DW >= 4:
                                for l in VEC(2):
                                    Creg[g * DW + l] = Creg[g * DW + l] + Creg[g * DW + 2 + l]
                            if DW >= 2:
                                Ss[g, j] = Creg[g * DW] + Creg[g * DW + 1]
                            else:
                                Ss[g, j] = Creg[g * DW]
                    for g in range(G):
                        for jo in range(BN // VL):
                            for l in VEC(VL):
                                Ss[g, jo * VL + l] = T.Select(
                                    (jo * VL + l < nv) and (j0 + jo * VL + l < L) and (j0 + jo * VL + l <= pos)
                                    and (not WIN or j0 + jo * VL + l > pos - window),
                                    Ss[g, jo * VL + l], NEGC)
                        for l in VEC(VL):
                            Red[l] = NEGC
                        for jo in range(BN // VL):
                            for l in VEC(VL):
                                Red[l] = T.max(Red[l], Ss[g, jo * VL + l])
                        Sc[0] = NEGC
                        for l in range(VL):
                            Sc[0] = T.max(Sc[0], Red[l])
                        if BS:
                            Tmax[b, hk * G + g, i, Ib[2]] = Sc[0]
                        Sc[1] = T.max(Mx[g], Sc[0])
                        Al[g] = fast_exp(Mx[g] - Sc[1])
                        Mx[g] = Sc[1]
                        for l in VEC(VL):
                            Red[l] = f32(0.0)
                        for jo in range(BN // VL):
                            for l in VEC(VL):
                                # masked -> 0; a NaN logit stays NaN (float comparisons are ordered: NaN == x is false)
                                Ss[g, jo * VL + l] = T.Select(Ss[g, jo * VL + l] == NEGC, f32(0.0), fast_exp(Ss[g, jo * VL + l] - Sc[1]))
                                Red[l] = Red[l] + Ss[g, jo * VL + l]
                        Sc[2] = f32(0.0)
                        for l in range(VL):
                            Sc[2] = Sc[2] + Red[l]
                        Ls[g] = Ls[g] * Al[g] + Sc[2]
                    # Acc = Acc * alpha + P @ V over the visible keys ([G, n] @ [n, Dv])
                    for ro in range(G // RT):
                        for eo in range(DV // EV):
                            for ri in T.unroll(RT):
                                for ei in VEC(EV):
                                    Creg[ri * EV + ei] = Acc[ro * RT + ri, eo * EV + ei] * Al[ro * RT + ri]
                            for jj in range(T.max(jhi - jlo, 0)):
                                for ri in T.unroll(RT):
                                    for ei in VEC(EV):
                                        Creg[ri * EV + ei] = Creg[ri * EV + ei] + Ss[ro * RT + ri, jlo + jj] * T.Cast("float32", V[b, hk, j0 + jlo + jj, eo * EV + ei])
                            for ri in T.unroll(RT):
                                for ei in VEC(EV):
                                    Acc[ro * RT + ri, eo * EV + ei] = Creg[ri * EV + ei]
            for g in range(G):
                Sc[0] = Mx[g]
                Sc[1] = f32(1.0)
                Sc[2] = Ls[g]
                if SINK:
                    Sc[0] = T.max(Mx[g], Sink[hk * G + g])
                    Sc[1] = fast_exp(Mx[g] - Sc[0])
                    Sc[2] = Ls[g] * Sc[1] + fast_exp(Sink[hk * G + g] - Sc[0])
                # 0: nothing seen. (Not `!= 0`: float comparisons are ordered, false for NaN,
                # and a NaN denominator must give NaN.)
                if Sc[2] == f32(0.0):
                    Sc[3] = f32(0.0)
                    Al[g] = T.infinity("float32") * f32(-1.0)
                else:
                    Sc[3] = Sc[1] / Sc[2]
                    Al[g] = Sc[0] + T.log(Sc[2])
                Lse[b, hk * G + g, i] = Al[g]
                for e in VEC(DV):
                    Out[b, hk * G + g, i, e] = T.Cast(dtype, Acc[g, e] * Sc[3])
            if BS:
                # score = max over the group of exp(tmax - lse) for the tiles the query saw
                # ([0, Ib[1]): by position, as the dense kernel), 0 past them. A NaN row has lse
                # NaN and gives NaN for every block it sees; NaN wins the max.
                for blk in range(NBs):
                    Sc[0] = f32(0.0)
                    if blk < Ib[1]:
                        for g in range(G):
                            Sc[1] = T.exp(Tmax[b, hk * G + g, i, blk] - Al[g])
                            Sc[0] = T.Select(Sc[1] > Sc[0] or T.isnan(Sc[1]), Sc[1], Sc[0])
                    Score[b, hk, i, blk] = Sc[0]

    return tvm.IRModule({"main": main})
