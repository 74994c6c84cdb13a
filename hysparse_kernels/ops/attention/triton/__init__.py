"""Triton kernels of the attention ops (backend ``triton``).

Modules, one role each:

* ``config``: vendor config lists, the heuristic default and the tuned-config hook.
* ``fwd``: full / sliding-window / sink forward and the HySparse block-score flag.
* ``bwd``: backward of full / sliding-window / sink attention (dq, dk, dv, dsink).
* ``sparse``: sparse attention over selected blocks of a shared cache (prefill and decode).
* ``sparse_bwd``: its backward (dk / dv scattered to the cache with fp32 atomics).
* ``decode``: split-KV (flash-decoding) over padded caches with per-sequence lengths.
* ``topk``: top-k block selection.

Everything is loaded lazily by ``hysparse_kernels.dispatch`` when an op runs on ``triton``.
The kernels take float16, bfloat16 and float32 and compute in fp32; float64 raises a TypeError.
HySparse blocks below 16 keys (the smallest ``tl.dot`` tile) run the reference path.
"""
