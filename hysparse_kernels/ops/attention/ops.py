"""torch.library registration of the attention ops (namespace ``hysparse``).

Each op resolves its backend when it runs (see ``hysparse_kernels.dispatch``), so a compiled
graph keeps honouring ``use_backend()`` and ``HYSPARSE_BACKEND``. This module imports no backend:
implementations are registered by their import path and loaded on first use.

Ops (all outputs are new, contiguous tensors; nothing is mutated):

* ``hysparse::attention_fwd(q, k, v, sink?, causal, window?, scale, backend) -> (out, lse)``
* ``hysparse::attention_bwd(dout, dlse, q, k, v, sink?, out, lse, causal, window?, scale, backend)
  -> (dq, dk, dv, dsink)``; ``dsink`` is zeros ``[Hq]`` when there is no sink.
* ``hysparse::attention_with_block_scores(q, k, v, block_size, causal, scale, backend, cache_seqlens?)
  -> (out, lse, block_scores)``; differentiable in out and lse (without ``cache_seqlens``), not
  in the scores.
* ``hysparse::topk_blocks(block_scores, k, block_size, seqlen_k, backend, cache_seqlens?) -> indices``
* ``hysparse::sparse_attention_fwd / _bwd``: like attention, over selected KV blocks.
* ``hysparse::attention_decode(q, k_cache, v_cache, cache_seqlens, sink?, window?, scale, backend)
  -> (out, lse)`` and ``hysparse::sparse_attention_decode(..., indices, block_size, sink?, scale,
  backend)``: inference steps over padded caches with per-sequence lengths (no autograd).
"""

from __future__ import annotations

import pathlib
from typing import Optional

import torch
from torch import Tensor

from ... import dispatch, tuned

_REF = "hysparse_kernels.ops.attention.reference"
_REFERENCE = {
    "attention_fwd": "attention_fwd",
    "attention_bwd": "attention_bwd",
    "attention_with_block_scores": "attention_with_block_scores",
    "topk_blocks": "topk_blocks",
    "sparse_attention_fwd": "sparse_attention_fwd",
    "sparse_attention_bwd": "sparse_attention_bwd",
    "attention_decode": "attention_decode",
    "sparse_attention_decode": "sparse_attention_decode",
}
for _op, _fn in _REFERENCE.items():
    dispatch.register(_op, "reference", f"{_REF}:{_fn}")
# The kernel sources whose hash keys each backend's tuned configs of these ops.
_HERE = pathlib.Path(__file__).parent
tuned.register_sources("attention", _REFERENCE, {"tvm": [_HERE / "tvm"], "triton": [_HERE / "triton"]})

# TVM kernels for the CPU, forward and backward (topk_blocks stays on the reference: a sort, no
# kernel to win). They compute in fp32 and take half and single precision; float64 (the oracle's
# dtype) goes to the reference under auto.
_TVM = "hysparse_kernels.ops.attention.tvm"
_TVM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TVM_ACCEPTS = ("attention_with_block_scores", "sparse_attention_fwd", "attention_decode", "sparse_attention_decode")
# By launcher module, not through the package: importing the kernel file ``tvm/attention_bwd.py``
# (when the backward kernel is built) rebinds the package's ``attention_bwd`` to that module.
for _op, _target in {
    "attention_fwd": "launch:attention_fwd",
    "attention_bwd": "launch_bwd:attention_bwd",
    "attention_with_block_scores": "launch:attention_with_block_scores",
    "sparse_attention_fwd": "launch:sparse_attention_fwd",
    "sparse_attention_bwd": "launch_bwd:sparse_attention_bwd",
    "attention_decode": "launch:attention_decode",
    "sparse_attention_decode": "launch:sparse_attention_decode",
}.items():
    # Inputs the kernels do not take (block sizes outside 8..1024, empty sides) go to the reference.
    _fn = _target.partition(":")[2]
    _accepts = f"{_TVM}.launch:accepts_{_fn}" if _op in _TVM_ACCEPTS else None
    dispatch.register(_op, "tvm", f"{_TVM}.{_target}", dtypes=_TVM_DTYPES, accepts=_accepts)

_TRITON = "hysparse_kernels.ops.attention.triton"
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_ACCEPTS = ("attention_with_block_scores", "sparse_attention_fwd", "sparse_attention_bwd", "sparse_attention_decode")
for _op, _target in {
    "attention_fwd": "attention:attention_fwd",
    "attention_bwd": "attention_bwd:attention_bwd",
    "attention_with_block_scores": "attention:attention_with_block_scores",
    "topk_blocks": "topk_blocks:topk_blocks",
    "sparse_attention_fwd": "sparse_attention:sparse_attention_fwd",
    "sparse_attention_bwd": "sparse_attention_bwd:sparse_attention_bwd",
    "attention_decode": "attention_decode:attention_decode",
    "sparse_attention_decode": "sparse_attention:sparse_attention_decode",
}.items():
    # Triton's dots take half and single precision; float64 stays on the reference under auto.
    # Blocks below the smallest tl.dot tile go to the reference (the kernels' accepts_*).
    _module, _, _fn = _target.partition(":")
    _accepts = f"{_TRITON}.{_module}:accepts_{_fn}" if _op in _TRITON_ACCEPTS else None
    dispatch.register(_op, "triton", f"{_TRITON}.{_target}", dtypes=_TRITON_DTYPES, accepts=_accepts)


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dsink_or_zeros(dsink: Tensor | None, sink: Tensor | None, q: Tensor) -> Tensor:
    if dsink is not None:
        return dsink.to(sink.dtype).contiguous()
    return torch.zeros(q.shape[1], dtype=_stat_dtype(q.dtype), device=q.device)


def _fake_dsink(sink: Tensor | None, q: Tensor) -> Tensor:
    dtype = sink.dtype if sink is not None else _stat_dtype(q.dtype)
    return q.new_empty(q.shape[1], dtype=dtype)


def check_sink(sink: Tensor | None) -> None:
    """A sink of ``+inf`` is rejected (checked at run time, not traced): it would take all the
    probability, leaving every output 0 and lse inf. ``-inf`` is no sink; NaN propagates."""
    if sink is not None and sink.numel() and bool(torch.isposinf(sink).any()):
        heads = torch.isposinf(sink).nonzero().flatten().tolist()
        raise ValueError(f"sink: expected values below +inf (a +inf sink would take all the probability), "
                         f"got +inf at heads {heads}")


# ---------------------------------------------------------------- full / sliding-window attention


@torch.library.custom_op("hysparse::attention_fwd", mutates_args=())
def attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, sink: Optional[Tensor], causal: bool, window: Optional[int], scale: float, backend: str
) -> tuple[Tensor, Tensor]:
    check_sink(sink)
    out, lse = dispatch.call("attention_fwd", backend, q, q, k, v, sink, causal, window, scale)
    return out.contiguous(), lse.contiguous()


@attention_fwd.register_fake
def _(q, k, v, sink, causal, window, scale, backend):
    B, Hq, Sq, _ = q.shape
    return q.new_empty(B, Hq, Sq, v.shape[-1]), q.new_empty(B, Hq, Sq, dtype=_stat_dtype(q.dtype))


@torch.library.custom_op("hysparse::attention_bwd", mutates_args=())
def attention_bwd(
    dout: Tensor, dlse: Tensor, q: Tensor, k: Tensor, v: Tensor, sink: Optional[Tensor], out: Tensor, lse: Tensor,
    causal: bool, window: Optional[int], scale: float, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dsink = dispatch.call(
        "attention_bwd", backend, q, dout, dlse, q, k, v, sink, out, lse, causal, window, scale
    )
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), _dsink_or_zeros(dsink, sink, q)


@attention_bwd.register_fake
def _(dout, dlse, q, k, v, sink, out, lse, causal, window, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), _fake_dsink(sink, q)


def _grad_or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return grad if grad is not None else torch.zeros_like(like)


def _attention_setup(ctx, inputs, output):
    q, k, v, sink, causal, window, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, sink, out, lse)
    ctx.args = (causal, window, scale, backend)


def _attention_backward(ctx, dout, dlse):
    q, k, v, sink, out, lse = ctx.saved_tensors
    causal, window, scale, backend = ctx.args
    dq, dk, dv, dsink = attention_bwd(
        _grad_or_zeros(dout, out), _grad_or_zeros(dlse, lse), q, k, v, sink, out, lse, causal, window, scale, backend
    )
    return dq, dk, dv, (dsink if sink is not None else None), None, None, None, None


attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


# ---------------------------------------------------------------- HySparse oracle: block scores, top-k


def check_lengths(cache_seqlens: Tensor | None, sk: int) -> None:
    """Per-sequence key counts of a padded cache must lie in ``[0, Sk]`` (checked at run time)."""
    if cache_seqlens is not None and cache_seqlens.numel():
        lo, hi = (int(x) for x in torch.aminmax(cache_seqlens))
        if lo < 0 or hi > sk:
            raise ValueError(f"cache_seqlens: expected lengths in [0, Sk={sk}], got values in [{lo}, {hi}]")


@torch.library.custom_op("hysparse::attention_with_block_scores", mutates_args=())
def attention_with_block_scores(
    q: Tensor, k: Tensor, v: Tensor, block_size: int, causal: bool, scale: float, backend: str,
    cache_seqlens: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    check_lengths(cache_seqlens, k.shape[2])
    out, lse, scores = dispatch.call(
        "attention_with_block_scores", backend, q, q, k, v, block_size, causal, scale, cache_seqlens
    )
    return out.contiguous(), lse.contiguous(), scores.contiguous()


@attention_with_block_scores.register_fake
def _(q, k, v, block_size, causal, scale, backend, cache_seqlens=None):
    B, Hq, Sq, _ = q.shape
    nblocks = -(-k.shape[2] // block_size)
    stat = _stat_dtype(q.dtype)
    return (
        q.new_empty(B, Hq, Sq, v.shape[-1]),
        q.new_empty(B, Hq, Sq, dtype=stat),
        q.new_empty(B, k.shape[1], Sq, nblocks, dtype=stat),
    )


def _block_scores_setup(ctx, inputs, output):
    q, k, v, block_size, causal, scale, backend, *rest = inputs
    out, lse, _ = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (causal, scale, backend)
    ctx.ragged = bool(rest) and rest[0] is not None


def _block_scores_backward(ctx, dout, dlse, dscores):
    # The scores feed a discrete top-k (the oracle selection): they carry no gradient.
    if ctx.ragged:
        raise NotImplementedError(
            "attention_with_block_scores: no gradient with cache_seqlens (padded caches are for inference)"
        )
    q, k, v, out, lse = ctx.saved_tensors
    causal, scale, backend = ctx.args
    dq, dk, dv, _ = attention_bwd(
        _grad_or_zeros(dout, out), _grad_or_zeros(dlse, lse), q, k, v, None, out, lse, causal, None, scale, backend
    )
    return dq, dk, dv, None, None, None, None, None


attention_with_block_scores.register_autograd(_block_scores_backward, setup_context=_block_scores_setup)


@torch.library.custom_op("hysparse::topk_blocks", mutates_args=())
def topk_blocks(
    block_scores: Tensor, k: int, block_size: int, seqlen_k: int, backend: str, cache_seqlens: Optional[Tensor] = None
) -> Tensor:
    check_lengths(cache_seqlens, seqlen_k)
    idx = dispatch.call("topk_blocks", backend, block_scores, block_scores, k, block_size, seqlen_k, cache_seqlens)
    return idx.contiguous()


@topk_blocks.register_fake
def _(block_scores, k, block_size, seqlen_k, backend, cache_seqlens=None):
    B, Hkv, Sq, _ = block_scores.shape
    return block_scores.new_empty(B, Hkv, Sq, k, dtype=torch.int32)


# ---------------------------------------------------------------- sparse attention over selected blocks


def check_indices(indices: Tensor, num_blocks: int) -> None:
    """Values of ``indices`` must lie in ``[-1, num_blocks)`` (checked at run time, not traced)."""
    if not indices.numel():
        return
    lo, hi = (int(x) for x in torch.aminmax(indices))  # one pass
    if lo < -1 or hi >= num_blocks:
        raise ValueError(f"indices: expected block ids in [-1, {num_blocks}) (-1 pads), got values in [{lo}, {hi}]")


def compact_indices(indices: Tensor, num_blocks: int) -> Tensor:
    """The same selection in at most ``num_blocks`` entries per list, so ``-1`` pads cost nothing.

    A list of ``k > num_blocks`` entries holds at most ``num_blocks`` distinct blocks; the rest
    are pads or repeats, which every kernel would otherwise walk (and compare against the
    entries before them). Such lists become the ascending distinct block ids, ``-1`` padded to
    ``num_blocks`` entries: ``[B, Hkv, Sq, k] -> [B, Hkv, Sq, num_blocks]``, same dtype. Lists
    with ``k <= num_blocks`` entries are returned as they are.
    """
    if indices.shape[-1] <= num_blocks:
        return indices
    flat = indices.reshape(-1, indices.shape[-1])
    row, col = (flat >= 0).nonzero(as_tuple=True)  # the real entries only (pads are most of them)
    chosen = torch.zeros(flat.shape[0], num_blocks, dtype=torch.bool, device=indices.device)
    chosen[row, flat[row, col].long()] = True
    ids = torch.where(chosen, torch.arange(num_blocks, device=indices.device), num_blocks)
    ids = torch.sort(ids, dim=-1).values  # chosen blocks first, ascending
    ids = torch.where(ids == num_blocks, -1, ids).to(indices.dtype)
    return ids.view(*indices.shape[:-1], num_blocks).contiguous()


@torch.library.custom_op("hysparse::sparse_attention_fwd", mutates_args=())
def sparse_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, indices: Tensor, block_size: int, sink: Optional[Tensor], scale: float, backend: str
) -> tuple[Tensor, Tensor]:
    num_blocks = -(-k.shape[2] // block_size)
    check_indices(indices, num_blocks)
    check_sink(sink)
    out, lse = dispatch.call(
        "sparse_attention_fwd", backend, q, q, k, v, compact_indices(indices, num_blocks), block_size, sink,
        scale,
    )
    return out.contiguous(), lse.contiguous()


@sparse_attention_fwd.register_fake
def _(q, k, v, indices, block_size, sink, scale, backend):
    B, Hq, Sq, _ = q.shape
    return q.new_empty(B, Hq, Sq, v.shape[-1]), q.new_empty(B, Hq, Sq, dtype=_stat_dtype(q.dtype))


@torch.library.custom_op("hysparse::sparse_attention_bwd", mutates_args=())
def sparse_attention_bwd(
    dout: Tensor, dlse: Tensor, q: Tensor, k: Tensor, v: Tensor, indices: Tensor, sink: Optional[Tensor], out: Tensor,
    lse: Tensor, block_size: int, scale: float, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    indices = compact_indices(indices, -(-k.shape[2] // block_size))
    dq, dk, dv, dsink = dispatch.call(
        "sparse_attention_bwd", backend, q,
        dout, dlse, q, k, v, indices, sink, out, lse, block_size, scale,
    )
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), _dsink_or_zeros(dsink, sink, q)


@sparse_attention_bwd.register_fake
def _(dout, dlse, q, k, v, indices, sink, out, lse, block_size, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), _fake_dsink(sink, q)


def _sparse_setup(ctx, inputs, output):
    q, k, v, indices, block_size, sink, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, indices, sink, out, lse)
    ctx.args = (block_size, scale, backend)


def _sparse_backward(ctx, dout, dlse):
    q, k, v, indices, sink, out, lse = ctx.saved_tensors
    block_size, scale, backend = ctx.args
    dq, dk, dv, dsink = sparse_attention_bwd(
        _grad_or_zeros(dout, out), _grad_or_zeros(dlse, lse), q, k, v, indices, sink, out, lse, block_size, scale, backend
    )
    return dq, dk, dv, None, None, (dsink if sink is not None else None), None, None


sparse_attention_fwd.register_autograd(_sparse_backward, setup_context=_sparse_setup)


# ---------------------------------------------------------------- decode over padded caches


def check_seqlens(cache_seqlens: Tensor, sq: int, smax: int) -> None:
    """Each sequence must hold its ``Sq`` new tokens and fit the cache (checked at run time)."""
    if cache_seqlens.numel() and (bool((cache_seqlens < sq).any()) or bool((cache_seqlens > smax).any())):
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        raise ValueError(
            f"cache_seqlens: expected lengths in [Sq={sq}, cache size {smax}] (the cache holds the new tokens), "
            f"got values in [{lo}, {hi}]"
        )


def _fake_out_lse(q, v):
    B, Hq, Sq, _ = q.shape
    return q.new_empty(B, Hq, Sq, v.shape[-1]), q.new_empty(B, Hq, Sq, dtype=_stat_dtype(q.dtype))


@torch.library.custom_op("hysparse::attention_decode", mutates_args=())
def attention_decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, sink: Optional[Tensor], window: Optional[int],
    scale: float, backend: str,
) -> tuple[Tensor, Tensor]:
    check_seqlens(cache_seqlens, q.shape[2], k_cache.shape[2])
    check_sink(sink)
    out, lse = dispatch.call(
        "attention_decode", backend, q, q, k_cache, v_cache, cache_seqlens, sink, window, scale
    )
    return out.contiguous(), lse.contiguous()


@attention_decode.register_fake
def _(q, k_cache, v_cache, cache_seqlens, sink, window, scale, backend):
    return _fake_out_lse(q, v_cache)


@torch.library.custom_op("hysparse::sparse_attention_decode", mutates_args=())
def sparse_attention_decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, indices: Tensor, block_size: int,
    sink: Optional[Tensor], scale: float, backend: str,
) -> tuple[Tensor, Tensor]:
    check_seqlens(cache_seqlens, q.shape[2], k_cache.shape[2])
    num_blocks = -(-k_cache.shape[2] // block_size)
    check_indices(indices, num_blocks)
    check_sink(sink)
    out, lse = dispatch.call(
        "sparse_attention_decode", backend, q,
        q, k_cache, v_cache, cache_seqlens, compact_indices(indices, num_blocks), block_size, sink, scale,
    )
    return out.contiguous(), lse.contiguous()


@sparse_attention_decode.register_fake
def _(q, k_cache, v_cache, cache_seqlens, indices, block_size, sink, scale, backend):
    return _fake_out_lse(q, v_cache)
