"""KV cache allocated from the IR's KV owners (``ir.assign_kv_owners``): full layers own a
full-length cache, sliding-window layers (and the SWA branch of sparse layers) a ring buffer of
``window`` tokens, and the sparse branch owns nothing: it reads its full layer's cache.

Layout per layer: k ``[B, Hkv, capacity, Dqk]``, v ``[B, Hkv, capacity, Dv]``, and ``lens [B]``
tokens written so far. ``append`` stores new keys and returns what attention reads: the full
cache for a full layer, or, for a ring, the last ``window - 1`` keys in position order followed
by the new ones (so the decode op's causal window sees exactly the right keys).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hysparse_kernels import ir
from hysparse_kernels.ir import ModelGraph


class KVCache:
    def __init__(self, graph: ModelGraph, batch: int, max_len: int, *, dtype=torch.float32, device="cpu", spare: int = 0,
                 growable: bool = False):
        """The caches ``ir.assign_kv_owners(graph)`` says the layers own.

        ``spare``: extra ring slots so that up to ``spare + 1`` tokens can be appended and
        rolled back without overwriting keys the window still needs (speculative decoding).

        ``growable``: the full-length caches double their capacity when an append would pass
        ``max_len`` (for callers that do not know the final length, e.g. ``transformers``'
        ``generate``); rings then always hold a whole window. Views from ``select`` never grow.
        """
        self._allocate(graph.layers, ir.assign_kv_owners(graph), batch, max_len, dtype, device, spare, growable)

    @classmethod
    def for_layers(cls, layers, batch: int, max_len: int, *, dtype=torch.float32, device="cpu", spare: int = 0,
                   growable: bool = False) -> "KVCache":
        """A cache for ``LayerSpec``s outside a model graph (the MTP blocks' layers, indexed after
        the main stack), owned by the same rule (``ir.kv_owners``); arguments as ``KVCache``."""
        cache = object.__new__(cls)
        cache._allocate(layers, ir.kv_owners(layers), batch, max_len, dtype, device, spare, growable)
        return cache

    def _allocate(self, layers, owners, batch, max_len, dtype, device, spare, growable) -> None:
        if spare < 0:
            raise ValueError(f"spare: expected a non-negative int, got {spare}")
        self.batch, self.max_len, self.growable = batch, max_len, growable
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}
        self.window: dict[int, int | None] = {}
        self.lens = {}
        spec = {layer.index: layer for layer in layers}
        for own in owners:
            if own.owns == "full":
                cap, window = max_len, None
            elif own.owns == "window":
                cap, window = own.window + spare if growable else min(own.window + spare, max_len), own.window
            else:
                continue  # sparse branch without SWA: nothing of its own
            i, layer = own.layer, spec[own.layer]
            self.k[i] = torch.zeros(batch, layer.kv_heads, cap, layer.qk_dim, dtype=dtype, device=device)
            self.v[i] = torch.zeros(batch, layer.kv_heads, cap, layer.v_dim, dtype=dtype, device=device)
            self.window[i] = window
            self.lens[i] = torch.zeros(batch, dtype=torch.int32, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V tensors of every layer."""
        return sum(t.numel() * t.element_size() for t in (*self.k.values(), *self.v.values()))

    def seq_len(self, b: int = 0) -> int:
        return int(next(iter(self.lens.values()))[b])

    def rollback(self, lengths) -> None:
        """Forget tokens after ``lengths`` (int or ``[B]``): the next append overwrites them.

        Valid for full caches always, and for rings as long as no more than ``spare + 1`` tokens
        were appended since the kept length (what ``spare`` was sized for).
        """
        for lens in self.lens.values():
            new = torch.as_tensor(lengths, dtype=lens.dtype, device=lens.device).expand_as(lens)
            if bool((new > lens).any()) or bool((new < 0).any()):
                raise ValueError(f"lengths: expected values in [0, current length], got {new.tolist()} for {lens.tolist()}")
            lens.copy_(new)

    def append(self, layer: int, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Store ``k_new``/``v_new`` ``[B, Hkv, Sq, D]`` after each sequence's tokens; return
        (keys, values, lengths) for the decode ops."""
        lens = self.lens[layer]
        Sq = k_new.shape[2]
        if self.window[layer] is None:
            need = int(lens.max()) + Sq
            if need > self.k[layer].shape[2] and self.growable:
                self._grow(layer, max(need, 2 * self.k[layer].shape[2]))
            if need > self.k[layer].shape[2]:
                raise ValueError(f"cache: {int(lens.max())} + {Sq} tokens exceed max_len {self.max_len}")
            pos = lens.long()[:, None] + torch.arange(Sq, device=lens.device)  # [B, Sq]
            self._write(self.k[layer], k_new, pos)
            self._write(self.v[layer], v_new, pos)
            lens += Sq
            return self.k[layer], self.v[layer], lens.clone()
        keys, values, out_lens = self._ordered(layer, k_new, v_new)
        ring = self.k[layer].shape[2]
        pos = lens.long()[:, None] + torch.arange(max(0, Sq - ring), Sq, device=lens.device)
        tail = slice(max(0, Sq - ring), Sq)
        self._write(self.k[layer], k_new[:, :, tail], pos % ring)
        self._write(self.v[layer], v_new[:, :, tail], pos % ring)
        lens += Sq
        return keys, values, out_lens

    def _ordered(self, layer: int, k_new: Tensor, v_new: Tensor):
        """Last ``window - 1`` cached keys in position order, then the new ones; per-sequence lengths."""
        lens = self.lens[layer].long()
        ring = self.k[layer].shape[2]
        keep = min(self.window[layer] - 1, ring)
        Sq = k_new.shape[2]
        n_old = torch.clamp(lens, max=keep)  # [B]
        t = torch.arange(keep + Sq, device=lens.device)[None, :]  # slot in the ordered buffer
        old_slot = (lens[:, None] - n_old[:, None] + t) % ring
        new_slot = ring + (t - n_old[:, None])
        src = torch.where(t < n_old[:, None], old_slot, torch.where(t < n_old[:, None] + Sq, new_slot, 0))
        gather = lambda cache, new: torch.gather(  # noqa: E731
            torch.cat([cache, new], dim=2), 2, src[:, None, :, None].expand(-1, cache.shape[1], -1, cache.shape[3])
        )
        return gather(self.k[layer], k_new), gather(self.v[layer], v_new), (n_old + Sq).to(torch.int32)

    def _grow(self, layer: int, capacity: int) -> None:
        """Give the full-length cache of ``layer`` room for ``capacity`` tokens (contents kept)."""
        for store in (self.k, self.v):
            old = store[layer]
            new = old.new_zeros(old.shape[0], old.shape[1], capacity, old.shape[3])
            new[:, :, : old.shape[2]] = old
            store[layer] = new
        self.max_len = max(self.max_len, capacity)

    @staticmethod
    def _write(cache: Tensor, new: Tensor, pos: Tensor) -> None:
        index = pos[:, None, :, None].expand(-1, cache.shape[1], -1, cache.shape[3])
        cache.scatter_(2, index, new.to(cache.dtype))

    def select(self, b: int) -> "KVCache":
        """A view of sequence ``b`` (shares storage: writes land in this cache)."""
        view = object.__new__(KVCache)
        view.batch, view.max_len, view.window, view.growable = 1, self.max_len, self.window, False
        view.k = {i: t[b:b + 1] for i, t in self.k.items()}
        view.v = {i: t[b:b + 1] for i, t in self.v.items()}
        view.lens = {i: t[b:b + 1] for i, t in self.lens.items()}
        return view
