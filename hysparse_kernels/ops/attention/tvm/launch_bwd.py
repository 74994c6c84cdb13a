"""Launchers of the attention backward on the CPU (TVM, ``attention_bwd.py``): ``attention_bwd`` and
``sparse_attention_bwd``, registered as backend ``"tvm"`` for float32, bfloat16 and float16
(float64 runs the reference under auto: the kernels are single precision by design).

Signatures are fixed by ``reference.py``; each returns ``(dq, dk, dv, dsink)`` with ``dsink`` None
without a sink. The launcher computes ``Delta = rowsum(dO * O) - dlse`` and the sink gradient
``dsink_h = -sum_{b,i} exp(sink_h - lse_{b,h,i}) * Delta_{b,h,i}`` with torch (``[B, Hq, Sq]``
work), lists the queries of each KV block for the sparse kernel, and sums the fp32 dQ partials
of the kernel's chunks.
"""

from __future__ import annotations

import math

import torch

from ....backends.tvm import cpu_target_spec, get_module, threads
from ....backends.tvm.target import wide_registers
from ....backends.tvm.workspace import fresh
from .host import _DTYPES, _c, _source_hash

# Query rows per tile (group heads x queries): 32 rows amortise each K / V block over 32 x (Dqk + Dv)
# FMAs per GEMM and split into 4-row register tiles; P and dS of a tile stay in L1 at 64 keys.
BWD_ROWS = 32
# Parallel tasks aimed at: (batch x KV heads) x chunks of KV blocks. Chunks add a dQ partial each
# (summed afterwards), so they are used only when batch x KV heads alone give fewer tasks. The
# count depends on the shapes only, never on the threads: results are the same on any machine.
TASKS = 16
_NO_LIST = torch.zeros(1, dtype=torch.int32)


def _kv_block(window: int | None) -> int:
    """KV block of the dense backward: small windows get small blocks (a block is visited by
    ``block + window - 1`` queries, of which ``window`` see each key)."""
    if window is not None and window <= 64:
        return 16
    if window is not None and window <= 256:
        return 32
    return 64


def _bwd_module(dqk, dv, group, bm, bn, dtype, causal, window, sparse):
    spec = dict(kernel="backward", dqk=dqk, dv=dv, group=group, bm=bm, bn=bn, dtype=dtype, causal=bool(causal),
                window=window is not None, sparse=bool(sparse), wide=wide_registers())

    def build():
        from .attention_bwd import build_backward

        return build_backward(dqk=dqk, dv=dv, group=group, bm=bm, bn=bn, dtype=dtype, causal=spec["causal"],
                              has_window=spec["window"], sparse=spec["sparse"], wide=spec["wide"])

    op = "sparse_attention_bwd" if sparse else "attention_bwd"
    return get_module(op, spec, build, cpu_target_spec(), source=_source_hash() + _bwd_source_hash())


def _bwd_source_hash() -> str:
    import hashlib
    import pathlib

    return hashlib.sha256((pathlib.Path(__file__).parent / "attention_bwd.py").read_bytes()).hexdigest()[:16]


def query_lists(indices: torch.Tensor, seqlen_k: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (batch, KV head, block): the queries that selected it, ascending, each once.

    ``indices [B, Hkv, Sq, k]`` (-1 pads; a block listed twice counts once; a block entirely after
    the query is dropped, as in the forward). Returns ``(qoff int32 [B * Hkv * nblocks + 1],
    qidx int32 [n])``: block ``i = (b * Hkv + hk) * nblocks + blk`` has queries
    ``qidx[qoff[i]:qoff[i + 1]]``.
    """
    B, Hkv, Sq, kk = indices.shape
    nblocks = -(-seqlen_k // block_size)
    idx = indices.long()
    srt = idx.sort(dim=-1).values
    first = torch.ones_like(srt, dtype=torch.bool)
    first[..., 1:] = srt[..., 1:] != srt[..., :-1]
    pos = torch.arange(seqlen_k - Sq, seqlen_k).view(1, 1, Sq, 1)
    keep = first & (srt >= 0) & (srt * block_size <= pos)
    bh = torch.arange(B * Hkv).view(B, Hkv, 1, 1)
    qi = torch.arange(Sq).view(1, 1, Sq, 1)
    key = ((bh * nblocks + srt.clamp(min=0)) * Sq + qi)[keep]
    key = key.sort().values
    counts = torch.bincount(key // Sq, minlength=B * Hkv * nblocks)
    qoff = torch.zeros(B * Hkv * nblocks + 1, dtype=torch.int32)
    qoff[1:] = torch.cumsum(counts, 0)
    qidx = (key % Sq).to(torch.int32)
    return qoff, (qidx if qidx.numel() else _NO_LIST)


def _run_bwd(dout, dlse, q, k, v, sink, out, lse, scale, *, causal, window, indices=None, block_size=None):
    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    group = Hq // Hkv
    sparse = indices is not None
    bn = int(block_size) if sparse else _kv_block(window)
    bm = max(1, BWD_ROWS // group)
    lib = _bwd_module(Dqk, Dv, group, bm, bn, _DTYPES[q.dtype], causal, window, sparse)
    nblocks = -(-Sk // bn)
    chunks = max(1, min(nblocks, math.ceil(TASKS / max(1, B * Hkv))))
    # Delta_i = dO_i . O_i - dlse_i (fp32); the kernel uses dS = P * (dP - Delta).
    delta = ((dout.float() * out.float()).sum(-1) - dlse.float()).contiguous()
    lse32 = _c(lse.float())
    if sparse:
        qoff, qidx = query_lists(indices, Sk, bn)
        keys = float(qidx.numel() if qoff[-1] > 0 else 0) * group * bn
    else:
        qoff = qidx = _NO_LIST
        keys = B * Hkv * Sq * group * (min(Sk, window) if window is not None else (Sk + 1) / 2 if causal else Sk)
    dqp = fresh((chunks, B, Hq, Sq, Dqk)).zero_()
    dk = fresh((B, Hkv, Sk, Dqk), k.dtype)
    dv = fresh((B, Hkv, Sk, Dv), v.dtype)
    threads.before_launch(2.0 * keys * (3 * Dqk + 2 * Dv))  # five GEMMs over the visible pairs
    lib["main"](_c(q), _c(k), _c(v), _c(dout.to(q.dtype)), lse32, delta, qoff, qidx, dqp, dk, dv,
                int(window) if window is not None else 0, float(scale))
    dq = (dqp[0] if chunks == 1 else dqp.sum(0)).mul_(scale).to(q.dtype)
    return dq, dk, dv, _sink_grad(sink, delta, lse32)


def _sink_grad(sink, delta, lse):
    """``dsink_h = -sum_{b,i} exp(sink_h - lse) * Delta`` (``exp(sink - lse)`` is the sink's share of
    the softmax: 1 for a query that sees no key), or None without a sink."""
    if sink is None:
        return None
    p_sink = torch.exp(sink.detach().float().view(1, -1, 1) - lse.float())
    return (-(p_sink * delta)).sum(dim=(0, 2)).to(sink.dtype)


def _no_keys(dout, dlse, q, k, v, sink, out, lse):
    """Nothing to attend (no queries, no keys or no selected blocks): zero dq / dk / dv; the sink
    still has a gradient where queries exist (their lse is the sink)."""
    delta = (dout.float() * out.float()).sum(-1) - dlse.float()
    return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), _sink_grad(sink, delta, lse)


def attention_bwd(dout, dlse, q, k, v, sink, out, lse, causal, window, scale):
    """Gradients ``(dq, dk, dv, dsink)`` of full / sliding-window attention on the CPU.

    dout ``[B, Hq, Sq, Dv]``, dlse ``[B, Hq, Sq]``, q / k / v / out / lse as in the forward; dq,
    dk, dv in the dtype of q, k, v; dsink ``[Hq]`` (None without a sink). O(visible pairs) work.

    Example::

        dq, dk, dv, dsink = attention_bwd(do, dlse, q, k, v, sink, out, lse, True, 128, q.shape[-1] ** -0.5)
    """
    if q.numel() == 0 or k.shape[2] == 0:
        return _no_keys(dout, dlse, q, k, v, sink, out, lse)
    return _run_bwd(dout, dlse, q, k, v, sink, out, lse, scale, causal=causal, window=window)


def sparse_attention_bwd(dout, dlse, q, k, v, indices, sink, out, lse, block_size, scale):
    """Gradients ``(dq, dk, dv, dsink)`` of sparse attention over the selected blocks
    (``indices [B, Hkv, Sq, k]``); dk / dv land on the selected blocks of the shared K / V."""
    if q.numel() == 0 or k.shape[2] == 0 or indices.shape[-1] == 0:
        return _no_keys(dout, dlse, q, k, v, sink, out, lse)
    return _run_bwd(dout, dlse, q, k, v, sink, out, lse, scale, causal=True, window=None,
                    indices=_c(indices), block_size=block_size)
