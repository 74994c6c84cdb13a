"""Pure-PyTorch attention oracle: readable, materialised, float64-capable.

Everything here builds the full ``[B, Hq, Sq, Sk]`` logit matrix on purpose: it is the ground
truth that the Triton and TVM kernels are measured against, not a fast path. Optimised code
never imports this module.

Conventions (shared by every backend):

* q ``[B, Hq, Sq, Dqk]``, k ``[B, Hkv, Sk, Dqk]``, v ``[B, Hkv, Sk, Dv]``, ``Hq % Hkv == 0``;
  query head ``h`` reads KV head ``h // (Hq // Hkv)``.
* Queries are bottom-right aligned: query ``i`` sits at key position ``Sk - Sq + i``.
* Causal: key ``j`` visible to query ``i`` when ``j <= pos_i``; with ``window=W`` also when
  ``j > pos_i - W`` (the query and the ``W - 1`` keys before it).
* Sink: per-head logit added to the softmax denominator only,
  ``p_ij = exp(a_ij - m_i) / (exp(sink_h - m_i) + sum_j exp(a_ij - m_i))``.
* A query that sees no key gets ``out = 0`` and ``lse = -inf`` (``lse = sink`` with a sink);
  with ``Sk = 0`` (no keys at all) that is every query.
* Non-finite values: keys a query cannot see never affect it, whatever they hold (masked and
  padded positions are selected away, never multiplied by a probability 0). What a query can
  see follows IEEE arithmetic: NaN in its q row, in a visible key's k row or in its head's sink
  makes its out row and lse NaN (an infinite logit too: ``inf - inf`` in the softmax); NaN in
  column ``d`` of a visible key's v makes ``out[..., d]`` NaN; ``+-inf`` there gives ``+-inf``
  (NaN where both signs meet or the key's probability is exactly 0). ``sink = -inf`` is the same
  as no sink; ``sink = +inf`` is rejected by the ops.
* lse is float32 (float64 for float64 inputs), natural log, of the scaled logits (and the sink).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _compute_dtype(dtype: torch.dtype, compute_dtype: torch.dtype | None) -> torch.dtype:
    if compute_dtype is not None:
        return compute_dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of lse and block scores for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def query_positions(sq: int, sk: int, device=None) -> Tensor:
    """Key position of each query under bottom-right alignment: ``[Sq]`` int64."""
    return torch.arange(sk - sq, sk, device=device)


def visible_mask(sq: int, sk: int, *, causal: bool, window: int | None, device=None) -> Tensor:
    """``[Sq, Sk]`` bool: may query i attend to key j."""
    pos = query_positions(sq, sk, device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    mask = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if causal:
        mask &= j <= pos
    if window is not None:
        mask &= j > pos - window
    return mask


def _nonfinite_values(p: Tensor, mask: Tensor, vx: Tensor) -> Tensor | float:
    """What the non-finite entries of ``vx`` add to ``p @ vx``, over the keys each query sees.

    A plain product would also multiply the keys a query cannot see (weight 0) and 0 * NaN or
    0 * inf is NaN, so the finite values go through the matmul and the others are counted here
    with IEEE rules restricted to visible keys: NaN if a visible key holds NaN, or holds +-inf
    with weight exactly 0, or +inf and -inf meet; else +-inf where a visible key with a positive
    weight holds it; else 0.

    p ``[B, Hq, Sq, Sk]`` weights, mask broadcastable to it, vx ``[B, Hq, Sk, Dv]``.
    Returns ``[B, Hq, Sq, Dv]`` (or 0.0 when vx is all finite).
    """
    if bool(torch.isfinite(vx).all()):
        return 0.0
    f = p.dtype
    vis = mask.expand(p.shape)
    pos = (vis & (p > 0)).to(f)
    zero = (vis & (p == 0)).to(f)
    nan, pinf, ninf = torch.isnan(vx), vx == float("inf"), vx == float("-inf")
    hit_nan = (vis.to(f) @ nan.to(f) + zero @ (pinf | ninf).to(f)) > 0
    hit_pinf = (pos @ pinf.to(f)) > 0
    hit_ninf = (pos @ ninf.to(f)) > 0
    out = torch.zeros(hit_nan.shape, dtype=f, device=p.device)
    out = out.masked_fill(hit_pinf, float("inf")).masked_fill(hit_ninf, float("-inf"))
    return out.masked_fill(hit_nan | (hit_pinf & hit_ninf), float("nan"))


def masked_attention(q, k, v, mask, sink=None, scale=None, compute_dtype=None):
    """Attention over the keys that ``mask`` allows.

    Args:
        mask: bool, broadcastable to ``[B, Hkv, Sq, Sk]`` (per KV group; GQA heads share it).
        compute_dtype: dtype of every step (default float32, float64 for float64 inputs);
            pass ``torch.bfloat16`` to emulate a low-precision computation.

    Returns:
        out ``[B, Hq, Sq, Dv]`` in q's dtype, lse ``[B, Hq, Sq]``, probs ``[B, Hq, Sq, Sk]``.
    """
    B, Hq, Sq, Dqk = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    cdt = _compute_dtype(q.dtype, compute_dtype)
    scale = Dqk**-0.5 if scale is None else scale
    # GQA: query head h reads KV head h // group.
    kx = k.to(cdt).repeat_interleave(group, dim=1)
    vx = v.to(cdt).repeat_interleave(group, dim=1)
    mask = mask.expand(B, Hkv, Sq, k.shape[2]).repeat_interleave(group, dim=1)
    logits = (q.to(cdt) @ kx.transpose(-1, -2)) * scale  # [B, Hq, Sq, Sk]
    logits = logits.masked_fill(~mask, float("-inf"))
    if logits.shape[-1]:
        m = logits.amax(dim=-1, keepdim=True)
    else:  # no keys at all (Sk = 0): every query sees nothing
        m = logits.new_full((B, Hq, Sq, 1), float("-inf"))
    if sink is not None:
        m = torch.maximum(m, sink.to(cdt).view(1, Hq, 1, 1))
    m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m).detach()
    # Keys a query cannot see weigh exactly 0, whatever m is.
    e = torch.where(mask, torch.exp(logits - m), torch.zeros_like(logits))
    denom = e.sum(dim=-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink.to(cdt).view(1, Hq, 1, 1) - m)
    # denom is 0 only for a query that sees nothing (and has no sink); NaN stays NaN.
    seen = denom != 0
    d_safe = torch.where(seen, denom, torch.ones_like(denom))
    probs = e / d_safe  # a NaN denominator (NaN logit or sink) makes the whole row NaN
    lse = torch.where(seen, m + torch.log(d_safe), float("-inf"))
    finite = torch.where(torch.isfinite(vx), vx, torch.zeros_like(vx))
    out = probs @ finite + _nonfinite_values(probs, mask, vx)
    # The probabilities returned (block scores) are exactly 0 where the query cannot look.
    probs = torch.where(mask, probs, torch.zeros_like(probs))
    return out.to(q.dtype), lse.squeeze(-1).to(stat_dtype(q.dtype)), probs


def attention_fwd(q, k, v, sink, causal, window, scale, compute_dtype=None):
    """Full / sliding-window attention with optional sink. Returns ``(out, lse)``."""
    mask = visible_mask(q.shape[2], k.shape[2], causal=causal, window=window, device=q.device)
    out, lse, _ = masked_attention(q, k, v, mask, sink, scale, compute_dtype)
    return out, lse


def block_scores_from_probs(probs: Tensor, num_kv_heads: int, block_size: int) -> Tensor:
    """``[B, Hq, Sq, Sk]`` probabilities -> ``[B, Hkv, Sq, ceil(Sk / block_size)]`` block scores.

    Max over the query heads of each KV group, then max over the keys of each block.
    """
    B, Hq, Sq, Sk = probs.shape
    group_max = probs.view(B, num_kv_heads, Hq // num_kv_heads, Sq, Sk).amax(dim=2)
    nblocks = -(-Sk // block_size)
    padded = torch.nn.functional.pad(group_max, (0, nblocks * block_size - Sk))
    return padded.view(B, num_kv_heads, Sq, nblocks, block_size).amax(dim=-1)


def seqlens_mask(cache_seqlens: Tensor, sq: int, sk: int, *, causal: bool) -> Tensor:
    """``[B, 1, Sq, Sk]`` bool for a padded cache: sequence b holds ``cache_seqlens[b]`` keys, so
    key j is visible when ``j < cache_seqlens[b]`` and, if causal, ``j <= cache_seqlens[b] - Sq + i``."""
    j = torch.arange(sk, device=cache_seqlens.device)[None, None, None, :]
    lens = cache_seqlens.long()[:, None, None, None]
    mask = j < lens
    if causal:
        mask = mask & (j <= decode_positions(cache_seqlens, sq)[:, None, :, None])
    return mask


def attention_with_block_scores(q, k, v, block_size, causal, scale, cache_seqlens=None, compute_dtype=None):
    """Attention plus HySparse block scores. Returns ``(out, lse, block_scores)``.

    ``cache_seqlens`` (int ``[B]``, optional): sequence b holds its first ``cache_seqlens[b]``
    keys (a padded cache); its queries sit at ``cache_seqlens[b] - Sq + i``.
    """
    if cache_seqlens is None:
        mask = visible_mask(q.shape[2], k.shape[2], causal=causal, window=None, device=q.device)
    else:
        mask = seqlens_mask(cache_seqlens, q.shape[2], k.shape[2], causal=causal)
    out, lse, probs = masked_attention(q, k, v, mask, None, scale, compute_dtype)
    scores = block_scores_from_probs(probs, k.shape[1], block_size).to(stat_dtype(q.dtype))
    return out, lse, scores


def visible_blocks(sq: int, seqlen_k: int, block_size: int, device=None) -> Tensor:
    """``[Sq]`` int64: how many KV blocks query i may select (those at or before its own)."""
    pos = query_positions(sq, seqlen_k, device)
    return torch.clamp(torch.div(pos, block_size, rounding_mode="floor") + 1, min=0)


def topk_blocks(block_scores: Tensor, k: int, block_size: int, seqlen_k: int, cache_seqlens: Tensor | None = None) -> Tensor:
    """The ``k`` best visible blocks per (batch, KV head, query): int32 ``[B, Hkv, Sq, k]``.

    Ordered by score, ties to the lower block index; ``-1`` pads where fewer than ``k`` blocks
    are visible. A block after the query's own block is never chosen, whatever its score.
    ``cache_seqlens`` (int ``[B]``, optional) replaces ``seqlen_k`` per sequence: query i of
    sequence b sits at ``cache_seqlens[b] - Sq + i``.
    """
    B, Hkv, Sq, nblocks = block_scores.shape
    blk = torch.arange(nblocks, device=block_scores.device)
    if cache_seqlens is None:
        nvis = visible_blocks(Sq, seqlen_k, block_size, block_scores.device)  # [Sq]
        visible = blk[None, :] < nvis[:, None]  # [Sq, nblocks]
    else:
        pos = decode_positions(cache_seqlens.to(block_scores.device), Sq)  # [B, Sq]
        nvis = torch.clamp(torch.div(pos, block_size, rounding_mode="floor") + 1, min=0)
        visible = (blk[None, None, :] < nvis[:, :, None])[:, None]  # [B, 1, Sq, nblocks]
    # stable sort on the negated scores: equal scores keep ascending block order; then a stable
    # sort by kind puts visible numeric scores first, visible NaN next, blocks out of sight last
    # (so how many blocks past the query's own the row holds never changes the choice)
    order = torch.sort(-block_scores, dim=-1, stable=True).indices
    kind = torch.where(visible, torch.isnan(block_scores).long(), 2)
    order = torch.gather(order, -1, torch.sort(torch.gather(kind, -1, order), dim=-1, stable=True).indices)
    take = min(k, nblocks)
    chosen = order[..., :take]
    chosen_visible = torch.gather(visible.expand(B, Hkv, Sq, nblocks), -1, chosen)
    idx = torch.where(chosen_visible, chosen, torch.full_like(chosen, -1))
    if take < k:
        idx = torch.nn.functional.pad(idx, (0, k - take), value=-1)
    return idx.to(torch.int32)


def sparse_mask(indices: Tensor, sq: int, sk: int, block_size: int, positions: Tensor | None = None) -> Tensor:
    """``[B, Hkv, Sq, Sk]`` bool: keys of the selected blocks, causal (no key after the query).

    ``positions``: ``[B, Sq]`` key position of each query (default: bottom-right aligned).
    """
    B, Hkv, _, _ = indices.shape
    nblocks = -(-sk // block_size)
    idx = indices.long()
    idx = torch.where(idx < 0, torch.full_like(idx, nblocks), idx)  # -1 -> a dropped slot
    chosen = torch.zeros(B, Hkv, sq, nblocks + 1, dtype=torch.bool, device=indices.device)
    chosen.scatter_(-1, idx, True)
    key_block = torch.arange(sk, device=indices.device) // block_size
    mask = chosen[..., :nblocks][..., key_block]
    if positions is None:
        return mask & visible_mask(sq, sk, causal=True, window=None, device=indices.device)
    j = torch.arange(sk, device=indices.device)
    return mask & (j[None, None, None, :] <= positions[:, None, :, None])


def sparse_attention_fwd(q, k, v, indices, block_size, sink, scale, compute_dtype=None):
    """Attention over the selected KV blocks of a (shared) cache. Returns ``(out, lse)``."""
    mask = sparse_mask(indices, q.shape[2], k.shape[2], block_size)
    out, lse, _ = masked_attention(q, k, v, mask, sink, scale, compute_dtype)
    return out, lse


def decode_positions(cache_seqlens: Tensor, sq: int) -> Tensor:
    """``[B, Sq]`` key position of each new query: the cache already holds them, so query i of
    sequence b sits at ``cache_seqlens[b] - Sq + i``."""
    return cache_seqlens.long()[:, None] - sq + torch.arange(sq, device=cache_seqlens.device)[None, :]


def attention_decode(q, k_cache, v_cache, cache_seqlens, sink, window, scale, compute_dtype=None):
    """Decode / verification step over a padded cache with per-sequence lengths.

    q ``[B, Hq, Sq, Dqk]`` (Sq = 1, or 1 + draft tokens), caches ``[B, Hkv, Smax, D]`` holding
    ``cache_seqlens[b]`` valid keys each (the new tokens included). Causal, optional window/sink.
    """
    pos = decode_positions(cache_seqlens, q.shape[2])[:, None, :, None]  # [B, 1, Sq, 1]
    j = torch.arange(k_cache.shape[2], device=q.device)[None, None, None, :]
    mask = j <= pos
    if window is not None:
        mask = mask & (j > pos - window)
    out, lse, _ = masked_attention(q, k_cache, v_cache, mask, sink, scale, compute_dtype)
    return out, lse


def sparse_attention_decode(q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, scale, compute_dtype=None):
    """Sparse attention of decode queries over selected blocks of a padded shared cache."""
    pos = decode_positions(cache_seqlens, q.shape[2])
    mask = sparse_mask(indices, q.shape[2], k_cache.shape[2], block_size, positions=pos)
    out, lse, _ = masked_attention(q, k_cache, v_cache, mask, sink, scale, compute_dtype)
    return out, lse


def masked_attention_bwd(dout, dlse, q, k, v, mask, sink=None, scale=None):
    """Gradients of ``masked_attention`` written out (recomputing the probabilities).

    With ``P`` the probabilities, ``D_i = sum_d dout_id * out_id`` and the lse gradient ``dlse``:
    ``dS = P * (dout @ V^T - D + dlse)``, ``dQ = scale * dS @ K``, ``dK = scale * dS^T @ Q``,
    ``dV = P^T @ dout`` (dK, dV summed over the query heads of each KV group), and for the sink
    ``dsink_h = sum_{b,i} exp(sink_h - lse_i) * (dlse_i - D_i)``.
    Returns ``(dq, dk, dv, dsink)``; ``dsink`` is None without a sink.
    """
    B, Hq, Sq, Dqk = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    cdt = _compute_dtype(q.dtype, None)
    scale = Dqk**-0.5 if scale is None else scale
    out, lse, probs = masked_attention(q, k, v, mask, sink, scale)
    out, lse = out.to(cdt), lse.to(cdt)
    do, dl = dout.to(cdt), dlse.to(cdt)
    kx = k.to(cdt).repeat_interleave(group, dim=1)
    vx = v.to(cdt).repeat_interleave(group, dim=1)
    D = (do * out).sum(-1)  # [B, Hq, Sq]
    dp = do @ vx.transpose(-1, -2)  # [B, Hq, Sq, Sk]
    ds = probs * (dp - D[..., None] + dl[..., None])
    dq = scale * ds @ kx
    dk = (scale * ds.transpose(-1, -2) @ q.to(cdt)).view(B, Hkv, group, -1, Dqk).sum(2)
    dv = (probs.transpose(-1, -2) @ do).view(B, Hkv, group, -1, v.shape[-1]).sum(2)
    dsink = None
    if sink is not None:
        p_sink = torch.exp(sink.to(cdt).view(1, Hq, 1) - lse)  # 1 for rows that see no key
        dsink = (p_sink * (dl - D)).sum(dim=(0, 2)).to(sink.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dsink


def attention_bwd(dout, dlse, q, k, v, sink, out, lse, causal, window, scale):
    """Gradients ``(dq, dk, dv, dsink)``; ``dsink`` is None without a sink."""
    mask = visible_mask(q.shape[2], k.shape[2], causal=causal, window=window, device=q.device)
    return masked_attention_bwd(dout, dlse, q, k, v, mask, sink, scale)


def sparse_attention_bwd(dout, dlse, q, k, v, indices, sink, out, lse, block_size, scale):
    """Gradients of sparse attention; dk/dv land on the shared cache's selected blocks."""
    mask = sparse_mask(indices, q.shape[2], k.shape[2], block_size)
    return masked_attention_bwd(dout, dlse, q, k, v, mask, sink, scale)
