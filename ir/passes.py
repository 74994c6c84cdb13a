"""Passes over a ModelGraph: validate, KV owners, KV plan (against its full-attention twin and its
hybrid-SWA twin), selection plan.

Example::

    g = get_graph("hysparse-80b-a3b")
    validate(g)
    plan = kv_plan(g, batch=1, seq_len=32768)
    plan.saving          # 9.47: the full-attention twin holds 9.47x more KV (HySparse: "nearly 10x")
    kv_plan(g, 1, 2**20, "float8_e4m3fn").total_bytes           # 6.72e9 (HySparse at 1M tokens, FP8)
    kv_plan(g, 1, 2**20, "float8_e4m3fn").swa_twin_total_bytes  # 12.09e9 (the 1:5 hybrid-SWA twin)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .graph import ModelGraph, hybrid_kinds
from .patterns import Full, OracleSparse, SlidingWindow


class GraphError(ValueError):
    """A graph that cannot run: the message names the layer and what is wrong."""


def validate(graph: ModelGraph) -> ModelGraph:
    """Check the cross-layer rules; return the graph unchanged.

    An ``OracleSparse`` layer reads the K/V cache and the top-k selection of the nearest
    preceding ``Full`` layer, with sparse layers only in between (a sliding-window layer in
    between breaks the chain: it has no cache to share and emits no block scores), and that full
    layer must be causal and have the same kv heads, Dqk and Dv.
    """
    if not isinstance(graph, ModelGraph):
        raise TypeError(f"graph: expected ModelGraph, got {type(graph).__name__}")
    last_full = None  # the full layer a sparse layer here would read
    swa_since = None  # a sliding-window layer between that full layer and here
    for layer in graph.layers:
        pat = layer.pattern
        if isinstance(pat, Full):
            last_full, swa_since = layer.index, None
            continue
        if isinstance(pat, SlidingWindow):
            swa_since = layer.index if swa_since is None else swa_since
            continue
        # OracleSparse
        if last_full is None:
            raise GraphError(f"layer {layer.index}: OracleSparse layer has no preceding Full layer to read "
                             f"K/V and top-k blocks from (a sparse layer must follow a full layer)")
        if swa_since is not None:
            raise GraphError(f"layer {layer.index}: OracleSparse layer follows the SlidingWindow layer {swa_since}; "
                             f"expected only full or sparse layers between it and its full layer")
        owner = last_full
        full = graph.layers[owner]
        if not full.pattern.causal:
            raise GraphError(f"layer {layer.index}: OracleSparse layer reads layer {owner}, which is not causal")
        for name in ("kv_heads", "qk_dim", "v_dim"):
            if getattr(layer, name) != getattr(full, name):
                raise GraphError(f"layer {layer.index}: OracleSparse layer has {name}={getattr(layer, name)}, "
                                 f"but the full layer {owner} whose cache it reads has {name}={getattr(full, name)}")
    return graph


@dataclass(frozen=True)
class KVOwner:
    """Which caches layer ``layer`` reads and which it owns.

    ``reads``: the layer whose full-length cache this layer's (main/sparse) attention reads
    (itself for full layers; the preceding full layer for sparse layers; ``None`` for SWA, which
    reads only its window). ``owns``: "full" (a cache of every token), "window" (a ring buffer
    of ``window`` tokens) or "none".
    """

    layer: int
    kind: str
    reads: int | None
    owns: str
    window: int | None


def assign_kv_owners(graph: ModelGraph) -> tuple[KVOwner, ...]:
    """One KVOwner per layer (validates first). Sparse layers own only their SWA-branch cache."""
    validate(graph)
    return kv_owners(graph.layers)


def kv_owners(layers) -> tuple[KVOwner, ...]:
    """The ownership rule of ``assign_kv_owners`` over a sequence of ``LayerSpec`` (no validation):
    the layers of a validated graph, or stacks outside one (the MTP blocks' layers)."""
    out, last_full = [], None
    for layer in layers:
        pat = layer.pattern
        if isinstance(pat, Full):
            last_full = layer.index
            out.append(KVOwner(layer.index, pat.kind, layer.index, "full", None))
        elif isinstance(pat, SlidingWindow):
            out.append(KVOwner(layer.index, pat.kind, None, "window", pat.window))
        else:
            owns = "window" if pat.window is not None else "none"
            out.append(KVOwner(layer.index, pat.kind, last_full, owns, pat.window))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# KV plan
# ----------------------------------------------------------------------------------------------

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
# Short names accepted for the same dtypes ("fp8" is the e4m3 format FP8 KV caches use).
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp8": "float8_e4m3fn"}

# The hybrid-SWA twin a KV plan is also compared with: the same layers as 1 full : 5 sliding-window
# layers (the last layer full) with a 128-token window, the hybrid-SWA layout of MiMo-V2-Flash and
# of the HySparse papers' hybrid-SWA baselines.
SWA_TWIN_RATIO, SWA_TWIN_WINDOW = 5, 128


def dtype_name(dtype) -> str:
    """The canonical name of ``dtype`` (a name like "bfloat16", an alias like "fp8", or a torch.dtype)."""
    name = str(dtype).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_BYTES)} (or {sorted(DTYPE_ALIASES)}), got {dtype!r}")
    return name


def dtype_bytes(dtype) -> int:
    """Bytes per element of ``dtype`` (a name like "bfloat16", "fp8", or a torch.dtype)."""
    return DTYPE_BYTES[dtype_name(dtype)]


def hybrid_swa_twin(graph: ModelGraph, *, swa_per_full: int = SWA_TWIN_RATIO, window: int = SWA_TWIN_WINDOW,
                    sink: bool = True) -> ModelGraph:
    """The same model as a hybrid-SWA model: layer ``i`` is full when ``i % (swa_per_full + 1) == 0``
    or it is the last layer, every other layer is sliding-window (``window``, ``sink``); each layer
    keeps its heads, head dims and FFN, and the MTP blocks stay as they are.

    Example: the 49 layers of hysparse-80b-a3b become 9 full layers (0, 6, ..., 48) and 40 SWA layers.
    """
    if not isinstance(graph, ModelGraph):
        raise TypeError(f"graph: expected ModelGraph, got {type(graph).__name__}")
    kinds = hybrid_kinds(graph.num_layers, swa_per_full, letter="W")
    swa = SlidingWindow(window=window, sink=sink)
    layers = tuple(dataclasses.replace(layer, pattern=Full() if k == "F" else swa)
                   for layer, k in zip(graph.layers, kinds))
    name = f"{graph.name} hybrid-SWA twin" if graph.name else "hybrid-SWA twin"
    return dataclasses.replace(graph, layers=layers, name=name,
                               notes=(f"1 full : {swa_per_full} SWA (window {window}), last layer full",))


@dataclass(frozen=True)
class LayerKV:
    """KV cache of one layer: ``tokens`` cached x ``kv_heads`` x (Dqk + Dv) x itemsize x batch.

    A cache allocated from it holds K ``[batch, kv_heads, tokens, qk_dim]`` and V
    ``[batch, kv_heads, tokens, v_dim]`` (``tokens == 0``: the layer owns no cache).
    """

    layer: int
    kind: str
    owns: str
    tokens: int
    kv_heads: int
    qk_dim: int
    v_dim: int
    bytes: int
    twin_bytes: int  # the same layer as Full attention
    mtp: bool = False
    swa_twin_bytes: int = 0  # the same layer in the hybrid-SWA twin (``hybrid_swa_twin``)


@dataclass(frozen=True)
class KVPlan:
    batch: int
    seq_len: int
    dtype: str
    layers: tuple[LayerKV, ...]

    @property
    def total_bytes(self) -> int:
        return sum(entry.bytes for entry in self.layers)

    @property
    def twin_total_bytes(self) -> int:
        """Bytes of the full-attention twin: every layer a Full layer with the same heads and dims."""
        return sum(entry.twin_bytes for entry in self.layers)

    @property
    def saving(self) -> float:
        """``twin_total_bytes / total_bytes``: how many times less KV the graph holds."""
        return self.twin_total_bytes / self.total_bytes if self.total_bytes else float("inf")

    @property
    def swa_twin_total_bytes(self) -> int:
        """Bytes of the hybrid-SWA twin (``hybrid_swa_twin``: 1 full : 5 SWA-128, last layer full)."""
        return sum(entry.swa_twin_bytes for entry in self.layers)


def _cache_tokens(owns: str, window: int | None, seq_len: int) -> int:
    if owns == "full":
        return seq_len
    if owns == "window":
        return min(window, seq_len)
    return 0


def kv_plan(graph: ModelGraph, batch: int, seq_len: int, dtype="bfloat16", *, include_mtp: bool = False) -> KVPlan:
    """Bytes of KV cache per layer and in total for ``batch`` sequences of ``seq_len`` tokens.

    Full layers hold ``seq_len`` tokens; SWA layers and the SWA branch of sparse layers hold a
    ring buffer of ``min(window, seq_len)`` tokens; the sparse branch holds nothing (it reads its
    full layer's cache). Per token and layer: ``kv_heads * (Dqk + Dv) * itemsize`` bytes.
    ``include_mtp`` adds the MTP blocks' caches (entries with ``mtp=True``). ``dtype`` names the
    cache's element type (``"float8_e4m3fn"`` / ``"fp8"``: one byte per element).

    Each entry also carries what the same layer holds in the full-attention twin (``twin_bytes``)
    and in the hybrid-SWA twin (``swa_twin_bytes``, see ``hybrid_swa_twin``).

    Example: a layer with 2 kv heads, Dqk = Dv = 16, bf16, batch 1, 100 tokens holds
    ``100 * 2 * 32 * 2 = 12800`` bytes.
    """
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    item = dtype_bytes(dtype)
    twin_kinds = hybrid_kinds(graph.num_layers, SWA_TWIN_RATIO, letter="W")
    entries = []
    for own, twin_kind in zip(assign_kv_owners(graph), twin_kinds):
        layer = graph.layers[own.layer]
        per_token = batch * layer.kv_heads * (layer.qk_dim + layer.v_dim) * item
        tokens = _cache_tokens(own.owns, own.window, seq_len)
        swa_twin_tokens = seq_len if twin_kind == "F" else min(SWA_TWIN_WINDOW, seq_len)
        entries.append(LayerKV(own.layer, own.kind, own.owns, tokens, layer.kv_heads, layer.qk_dim, layer.v_dim,
                               tokens * per_token, seq_len * per_token, swa_twin_bytes=swa_twin_tokens * per_token))
    if include_mtp and graph.mtp is not None:
        m = graph.mtp
        per_token = batch * m.attention.kv_heads * (m.attention.qk_dim + m.attention.v_dim) * item
        owns = "full" if isinstance(m.pattern, Full) else "window"
        tokens = _cache_tokens(owns, getattr(m.pattern, "window", None), seq_len)
        a = m.attention
        for j in range(m.num_layers):
            entries.append(LayerKV(j, m.pattern.kind, owns, tokens, a.kv_heads, a.qk_dim, a.v_dim,
                                   tokens * per_token, seq_len * per_token, mtp=True, swa_twin_bytes=tokens * per_token))
    return KVPlan(batch, seq_len, dtype_name(dtype), tuple(entries))


# ----------------------------------------------------------------------------------------------
# Selection plan
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Full layer ``full_layer`` emits block scores over blocks of ``block_size`` keys and the
    top-``topk`` block indices that ``sparse_layers`` read (one group per distinct topk)."""

    full_layer: int
    block_size: int
    topk: int
    sparse_layers: tuple[int, ...]


def selection_plan(graph: ModelGraph) -> tuple[Selection, ...]:
    """Which full layer emits block scores and top-k for which sparse layers.

    All sparse layers reading one full layer must share its ``block_size`` (the scores are
    computed once per full layer); sparse layers with different ``topk`` get separate top-k
    selections from the same scores.
    """
    groups: dict[int, dict[int, list[int]]] = {}
    block: dict[int, int] = {}
    for own in assign_kv_owners(graph):
        pat = graph.layers[own.layer].pattern
        if not isinstance(pat, OracleSparse):
            continue
        full = own.reads
        if block.setdefault(full, pat.block_size) != pat.block_size:
            raise GraphError(f"layer {own.layer}: OracleSparse block_size={pat.block_size}, but another sparse layer "
                             f"reading full layer {full} uses block_size={block[full]}; expected one block size per full layer")
        groups.setdefault(full, {}).setdefault(pat.topk, []).append(own.layer)
    return tuple(Selection(full, block[full], k, tuple(layers))
                 for full in sorted(groups) for k, layers in sorted(groups[full].items()))


def selection_sources(graph: ModelGraph) -> dict[int, tuple[Selection, ...]]:
    """full layer -> its selections (only full layers that feed sparse layers appear)."""
    out: dict[int, list[Selection]] = {}
    for sel in selection_plan(graph):
        out.setdefault(sel.full_layer, []).append(sel)
    return {k: tuple(v) for k, v in out.items()}
