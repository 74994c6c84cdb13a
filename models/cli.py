"""`hysparse models`: the zoo with total / active parameters and KV bytes at a context length.

``hysparse models --names MODEL`` prints, one per line, the tensor names (and shapes) a checkpoint
of MODEL (a zoo name or a ``config.json``) holds, from the model built on the meta device: compare
them with a published checkpoint's ``model.safetensors.index.json`` before downloading it.
"""

from __future__ import annotations

import json
from pathlib import Path

from hysparse_kernels import ir
from hysparse_kernels.ir.passes import DTYPE_ALIASES, DTYPE_BYTES


def add_arguments(parser) -> None:
    parser.add_argument("--seq-len", type=int, default=32768, help="context length for the KV bytes (default 32768)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES) + sorted(DTYPE_ALIASES),
                        help="KV cache dtype (default bfloat16; fp8 = float8_e4m3fn)")
    parser.add_argument("--names", metavar="MODEL", default=None,
                        help="print the checkpoint tensor names and shapes of MODEL (a zoo name or a config.json)")


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def rows(seq_len: int, dtype: str) -> list[tuple]:
    out = []
    for name in ir.list_graphs():
        g = ir.get_graph(name)
        pc = ir.param_count(g)
        kv = ir.kv_plan(g, batch=1, seq_len=seq_len, dtype=dtype)
        out.append((name, g.pattern_string() if g.num_layers <= 16 else f"{g.num_layers} layers", pc.total, pc.active,
                    kv.total_bytes, kv.twin_total_bytes))
    return out


def print_names(model_arg: str) -> int:
    from . import build_model, from_hf_config
    from .loading import to_hf_state_dict

    if model_arg.endswith(".json"):
        path = Path(model_arg)
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--names: {path} is not valid JSON ({exc})") from exc
        model = from_hf_config(config, device="meta")
    else:
        model = build_model(model_arg, device="meta")
    for name, t in sorted(to_hf_state_dict(model).items()):
        print(f"{name}\t{list(t.shape)}")
    return 0


def run(args) -> int:
    if args.names is not None:
        return print_names(args.names)
    if args.seq_len < 1:
        raise ValueError(f"--seq-len: expected a positive int, got {args.seq_len}")
    print(f"{'model':<24} {'layers':<16} {'params':>9} {'active':>9} {'KV@' + str(args.seq_len):>11} {'full-attn KV':>13}")
    for name, layers, total, active, kv, twin in rows(args.seq_len, args.dtype):
        print(f"{name:<24} {layers:<16} {_human(total):>9} {_human(active):>9} {_human(kv, 'B'):>11} {_human(twin, 'B'):>13}")
    return 0
