"""Public attention functions: validate inputs, then call the registered ``hysparse`` ops.

Shapes follow torch SDPA: q ``[B, Hq, Sq, Dqk]``, k ``[B, Hkv, Sk, Dqk]``, v ``[B, Hkv, Sk, Dv]``
with ``Hq % Hkv == 0`` (GQA) and ``Dqk`` possibly different from ``Dv``. Queries are
bottom-right aligned: query ``i`` sits at key position ``Sk - Sq + i`` (decode is ``Sq = 1``).
Outputs are ``[B, Hq, Sq, Dv]`` in q's dtype; lse is ``[B, Hq, Sq]`` float32 (float64 for
float64 inputs). ``backend`` is ``None``/``"auto"``, ``"reference"``, ``"triton"`` or ``"tvm"``
(see ``hysparse_kernels.dispatch``).

Alike on every backend (README, "Public API"): ``Sk = 0`` gives out 0 and lse -inf (the sink
with a sink) for every query; keys a query cannot see never affect it, whatever they hold; NaN
in what it sees (its q row, a visible k row, its head's sink, an infinite logit) makes its row
NaN, NaN / inf in a visible v column reaches that column; ``sink = -inf`` is no sink, ``+inf``
and a non-finite ``scale`` are rejected. ``block_size`` is any power of two.
"""

from __future__ import annotations

from torch import Tensor

from .. import checks
from . import ops


def _check_qkv(q, k, v, kn: str = "k", vn: str = "v") -> None:
    """q, k, v (named ``kn`` / ``vn`` in errors: ``k_cache`` / ``v_cache`` for the decode ops)."""
    checks.tensor("q", q, 4, "[B, Hq, Sq, Dqk]")
    checks.tensor(kn, k, 4, "[B, Hkv, Sk, Dqk]")
    checks.tensor(vn, v, 4, "[B, Hkv, Sk, Dv]")
    checks.floating("q", q)
    checks.same_dtype(kn, k, "q", q)
    checks.same_dtype(vn, v, "q", q)
    checks.same_device(kn, k, "q", q)
    checks.same_device(vn, v, "q", q)
    B, Hq, _, Dqk = q.shape
    checks.dim_equal(kn, k.shape[0], B, "batch size (q.shape[0])")
    checks.dim_equal(vn, v.shape[0], B, "batch size (q.shape[0])")
    checks.dim_equal(vn, v.shape[1], k.shape[1], f"kv heads ({kn}.shape[1])")
    checks.dim_equal(vn, v.shape[2], k.shape[2], f"kv length ({kn}.shape[2])")
    checks.dim_equal(kn, k.shape[3], Dqk, "head dim Dqk (q.shape[3])")
    checks.nonzero_dim("q", Dqk, "head dim Dqk (q.shape[3])")
    checks.nonzero_dim(vn, v.shape[3], f"head dim Dv ({vn}.shape[3])")
    if k.shape[1] == 0 or Hq % k.shape[1]:
        raise ValueError(f"{kn}: expected kv heads dividing the {Hq} query heads (GQA), got {k.shape[1]}")


def _check_sink(sink, q) -> None:
    # Values (+inf is rejected) are checked inside the ops, at run time.
    if sink is None:
        return
    checks.tensor("sink", sink, 1, "[Hq]")
    checks.floating("sink", sink)
    checks.dim_equal("sink", sink.shape[0], q.shape[1], "one value per query head, Hq")
    checks.same_device("sink", sink, "q", q)


def _check_indices(indices, q, k) -> None:
    # Values ([-1, ceil(Sk / block_size))) are checked inside the ops, at run time.
    checks.tensor("indices", indices, 4, "[B, Hkv, Sq, topk]")
    checks.integer("indices", indices)
    checks.same_device("indices", indices, "q", q)
    B, Hkv, Sq = k.shape[0], k.shape[1], q.shape[2]
    if tuple(indices.shape[:3]) != (B, Hkv, Sq):
        raise ValueError(f"indices: expected shape [B, Hkv, Sq, topk] = [{B}, {Hkv}, {Sq}, topk], got {tuple(indices.shape)}")


def _scale(scale, q) -> float:
    checks.positive_float("scale", scale)
    return float(scale) if scale is not None else q.shape[-1] ** -0.5


def attention(q, k, v, *, causal=True, window=None, sink=None, scale=None, return_lse=False, backend=None):
    """Causal (or full) attention, optionally sliding-window and with a learnable sink.

    Args:
        q: ``[B, Hq, Sq, Dqk]``; k: ``[B, Hkv, Sk, Dqk]``; v: ``[B, Hkv, Sk, Dv]``.
        causal: mask keys after the query (bottom-right aligned).
        window: if set (needs ``causal``), query i sees itself and the ``window - 1`` keys before it.
        sink: ``[Hq]`` per-head logit added to the softmax denominator only; receives a gradient.
            ``-inf`` is no sink, NaN makes the head's rows NaN, ``+inf`` raises ``ValueError``.
        scale: logit scale, default ``Dqk ** -0.5``.
        return_lse: also return the log-sum-exp ``[B, Hq, Sq]`` (to merge partial results).

    Returns:
        out ``[B, Hq, Sq, Dv]`` (and lse).

    Example::

        q = torch.randn(1, 8, 100, 64); k = v = torch.randn(1, 2, 100, 64)
        out = hysparse_kernels.attention(q, k, v, window=16, sink=torch.zeros(8))
    """
    _check_qkv(q, k, v)
    _check_sink(sink, q)
    checks.positive_int("window", window, allow_none=True)
    if window is not None and not causal:
        raise ValueError(f"window: a sliding window needs causal=True, got window={window} with causal=False")
    out, lse = ops.attention_fwd(q, k, v, sink, bool(causal), window, _scale(scale, q), checks.backend_name(backend))
    return (out, lse) if return_lse else out


def _check_lengths(cache_seqlens, batch: int, like) -> None:
    """Optional per-sequence key counts of a padded cache (values in ``[0, Sk]``: run time)."""
    if cache_seqlens is None:
        return
    checks.tensor("cache_seqlens", cache_seqlens, 1, "[B]")
    checks.integer("cache_seqlens", cache_seqlens)
    checks.same_device("cache_seqlens", cache_seqlens, like[0], like[1])
    checks.dim_equal("cache_seqlens", cache_seqlens.shape[0], batch, "one length per sequence, B")


def attention_with_block_scores(q, k, v, *, block_size=64, causal=True, scale=None, cache_seqlens=None, backend=None):
    """Attention that also emits HySparse block scores (the oracle of the sparse layers after it).

    ``block_scores[b, g, i, n]`` is the max over the query heads of KV group ``g`` of the largest
    softmax probability query ``i`` gives a key of block ``n`` (keys ``n*block_size`` to
    ``(n+1)*block_size - 1``); 0 for blocks the query cannot see.

    Args:
        cache_seqlens: optional int32/int64 ``[B]``, each in ``[0, Sk]``: k and v are a padded
            cache whose first ``cache_seqlens[b]`` keys belong to sequence ``b``; keys past them
            are masked and query ``i`` sits at ``cache_seqlens[b] - Sq + i``. Inference only
            (no gradient); the TVM and Triton kernels take the lengths (the whole batch in one
            launch).

    Returns:
        out ``[B, Hq, Sq, Dv]``, lse ``[B, Hq, Sq]``, block_scores ``[B, Hkv, Sq, ceil(Sk/block_size)]``.
        Gradients flow through out and lse; the scores carry none.
    """
    _check_qkv(q, k, v)
    checks.power_of_two("block_size", block_size)
    _check_lengths(cache_seqlens, q.shape[0], ("q", q))
    return ops.attention_with_block_scores(
        q, k, v, block_size, bool(causal), _scale(scale, q), checks.backend_name(backend), cache_seqlens
    )


def topk_blocks(block_scores, k, *, block_size=64, seqlen_k, cache_seqlens=None, backend=None) -> Tensor:
    """The ``k`` highest-scoring visible KV blocks per (batch, KV head, query).

    Args:
        block_scores: ``[B, Hkv, Sq, ceil(seqlen_k / block_size)]`` from ``attention_with_block_scores``.
        k: blocks to keep per query.
        seqlen_k: keys in the cache; query i sits at ``seqlen_k - Sq + i`` and may select only
            blocks at or before its own.
        cache_seqlens: optional int32/int64 ``[B]``, each in ``[0, seqlen_k]``: per-sequence key
            counts of a padded cache of ``seqlen_k`` slots; query i of sequence b then sits at
            ``cache_seqlens[b] - Sq + i``.

    Returns:
        int32 ``[B, Hkv, Sq, k]``: block ids by descending score (ties to the lower id), ``-1``
        where fewer than ``k`` blocks are visible.
    """
    checks.tensor("block_scores", block_scores, 4, "[B, Hkv, Sq, num_blocks]")
    checks.floating("block_scores", block_scores)
    checks.positive_int("k", k)
    checks.power_of_two("block_size", block_size)
    checks.positive_int("seqlen_k", seqlen_k)
    nblocks = -(-seqlen_k // block_size)
    checks.dim_equal("block_scores", block_scores.shape[3], nblocks, f"ceil(seqlen_k / block_size) blocks")
    _check_lengths(cache_seqlens, block_scores.shape[0], ("block_scores", block_scores))
    return ops.topk_blocks(block_scores, k, block_size, seqlen_k, checks.backend_name(backend), cache_seqlens)


def sparse_attention(q, k, v, indices, *, block_size=64, sink=None, scale=None, return_lse=False, backend=None):
    """Attention of each query over its selected KV blocks of a (shared) cache.

    The HySparse sparse branch: ``k``/``v`` are the preceding full layer's cache, ``indices`` its
    top-k blocks (shared by the query heads of a KV group). Keys after the query are masked
    (causal inside the query's own block). Each listed block counts once.

    Args:
        q: ``[B, Hq, Sq, Dqk]``; k: ``[B, Hkv, Sk, Dqk]``; v: ``[B, Hkv, Sk, Dv]``.
        indices: int ``[B, Hkv, Sq, topk]`` block ids in ``[0, ceil(Sk/block_size))``, ``-1`` pads.
        sink: ``[Hq]`` per-head softmax sink (see ``attention``).

    Returns:
        out ``[B, Hq, Sq, Dv]`` (and lse ``[B, Hq, Sq]``). Gradients reach q, k, v and sink.
    """
    _check_qkv(q, k, v)
    _check_sink(sink, q)
    checks.power_of_two("block_size", block_size)
    _check_indices(indices, q, k)
    out, lse = ops.sparse_attention_fwd(
        q, k, v, indices, block_size, sink, _scale(scale, q), checks.backend_name(backend)
    )
    return (out, lse) if return_lse else out


def _check_seqlens(cache_seqlens, q) -> None:
    checks.tensor("cache_seqlens", cache_seqlens, 1, "[B]")
    checks.integer("cache_seqlens", cache_seqlens)
    checks.same_device("cache_seqlens", cache_seqlens, "q", q)
    checks.dim_equal("cache_seqlens", cache_seqlens.shape[0], q.shape[0], "one length per sequence, B")


def attention_decode(q, k_cache, v_cache, cache_seqlens, *, window=None, sink=None, scale=None, return_lse=False, backend=None):
    """One decode (or speculative-verification) step over a padded KV cache.

    Args:
        q: ``[B, Hq, Sq, Dqk]`` new queries (``Sq = 1``, or ``1 + draft tokens``).
        k_cache: ``[B, Hkv, Smax, Dqk]``; v_cache: ``[B, Hkv, Smax, Dv]``; the first
            ``cache_seqlens[b]`` positions of sequence ``b`` are valid and already include the
            new tokens, so query ``i`` sits at ``cache_seqlens[b] - Sq + i``.
        cache_seqlens: int ``[B]``, each in ``[Sq, Smax]``.
        window, sink, scale: as in ``attention`` (always causal).

    Returns:
        out ``[B, Hq, Sq, Dv]`` (and lse ``[B, Hq, Sq]``). Inference only: no gradient.
    """
    _check_qkv(q, k_cache, v_cache, "k_cache", "v_cache")
    _check_sink(sink, q)
    _check_seqlens(cache_seqlens, q)
    checks.positive_int("window", window, allow_none=True)
    out, lse = ops.attention_decode(q, k_cache, v_cache, cache_seqlens, sink, window, _scale(scale, q), checks.backend_name(backend))
    return (out, lse) if return_lse else out


def sparse_attention_decode(
    q, k_cache, v_cache, cache_seqlens, indices, *, block_size=64, sink=None, scale=None, return_lse=False, backend=None
):
    """A decode step of the HySparse sparse branch over selected blocks of the shared cache.

    Args as in ``attention_decode``, plus ``indices`` int ``[B, Hkv, Sq, topk]`` (block ids,
    ``-1`` pads) from the full layer's ``topk_blocks``.
    """
    _check_qkv(q, k_cache, v_cache, "k_cache", "v_cache")
    _check_sink(sink, q)
    _check_seqlens(cache_seqlens, q)
    checks.power_of_two("block_size", block_size)
    _check_indices(indices, q, k_cache)
    out, lse = ops.sparse_attention_decode(
        q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, _scale(scale, q), checks.backend_name(backend)
    )
    return (out, lse) if return_lse else out
