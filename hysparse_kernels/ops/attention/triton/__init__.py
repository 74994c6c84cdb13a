"""Triton kernels of the attention ops (backend ``triton``).

One file per op, named after it (the public function; ``_bwd`` for a backward):

* ``attention``: full / sliding-window / sink forward (op ``attention_fwd``) and the HySparse
  block-score flag (``attention_with_block_scores``, op ``attention_with_block_scores``).
* ``attention_bwd``: backward of full / sliding-window / sink attention (dq, dk, dv, dsink).
* ``attention_decode``: split-KV (flash-decoding) over padded caches with per-sequence lengths.
* ``sparse_attention``: sparse attention over selected blocks of a shared cache (prefill, op
  ``sparse_attention_fwd``, and decode, ``sparse_attention_decode``).
* ``sparse_attention_bwd``: its backward (dk / dv scattered to the cache with fp32 atomics).
* ``topk_blocks``: top-k block selection.
* ``config``: the heuristic default, ``launch`` (tuned config, else heuristic; blacklist on
  failure, through ``hysparse_kernels.tuned``) and the tuner's entry points
  (``heuristic_config``, ``run_with_config``); ``compile_check``: GPU compile checks.

Everything is loaded lazily by ``hysparse_kernels.dispatch`` when an op runs on ``triton``.
The kernels take float16, bfloat16 and float32 and compute in fp32; float64 raises a TypeError.
HySparse blocks below 16 keys (the smallest ``tl.dot`` tile) are not accepted: dispatch runs them
on the reference.
"""
