"""Tuned launch configs: the one lookup API the kernels and the IR use, and the file format the
autotuner (``hysparse_kernels.autotune``) writes.

Files
-----
``<cache>/<device-key>/<op>.json`` with ``<cache>`` = ``$HYSPARSE_CACHE`` or
``~/.cache/hysparse-kernels``; shipped defaults for known devices live in
``hysparse_kernels/configs/<device-key>/<op>.json`` and answer where the user's file has no entry::

    {"format": "hysparse-tuned/1", "op": "attention_fwd", "date": "...",
     "device": {"key": "cpu-amd-epyc-avx2-2c", "name": "AMD EPYC", "type": "cpu"},
     "versions": {"torch": "2.13.0", "triton": "3.9.0", "tvm": "0.27.0"},
     "backends": {"tvm": {"versions": {"torch": ..., "tvm": ...}, "source_hash": "1f0c...",
                          "entries": {"<bucket key>": {"fixed": {...}, "bucket": {...}, "shape": {...},
                                                        "config": {"rows": 32, "kv_tile": 64},
                                                        "time_ms": 1.2, "heuristic_ms": 1.5}}}}}

A file (or one backend's part of it) that does not parse, names another device, or was written
under other torch / backend versions or another kernel source is reported once with a
:class:`TunedConfigWarning` and ignored, never trusted.

Shapes and buckets
------------------
A shape is a dict of sizes (the IR's names: ``batch, q_heads, kv_heads, qk_dim, v_dim, seq_q,
seq_k, window, block_size, topk`` for attention; ``tokens, hidden, experts, top_k, intermediate``
for MoE). The sizes that vary at run time (``seq_q``, ``seq_k``, ``tokens``) are bucketed to the
next power of two and looked up nearest (in log2 distance); the others (head geometry, window,
block size, MoE dims; ``group = q_heads // kv_heads`` stands for the head counts) must match.
``batch`` and the head counts themselves do not take part in matching.

Modules
-------
``device`` (what the machine is: one read of ``/proc/cpuinfo``, the device key), ``sources``
(versions and the kernel sources each op family registers for the key), ``buckets`` (which
sizes match, which are bucketed), ``cache`` (the files: format, trust check, lock, atomic store,
blacklist) and ``query`` (lookup and launch). This package re-exports their public names.

Launch
------
:func:`launch` is what a kernel calls: the tuned config for the shape, else the heuristic (one
warning per process and device). A tuned config that fails at launch is reported, blacklisted on
disk (``<cache>/<device-key>/blacklist.json``) and the heuristic runs instead. Answers are kept
in memory per (op, backend, device, bucket): the hot path never reads a file twice.

Example::

    cfg = lookup("attention_fwd", backend="tvm", device="cpu",
                 shape={"q_heads": 8, "kv_heads": 2, "qk_dim": 64, "v_dim": 64, "seq_q": 4096, "seq_k": 4096})
    # {"rows": 32, "kv_tile": 64} or None
"""

from __future__ import annotations

from .buckets import IGNORED, VARYING, bucket_key, next_pow2, split_shape
from .cache import (
    ENV_CACHE,
    FORMAT,
    SHIPPED,
    TunedConfigWarning,
    TunerBusyError,
    blacklist,
    cache_root,
    check_file,
    entries,
    file_lock,
    invalidate,
    op_path,
    read_entries,
    reset_warnings,
    store,
    write_json_atomic,
)
from .device import cpu_flags, cpu_isa, cpu_model, cpuinfo, device_description, device_key
from .query import launch, lookup, warn_heuristic
from .sources import backend_versions, op_family, register_sources, source_hash, versions

__all__ = [
    "IGNORED", "VARYING", "bucket_key", "next_pow2", "split_shape",
    "ENV_CACHE", "FORMAT", "SHIPPED", "TunedConfigWarning", "TunerBusyError", "blacklist", "cache_root",
    "check_file", "entries", "file_lock", "invalidate", "op_path", "read_entries", "reset_warnings", "store",
    "write_json_atomic",
    "cpu_flags", "cpu_isa", "cpu_model", "cpuinfo", "device_description", "device_key",
    "launch", "lookup", "warn_heuristic",
    "backend_versions", "op_family", "register_sources", "source_hash", "versions",
]
