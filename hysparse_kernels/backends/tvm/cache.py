"""Build cache of compiled TVM modules, in memory and on disk.

Key: (op, pattern flags, dtypes, head dims, tile sizes, target, tvm version, kernel source hash),
hashed to a file name ``<cache>/tvm/<op>-<hash>.so`` (``<cache>`` is ``$HYSPARSE_CACHE``, default
``~/.cache/hysparse-kernels``), with a ``.json`` beside it holding the key and the library's
sha256. A second
process loads the shared library instead of rebuilding (``tvm.runtime.load_module``).

Writes are atomic: ``export_library`` into a temporary file in the same folder, then
``os.replace``, so a reader never sees half a file and concurrent writers of one entry are
harmless. An entry whose hash does not match, that does not load, or that lacks a function the caller
needs is reported with a
:class:`TVMCacheWarning`, removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
import threading
import warnings
from typing import Callable

ENV_CACHE = "HYSPARSE_CACHE"


class TVMCacheWarning(UserWarning):
    """A cache entry was unusable (corrupt or incomplete) and has been rebuilt."""


_memory: dict[str, object] = {}
# (op, spec, target, source) as a tuple -> module: skips hashing the key on the hot path.
_fast: dict[tuple, object] = {}
_lock = threading.Lock()
_stats = {"memory_hits": 0, "disk_hits": 0, "builds": 0, "rebuilt_corrupt": 0}


def cache_dir() -> pathlib.Path:
    """Folder of the on-disk TVM cache: ``$HYSPARSE_CACHE/tvm`` (default ``~/.cache/hysparse-kernels/tvm``)."""
    root = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "hysparse-kernels")
    return pathlib.Path(root) / "tvm"


def cache_stats() -> dict[str, int]:
    """Counters since start (or :func:`clear_memory_cache`): memory_hits, disk_hits, builds, rebuilt_corrupt."""
    return dict(_stats)


def clear_memory_cache() -> None:
    """Forget the in-memory modules and reset the counters (the disk cache stays)."""
    with _lock:
        _memory.clear()
        _fast.clear()
        for k in _stats:
            _stats[k] = 0


def entry_key(op: str, spec: dict, target_spec: dict, source: str) -> tuple[str, dict]:
    """``(file stem, full key)`` of a cache entry."""
    import tvm

    key = {"op": op, "spec": spec, "target": target_spec, "tvm": tvm.__version__, "source": source}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return f"{op}-{digest}", key


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _export(lib, path: pathlib.Path, _write_meta) -> None:
    # The temporary name must end in .so: export_library picks the linker from the suffix.
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        lib.export_library(tmp)
        _write_meta(pathlib.Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _file_hash(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: pathlib.Path, required: tuple[str, ...]):
    import tvm

    # The sidecar records the library's hash: a truncated or overwritten file is caught here,
    # before dlopen (which could also hand back a stale handle for a path it already loaded).
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("sha256") != _file_hash(path):
        raise ValueError("content does not match the hash recorded in its .json")
    lib = tvm.runtime.load_module(str(path))
    for name in required:
        lib[name]  # raises if the function is missing
    return lib


def get_module(op: str, spec: dict, build: Callable[[], object], target_spec: dict, *, source: str = "",
               required: tuple[str, ...] = ("main",), disk: bool = True):
    """The compiled module for ``(op, spec, target)``: from memory, else disk, else ``build()``.

    Args:
        op: op name (first part of the file name).
        spec: JSON-able specialisation (pattern flags, dtypes, head dims, tile sizes).
        build: returns the ``IRModule`` to compile when the entry is missing.
        target_spec: JSON target dict passed to ``tvm.target.Target``.
        source: hash of the kernel source, so an edited kernel never loads a stale build.
        required: functions the module must export (checked when loading from disk).
        disk: also use the on-disk cache (memory only when False).
    """
    fast = (op, tuple(sorted(spec.items())), tuple(sorted(target_spec.items())), source)
    lib = _fast.get(fast)
    if lib is not None:
        _stats["memory_hits"] += 1
        return lib
    import tvm

    stem, key = entry_key(op, spec, target_spec, source)
    with _lock:
        lib = _memory.get(stem)
        if lib is not None:
            _stats["memory_hits"] += 1
            _fast[fast] = lib
            return lib
        path = cache_dir() / f"{stem}.so"
        if disk and path.exists():
            try:
                lib = _load(path, required)
                _stats["disk_hits"] += 1
                _memory[stem] = _fast[fast] = lib
                return lib
            except Exception as e:  # corrupt, truncated, or built by an incompatible runtime
                warnings.warn(
                    f"TVM cache entry {path} is unusable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); rebuilding it",
                    TVMCacheWarning, stacklevel=3,
                )
                path.unlink(missing_ok=True)
                _stats["rebuilt_corrupt"] += 1
        from .threads import prepare

        prepare()  # size TVM's thread pool before anything TVM does can start it
        lib = tvm.tirx.build(build(), target=tvm.target.Target(dict(target_spec)))
        _stats["builds"] += 1
        if disk:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # Export to a temporary name, record its hash in the sidecar, then rename the
                # library into place: a reader sees either no entry or a complete, matching one.
                _export(lib, path, _write_meta=lambda tmp: _atomic_write_text(
                    path.with_suffix(".json"), json.dumps({**key, "sha256": _file_hash(tmp)}, indent=1, sort_keys=True)))
                # Serve the process from the loaded shared library too, so every later call runs
                # exactly what another process would load.
                lib = _load(path, required)
            except Exception as e:  # no writable folder, no C compiler to link the .so, ...
                warnings.warn(f"TVM cache: could not write {path} ({e}); using the in-memory build", TVMCacheWarning, stacklevel=3)
        _memory[stem] = _fast[fast] = lib
        return lib
