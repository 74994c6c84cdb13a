"""Triton top-k block selection (HySparse oracle): the ``k`` best visible KV blocks per query.

Kernel chain: ``_topk_blocks_kernel`` -> ``topk_blocks``.

Semantics (identical to the reference): a query at key position ``pos = seqlen_k - Sq + i``
(``cache_seqlens[b] - Sq + i`` with per-sequence lengths) may
select the blocks ``0 .. pos // block_size`` (none when ``pos < 0``); they are ranked by score,
descending, ties to the lower block index, NaN scores last; the list is padded with ``-1`` when
fewer than ``k`` blocks are visible. A visible block is chosen even with score 0 or ``-inf``.

Each program takes ``BLOCK_R`` rows of ``[B * Hkv * Sq, n_blocks]`` and runs ``k`` rounds of an
arg-max (``k`` is small: 8-32), marking the winner taken each round; a block row of 32K / 64 = 512
scores fits in registers. ``torch.topk`` would need a stable tie rule it does not promise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import launch, next_pow2


@triton.jit
def _topk_blocks_kernel(
    SCORES, IDX, LENS, n_rows, Sq, rows_per_seq, n_blocks, k, rounds, seqlen_k, block_size,
    BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr, RAGGED: tl.constexpr,
):
    # SCORES [n_rows, n_blocks] fp32 (rows = (b, hkv, i) flattened), IDX [n_rows, k] int32;
    # the first `rounds` = min(k, n_blocks) entries of each row are written here. RAGGED: the
    # key count of row r is LENS[r // rows_per_seq] (rows_per_seq = Hkv * Sq), else seqlen_k.
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_r = o_r < n_rows
    o_b = tl.arange(0, BLOCK_B)
    if RAGGED:
        n_keys = tl.load(LENS + o_r // rows_per_seq, mask=m_r, other=0).to(tl.int32)
    else:
        n_keys = seqlen_k
    pos = n_keys - Sq + o_r % Sq
    n_vis = tl.where(pos < 0, 0, tl.maximum(pos, 0) // block_size + 1)  # // truncates: keep it >= 0
    n_vis = tl.minimum(n_vis, n_blocks)
    avail = (o_b[None, :] < n_vis[:, None]) & m_r[:, None]  # [BLOCK_R, BLOCK_B]
    vals = tl.load(SCORES + o_r[:, None].to(tl.int64) * n_blocks + o_b[None, :], mask=avail, other=0.0)
    for t in range(0, rounds):
        numeric = avail & (vals == vals)  # not NaN
        best = tl.max(tl.where(numeric, vals, float("-inf")), 1)
        # lowest index among the available blocks holding the best numeric score ...
        idx_num = tl.min(tl.where(numeric & (vals == best[:, None]), o_b[None, :], BLOCK_B), 1)
        # ... or, when only NaN scores are left, the lowest available index
        idx_any = tl.min(tl.where(avail, o_b[None, :], BLOCK_B), 1)
        has_num = tl.max(numeric.to(tl.int32), 1) > 0
        idx = tl.where(has_num, idx_num, idx_any)
        tl.store(IDX + o_r.to(tl.int64) * k + t, tl.where(idx < BLOCK_B, idx, -1), mask=m_r)
        avail = avail & (o_b[None, :] != idx[:, None])


def topk_blocks(block_scores, k, block_size, seqlen_k, cache_seqlens=None):
    """Triton ``hysparse::topk_blocks``: int32 ``[B, Hkv, Sq, k]``, ``-1`` pads.

    ``cache_seqlens`` (int ``[B]``, optional): per-sequence key counts in place of ``seqlen_k``.

    Example::

        idx = topk_blocks(scores, 16, 64, seqlen_k=k.shape[2])
    """
    B, Hkv, Sq, n_blocks = block_scores.shape
    scores = block_scores.float().contiguous()
    n_rows = B * Hkv * Sq
    # Entries past the number of blocks can only be pads: filled here, never walked by the kernel.
    rounds = min(k, n_blocks)
    out = torch.empty(B, Hkv, Sq, k, dtype=torch.int32, device=block_scores.device)
    if rounds < k:
        out[..., rounds:] = -1
    if n_rows == 0 or rounds == 0:
        return out
    block_b = max(16, next_pow2(n_blocks))
    ragged = cache_seqlens is not None
    lens = cache_seqlens.to(torch.int32).contiguous() if ragged else out  # out: an unread stand-in

    def run(cfg):
        # keep a program's [BLOCK_R, BLOCK_B] tile at most 8K elements
        block_r = max(1, min(cfg.block_m, 8192 // block_b))
        _topk_blocks_kernel[(triton.cdiv(n_rows, block_r),)](
            scores, out, lens, n_rows, Sq, Hkv * Sq, n_blocks, k, rounds, seqlen_k, block_size,
            BLOCK_R=block_r, BLOCK_B=block_b, RAGGED=ragged, **cfg.launch(),
        )
        return out

    return launch("topk_blocks", {"n_blocks": n_blocks, "k": k}, run)
