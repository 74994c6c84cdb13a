"""TVM backend of the attention ops: TensorIR kernels compiled for the CPU (llvm).

Implementations registered as backend ``"tvm"`` (signatures fixed by ``reference.py``):
``attention_fwd``, ``attention_with_block_scores``, ``sparse_attention_fwd``, ``attention_decode``,
``sparse_attention_decode``, and ``attention_bwd`` / ``sparse_attention_bwd``.

* Kernels: ``dense.py`` (prefill: full causal, sliding window, sink, block scores) and
  ``rows.py`` (decode and sparse attention); launchers in ``launch.py``.
* Tensors cross into TVM through DLPack without copies: inputs are passed as they are (made
  contiguous only if they are not), outputs are ``torch.empty`` tensors the kernels write into.
* dtypes: float32, bfloat16 and float16 run in the kernels with fp32 accumulation. **float64
  inputs run on the reference path** (the kernels are single precision by design; float64 is
  the accuracy oracle's dtype), so ``backend="tvm"`` accepts every dtype the ops accept.
* Backward: TVM has no backward kernels here. ``attention_bwd`` and ``sparse_attention_bwd``
  compute the gradients with the reference path (recomputation through the materialised
  forward), so training with ``backend="tvm"`` runs TVM forwards and reference backwards.

Example::

    q = torch.randn(1, 8, 100, 64); k = v = torch.randn(1, 2, 100, 64)
    out = hysparse_kernels.attention(q, k, v, window=16, sink=torch.zeros(8), backend="tvm")
"""

from .launch import (  # noqa: F401
    attention_bwd,
    attention_decode,
    attention_fwd,
    attention_with_block_scores,
    sparse_attention_bwd,
    sparse_attention_decode,
    sparse_attention_fwd,
)
