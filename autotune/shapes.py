"""Shapes to tune: parsed from ``--shape`` or taken from a model's kernel plan.

``--shape "B=1,Hq=64,Hkv=8,S=4096,D=128"``: ``B`` batch, ``Hq``/``Hkv`` heads, ``S`` (or ``Sq`` and
``Sk``) lengths, ``D`` (or ``Dqk`` and ``Dv``) head dims, ``W`` window, ``BS`` block size; MoE:
``T`` tokens, ``H`` hidden, ``E`` experts, ``K`` top-k, ``I`` intermediate. The IR's own names
(``q_heads``, ``seq_k``, ...) are accepted too.

Example::

    parse_shape("B=1,Hq=64,Hkv=8,S=4096,D=128")
    # {'batch': 1, 'q_heads': 64, 'kv_heads': 8, 'seq_q': 4096, 'seq_k': 4096, 'qk_dim': 128, 'v_dim': 128}
"""

from __future__ import annotations

from hysparse_kernels import tuned

ALIASES = {"B": ("batch",), "Hq": ("q_heads",), "Hkv": ("kv_heads",), "S": ("seq_q", "seq_k"), "Sq": ("seq_q",),
           "Sk": ("seq_k",), "D": ("qk_dim", "v_dim"), "Dqk": ("qk_dim",), "Dv": ("v_dim",), "W": ("window",),
           "BS": ("block_size",), "T": ("tokens",), "H": ("hidden",), "E": ("experts",), "K": ("top_k",),
           "I": ("intermediate",)}
NAMES = {"batch", "q_heads", "kv_heads", "seq_q", "seq_k", "qk_dim", "v_dim", "window", "block_size", "topk",
         "tokens", "hidden", "experts", "top_k", "intermediate"}
# CLI op names ("attention.fwd") -> registry op names ("attention_fwd")
OPS = {"attention.fwd": "attention_fwd", "attention.decode": "attention_decode",
       "attention.block_scores": "attention_with_block_scores", "moe": "moe_fwd", "moe.fwd": "moe_fwd",
       # the registry names of these two ops before they took their public functions' names
       "attention_block_scores": "attention_with_block_scores", "moe_route": "route"}
FAMILIES = ("attention", "moe")


def op_name(text: str) -> str:
    """``attention.fwd`` -> ``attention_fwd`` (registry names pass unchanged)."""
    return OPS.get(text, text)


def parse_shape(text: str) -> dict:
    """``"B=1,Hq=64,..."`` -> the shape dict (see the module docstring); errors name the bad part."""
    shape = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--shape: expected NAME=positive int pairs like 'B=1,S=4096', got {part!r}")
        keys = ALIASES.get(name, (name,) if name in NAMES else None)
        if keys is None:
            raise ValueError(f"--shape: unknown size {name!r}; expected one of {sorted(ALIASES)} or {sorted(NAMES)}")
        for k in keys:
            shape[k] = int(value)
    if "seq_q" in shape or "q_heads" in shape:
        missing = [k for k in ("q_heads", "kv_heads", "seq_q", "seq_k", "qk_dim") if k not in shape]
        if missing:
            raise ValueError(f"--shape: attention shapes need {missing} too, got {text!r}")
        shape.setdefault("batch", 1)
        shape.setdefault("v_dim", shape["qk_dim"])
    elif "tokens" in shape:
        missing = [k for k in ("hidden", "experts", "top_k", "intermediate") if k not in shape]
        if missing:
            raise ValueError(f"--shape: MoE shapes need {missing} too, got {text!r}")
    else:
        raise ValueError(f"--shape: expected an attention (B, Hq, Hkv, S, D) or MoE (T, H, E, K, I) shape, got {text!r}")
    return shape


def model_shapes(name: str, *, families=FAMILIES, backend: str, device: str, seq_lens=(1024, 4096), batch: int = 1,
                 tunable=None) -> list[tuple[str, dict]]:
    """(op, shape) of every distinct bucket the model's kernel plan runs on ``backend``.

    Uses ``ir.get_graph(name)`` and ``ir.lower`` (the same shapes the kernels will look up).
    """
    from hysparse_kernels import ir

    graph = ir.get_graph(name)
    out, seen = [], set()
    for seq_len in seq_lens:
        plan = ir.lower(graph, device, batch=batch, seq_len=int(seq_len))
        for e in plan.entries:
            if e.backend != backend or tuned.op_family(e.op) not in families:
                continue
            if tunable is not None and not tunable(e.op, backend):
                continue
            shape = dict(e.shape)
            key = (e.op, tuned.bucket_key(shape))
            if key not in seen:
                seen.add(key)
                out.append((e.op, shape))
    return out
