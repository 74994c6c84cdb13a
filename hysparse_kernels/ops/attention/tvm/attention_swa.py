"""Sliding-window prefill in TensorIR: per query block, one band of keys and one exact softmax.

For a window ``W`` the queries of a block ``[q0, q0 + BM)`` together see the keys
``[p0 - W + 1, p1]`` (``p`` the key position of a query: ``Sk - Sq + i``), a band of at most
``W + BM - 1`` keys. A task (batch, KV head, query block; rows = the ``G`` heads of the KV group x
``BM`` queries) computes the logits of its rows against the whole band at once, takes one exact
softmax per row (no running max, no rescaling of the accumulator per KV tile) and one ``P @ V``
over the band. Every row computes ``W + BM - 1`` logits for its ``W`` visible ones: about 92% useful
work at ``W = 128, BM = 12``, where 32-key tiles with an online softmax compute about 160 keys
per 128 and pay the softmax bookkeeping per tile.

Layout
------
* ``prep``: ``kt [B, Hkv, NC, Dqk, 16]``, K transposed in chunks of 16 keys (fp32, zero past
  ``Sk``, room for a whole band past the end): a band starts on a chunk, and each chunk is one
  contiguous ``[Dqk, 16]`` block; and per chunk whether V holds NaN or +-inf there. The
  transpose goes through a 16 x 16 scratch block (rows in as vector loads, columns out as vector
  stores that LLVM assembles with element inserts): prep 6.9 -> 5.0 ms at 8K (2 threads), where
  an element-by-element copy ran scalar loads and stores. (Writing the chunks with one strided torch copy instead, and only the flags
  here, made an 8K prefill 6 ms slower.)
* ``main``: ``S = Qs @ K^T[:, band]`` (register tiles of RT rows x JV keys, outer products over
  ``Dqk``), masked softmax per row, ``O = P @ V[band]`` (RT rows x EV lanes; V read in place).

Non-finite values: masked logits are *selected* away (never exp'd into the sum). ``P`` is 0 for
the keys a row cannot see, but ``0 * NaN`` would still be NaN, so where the band's V holds a
non-finite value (``prep`` flags each chunk of 16 keys) the keys at the band's two edges, where
rows differ in what they see, are selected by visibility; the keys every row sees multiply
plainly. (Selecting at the edges of every band cost 24% at W = 128.)
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .common import NEG, f32, fast_exp as _exp, half_lanes, loop_kinds, register_lanes, row_tile, vec_width, wide_registers



def band_width(window: int, bm: int, chunk: int = 16) -> int:
    """Keys of the band a block of ``bm`` queries sees, from a chunk boundary, in whole chunks."""
    return -(-(window + bm - 1 + chunk - 1) // chunk) * chunk


def build_swa(*, dqk: int, dv: int, group: int, bm: int, span: int, dtype: str, has_sink: bool,
              target_kind: str = "llvm", wide: bool | None = None) -> tvm.IRModule:
    """IRModule with ``prep`` and ``main`` for windows ``W <= span - bm + 1`` (``W`` is a run-time
    argument). ``prep(k, v, kt, bad)`` fills the K^T chunks ``kt [B, Hkv, NC, dqk, 16]`` (NC >=
    ceil((Sk + span) / 16)) and the per-chunk flags ``bad [B, Hkv, NC]`` (V holds NaN / inf);
    ``main(q, kt, bad, v, sink, out, lse, window, scale)``: q ``[B, Hq, Sq, dqk]``, v
    ``[B, Hkv, Sk, dv]`` (``dtype``), sink fp32 ``[Hq]`` (or 1 element), out ``[B, Hq, Sq, dv]``,
    lse fp32 ``[B, Hq, Sq]``. ``wide``: register tiles for AVX-512 (default: whether the target has it)."""
    G, BM, DQK, DV, SPAN = group, bm, dqk, dv, span
    KC = 16  # keys per chunk of K^T: a band starts on a chunk
    assert SPAN % KC == 0, f"span must be a multiple of {KC}, got {SPAN}"
    R = G * BM  # rows: head g = r // BM, query q0 + r % BM
    # Register tiles, sized for AVX-512's 32 vector registers (16 fp32 lanes each): S is RT rows x
    # JV = 2 chunks of K^T (12 accumulators, 8 loads per 12 FMAs), P @ V is RT rows x EV = 32
    # lanes of V. Measured at W = 128, S = 8K, one thread: 197 ms with 6 x 16 tiles for both,
    # 181 ms with these; 3 chunks or 64 lanes spill and run 2.3x slower. On AVX2 (16 registers)
    # these tiles would spill: one chunk and 16 lanes there.
    wide = wide_registers(target_kind) if wide is None else wide
    RT = row_tile(R, (6, 4, 2, 1))
    KPT = 2 if wide else 1  # chunks of K^T per register tile of S
    JV = KC * KPT
    lanes = register_lanes(target_kind, wide)
    EV = vec_width(dv, lanes)
    VL = vec_width(span, half_lanes(lanes))  # lanes of the softmax pass
    CR = max(RT * JV, RT * EV)
    SPANP = -(-SPAN // JV) * JV
    SINK = has_sink
    NEGC = f32(NEG)
    PAR, VEC, SCOPE = loop_kinds(target_kind)

    @T.prim_func
    def prep(k_h: T.handle, v_h: T.handle, kt_h: T.handle, bad_h: T.handle):
        B = T.int32()
        Hkv = T.int32()
        Sk = T.int32()
        NC = T.int32()
        K = T.match_buffer(k_h, (B, Hkv, Sk, DQK), dtype)
        V = T.match_buffer(v_h, (B, Hkv, Sk, DV), dtype)
        Kt = T.match_buffer(kt_h, (B, Hkv, NC, DQK, KC), "float32")
        Bad = T.match_buffer(bad_h, (B, Hkv, NC), "float32")  # 1 where a chunk of V holds NaN or +-inf
        for task in PAR(B * Hkv * NC):
            Fl = T.alloc_buffer((EV,), "float32", scope=SCOPE)
            Tb = T.alloc_buffer((KC * KC,), "float32", scope=SCOPE)
            b = task // (Hkv * NC)
            hk = task // NC % Hkv
            c = task % NC
            # [KC, Dqk] rows of K -> one contiguous [Dqk, KC] chunk of K^T, a 16 x 16 block at a time
            for d0 in range(DQK // KC):
                for jj in T.unroll(KC):
                    for l in VEC(KC):
                        Tb[jj * KC + l] = T.if_then_else(
                            c * KC + jj < Sk, T.Cast("float32", K[b, hk, T.min(c * KC + jj, Sk - 1), d0 * KC + l]), f32(0.0))
                for i in T.unroll(KC):
                    for l in VEC(KC):
                        Kt[b, hk, c, d0 * KC + i, l] = Tb[l * KC + i]
            for jj in range(KC):
                for d in range(DQK // KC * KC, DQK):
                    Kt[b, hk, c, d, jj] = T.if_then_else(
                        c * KC + jj < Sk, T.Cast("float32", K[b, hk, T.min(c * KC + jj, Sk - 1), d]), f32(0.0))
            # |x| <= FLT_MAX fails for NaN and +-inf (an ordered comparison); EV-lane partial maxima
            for l in VEC(EV):
                Fl[l] = f32(0.0)
            for jj in range(T.max(T.min(KC, Sk - c * KC), 0)):
                for eo in range(DV // EV):
                    for l in VEC(EV):
                        Fl[l] = T.max(Fl[l], T.Select(
                            T.abs(T.Cast("float32", V[b, hk, c * KC + jj, eo * EV + l])) <= T.max_value("float32"),
                            f32(0.0), f32(1.0)))
            for l in range(1, EV):
                Fl[0] = T.max(Fl[0], Fl[l])
            Bad[b, hk, c] = Fl[0]

    @T.prim_func
    def main(q_h: T.handle, kt_h: T.handle, bad_h: T.handle, v_h: T.handle, sink_h: T.handle, out_h: T.handle,
             lse_h: T.handle, window: T.int32, scale: T.float32):
        B = T.int32()
        Hq = T.int32()
        Hkv = T.int32()
        Sq = T.int32()
        Sk = T.int32()
        NC = T.int32()
        Hs = T.int32()
        Q = T.match_buffer(q_h, (B, Hq, Sq, DQK), dtype)
        Kt = T.match_buffer(kt_h, (B, Hkv, NC, DQK, KC), "float32")
        Bad = T.match_buffer(bad_h, (B, Hkv, NC), "float32")
        V = T.match_buffer(v_h, (B, Hkv, Sk, DV), dtype)
        Sink = T.match_buffer(sink_h, (Hs,), "float32")
        Out = T.match_buffer(out_h, (B, Hq, Sq, DV), dtype)
        Lse = T.match_buffer(lse_h, (B, Hq, Sq), "float32")
        for task in PAR(B * Hkv * T.ceildiv(Sq, BM)):
            Qs = T.alloc_buffer((R, DQK), "float32", scope=SCOPE)
            Ss = T.alloc_buffer((R, SPANP), "float32", scope=SCOPE)  # logits, then probabilities
            Inv = T.alloc_buffer((R,), "float32", scope=SCOPE)  # 1 / softmax denominator
            Mx = T.alloc_buffer((R, JV), "float32", scope=SCOPE)  # per-row vector of logit maxima
            Red = T.alloc_buffer((VL,), "float32", scope=SCOPE)
            Sc = T.alloc_buffer((4,), "float32", scope=SCOPE)
            Creg = T.alloc_buffer((CR,), "float32", scope=SCOPE)
            # band start (a chunk), length; keys all rows see [Ib[2], Ib[3]); V non-finite; first key seen
            Ib = T.alloc_buffer((6,), "int32", scope=SCOPE)
            nqb = T.ceildiv(Sq, BM)
            b = task // (Hkv * nqb)
            hk = task // nqb % Hkv
            q0 = task % nqb * BM
            off = Sk - Sq  # key position of query 0 (bottom-right aligned)
            p0 = off + q0  # first and last query position of the block
            p1 = off + T.min(q0 + BM, Sq) - 1
            # band [Ib[0], Ib[0] + Ib[1]), starting on a chunk of K^T
            Ib[0] = T.max(p0 - window + 1, 0) // KC * KC
            Ib[1] = T.max(p1 - Ib[0] + 1, 0)
            # keys every query of the block sees: band offsets [Ib[2], Ib[3])
            Ib[2] = T.max(p1 - window + 1, Ib[0]) - Ib[0]
            Ib[3] = T.max(T.min(p0 + 1 - Ib[0], Ib[1]), Ib[2])
            Ib[5] = T.min(T.max(p0 - window + 1, 0) - Ib[0], Ib[2])  # keys before it: chunk alignment
            Ib[4] = 0
            for c in range(T.ceildiv(Ib[1], KC)):
                if Bad[b, hk, Ib[0] // KC + c] != f32(0.0):
                    Ib[4] = 1
            for r in range(R):
                for d in VEC(DQK):
                    Qs[r, d] = T.if_then_else(
                        q0 + r % BM < Sq, T.Cast("float32", Q[b, hk * G + r // BM, T.min(q0 + r % BM, Sq - 1), d]) * scale,
                        f32(0.0))
            # S = Qs @ K^T[:, band]  ([R, Dqk] @ [Dqk, SPAN]; RT x JV register tiles). The store masks
            # what a row cannot see (NEG) and keeps a per-row vector of maxima for the softmax.
            for r in range(R):
                for l in VEC(JV):
                    Mx[r, l] = NEGC
            for jo in range(T.ceildiv(Ib[1], KC) // KPT):  # the band's tiles of JV keys
                for ro in range(R // RT):
                    for ri in T.unroll(RT):
                        for ji in VEC(JV):
                            Creg[ri * JV + ji] = f32(0.0)
                    for d in range(DQK):
                        for ri in T.unroll(RT):
                            for c2 in T.unroll(KPT):
                                for ji in VEC(KC):
                                    Creg[ri * JV + c2 * KC + ji] = Creg[ri * JV + c2 * KC + ji] + Qs[ro * RT + ri, d] * Kt[b, hk, Ib[0] // KC + jo * KPT + c2, d, ji]
                    for ri in T.unroll(RT):
                        for ji in VEC(JV):
                            Ss[ro * RT + ri, jo * JV + ji] = T.Select(
                                (q0 + (ro * RT + ri) % BM < Sq)
                                and (Ib[0] + jo * JV + ji <= off + q0 + (ro * RT + ri) % BM)
                                and (Ib[0] + jo * JV + ji > off + q0 + (ro * RT + ri) % BM - window),
                                Creg[ri * JV + ji], NEGC)
                            Mx[ro * RT + ri, ji] = T.max(Mx[ro * RT + ri, ji], Ss[ro * RT + ri, jo * JV + ji])
            if KPT > 1:
                # the band's last chunks when they do not fill a tile: a tile of one chunk (the
                # softmax and P @ V read whole chunks only)
                for jr in range(T.ceildiv(Ib[1], KC) % KPT):
                    for ro in range(R // RT):
                        for ri in T.unroll(RT):
                            for ji in VEC(KC):
                                Creg[ri * KC + ji] = f32(0.0)
                        for d in range(DQK):
                            for ri in T.unroll(RT):
                                for ji in VEC(KC):
                                    Creg[ri * KC + ji] = Creg[ri * KC + ji] + Qs[ro * RT + ri, d] * Kt[
                                        b, hk, Ib[0] // KC + T.ceildiv(Ib[1], KC) // KPT * KPT + jr, d, ji]
                        for ri in T.unroll(RT):
                            for ji in VEC(KC):
                                Ss[ro * RT + ri, (T.ceildiv(Ib[1], KC) // KPT * KPT + jr) * KC + ji] = T.Select(
                                    (q0 + (ro * RT + ri) % BM < Sq)
                                    and (Ib[0] + (T.ceildiv(Ib[1], KC) // KPT * KPT + jr) * KC + ji <= off + q0 + (ro * RT + ri) % BM)
                                    and (Ib[0] + (T.ceildiv(Ib[1], KC) // KPT * KPT + jr) * KC + ji > off + q0 + (ro * RT + ri) % BM - window),
                                    Creg[ri * KC + ji], NEGC)
                                Mx[ro * RT + ri, ji] = T.max(Mx[ro * RT + ri, ji], Ss[ro * RT + ri, (T.ceildiv(Ib[1], KC) // KPT * KPT + jr) * KC + ji])
            # exact softmax per row: P = exp(S - max), exactly 0 where masked (whatever S held)
            for r in range(R):
                Sc[0] = NEGC
                for l in range(JV):
                    Sc[0] = T.max(Sc[0], Mx[r, l])
                if SINK:
                    Sc[0] = T.max(Sc[0], Sink[hk * G + r // BM])
                for l in VEC(VL):
                    Red[l] = f32(0.0)
                for jo in range(T.ceildiv(Ib[1], KC) * (KC // VL)):
                    for l in VEC(VL):
                        # a NaN logit the row sees stays NaN (the max skips it; exp keeps it)
                        Ss[r, jo * VL + l] = T.Select(Ss[r, jo * VL + l] == NEGC, f32(0.0), _exp(Ss[r, jo * VL + l] - Sc[0]))
                        Red[l] = Red[l] + Ss[r, jo * VL + l]
                Sc[1] = f32(0.0)
                for l in range(VL):
                    Sc[1] = Sc[1] + Red[l]
                if SINK:
                    Sc[1] = Sc[1] + _exp(Sink[hk * G + r // BM] - Sc[0])
                if q0 + r % BM < Sq:
                    if Sc[1] == f32(0.0):  # sees nothing, no sink
                        Inv[r] = f32(0.0)
                        Lse[b, hk * G + r // BM, q0 + r % BM] = T.infinity("float32") * f32(-1.0)
                    else:
                        Inv[r] = f32(1.0) / Sc[1]
                        Lse[b, hk * G + r // BM, q0 + r % BM] = Sc[0] + T.log(Sc[1])
            # O = P @ V[band]  ([R, band] @ [band, Dv]; RT x EV register tiles), normalised on store
            for ro in range(R // RT):
                for eo in range(DV // EV):
                    for ri in T.unroll(RT):
                        for ei in VEC(EV):
                            Creg[ri * EV + ei] = f32(0.0)
                    if Ib[4] == 1:
                        # the band's edges: rows differ in what they see, select V by visibility
                        for t in range(Ib[2] - Ib[5]):
                            for ri in T.unroll(RT):
                                for ei in VEC(EV):
                                    Creg[ri * EV + ei] = Creg[ri * EV + ei] + Ss[ro * RT + ri, Ib[5] + t] * T.Select(
                                        (Ib[0] + Ib[5] + t > off + q0 + (ro * RT + ri) % BM - window)
                                        and (Ib[0] + Ib[5] + t <= off + q0 + (ro * RT + ri) % BM),
                                        T.Cast("float32", V[b, hk, Ib[0] + Ib[5] + t, eo * EV + ei]), f32(0.0))
                        for t in range(Ib[3] - Ib[2]):
                            for ri in T.unroll(RT):
                                for ei in VEC(EV):
                                    Creg[ri * EV + ei] = Creg[ri * EV + ei] + Ss[ro * RT + ri, Ib[2] + t] * T.Cast(
                                        "float32", V[b, hk, Ib[0] + Ib[2] + t, eo * EV + ei])
                        for t in range(Ib[1] - Ib[3]):
                            for ri in T.unroll(RT):
                                for ei in VEC(EV):
                                    Creg[ri * EV + ei] = Creg[ri * EV + ei] + Ss[ro * RT + ri, Ib[3] + t] * T.Select(
                                        (Ib[0] + Ib[3] + t <= off + q0 + (ro * RT + ri) % BM)
                                        and (Ib[0] + Ib[3] + t > off + q0 + (ro * RT + ri) % BM - window),
                                        T.Cast("float32", V[b, hk, Ib[0] + Ib[3] + t, eo * EV + ei]), f32(0.0))
                    else:
                        for t in range(Ib[1] - Ib[5]):
                            for ri in T.unroll(RT):
                                for ei in VEC(EV):
                                    Creg[ri * EV + ei] = Creg[ri * EV + ei] + Ss[ro * RT + ri, Ib[5] + t] * T.Cast(
                                        "float32", V[b, hk, Ib[0] + Ib[5] + t, eo * EV + ei])
                    for ri in T.unroll(RT):
                        if q0 + (ro * RT + ri) % BM < Sq:
                            for ei in VEC(EV):
                                Out[b, hk * G + (ro * RT + ri) // BM, q0 + (ro * RT + ri) % BM, eo * EV + ei] = T.Cast(
                                    dtype, Creg[ri * EV + ei] * Inv[ro * RT + ri])

    return tvm.IRModule({"prep": prep, "main": main})
