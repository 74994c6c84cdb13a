"""Launchers: pick the specialisation, fetch the compiled module from the build cache, allocate
outputs with torch and run the kernels on the tensors through DLPack (zero copy)."""

from __future__ import annotations

import torch

from .... import tuned
from ....backends.tvm import cpu_target_spec, get_module, threads
from ....backends.tvm.target import wide_registers
from ....backends.tvm.workspace import fresh, workspace
from .host import _DTYPES, _c, _sink_arg, _source_hash

# Rows of a dense prefill task (group heads x queries): 48 rows amortise each K^T / V tile over
# 48 x (Dqk + Dv) FMAs while Q, S, P and the accumulator of a task stay in L2, and split into the
# kernel's 6-row register tiles.
DENSE_ROWS = 48


def dense_queries_per_task(group: int) -> int:
    """Queries per task so that ``group * bm`` is near DENSE_ROWS and, if possible, a multiple of 6."""
    top = max(1, DENSE_ROWS // group)
    for bm in range(top, 0, -1):
        if (group * bm) % 6 == 0:
            return bm
    return top


def scores_rows(group: int, seq_q: int) -> int:
    """Query rows of a block-score task: as the prefill, but no more queries than there are (a
    decode step of one query per sequence then computes ``group`` rows, not ``DENSE_ROWS``)."""
    return group * max(1, min(dense_queries_per_task(group), seq_q))


# The KV tile of prefill and decode. Block scores and sparse attention use the block size.
KV_TILE = 64
# Sliding windows up to this size use half tiles: a query block then computes fewer masked
# logits at the window's two edges (measured about 10% faster for window 128 at S = 8K).
SMALL_WINDOW, WINDOW_TILE = 256, 32
# Long causal / full prefill uses 128-key tiles: half the per-tile softmax and rescale work per
# key; the half-masked diagonal tile costs little once rows see thousands of keys. Measured on
# one core (interleaved A/B): S=4K 11% faster than 64-key tiles, S=1K 9% slower, hence the cut.
LONG_KV, LONG_TILE = 2048, 128
# attention_fwd with at most this many causal queries runs the decode kernel (no K^T pass).
FEW_QUERIES = 8
# Sliding windows up to this size run the band kernel (attention_swa.py); larger ones the dense kernel.
SWA_MAX_WINDOW = 512


# Placeholders for the buffers a specialisation does not read (never written by the kernels).
_NO_SCORES = torch.zeros(1, 1, 1, 1, dtype=torch.float32)
_NO_INDICES = torch.zeros(1, 1, 1, 1, dtype=torch.int32)


def _heuristic(window, dense=True, group=1, seqlen_k=0) -> dict:
    """The default knobs: ``rows`` (query rows of a dense task: group heads x queries, see
    ``dense_queries_per_task``) and ``kv_tile`` (keys per tile: half tiles for small windows,
    long tiles for long causal prefill)."""
    if not dense:
        return {"kv_tile": KV_TILE}
    if window is not None:
        tile = WINDOW_TILE if window <= SMALL_WINDOW else KV_TILE
    else:
        tile = LONG_TILE if seqlen_k >= LONG_KV else KV_TILE
    return {"rows": group * dense_queries_per_task(group), "kv_tile": tile}


def _tuned(op, q, k, v, window, heuristic, run, **extra):
    """``run(config)`` with the autotune cache's config for this shape (``tuned.launch``)."""
    B, Hq, Sq, Dqk = q.shape
    shape = dict(batch=B, q_heads=Hq, kv_heads=k.shape[1], qk_dim=Dqk, v_dim=v.shape[-1], seq_q=Sq,
                 seq_k=k.shape[2], dtype=_DTYPES[q.dtype], **extra)
    if window is not None:
        shape["window"] = int(window)
    return tuned.launch(op, backend="tvm", device="cpu", shape=shape, heuristic=heuristic, run=run)


def _dense_module(dqk, dv, group, dtype, causal, window, sink, block_size=None, config=None):
    config = config or _heuristic(window, group=group)
    bn = block_size if block_size is not None else int(config["kv_tile"])
    spec = dict(kernel="dense", dqk=dqk, dv=dv, group=group, bm=max(1, int(config["rows"]) // group), bn=bn,
                dtype=dtype, causal=bool(causal), window=window is not None, sink=sink is not None,
                block_scores=block_size is not None, wide=wide_registers())

    def build():
        from .attention import build_dense

        return build_dense(dqk=dqk, dv=dv, group=group, bm=spec["bm"], bn=bn, dtype=dtype, causal=spec["causal"],
                           has_window=spec["window"], has_sink=spec["sink"], block_scores=spec["block_scores"],
                           wide=spec["wide"])

    op = "attention_with_block_scores" if block_size is not None else "attention_fwd"
    return get_module(op, spec, build, cpu_target_spec(), source=_source_hash(), required=("prep", "main")), spec


def _rows_module(op, dqk, dv, group, dtype, bn, sparse, window, sink, scores=False):
    spec = dict(kernel="rows", dqk=dqk, dv=dv, group=group, bn=bn, dtype=dtype, sparse=bool(sparse),
                window=window is not None, sink=sink is not None, scores=bool(scores))

    def build():
        from .sparse_attention import build_rows

        return build_rows(dqk=dqk, dv=dv, group=group, bn=bn, dtype=dtype, sparse=spec["sparse"],
                          has_window=spec["window"], has_sink=spec["sink"], scores=spec["scores"])

    return get_module(op, spec, build, cpu_target_spec(), source=_source_hash())


def _empty_kv(q, v, sink):
    """No keys at all: out 0, lse -inf (the sink where there is one)."""
    B, Hq, Sq, _ = q.shape
    out = q.new_zeros(B, Hq, Sq, v.shape[-1])
    if sink is None:
        lse = torch.full((B, Hq, Sq), float("-inf"), dtype=torch.float32, device=q.device)
    else:
        lse = sink.detach().to(torch.float32).view(1, Hq, 1).expand(B, Hq, Sq).contiguous()
    return out, lse


def _run_dense(q, k, v, sink, causal, window, scale, block_size=None, config=None, kv_len=None):
    """The dense kernel: ``(out, lse, block_scores or a placeholder)``. ``kv_len`` (int ``[B]``,
    optional): per-sequence key counts of a padded cache (default ``Sk`` for every sequence)."""
    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    lib, spec = _dense_module(Dqk, Dv, Hq // Hkv, _DTYPES[q.dtype], causal, window, sink, block_size, config)
    q, k, v = _c(q), _c(k), _c(v)
    bn = spec["bn"]
    nblocks = -(-Sk // bn)
    # Workspaces of the K^T / V pass: fp32, zero-padded to whole tiles; kept per thread (above
    # glibc's 32 MiB mmap limit a new one is fresh pages every call: 1.6 us a page here).
    kt = workspace("dense.kt", B * Hkv * nblocks * Dqk * bn).view(B, Hkv, nblocks, Dqk, bn)
    vp = workspace("dense.vp", B * Hkv * nblocks * bn * Dv).view(B, Hkv, nblocks * bn, Dv)
    bad = torch.empty(B, Hkv, nblocks, dtype=torch.float32)  # V tiles holding NaN / inf
    out = fresh((B, Hq, Sq, Dv), q.dtype)
    lse = torch.empty(B, Hq, Sq, dtype=torch.float32)
    kv_len = torch.full((B,), Sk, dtype=torch.int32) if kv_len is None else _c(kv_len.to(torch.int32))
    if block_size is not None:
        tmax = fresh((B, Hq, Sq, nblocks))
        scores = torch.empty(B, Hkv, Sq, nblocks, dtype=torch.float32)
    else:
        tmax = scores = _NO_SCORES
    # work of the launch (FLOPs of Q @ K^T and P @ V over the keys a query sees), for the thread policy
    keys = min(Sk, window) if window is not None else (Sk + 1) / 2 if causal else Sk
    threads.before_launch(2.0 * B * Hq * Sq * keys * (Dqk + Dv))
    lib["prep"](k, v, kv_len, kt, vp, bad)
    lib["main"](q, kt, vp, bad, kv_len, _sink_arg(sink), out, lse, tmax, scores,
                int(window) if window is not None else 0, float(scale))
    return out, lse, scores


def _run_rows(op, q, k, v, kv_len, indices, block_size, sink, window, scale, config=None, scores=False):
    """The decode / sparse kernel: ``(out, lse)``, and the block scores ``[B, Hkv, Sq, ceil(Sk /
    block_size)]`` as a third result when ``scores`` (causal decode tiles of ``block_size`` keys)."""
    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    sparse = indices is not None
    bn = block_size if sparse or scores else int((config or {}).get("kv_tile", KV_TILE))
    lib = _rows_module(op, Dqk, Dv, Hq // Hkv, _DTYPES[q.dtype], bn, sparse, window, sink, scores)
    out = torch.empty(B, Hq, Sq, Dv, dtype=q.dtype)
    lse = torch.empty(B, Hq, Sq, dtype=torch.float32)
    if scores:
        nblocks = -(-Sk // bn)
        tmax = torch.empty(B, Hq, Sq, nblocks, dtype=torch.float32)
        block_scores = torch.empty(B, Hkv, Sq, nblocks, dtype=torch.float32)
    else:
        tmax = block_scores = _NO_SCORES
    idx = _c(indices.to(torch.int32)) if sparse else _NO_INDICES
    keys = indices.shape[-1] * bn if sparse else min(Sk, window) if window is not None else Sk
    threads.before_launch(2.0 * B * Hq * Sq * keys * (Dqk + Dv))
    lib["main"](_c(q), _c(k), _c(v), _c(kv_len.to(torch.int32)), idx, _sink_arg(sink), out, lse, tmax, block_scores,
                int(window) if window is not None else 0, float(scale))
    return (out, lse, block_scores) if scores else (out, lse)


# ---------------------------------------------------------------- the registered implementations


def attention_fwd(q, k, v, sink, causal, window, scale):
    """Full / sliding-window attention with optional sink on the CPU. Returns ``(out, lse)``.

    q ``[B, Hq, Sq, Dqk]``, k ``[B, Hkv, Sk, Dqk]``, v ``[B, Hkv, Sk, Dv]`` -> out
    ``[B, Hq, Sq, Dv]`` (q's dtype), lse ``[B, Hq, Sq]`` float32. float64 runs the reference.
    A causal call with at most ``FEW_QUERIES`` queries runs the decode kernel; a window up to
    ``SWA_MAX_WINDOW`` keys the band kernel (``attention_swa.py``); the rest the dense kernel.

    Example::

        out, lse = attention_fwd(q, k, v, None, True, 128, q.shape[-1] ** -0.5)
    """
    if q.numel() == 0:
        return q.new_empty(*q.shape[:3], v.shape[-1]), q.new_empty(q.shape[:3], dtype=torch.float32)
    if k.shape[2] == 0:
        return _empty_kv(q, v, sink)
    if causal and q.shape[2] <= FEW_QUERIES:
        kv_len = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32)
        return _tuned("attention_fwd", q, k, v, window, _heuristic(window, dense=False),
                      lambda c: _run_rows("attention_fwd", q, k, v, kv_len, None, None, sink, window, scale, c))
    if causal and window is not None and window <= SWA_MAX_WINDOW:
        from .launch_swa import run_swa  # one band of keys per query block, exact softmax

        return run_swa(q, k, v, sink, window, scale)
    heuristic = _heuristic(window, group=q.shape[1] // k.shape[1], seqlen_k=k.shape[2])
    out, lse, _ = _tuned("attention_fwd", q, k, v, window, heuristic,
                         lambda c: _run_dense(q, k, v, sink, causal, window, scale, config=c))
    return out, lse


def attention_with_block_scores(q, k, v, block_size, causal, scale, cache_seqlens=None):
    """Attention plus HySparse block scores ``[B, Hkv, Sq, ceil(Sk / block_size)]`` (float32).

    The KV tile of the kernel is the block, so block sizes from 8 to 1024 run in TVM; dispatch
    sends other inputs elsewhere (``accepts_attention_with_block_scores``). ``cache_seqlens``
    (int ``[B]``, optional): sequence b of a padded cache holds its first ``cache_seqlens[b]``
    keys and its queries sit at ``cache_seqlens[b] - Sq + i`` (the whole batch in one launch;
    blocks past a sequence's keys score 0). Returns ``(out, lse, block_scores)``.

    A causal call of at most ``FEW_QUERIES`` queries (a decode or verification step) runs the
    decode kernel, which reads the cache in place; longer calls run the dense prefill kernel.
    """
    if causal and q.shape[2] <= FEW_QUERIES:
        lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32) if cache_seqlens is None else cache_seqlens
        return _run_rows("attention_with_block_scores", q, k, v, lens, None, block_size, None, None, scale,
                         scores=True)
    group = q.shape[1] // k.shape[1]
    return _tuned("attention_with_block_scores", q, k, v, None, {"rows": scores_rows(group, q.shape[2])},
                  lambda c: _run_dense(q, k, v, None, causal, None, scale, block_size, {**c, "kv_tile": block_size},
                                       kv_len=cache_seqlens),
                  block_size=block_size)


def sparse_attention_fwd(q, k, v, indices, block_size, sink, scale):
    """Attention over the selected KV blocks (``indices [B, Hkv, Sq, k]``, -1 pads). Returns ``(out, lse)``.

    Each query reads only its listed blocks (a block listed twice counts once), causal inside
    its own block. Empty inputs run elsewhere (``accepts_sparse_attention_fwd``).
    """
    kv_len = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32)
    return _run_rows("sparse_attention_fwd", q, k, v, kv_len, indices, block_size, sink, None, scale)


def attention_decode(q, k_cache, v_cache, cache_seqlens, sink, window, scale):
    """Decode / verification step over a padded cache (``cache_seqlens [B]`` valid keys each).

    q ``[B, Hq, Sq, Dqk]`` (Sq = 1 or a few), caches ``[B, Hkv, Smax, D]``; the kernel reads only
    the tiles a query can see (window included), in place. Returns ``(out, lse)``.
    """
    return _tuned("attention_decode", q, k_cache, v_cache, window, _heuristic(window, dense=False),
                  lambda c: _run_rows("attention_decode", q, k_cache, v_cache, cache_seqlens, None, None, sink,
                                      window, scale, c))


def sparse_attention_decode(q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, scale):
    """Sparse attention of decode queries over selected blocks of a padded shared cache. Returns ``(out, lse)``."""
    return _run_rows("sparse_attention_decode", q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, None, scale)


# ---------------------------------------------------------------- the inputs the kernels take
# Registered with dispatch (``accepts=``): inputs for which these return False run on the next
# backend of the auto order (the reference on the CPU). The dtypes are registered separately.


def accepts_attention_with_block_scores(q, k, v, block_size, causal, scale, cache_seqlens=None) -> bool:
    """Block sizes 8..1024 (the block is the kernel's KV tile), no empty query or key side (per-
    sequence lengths ``cache_seqlens`` of any value in ``[0, Sk]`` are taken)."""
    return 8 <= block_size <= 1024 and q.numel() > 0 and k.shape[2] > 0


def accepts_sparse_attention_fwd(q, k, v, indices, block_size, sink, scale) -> bool:
    """Queries, keys and at least one selected block."""
    return q.numel() > 0 and k.shape[2] > 0 and indices.shape[-1] > 0


def accepts_attention_decode(q, k_cache, v_cache, cache_seqlens, sink, window, scale) -> bool:
    """Queries and a cache with room for keys."""
    return q.numel() > 0 and k_cache.shape[2] > 0


def accepts_sparse_attention_decode(q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, scale) -> bool:
    """Queries, a cache with room for keys and at least one selected block."""
    return q.numel() > 0 and k_cache.shape[2] > 0 and indices.shape[-1] > 0


# ---------------------------------------------------------------- the autotuner's entry points

TUNABLE = ("attention_fwd", "attention_decode", "attention_with_block_scores")
_KV_TILES = (16, 32, 64, 128)


def search_space(op: str, shape: dict, dtype: str, device) -> list[list[dict]]:
    """One group of configs for ``op``: ``rows`` (query rows of a dense task, at least the GQA
    group) x ``kv_tile`` (keys per tile) for the prefill, ``rows`` alone for the block scores
    (the KV tile is the block), ``kv_tile`` alone for decode (and prefills of few queries)."""
    if op not in TUNABLE:
        raise KeyError(f"op: no tvm tuning entry for {op!r}")
    group = int(shape.get("group") or int(shape.get("q_heads", 1)) // max(1, int(shape.get("kv_heads", 1))))
    if op == "attention_decode" or (op == "attention_fwd" and int(shape.get("seq_q", 1 << 30)) <= FEW_QUERIES):
        return [[{"kv_tile": t} for t in _KV_TILES + (256,)]]
    rows = [r for r in (16, 32, 64, 128) if r >= group]
    if op == "attention_with_block_scores" and int(shape.get("seq_q", 1 << 30)) <= FEW_QUERIES:
        return [[heuristic_config(op, shape)]]  # the decode kernel runs it: nothing to choose
    if op == "attention_with_block_scores":
        return [[{"rows": r} for r in rows]]
    return [[{"rows": r, "kv_tile": t} for r in rows for t in _KV_TILES]]



def heuristic_config(op: str, shape: dict) -> dict:
    """The config ``op`` runs for a cache-named ``shape`` without a tuned entry (the tuner's baseline)."""
    window = shape.get("window")
    group = int(shape.get("group") or int(shape.get("q_heads", 1)) // int(shape.get("kv_heads", 1)))
    if op == "attention_with_block_scores":
        return {"rows": scores_rows(group, int(shape.get("seq_q", 1 << 30)))}
    dense = not (op == "attention_decode" or int(shape.get("seq_q", 1 << 30)) <= FEW_QUERIES)
    return _heuristic(window, dense=dense, group=group, seqlen_k=int(shape.get("seq_k", 0)))


def run_with_config(op: str, config: dict, q, k, v, *, window=None, block_size=None):
    """Run the kernel of ``op`` (causal, no sink, full caches for decode) on exactly ``config``,
    bypassing the tuned-config cache: the autotuner times candidates this way."""
    scale = q.shape[-1] ** -0.5
    if op == "attention_with_block_scores":
        bs = int(block_size)
        if q.shape[2] <= FEW_QUERIES:
            lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32)
            return _run_rows(op, q, k, v, lens, None, bs, None, None, scale, scores=True)
        return _run_dense(q, k, v, None, True, None, scale, bs, {**config, "kv_tile": bs})
    if op == "attention_decode" or q.shape[2] <= FEW_QUERIES:
        lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32)
        return _run_rows(op, q, k, v, lens, None, None, None, window, scale, config)
    if op == "attention_fwd":
        return _run_dense(q, k, v, None, True, window, scale, config=config)
    raise KeyError(f"op: no tvm tuning entry for {op!r}")
