"""Lowering: a ModelGraph -> a kernel plan, one entry per (layer, phase, op).

Each entry names the op of the kernel layer (``hysparse_kernels.ops``), the backend that
``hysparse_kernels.dispatch.resolve`` picks for the device (explicit ``backend=`` honoured with
the same rules as a call), the kernel that implements it, and where its launch config comes
from: ``"tuned"`` when the autotune cache answers for the op's shape on this device, else
``"heuristic"`` (the kernel's default). MoE ops that the kernel layer has not registered yet
are listed as ``"not yet available"``, never guessed.

Example::

    plan = lower(get_graph("tiny-hysparse-7b"), "cpu", seq_len=256)
    [(e.op, e.backend, e.config_source) for e in plan.for_layer(1, "decode")]
    # [('sparse_attention_decode', 'reference', 'heuristic'), ('attention_decode', 'reference', 'heuristic')]
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Callable

from hysparse_kernels import dispatch
from hysparse_kernels.backends import status

from .graph import LayerSpec, ModelGraph, MoE
from .passes import selection_sources, validate
from .patterns import Full, OracleSparse, SlidingWindow

PHASES = ("prefill", "decode")
# The MoE ops a MoE layer lowers to (routing, then the permute / grouped-GEMM expert MLP /
# un-permute forward), looked up by name in the dispatch registry: the names the MoE op family
# registers (``hysparse_kernels/ops/moe/ops.py``); absent ones are "not yet available".
MOE_OPS = ("route", "moe_fwd")

TUNED, HEURISTIC, UNAVAILABLE = "tuned", "heuristic", "not yet available"


def tuned_config(op: str, *, backend: str, device: str, shape: dict) -> dict | None:
    """The hook where the autotune cache answers: a tuned launch config for ``op`` on ``backend``
    for ``shape`` on ``device``, or ``None`` (then the kernel's heuristic default is used).

    It asks ``hysparse_kernels.tuned.lookup(op, backend=..., device=..., shape=...)`` when that
    module (written by the autotune issue) exists; until then there is no cache and it answers
    ``None``.
    """
    try:
        tuned = importlib.import_module("hysparse_kernels.tuned")
    except ModuleNotFoundError as exc:
        if exc.name != "hysparse_kernels.tuned":
            raise
        return None
    lookup = getattr(tuned, "lookup", None)
    return None if lookup is None else lookup(op, backend=backend, device=device, shape=shape)


@dataclass(frozen=True)
class KernelEntry:
    """One op of the plan. ``layer`` indexes ``graph.layers`` (or the MTP block when ``mtp``);
    ``role``: what the op does in the layer ("full", "full + block scores", "top-k selection",
    "sliding window", "sparse branch", "swa branch", "moe");
    ``shape``: the sizes the config is chosen for, as sorted (name, value) pairs; ``config``:
    the tuned config's (name, value) pairs, empty for a heuristic one."""

    layer: int
    phase: str
    op: str
    role: str
    backend: str
    kernel: str
    config_source: str
    shape: tuple[tuple[str, int], ...]
    config: tuple[tuple[str, object], ...] = ()
    mtp: bool = False
    note: str = ""


@dataclass(frozen=True)
class KernelPlan:
    device: str
    batch: int
    seq_len: int
    entries: tuple[KernelEntry, ...]

    def ops(self) -> list[tuple[int, str, str]]:
        """(layer, phase, op) of every entry, in order."""
        return [(e.layer, e.phase, e.op) for e in self.entries]

    def for_layer(self, layer: int, phase: str, *, mtp: bool = False) -> tuple[KernelEntry, ...]:
        """The entries a model layer runs in ``phase`` (what a module asks to pick its backends)."""
        return tuple(e for e in self.entries if e.layer == layer and e.phase == phase and e.mtp == mtp)


def _device_type(device) -> str:
    name = str(device)
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = name.split(":")[0]
    if kind not in dispatch.AUTO_ORDER:
        raise ValueError(f"device: expected one of {sorted(dispatch.AUTO_ORDER) + ['auto']}, got {device!r}")
    return kind


def _layer_ops(layer, phase: str, selections) -> list[tuple[str, str, dict]]:
    """(op, role, extra shape keys) the attention of ``layer`` runs in ``phase``."""
    pat, ops = layer.pattern, []
    if isinstance(pat, Full):
        if selections:
            # The full layer's attention emits the block scores (prefill and, per new token, decode).
            block = selections[0].block_size
            ops.append(("attention_with_block_scores", "full + block scores", {"block_size": block}))
            ops += [("topk_blocks", "top-k selection", {"block_size": block, "topk": sel.topk}) for sel in selections]
        else:
            ops.append(("attention_fwd" if phase == "prefill" else "attention_decode", "full", {}))
    elif isinstance(pat, SlidingWindow):
        ops.append(("attention_fwd" if phase == "prefill" else "attention_decode", "sliding window",
                    {"window": pat.window}))
    else:
        assert isinstance(pat, OracleSparse)
        op = "sparse_attention_fwd" if phase == "prefill" else "sparse_attention_decode"
        ops.append((op, "sparse branch", {"block_size": pat.block_size, "topk": pat.topk}))
        if pat.window is not None:
            ops.append(("attention_fwd" if phase == "prefill" else "attention_decode", "swa branch",
                        {"window": pat.window}))
    return ops


def lower(
    graph: ModelGraph,
    device="cpu",
    *,
    backend: str | None = None,
    batch: int = 1,
    seq_len: int = 4096,
    phases=PHASES,
    include_mtp: bool = True,
    tuned_lookup: Callable[..., dict | None] = tuned_config,
) -> KernelPlan:
    """The kernel plan of ``graph`` on ``device`` ("cpu", "cuda", "cuda:0", "auto").

    ``backend``: force one backend for every op (same rules as ``backend=`` on a call: an error
    if it cannot run an op here). ``batch``/``seq_len``: the shapes configs are looked up for.
    ``tuned_lookup``: the autotune cache (default: ``tuned_config``, the hook above).
    Backends are resolved with ``dispatch.resolve``; an entry whose backend cannot run on ``device``
    here (e.g. planning for "cuda" on a machine without one) says so in its ``note``.
    """
    validate(graph)
    dev = _device_type(device)
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    for p in phases:
        if p not in PHASES:
            raise ValueError(f"phases: expected a subset of {PHASES}, got {p!r}")
    registered = dispatch.registered_ops()
    sources = selection_sources(graph)

    def entry(layer_index, phase, op, role, shape, mtp=False) -> KernelEntry:
        shape_items = tuple(sorted(shape.items()))
        if op not in registered:
            return KernelEntry(layer_index, phase, op, role, "-", "-", UNAVAILABLE, shape_items, mtp=mtp,
                               note=f"{op} is not registered in the kernel layer")
        with warnings.catch_warnings():
            # dispatch warns once per process on a fallback; the plan records it per entry instead.
            warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
            chosen = dispatch.resolve(op, dev, backend)
        st = status(chosen)
        note = "" if dev in st.devices else (
            f"{op}: none of its backends {dispatch.implemented(op)} can run {dev} tensors on this machine")
        config = tuned_lookup(op, backend=chosen, device=dev, shape=dict(shape))
        source = TUNED if config else HEURISTIC
        return KernelEntry(layer_index, phase, op, role, chosen, dispatch.target(op, chosen), source, shape_items,
                           tuple(sorted((config or {}).items())), mtp=mtp, note=note)

    def attention_entries(index, spec, selections, phase, mtp=False):
        out = []
        for op, role, extra in _layer_ops(spec, phase, selections):
            shape = {"batch": batch, "q_heads": spec.q_heads, "kv_heads": spec.kv_heads, "qk_dim": spec.qk_dim,
                     "v_dim": spec.v_dim, "seq_q": seq_len if phase == "prefill" else 1, "seq_k": seq_len, **extra}
            out.append(entry(index, phase, op, role, shape, mtp))
        return out

    entries = []
    for phase in phases:
        for layer in graph.layers:
            entries += attention_entries(layer.index, layer, sources.get(layer.index, ()), phase)
            if isinstance(layer.ffn, MoE):
                tokens = batch * (seq_len if phase == "prefill" else 1)
                shape = {"tokens": tokens, "hidden": graph.hidden, "experts": layer.ffn.num_experts,
                         "top_k": layer.ffn.top_k, "intermediate": layer.ffn.intermediate}
                entries += [entry(layer.index, phase, op, "moe", shape) for op in MOE_OPS]
        if include_mtp and graph.mtp is not None:
            m = graph.mtp
            for j in range(m.num_layers):
                spec = LayerSpec(index=j, pattern=m.pattern, ffn=m.ffn, **vars(m.attention))
                entries += attention_entries(j, spec, (), phase, mtp=True)
    return KernelPlan(dev, batch, seq_len, tuple(entries))
