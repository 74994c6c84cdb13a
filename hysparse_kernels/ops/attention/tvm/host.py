"""Host-side pieces the TVM attention launchers share: the dtypes the kernels take, contiguity,
the sink argument, and the hash of the kernel sources that keys the build cache."""

from __future__ import annotations

import hashlib
import pathlib
from functools import lru_cache

import torch

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@lru_cache(maxsize=1)
def _source_hash() -> str:
    """Hash of the TensorIR sources of the prefill/decode/sparse kernels (build-cache key)."""
    here = pathlib.Path(__file__).parent
    h = hashlib.sha256()
    for name in ("common.py", "attention.py", "sparse_attention.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _c(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


# Placeholder for a specialisation without a sink (never read by the kernels).
_NO_SINK = torch.zeros(1, dtype=torch.float32)


def _sink_arg(sink):
    """The sink as the kernels read it, fp32 ``[Hq]``; without a sink a 1-element placeholder."""
    if sink is None:
        return _NO_SINK
    return _c(sink.detach().to(torch.float32))
