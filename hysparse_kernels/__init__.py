"""hysparse-kernels: attention patterns of hybrid models as autotuned kernels behind torch ops.

Public API::

    import hysparse_kernels as hk
    out = hk.attention(q, k, v, window=128, sink=sink)
    out, lse, scores = hk.attention_with_block_scores(q, k, v)
    idx = hk.topk_blocks(scores, 16, seqlen_k=k.shape[2])
    out = hk.sparse_attention(q2, k, v, idx, sink=sink2)
    with hk.use_backend("reference"): ...

Importing this package loads no optional backend (triton, tvm, cutlass).
"""

from importlib.metadata import PackageNotFoundError, version

from .dispatch import BackendFallbackWarning, BackendUnavailableError, use_backend
from .ops.attention import (
    attention,
    attention_decode,
    attention_with_block_scores,
    sparse_attention,
    sparse_attention_decode,
    topk_blocks,
)
from .ops.moe import expert_load, grouped_gemm, moe, moe_permute, moe_unpermute, route, update_routing_bias

try:
    __version__ = version("hysparse-kernels")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = [
    "attention",
    "attention_with_block_scores",
    "topk_blocks",
    "sparse_attention",
    "attention_decode",
    "sparse_attention_decode",
    "route",
    "moe_permute",
    "grouped_gemm",
    "moe_unpermute",
    "moe",
    "expert_load",
    "update_routing_bias",
    "use_backend",
    "BackendFallbackWarning",
    "BackendUnavailableError",
    "__version__",
]
