"""TVM backend of the attention ops: TensorIR kernels compiled for the CPU (llvm).

Implementations registered as backend ``"tvm"`` (signatures fixed by ``reference.py``):
``attention_fwd``, ``attention_with_block_scores``, ``sparse_attention_fwd``, ``attention_decode``,
``sparse_attention_decode``, and ``attention_bwd`` / ``sparse_attention_bwd``.

* Kernels, one file per op as the Triton backend names them: ``attention.py`` (prefill of
  ``attention_fwd`` and ``attention_with_block_scores``: full causal, windows above
  ``launch.SWA_MAX_WINDOW``, sink, block scores), ``attention_swa.py`` (sliding-window prefill of
  ``attention_fwd``: one band of keys per query block, one exact softmax), ``sparse_attention.py``
  (few query rows against selected KV tiles: ``sparse_attention_fwd``, ``sparse_attention_decode``,
  and ``attention_decode`` as every tile selected) and ``attention_bwd.py``; launchers in
  ``launch.py``, ``launch_swa.py`` and ``launch_bwd.py``.
* Tensors cross into TVM through DLPack without copies: inputs are passed as they are (made
  contiguous only if they are not), outputs are ``torch.empty`` tensors the kernels write into.
* dtypes: float32, bfloat16 and float16 run in the kernels with fp32 accumulation; the ops are
  registered for these dtypes only, so under auto **float64 inputs run on the reference path**
  (the kernels are single precision by design; float64 is the accuracy oracle's dtype).
* Backward: ``attention_bwd.py`` (one kernel for dense, sliding-window and sparse attention: per KV
  block, the queries that see it; dK / dV per block, dQ accumulated per task), launched by
  ``launch_bwd.py``. Work is proportional to the visible (query, key) pairs.

Example::

    q = torch.randn(1, 8, 100, 64); k = v = torch.randn(1, 2, 100, 64)
    out = hysparse_kernels.attention(q, k, v, window=16, sink=torch.zeros(8), backend="tvm")
"""

from .launch import (  # noqa: F401
    attention_decode,
    attention_fwd,
    attention_with_block_scores,
    sparse_attention_decode,
    sparse_attention_fwd,
)
from .launch_bwd import attention_bwd, sparse_attention_bwd  # noqa: F401
