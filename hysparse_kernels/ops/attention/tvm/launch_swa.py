"""Launcher of the sliding-window prefill kernel (``swa.py``), used by ``launch.attention_fwd`` for
windows up to ``launch.SWA_MAX_WINDOW``: one band of keys per query block, one exact softmax."""

from __future__ import annotations

import hashlib
import pathlib
import threading
from functools import lru_cache

import torch

from ....backends.tvm import cpu_target_spec, get_module, threads
from .launch import _DTYPES, _c, _sink_arg, _source_hash

# Query rows per task (group heads x queries): 24 rows make 4 register tiles of 6 rows; fewer
# queries per block mean a shorter band per row (W + BM - 1 keys for W useful).
SWA_ROWS = 24


@lru_cache(maxsize=1)
def _swa_source_hash() -> str:
    return hashlib.sha256((pathlib.Path(__file__).parent / "swa.py").read_bytes()).hexdigest()[:16]


# The K^T workspace is kept per thread and reused by the next call that fits in it: a fresh
# allocation of that size comes from the kernel as untouched pages, and faulting them in cost about
# a third of the kernel's time at S = 8K (34 MB). Workspaces above this size are not kept.
KEEP_WORKSPACE_BYTES = 256 << 20
_kept = threading.local()


def _workspace(numel: int) -> torch.Tensor:
    """A float32 tensor of ``numel`` elements, reused across calls of this thread when it fits."""
    buf = getattr(_kept, "buf", None)
    if buf is not None and buf.numel() >= numel:
        return buf[:numel]
    buf = torch.empty(numel, dtype=torch.float32)
    if numel * 4 <= KEEP_WORKSPACE_BYTES:
        _kept.buf = buf
    return buf


def swa_queries_per_block(group: int) -> int:
    return max(1, SWA_ROWS // group)


def _kt_chunks(sk: int, span: int) -> int:
    """Chunks of 16 keys in the K^T workspace: the keys and a whole band past the last one."""
    return -(-(sk + span) // 16)


def run_swa(q, k, v, sink, window: int, scale: float):
    """Causal sliding-window attention (``window`` keys, sink optional): ``(out, lse)`` in the
    layout of ``attention_fwd``. float32 / bfloat16 / float16."""
    from .swa import band_width, build_swa

    B, Hq, Sq, Dqk = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    group = Hq // Hkv
    bm = swa_queries_per_block(group)
    span = band_width(int(window), bm)
    dtype = _DTYPES[q.dtype]
    q, k, v = _c(q), _c(k), _c(v)
    spec = dict(kernel="swa", dqk=Dqk, dv=Dv, group=group, bm=bm, span=span, dtype=dtype, sink=sink is not None)

    def build():
        return build_swa(dqk=Dqk, dv=Dv, group=group, bm=bm, span=span, dtype=dtype, has_sink=sink is not None)

    lib = get_module("attention_fwd", spec, build, cpu_target_spec(), source=_source_hash() + _swa_source_hash(),
                     required=("prep", "main"))
    nc = _kt_chunks(Sk, span)
    ws = _workspace(B * Hkv * nc * (Dqk * 16 + 1))
    kt = ws[: B * Hkv * nc * Dqk * 16].view(B, Hkv, nc, Dqk, 16)
    bad = ws[B * Hkv * nc * Dqk * 16:].view(B, Hkv, nc)
    out = torch.empty(B, Hq, Sq, Dv, dtype=q.dtype)
    lse = torch.empty(B, Hq, Sq, dtype=torch.float32)
    threads.before_launch(2.0 * B * Hq * Sq * min(Sk, window) * (Dqk + Dv))
    lib["prep"](k, v, kt, bad)
    lib["main"](q, kt, bad, v, _sink_arg(sink), out, lse, int(window), float(scale))
    return out, lse
