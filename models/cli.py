"""`hysparse models`: the zoo with total / active parameters and KV bytes at a context length."""

from __future__ import annotations

from hysparse_kernels import ir
from hysparse_kernels.ir.passes import DTYPE_BYTES


def add_arguments(parser) -> None:
    parser.add_argument("--seq-len", type=int, default=32768, help="context length for the KV bytes (default 32768)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES), help="KV cache dtype (default bfloat16)")


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


def run(args) -> int:
    if args.seq_len < 1:
        raise ValueError(f"--seq-len: expected a positive int, got {args.seq_len}")
    print(f"{'model':<24} {'layers':<16} {'params':>9} {'active':>9} {'KV@' + str(args.seq_len):>11} {'full-attn KV':>13}")
    for name, layers, total, active, kv, twin in rows(args.seq_len, args.dtype):
        print(f"{name:<24} {layers:<16} {_human(total):>9} {_human(active):>9} {_human(kv, 'B'):>11} {_human(twin, 'B'):>13}")
    return 0
