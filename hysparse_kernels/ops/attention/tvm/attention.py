"""Dense prefill kernel (full causal, sliding window, sink, HySparse block scores) in TensorIR.

Layout of the work
------------------
* ``prep``: one pass over K and V that writes ``kt [B, Hkv, Skp / BN, Dqk, BN]`` (K transposed tile
  by tile, fp32) and ``vp [B, Hkv, Skp, Dv]`` (fp32), both zero-padded to a multiple of the KV
  tile, and ``bad [B, Hkv, Skp / BN]`` (1.0 where a V tile holds NaN or +-inf); tiles at or past
  a sequence's key count ``kv_len[b]`` (a padded cache) are skipped. Each K^T tile is one contiguous block: a plain ``[Dqk, Skp]`` transpose would put the
  rows a GEMM step reads ``4 * Skp`` bytes apart (16 KiB at 4K keys), all in one L1 set. Every query
  block then reads K^T tiles as contiguous vectors, so ``Q @ K^T`` is an outer-product GEMM with
  no per-tile transpose, and bf16 is widened once instead of once per query block.
* ``main``: ``parallel`` over (batch, KV head, query block). A task holds the ``R = group * BM``
  query rows of all query heads that share the KV head (GQA: each K/V tile is loaded once for
  the whole group) and walks only the KV tiles its rows can see (causal / window bounds at tile
  granularity, exact masks inside boundary tiles), with the online softmax:
  ``m' = max(m, rowmax(S))``, ``acc = acc * e^(m - m') + P @ V``, ``l = l * e^(m - m') + rowsum(P)``.
* Block scores: the raw row maximum of each KV tile is written to a workspace ``tmax``; once the
  row's final lse is known, ``score = max over the group of exp(tmax - lse)`` (the max softmax
  probability inside the block), so no ``S x S`` matrix is stored. The KV tile is the block.
* Per-sequence key counts ``kv_len [B]`` (``cache_seqlens`` of a padded cache; ``Sk`` for every
  sequence otherwise): sequence b sees its first ``kv_len[b]`` keys and its queries sit at
  ``kv_len[b] - Sq + i``; slots past ``kv_len[b]`` are never read into a result, whatever they hold.

All arithmetic is fp32 (bf16 inputs are widened on load, outputs rounded on store).
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .common import NEG, fast_exp, f32, half_lanes, loop_kinds, register_lanes, row_tile, vec_width


def build_dense(*, dqk: int, dv: int, group: int, bm: int, bn: int, dtype: str, causal: bool,
                has_window: bool, has_sink: bool, block_scores: bool, target_kind: str = "llvm", six_rows: bool = True,
                wide: bool | None = None) -> tvm.IRModule:
    """IRModule with ``prep`` and ``main`` for one specialisation (everything else is symbolic).
    ``wide``: register tiles for AVX-512 (default: whether the target has it)."""
    R = group * bm  # query rows per task: `group` heads x `bm` queries
    # Rows per register tile: 6 rows x 16 lanes = 12 AVX2 accumulators (+2 loads +1 broadcast =
    # 15 of 16 registers) keep 12 independent FMA chains in flight where 4 x 16 keeps only 8, the
    # bare minimum for two FMA ports of latency 4 (measured: +16% at S=4K on one core).
    RT = row_tile(R, (6, 4, 2, 1) if six_rows else (4, 2, 1))
    # With AVX-512's 32 registers the tiles are 32 lanes wide (6 x 32: 12 zmm accumulators).
    lanes = register_lanes(target_kind, wide)
    JV = vec_width(bn, lanes)  # lanes of the key axis in Q @ K^T
    EV = vec_width(dv, lanes)  # lanes of the value axis in P @ V
    VL = vec_width(bn, half_lanes(lanes))  # lanes of the row reductions
    CR = RT * max(JV, EV)  # register-tile scratch
    DQK, DV, BN, G, BM = dqk, dv, bn, group, bm
    CAUSAL, WIN, SINK, BS = causal, has_window, has_sink, block_scores
    NEGC = f32(NEG)
    PAR, VEC, SCOPE = loop_kinds(target_kind)

    @T.prim_func
    def prep(k_h: T.handle, v_h: T.handle, kvlen_h: T.handle, kt_h: T.handle, vp_h: T.handle, bad_h: T.handle):
        B = T.int32()
        Hkv = T.int32()
        Sk = T.int32()
        Skp = T.int32()
        K = T.match_buffer(k_h, (B, Hkv, Sk, DQK), dtype)
        V = T.match_buffer(v_h, (B, Hkv, Sk, DV), dtype)
        NT = T.int32()
        Kt = T.match_buffer(kt_h, (B, Hkv, NT, DQK, BN), "float32")
        Vp = T.match_buffer(vp_h, (B, Hkv, Skp, DV), "float32")
        Bad = T.match_buffer(bad_h, (B, Hkv, NT), "float32")  # 1 where a V tile holds NaN or +-inf
        KvLen = T.match_buffer(kvlen_h, (B,), "int32")
        for task in PAR(B * Hkv * (Skp // BN)):
            Fl = T.alloc_buffer((EV,), "float32", scope=SCOPE)
            b = task // (Hkv * (Skp // BN))
            hk = task // (Skp // BN) % Hkv
            j0 = task % (Skp // BN) * BN
            # Tiles past the sequence's keys (a padded cache) are never read by ``main``: skipped.
            if j0 < KvLen[b]:
                # [BN, Dqk] rows of K -> [Dqk, BN] columns of K^T; the tile stays in L1/L2.
                for jj in range(BN):
                    for d in VEC(DQK):
                        Kt[b, hk, j0 // BN, d, jj] = T.if_then_else(
                            j0 + jj < Sk, T.Cast("float32", K[b, hk, T.min(j0 + jj, Sk - 1), d]), f32(0.0))
                    for e in VEC(DV):
                        Vp[b, hk, j0 + jj, e] = T.if_then_else(
                            j0 + jj < Sk, T.Cast("float32", V[b, hk, T.min(j0 + jj, Sk - 1), e]), f32(0.0))
                # |x| <= FLT_MAX fails for NaN and +-inf (an ordered comparison); EV-lane partial maxima
                for l in VEC(EV):
                    Fl[l] = f32(0.0)
                for jj in range(BN):
                    for eo in range(DV // EV):
                        for l in VEC(EV):
                            Fl[l] = T.max(Fl[l], T.Select(T.abs(Vp[b, hk, j0 + jj, eo * EV + l]) <= T.max_value("float32"),
                                                          f32(0.0), f32(1.0)))
                for l in range(1, EV):
                    Fl[0] = T.max(Fl[0], Fl[l])
                Bad[b, hk, j0 // BN] = Fl[0]

    @T.prim_func
    def main(q_h: T.handle, kt_h: T.handle, vp_h: T.handle, bad_h: T.handle, kvlen_h: T.handle, sink_h: T.handle,
             out_h: T.handle, lse_h: T.handle, tmax_h: T.handle, score_h: T.handle,
             window: T.int32, scale: T.float32):
        B = T.int32()
        Hq = T.int32()
        Hkv = T.int32()
        Sq = T.int32()
        Skp = T.int32()
        Hs = T.int32()
        # block-score buffers get their own symbolic dims: without block scores the launcher
        # passes 1-element placeholders
        TB = T.int32()
        TH = T.int32()
        TS = T.int32()
        NB = T.int32()
        SB = T.int32()
        SH = T.int32()
        SS = T.int32()
        NBs = T.int32()
        Q = T.match_buffer(q_h, (B, Hq, Sq, DQK), dtype)
        NT = T.int32()
        Kt = T.match_buffer(kt_h, (B, Hkv, NT, DQK, BN), "float32")
        Vp = T.match_buffer(vp_h, (B, Hkv, Skp, DV), "float32")
        Bad = T.match_buffer(bad_h, (B, Hkv, NT), "float32")
        KvLen = T.match_buffer(kvlen_h, (B,), "int32")
        Sink = T.match_buffer(sink_h, (Hs,), "float32")
        Out = T.match_buffer(out_h, (B, Hq, Sq, DV), dtype)
        Lse = T.match_buffer(lse_h, (B, Hq, Sq), "float32")
        Tmax = T.match_buffer(tmax_h, (TB, TH, TS, NB), "float32")  # [B, Hq, Sq, nblocks]
        Score = T.match_buffer(score_h, (SB, SH, SS, NBs), "float32")  # [B, Hkv, Sq, nblocks]
        for task in PAR(B * Hkv * T.ceildiv(Sq, BM)):
            # per-task scratch (one workspace allocation per task, reused over its KV tiles)
            Qs = T.alloc_buffer((R, DQK), "float32", scope=SCOPE)  # scaled queries
            Ss = T.alloc_buffer((R, BN), "float32", scope=SCOPE)  # logits, then probabilities
            Acc = T.alloc_buffer((R, DV), "float32", scope=SCOPE)  # unnormalised output
            Mx = T.alloc_buffer((R,), "float32", scope=SCOPE)  # running max
            Ls = T.alloc_buffer((R,), "float32", scope=SCOPE)  # running denominator
            Al = T.alloc_buffer((R,), "float32", scope=SCOPE)  # rescale factor of this tile
            Red = T.alloc_buffer((VL,), "float32", scope=SCOPE)  # vector partials of a row reduction
            Sc = T.alloc_buffer((4,), "float32", scope=SCOPE)  # scalars
            Creg = T.alloc_buffer((CR,), "float32", scope=SCOPE)  # register tile (promoted to SIMD registers)
            Ib = T.alloc_buffer((2,), "int32", scope=SCOPE)  # KV tile range
            nqb = T.ceildiv(Sq, BM)
            b = task // (Hkv * nqb)
            hk = task // nqb % Hkv
            q0 = task % nqb * BM
            L = KvLen[b]
            # Queries are bottom-right aligned: row r (head g = r // BM, query q0 + r % BM)
            # sits at key position L - Sq + q0 + r % BM.
            for r in range(R):
                for d in VEC(DQK):
                    Qs[r, d] = T.if_then_else(
                        q0 + r % BM < Sq,
                        T.Cast("float32", Q[b, hk * G + r // BM, T.min(q0 + r % BM, Sq - 1), d]) * scale,
                        f32(0.0))
                for e in VEC(DV):
                    Acc[r, e] = f32(0.0)
                Mx[r] = NEGC
                Ls[r] = f32(0.0)
            # KV tiles any row of this task can see: [lo, hi) in keys.
            Ib[0] = 0
            Ib[1] = T.ceildiv(L, BN)
            if CAUSAL:
                Ib[1] = T.ceildiv(T.max(T.min(L, L - Sq + T.min(q0 + BM, Sq)), 0), BN)
            if WIN:
                Ib[0] = T.max(L - Sq + q0 - window + 1, 0) // BN
            for t in range(Ib[1] - Ib[0]):
                j0 = (Ib[0] + t) * BN
                # S = Qs @ K^T  ([R, Dqk] @ [Dqk, BN] -> [R, BN]); register tile RT x JV.
                for jo in range(BN // JV):
                    for ro in range(R // RT):
                        for ri in T.unroll(RT):
                            for ji in VEC(JV):
                                Creg[ri * JV + ji] = f32(0.0)
                        for d in range(DQK):
                            for ri in T.unroll(RT):
                                for ji in VEC(JV):
                                    Creg[ri * JV + ji] = Creg[ri * JV + ji] + Qs[ro * RT + ri, d] * Kt[b, hk, Ib[0] + t, d, jo * JV + ji]
                        for ri in T.unroll(RT):
                            for ji in VEC(JV):
                                Ss[ro * RT + ri, jo * JV + ji] = Creg[ri * JV + ji]
                # mask, online softmax; P overwrites S
                for r in range(R):
                    pos = L - Sq + q0 + r % BM
                    for jo in range(BN // VL):
                        for l in VEC(VL):
                            Ss[r, jo * VL + l] = T.Select(
                                (j0 + jo * VL + l < L)
                                and (not CAUSAL or j0 + jo * VL + l <= pos)
                                and (not WIN or j0 + jo * VL + l > pos - window),
                                Ss[r, jo * VL + l], NEGC)
                    for l in VEC(VL):
                        Red[l] = NEGC
                    for jo in range(BN // VL):
                        for l in VEC(VL):
                            Red[l] = T.max(Red[l], Ss[r, jo * VL + l])
                    Sc[0] = NEGC
                    for l in range(VL):
                        Sc[0] = T.max(Sc[0], Red[l])
                    if BS:
                        if q0 + r % BM < Sq:
                            Tmax[b, hk * G + r // BM, q0 + r % BM, Ib[0] + t] = Sc[0]
                    Sc[1] = T.max(Mx[r], Sc[0])  # new running max
                    Al[r] = fast_exp(Mx[r] - Sc[1])
                    Mx[r] = Sc[1]
                    for l in VEC(VL):
                        Red[l] = f32(0.0)
                    for jo in range(BN // VL):
                        for l in VEC(VL):
                            # masked -> 0; a NaN logit stays NaN (float comparisons are ordered: NaN == x is false)
                            Ss[r, jo * VL + l] = T.Select(Ss[r, jo * VL + l] == NEGC, f32(0.0), fast_exp(Ss[r, jo * VL + l] - Sc[1]))
                            Red[l] = Red[l] + Ss[r, jo * VL + l]
                    Sc[2] = f32(0.0)
                    for l in range(VL):
                        Sc[2] = Sc[2] + Red[l]
                    Ls[r] = Ls[r] * Al[r] + Sc[2]
                # Acc = Acc * alpha + P @ V  ([R, BN] @ [BN, Dv] -> [R, Dv]); register tile RT x EV.
                # A masked key has P = 0, but 0 * NaN (or inf) in its V row would still be NaN. A
                # tile whose V is all finite (prep's flag; always, in practice) multiplies plainly;
                # otherwise V is selected to 0 where the row cannot see the key. (Selecting in
                # every tile a row sees only in part cost 1.5x on SWA-128 prefill.)
                for ro in range(R // RT):
                    for eo in range(DV // EV):
                        for ri in T.unroll(RT):
                            for ei in VEC(EV):
                                Creg[ri * EV + ei] = Acc[ro * RT + ri, eo * EV + ei] * Al[ro * RT + ri]
                        if Bad[b, hk, Ib[0] + t] == f32(0.0):
                            for j in range(BN):
                                for ri in T.unroll(RT):
                                    for ei in VEC(EV):
                                        Creg[ri * EV + ei] = Creg[ri * EV + ei] + Ss[ro * RT + ri, j] * Vp[b, hk, j0 + j, eo * EV + ei]
                        else:
                            for j in range(BN):
                                for ri in T.unroll(RT):
                                    for ei in VEC(EV):
                                        Creg[ri * EV + ei] = Creg[ri * EV + ei] + Ss[ro * RT + ri, j] * T.Select(
                                            (j0 + j < L)
                                            and (not CAUSAL or j0 + j <= L - Sq + q0 + (ro * RT + ri) % BM)
                                            and (not WIN or j0 + j > L - Sq + q0 + (ro * RT + ri) % BM - window),
                                            Vp[b, hk, j0 + j, eo * EV + ei], f32(0.0))
                        for ri in T.unroll(RT):
                            for ei in VEC(EV):
                                Acc[ro * RT + ri, eo * EV + ei] = Creg[ri * EV + ei]
            # finalize: fold in the sink, normalise, write out / lse (and block scores)
            for r in range(R):
                if q0 + r % BM < Sq:
                    h = hk * G + r // BM
                    Sc[0] = Mx[r]
                    Sc[1] = f32(1.0)  # factor on acc and on the running denominator
                    Sc[2] = Ls[r]
                    if SINK:
                        Sc[0] = T.max(Mx[r], Sink[h])
                        Sc[1] = fast_exp(Mx[r] - Sc[0])
                        Sc[2] = Ls[r] * Sc[1] + fast_exp(Sink[h] - Sc[0])
                    # 0: nothing seen. (Not `!= 0`: float comparisons are ordered, false for NaN,
                    # and a NaN denominator must give NaN.)
                    if Sc[2] == f32(0.0):
                        Sc[3] = f32(0.0)
                        Lse[b, h, q0 + r % BM] = T.infinity("float32") * f32(-1.0)
                    else:
                        Sc[3] = Sc[1] / Sc[2]
                        Lse[b, h, q0 + r % BM] = Sc[0] + T.log(Sc[2])
                    for e in VEC(DV):
                        Out[b, h, q0 + r % BM, e] = T.Cast(dtype, Acc[r, e] * Sc[3])
            if BS:
                # score[b, hk, i, blk] = max over the group of exp(tmax - lse); 0 where unseen.
                # Visibility by position (a NaN row's tile maxima are unreliable); a NaN row has
                # lse NaN and gives NaN for every block it sees, and NaN wins the max.
                for i in range(BM):
                    if q0 + i < Sq:
                        for blk in range(NBs):
                            Sc[0] = f32(0.0)
                            if blk >= Ib[0] and blk < Ib[1] and (not CAUSAL or blk * BN <= L - Sq + q0 + i):
                                for g in range(G):
                                    Sc[1] = T.exp(Tmax[b, hk * G + g, q0 + i, blk] - Lse[b, hk * G + g, q0 + i])
                                    Sc[0] = T.Select(Sc[1] > Sc[0] or T.isnan(Sc[1]), Sc[1], Sc[0])
                            Score[b, hk, q0 + i, blk] = Sc[0]

    return tvm.IRModule({"prep": prep, "main": main})
