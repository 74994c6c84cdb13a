"""Launcher of the sliding-window prefill kernel (``attention_swa.py``), used by ``launch.attention_fwd`` for
windows up to ``launch.SWA_MAX_WINDOW``: one band of keys per query block, one exact softmax."""

from __future__ import annotations

import hashlib
import pathlib
from functools import lru_cache

import torch

from ....backends.tvm import cpu_target_spec, get_module, threads
from ....backends.tvm.target import wide_registers
from ....backends.tvm.workspace import fresh, workspace
from .host import _DTYPES, _c, _sink_arg, _source_hash

# Query rows per task (group heads x queries): 24 rows make 4 register tiles of 6 rows; fewer
# queries per block mean a shorter band per row (W + BM - 1 keys for W useful).
SWA_ROWS = 24


@lru_cache(maxsize=1)
def _swa_source_hash() -> str:
    return hashlib.sha256((pathlib.Path(__file__).parent / "attention_swa.py").read_bytes()).hexdigest()[:16]


def swa_queries_per_block(group: int) -> int:
    return max(1, SWA_ROWS // group)


def _kt_chunks(sk: int, span: int) -> int:
    """Chunks of 16 keys in the K^T workspace: the keys and a whole band past the last one."""
    return -(-(sk + span) // 16)


def run_swa(q, k, v, sink, window: int, scale: float):
    """Causal sliding-window attention (``window`` keys, sink optional): ``(out, lse)`` in the
    layout of ``attention_fwd``. float32 / bfloat16 / float16."""
    from .attention_swa import band_width, build_swa

    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    group = Hq // Hkv
    bm = swa_queries_per_block(group)
    span = band_width(int(window), bm)
    dtype = _DTYPES[q.dtype]
    q, k, v = _c(q), _c(k), _c(v)
    wide = wide_registers()
    spec = dict(kernel="swa", dqk=Dqk, dv=Dv, group=group, bm=bm, span=span, dtype=dtype, sink=sink is not None,
                wide=wide)

    def build():
        return build_swa(dqk=Dqk, dv=Dv, group=group, bm=bm, span=span, dtype=dtype, has_sink=sink is not None,
                         wide=wide)

    lib = get_module("attention_fwd", spec, build, cpu_target_spec(), source=_source_hash() + _swa_source_hash(),
                     required=("prep", "main"))
    nc = _kt_chunks(Sk, span)
    ws = workspace("swa.kt", B * Hkv * nc * (Dqk * 16 + 1))  # kept: a fresh one faults in page by page
    kt = ws[: B * Hkv * nc * Dqk * 16].view(B, Hkv, nc, Dqk, 16)
    bad = ws[B * Hkv * nc * Dqk * 16:].view(B, Hkv, nc)
    out = fresh((B, Hq, Sq, Dv), q.dtype)
    lse = torch.empty(B, Hq, Sq, dtype=torch.float32)
    threads.before_launch(2.0 * B * Hq * Sq * min(Sk, window) * (Dqk + Dv))
    lib["prep"](k, v, kt, bad)
    lib["main"](q, kt, bad, v, _sink_arg(sink), out, lse, int(window), float(scale))
    return out, lse
