"""hysparse_kernels.ir: attention patterns, model graphs, passes (KV plan, selection plan, kernel plan), export.

A model is described once as a ``ModelGraph``; passes decide its memory and its kernels::

    from hysparse_kernels import ir
    g = ir.get_graph("hysparse-80b-a3b")          # or ir.build_graph(...) from a config's values
    ir.validate(g)
    owners = ir.assign_kv_owners(g)                # which cache each layer reads / owns
    kv = ir.kv_plan(g, batch=1, seq_len=32768)     # kv.total_bytes, kv.twin_total_bytes, kv.saving
    sel = ir.selection_plan(g)                     # full layer -> top-k for its sparse layers
    pc = ir.param_count(g)                         # pc.total, pc.active
    fl = ir.flops_per_token(g, 4096)               # fl.prefill, fl.decode
    plan = ir.lower(g, "cpu")                      # one KernelEntry per (layer, phase, op)
    text = ir.to_json(g); ir.from_json(text) == g
    model = ir.to_onnx(g, seq_len=128)             # needs the `export` extra (onnx)

This package imports the kernel layer (to lower) and nothing above it; it never imports torch.nn.
"""

from .accounting import FlopsPerToken, ParamCount, flops_per_token, param_count
from .export_json import from_json, to_json
from .export_onnx import to_onnx
from .graph import (
    AttentionDims,
    Dense,
    LayerSpec,
    ModelGraph,
    MoE,
    MTPSpec,
    build_graph,
    from_hybrid_layer_pattern,
    from_pattern,
    hybrid_kinds,
    hybrid_layer_pattern_kinds,
    parse_pattern,
)
from .lower import KernelEntry, KernelPlan, lower, tuned_config
from .passes import (
    GraphError,
    KVOwner,
    KVPlan,
    LayerKV,
    Selection,
    assign_kv_owners,
    kv_owners,
    hybrid_swa_twin,
    kv_plan,
    selection_plan,
    validate,
)
from .patterns import Full, OracleSparse, SlidingWindow
from .presets import get_graph, list_graphs

__all__ = [
    "Full", "SlidingWindow", "OracleSparse",
    "AttentionDims", "Dense", "MoE", "LayerSpec", "MTPSpec", "ModelGraph",
    "build_graph", "from_pattern", "from_hybrid_layer_pattern", "parse_pattern", "hybrid_kinds",
    "hybrid_layer_pattern_kinds",
    "validate", "GraphError", "assign_kv_owners", "kv_owners", "KVOwner", "kv_plan", "KVPlan", "LayerKV", "hybrid_swa_twin",
    "selection_plan", "Selection", "param_count", "ParamCount", "flops_per_token", "FlopsPerToken",
    "lower", "KernelPlan", "KernelEntry", "tuned_config",
    "to_json", "from_json", "to_onnx",
    "get_graph", "list_graphs",
]
