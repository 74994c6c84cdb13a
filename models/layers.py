"""Building blocks of the zoo's decoders: RMSNorm, partial RoPE, SwiGLU FFN, and the three
attention layers (full, sliding window with sink, HySparse sparse + SWA with sigmoid gates).

Every attention computation goes through the ``hysparse_kernels`` ops, so each backend serves
every model. Tensors are ``[B, S, hidden]`` between layers and ``[B, H, S, D]`` inside attention.
Parameter names follow Hugging Face checkpoints (``q_proj``, ``k_proj``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import hysparse_kernels as hk
from hysparse_kernels.ir import Full, LayerSpec, OracleSparse, Selection, SlidingWindow


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype normalisation, RoPE and router math run in: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` computed in at least float32 (float64 for float64 ``x``). ``weight`` [hidden]."""

    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(compute_dtype(x.dtype))
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(positions: Tensor, rope_dim: int, theta: float, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos/sin ``[..., S, rope_dim]`` for integer ``positions`` ``[..., S]`` (rotate-half layout),
    computed in ``compute_dtype(dtype)`` (float64 tables for a float64 model)."""
    ct = compute_dtype(dtype)
    inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=ct, device=positions.device) / rope_dim))
    angles = positions.to(ct)[..., None] * inv_freq  # [..., S, rope_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``rope_dim`` dims of ``x`` [B, H, S, D]; cos/sin [B or 1, S, rope_dim]."""
    rd = cos.shape[-1]
    if rd == 0:
        return x
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)


class SwiGLU(nn.Module):
    """Dense FFN ``down(silu(gate(x)) * up(x))``; gate and up are separate matrices."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class Shared:
    """What a full layer hands the sparse layers after it (they own no K/V for their sparse branch).

    ``k`` / ``v`` its keys and values ``[B, Hkv, Sk, D]`` (the cache's, when decoding); ``lens``
    ``[B]`` valid keys per sequence (None without a cache); ``indices`` per top-k of
    ``ir.selection_plan``: the selected blocks ``[B, Hkv, Sq, k]`` (int32, -1 pads).
    """

    k: Tensor
    v: Tensor
    lens: Tensor | None
    indices: dict[int, Tensor]


@dataclass
class Step:
    """What one forward pass carries from layer to layer.

    ``positions`` [B, S] key positions of the new tokens; ``cache`` the KV cache (None when
    training); ``shared`` the :class:`Shared` of the most recent full layer that selects blocks.
    """

    positions: Tensor
    cache: object | None = None
    shared: Shared | None = None


class _Projections(nn.Module):
    def __init__(self, spec: LayerSpec, hidden: int, *, kv: bool = True, prefix: str = ""):
        super().__init__()
        self.spec = spec
        H, Hkv = spec.q_heads, spec.kv_heads
        self.q_proj = nn.Linear(hidden, H * spec.qk_dim, bias=spec.qkv_bias)
        if kv:
            setattr(self, f"{prefix}k_proj", nn.Linear(hidden, Hkv * spec.qk_dim, bias=spec.qkv_bias))
            setattr(self, f"{prefix}v_proj", nn.Linear(hidden, Hkv * spec.v_dim, bias=spec.qkv_bias))
        self.o_proj = nn.Linear(H * spec.v_dim, hidden, bias=False)

    def _heads(self, x: Tensor, proj: nn.Linear, heads: int, dim: int) -> Tensor:
        B, S, _ = x.shape
        return proj(x).view(B, S, heads, dim).transpose(1, 2)  # [B, heads, S, dim]

    def qkv(self, x: Tensor, step: Step, prefix: str = "") -> tuple[Tensor, Tensor, Tensor]:
        s = self.spec
        cos, sin = rope_tables(step.positions, s.rope_dim, s.rope_theta, x.dtype)
        q = apply_rope(self._heads(x, self.q_proj, s.q_heads, s.qk_dim), cos, sin)
        k = apply_rope(self._heads(x, getattr(self, f"{prefix}k_proj"), s.kv_heads, s.qk_dim), cos, sin)
        v = self._heads(x, getattr(self, f"{prefix}v_proj"), s.kv_heads, s.v_dim)
        if s.value_scale != 1.0:
            v = v * s.value_scale
        return q, k, v

    def out(self, o: Tensor) -> Tensor:
        B, H, S, Dv = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, S, H * Dv))


class FullAttention(_Projections):
    """Full causal attention. When ``selects`` is not empty (sparse layers read this layer: its
    selections of ``ir.selection_plan``), it also emits HySparse block scores, once, and the
    top-k block indices of each selection, with its K/V."""

    def __init__(self, spec: LayerSpec, hidden: int, selects: tuple[Selection, ...] | None = ()):
        super().__init__(spec, hidden)
        self.selects = tuple(selects or ())
        if len({sel.block_size for sel in self.selects}) > 1:
            raise ValueError(f"selects: expected one block size for full layer {spec.index}, got "
                             f"{sorted({sel.block_size for sel in self.selects})}")

    def forward(self, x: Tensor, step: Step) -> Tensor:
        q, k, v = self.qkv(x, step)
        if step.cache is not None:
            k, v, lens = step.cache.append(self.spec.index, k, v)
        else:
            lens = None
        if not self.selects:
            o = _attend(q, k, v, lens, window=None, sink=None)
        else:
            topks = sorted({sel.topk for sel in self.selects})
            o, idx = _attend_and_select(q, k, v, lens, self.selects[0].block_size, topks)
            step.shared = Shared(k, v, lens, idx)
        return self.out(o)


class SlidingAttention(_Projections):
    """Sliding-window attention (window W) with an optional learnable per-head sink."""

    def __init__(self, spec: LayerSpec, hidden: int):
        super().__init__(spec, hidden)
        pattern: SlidingWindow = spec.pattern
        self.window = pattern.window
        self.attention_sink_bias = nn.Parameter(torch.zeros(spec.q_heads)) if pattern.sink else None

    def forward(self, x: Tensor, step: Step) -> Tensor:
        q, k, v = self.qkv(x, step)
        lens = None
        if step.cache is not None:
            k, v, lens = step.cache.append(self.spec.index, k, v)
        return self.out(_attend(q, k, v, lens, window=self.window, sink=self.attention_sink_bias))


class SparseAttention(_Projections):
    """HySparse sparse layer: its own q; a sparse branch over the top-k blocks of the preceding
    full layer's K/V (shared cache, no K/V projection of its own); a sliding-window branch with
    its own K/V (``swa_k_proj``/``swa_v_proj``) and cache; ``o = σ(W_a x)·o_sparse + σ(W_b x)·o_swa``
    with per-head gates."""

    def __init__(self, spec: LayerSpec, hidden: int):
        pattern: OracleSparse = spec.pattern
        super().__init__(spec, hidden, kv=pattern.window is not None, prefix="swa_")
        self.block_size, self.window, self.topk = pattern.block_size, pattern.window, pattern.topk
        H = spec.q_heads
        self.sparse_sink_bias = nn.Parameter(torch.zeros(H)) if pattern.sink else None
        self.gate_sparse_proj = nn.Linear(hidden, H, bias=False)
        if self.window is not None:
            self.swa_sink_bias = nn.Parameter(torch.zeros(H)) if pattern.sink else None
            self.gate_swa_proj = nn.Linear(hidden, H, bias=False)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        shared = step.shared
        if shared is None or self.topk not in shared.indices:
            raise RuntimeError(f"layer {self.spec.index}: a sparse layer needs a preceding full layer's top-{self.topk} selection")
        s = self.spec
        if self.window is not None:
            q, k, v = self.qkv(x, step, prefix="swa_")
        else:
            cos, sin = rope_tables(step.positions, s.rope_dim, s.rope_theta, x.dtype)
            q = apply_rope(self._heads(x, self.q_proj, s.q_heads, s.qk_dim), cos, sin)
        o_sparse = _attend_sparse(q, shared.k, shared.v, shared.lens, shared.indices[self.topk], self.block_size,
                                  self.sparse_sink_bias)
        gate = torch.sigmoid(self.gate_sparse_proj(x)).transpose(1, 2)[..., None]  # [B, H, S, 1]
        o = gate.to(o_sparse.dtype) * o_sparse
        if self.window is not None:
            lens = None
            if step.cache is not None:
                k, v, lens = step.cache.append(s.index, k, v)
            o_swa = _attend(q, k, v, lens, window=self.window, sink=self.swa_sink_bias)
            gate_b = torch.sigmoid(self.gate_swa_proj(x)).transpose(1, 2)[..., None]
            o = o + gate_b.to(o_swa.dtype) * o_swa
        return self.out(o)


# --------------------------------------------------------------------------- op calls


def _attend(q, k, v, lens, *, window, sink):
    if lens is None:
        return hk.attention(q, k, v, window=window, sink=sink)
    return hk.attention_decode(q, k, v, lens, window=window, sink=sink)


def _attend_and_select(q, k, v, lens, block_size, topks):
    """Full attention with block scores (once), then the top-k of each ``k`` in ``topks``:
    ``(o, {k: indices})``. With a cache (``lens``: per-sequence lengths ``[B]``), each sequence
    is scored over its own valid keys of the padded cache, the whole batch in one call (the
    TVM and Triton kernels take the lengths; no loop over the batch). Equal lengths (prefill
    into one row, a batch in step) slice the cache to those keys instead, so no backend reads
    the empty slots (the reference would compute every logit of the padded cache)."""
    if lens is not None and lens.numel() and bool((lens == lens[0]).all()):
        n = int(lens[0])
        k, v, lens = k[:, :, :n], v[:, :, :n], None
    o, _, scores = hk.attention_with_block_scores(q, k, v, block_size=block_size, cache_seqlens=lens)
    return o, {t: hk.topk_blocks(scores, t, block_size=block_size, seqlen_k=k.shape[2], cache_seqlens=lens)
               for t in topks}


def _attend_sparse(q, k, v, lens, indices, block_size, sink):
    if lens is None:
        return hk.sparse_attention(q, k, v, indices, block_size=block_size, sink=sink)
    return hk.sparse_attention_decode(q, k, v, lens, indices, block_size=block_size, sink=sink)


def attention_for(spec: LayerSpec, hidden: int, selects: tuple[Selection, ...] | None = ()) -> nn.Module:
    """The attention module of layer ``spec``; a full layer emits the ``selects`` of the IR's
    selection plan for the sparse layers that read it."""
    if isinstance(spec.pattern, Full):
        return FullAttention(spec, hidden, selects)
    if isinstance(spec.pattern, SlidingWindow):
        return SlidingAttention(spec, hidden)
    return SparseAttention(spec, hidden)
