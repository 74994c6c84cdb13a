"""`hysparse ir MODEL`: a model's layer table, KV plan against its full-attention and hybrid-SWA twins,
parameters, FLOPs, selection plan and the kernel plan for this machine.

MODEL is a named graph (``hysparse ir --help`` lists them) or a ``.json`` file written by
``--json``. ``--json PATH`` / ``--onnx PATH`` also write the graph there.
"""

from __future__ import annotations

import argparse
import os
import sys

from hysparse_kernels.backends import BACKENDS

from . import presets
from .accounting import flops_per_token, param_count
from .export_json import from_json, to_json
from .lower import lower
from .passes import DTYPE_ALIASES, DTYPE_BYTES, assign_kv_owners, kv_plan, selection_plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help=f"a named graph ({', '.join(presets.list_graphs())}) or a graph .json file")
    parser.add_argument("--seq-len", type=int, default=32768, help="context length of the KV plan and shapes (default 32768)")
    parser.add_argument("--batch", type=int, default=1, help="sequences in the batch (default 1)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES) + sorted(DTYPE_ALIASES),
                        help="KV cache dtype (default bfloat16; fp8 = float8_e4m3fn)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="device of the kernel plan (default auto)")
    parser.add_argument("--backend", default=None, choices=BACKENDS,
                        help="force one backend for the kernel plan (default: dispatch's choice)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", metavar="PATH", default=None, help="also write the graph as JSON to PATH")
    out.add_argument("--onnx", metavar="PATH", default=None, help="also write the graph as ONNX to PATH (needs onnx)")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _ranges(indices) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    out, run = [], []
    for i in list(indices) + [None]:
        if run and (i is None or i != run[-1] + 1):
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
            run = []
        if i is not None:
            run.append(i)
    return ",".join(out)


LAYER_HEADER = ("layer", "pattern", "q/kv", "Dqk/Dv", "rope", "ffn", "kv owner", "kv cache")
LAYER_RIGHT = (True, False, True, True, True, False, False, True)  # right-aligned columns


def table(header, rows, right) -> list[str]:
    """Rows of cells as text lines, each column as wide as its widest cell, two spaces apart."""
    cells = [tuple(map(str, header))] + [tuple(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip() for row in cells]


def layer_rows(graph, plan) -> list[str]:
    """The layer table, one formatted row per layer (header first)."""
    rows = []
    for layer, own, kv in zip(graph.layers, assign_kv_owners(graph), plan.layers):
        if own.kind == "full":
            owner = "own full"
        elif own.kind == "swa":
            owner = f"own window {own.window}"
        else:
            owner = f"layer {own.reads}" + (f" + window {own.window}" if own.owns == "window" else "")
        rows.append((layer.index, layer.pattern.describe(), f"{layer.q_heads}/{layer.kv_heads}",
                     f"{layer.qk_dim}/{layer.v_dim}", layer.rope_dim, layer.ffn.describe(), owner, human_bytes(kv.bytes)))
    return table(LAYER_HEADER, rows, LAYER_RIGHT)


def kernel_rows(kplan) -> list[str]:
    """The kernel plan, entries with the same (phase, op, backend, kernel, source) grouped over layers."""
    groups: dict[tuple, list[int]] = {}
    for e in kplan.entries:
        key = (e.phase, "mtp" if e.mtp else "main", e.role, e.op, e.backend, e.config_source, e.kernel)
        groups.setdefault(key, []).append(e.layer)
    rows = [(phase, block, _ranges(sorted(set(layers))), role, op, backend, source, kernel)
            for (phase, block, role, op, backend, source, kernel), layers in groups.items()]
    header = ("phase", "block", "layers", "role", "op", "backend", "config", "kernel")
    return table(header, rows, (False,) * len(header))


def run(args) -> int:
    if args.model.endswith(".json") and os.path.exists(args.model):
        with open(args.model) as fh:
            graph = from_json(fh.read())
    else:
        try:
            graph = presets.get_graph(args.model)
        except KeyError as exc:
            print(f"hysparse ir: {exc.args[0]}", file=sys.stderr)
            return 2
    for name in ("seq_len", "batch"):
        if getattr(args, name) < 1:
            print(f"hysparse ir: --{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}", file=sys.stderr)
            return 2
    plan = kv_plan(graph, args.batch, args.seq_len, args.dtype)
    pc = param_count(graph)
    fl = flops_per_token(graph, args.seq_len)
    mtp = f"{graph.mtp.num_layers} x {graph.mtp.pattern.describe()}, {graph.mtp.ffn.describe()}" if graph.mtp else "none"
    print(f"{graph.name or args.model}: {graph.num_layers} layers [{graph.pattern_string()}]")
    print(f"hidden {graph.hidden}, vocab {graph.vocab}, MTP: {mtp}")
    for note in graph.notes:
        print(f"note: {note}")
    print()
    print("\n".join(layer_rows(graph, plan)))
    print()
    print(f"KV plan (batch {args.batch}, {args.seq_len} tokens, {plan.dtype}): {human_bytes(plan.total_bytes)}; "
          f"full-attention twin {human_bytes(plan.twin_total_bytes)}: {plan.saving:.2f}x less; "
          f"hybrid-SWA twin (1 full : 5 SWA-128) {human_bytes(plan.swa_twin_total_bytes)}")
    print(f"parameters: total {human_count(pc.total)}, active {human_count(pc.active)} "
          f"(without embedding and LM head {human_count(pc.active_non_embedding)})")
    print("  " + ", ".join(f"{k} {human_count(v)}" for k, v in pc.parts if v))
    print(f"FLOPs per token at {args.seq_len}: prefill {human_count(fl.prefill)}, decode {human_count(fl.decode)}")
    for sel in selection_plan(graph):
        print(f"selection: layer {sel.full_layer} emits block scores ({sel.block_size}) and top-{sel.topk} "
              f"for layers {_ranges(sel.sparse_layers)}")
    kplan = lower(graph, args.device, backend=args.backend, batch=args.batch, seq_len=args.seq_len)
    print()
    print(f"kernel plan ({kplan.device}):")
    print("\n".join(kernel_rows(kplan)))
    notes = sorted({e.note for e in kplan.entries if e.note})
    for note in notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(to_json(graph))
        print(f"wrote {args.json}")
    if args.onnx:
        from .export_onnx import to_onnx

        to_onnx(graph, args.seq_len, path=args.onnx)
        print(f"wrote {args.onnx}")
    return 0
