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

import contextlib
import datetime
import errno
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import tempfile
import threading
import warnings
from functools import lru_cache
from typing import Callable, Iterator

FORMAT = "hysparse-tuned/1"
ENV_CACHE = "HYSPARSE_CACHE"
SHIPPED = pathlib.Path(__file__).parent / "configs"
VARYING = ("seq_q", "seq_k", "tokens")  # bucketed to powers of two, matched nearest
IGNORED = ("batch", "q_heads", "kv_heads", "dtype")  # recorded, not matched (dtype: preferred)
_PACKAGES = {"triton": "triton", "tvm": "apache-tvm"}


class TunedConfigWarning(UserWarning):
    """A tuned config is missing (heuristic used), unusable (file ignored) or failed (blacklisted)."""


class TunerBusyError(RuntimeError):
    """Another process holds the tuner lock of this device's cache."""


# ---------------------------------------------------------------- device, versions, sources


def cache_root() -> pathlib.Path:
    """``$HYSPARSE_CACHE`` or ``~/.cache/hysparse-kernels``."""
    return pathlib.Path(os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "hysparse-kernels"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> tuple[str, ...]:
    """The CPU's ISA flags (``/proc/cpuinfo`` ``flags`` / ``Features``), empty where unknown."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")) and ":" in line:
                return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def cpu_isa(flags=None) -> str:
    """The widest vector ISA the kernels can use: avx512f, avx2, asimd (NEON), sse4_2 or generic."""
    flags = set(cpu_flags() if flags is None else flags)
    for isa in ("avx512f", "avx2", "asimd", "sse4_2"):
        if isa in flags:
            return isa
    return "generic"


@lru_cache(maxsize=None)
def device_description(device: str = "cpu") -> dict:
    """``{"key", "name", "type", ...}`` of a device ("cpu", "cuda", "cuda:1"): the folder name of its configs.

    CPU: model, widest ISA and core count (the kernels' thread split depends on it).
    CUDA: the GPU's name and compute capability.
    """
    kind, _, index = str(device).partition(":")
    if kind == "cpu":
        name, isa, cores = cpu_model(), cpu_isa(), os.cpu_count() or 1
        return {"key": _slug(f"cpu-{name}-{isa}-{cores}c"), "name": name, "type": "cpu", "isa": isa, "cores": cores}
    if kind == "cuda":
        import torch

        idx = int(index or 0)
        name = torch.cuda.get_device_name(idx)
        major, minor = torch.cuda.get_device_capability(idx)
        return {"key": _slug(f"cuda-{name}-sm{major}{minor}"), "name": name, "type": "cuda", "capability": [major, minor]}
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def device_key(device="cpu") -> str:
    return device_description(str(device))["key"]


@lru_cache(maxsize=None)
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Installed torch / triton / tvm versions (None where absent); read once, nothing imported."""
    return {"torch": _version("torch"), "triton": _version("triton"), "tvm": _version("apache-tvm")}


def backend_versions(backend: str) -> dict:
    """The versions a ``backend``'s configs depend on: torch and the backend's package."""
    out = {"torch": _version("torch")}
    if backend in _PACKAGES:
        out[backend] = _version(_PACKAGES[backend])
    return out


def op_family(op: str) -> str:
    return "moe" if op.startswith(("moe", "grouped_gemm")) else "attention"


# Kernel sources whose hash keys a backend's configs: an edited kernel never trusts old tunings.
_SOURCES = {
    ("attention", "tvm"): ("ops/attention/tvm",),
    ("attention", "triton"): ("ops/attention/triton",),
    ("moe", "tvm"): ("ops/moe/tvm.py", "ops/moe/tvm_kernels.py"),
    ("moe", "triton"): ("ops/moe/triton",),
}


@lru_cache(maxsize=None)
def source_hash(op: str, backend: str) -> str:
    """sha256 (16 hex digits) of the kernel sources that implement ``op`` on ``backend``."""
    here = pathlib.Path(__file__).parent
    h = hashlib.sha256()
    for rel in _SOURCES.get((op_family(op), backend), ()):
        path = here / rel
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- shapes and buckets


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def split_shape(shape: dict) -> tuple[dict, dict, str | None]:
    """``(fixed, bucketed varying, dtype)`` of a shape (see the module docstring)."""
    s = dict(shape)
    if "group" not in s and "q_heads" in s and "kv_heads" in s:
        s["group"] = int(s["q_heads"]) // max(1, int(s["kv_heads"]))
    fixed = {k: v for k, v in s.items() if k not in VARYING and k not in IGNORED and v is not None}
    varying = {k: next_pow2(v) for k, v in s.items() if k in VARYING}
    return fixed, varying, s.get("dtype")


def bucket_key(shape: dict) -> str:
    """Stable string naming a shape's bucket, e.g. ``group=4,qk_dim=64,v_dim=64|seq_k=4096,seq_q=4096``."""
    fixed, varying, dtype = split_shape(shape)
    text = ",".join(f"{k}={fixed[k]}" for k in sorted(fixed)) + "|" + ",".join(f"{k}={varying[k]}" for k in sorted(varying))
    return text + (f"|dtype={dtype}" if dtype else "")


def _distance(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    return sum(abs(math.log2(a.get(k, 1)) - math.log2(b.get(k, 1))) if k in a and k in b else 8.0 for k in keys)


# ---------------------------------------------------------------- reading files


_warned: set = set()
_lock = threading.Lock()
_answers: dict[tuple, dict | None] = {}  # per bucket
_raw_answers: dict[tuple, dict | None] = {}  # per exact shape (bounded)


def _warn_once(key, message: str, stacklevel: int = 3) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, TunedConfigWarning, stacklevel=stacklevel)


def invalidate() -> None:
    """Forget the in-memory answers (after a store, an import, a clear or a blacklisting)."""
    with _lock:
        _answers.clear()
        _raw_answers.clear()


def reset_warnings() -> None:
    """Let every one-time warning fire again (tests)."""
    _warned.clear()


def op_path(op: str, device="cpu", root=None) -> pathlib.Path:
    return pathlib.Path(root or cache_root()) / device_key(device) / f"{op}.json"


def check_file(data, *, op: str, key: str, backend: str) -> str:
    """Why ``backend``'s part of a parsed file cannot be trusted here ("" when it can)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"not a {FORMAT} file"
    if data.get("op") != op:
        return f"written for op {data.get('op')!r}, not {op!r}"
    dev = data.get("device")
    if not isinstance(dev, dict) or dev.get("key") != key:
        return f"written on another device ({dev.get('key') if isinstance(dev, dict) else dev!r}, this is {key!r})"
    part = (data.get("backends") or {}).get(backend)
    if part is None:
        return ""
    if not isinstance(part, dict) or not isinstance(part.get("entries"), dict):
        return f"malformed {backend!r} section"
    want = backend_versions(backend)
    got = part.get("versions") or {}
    for name, version in want.items():
        if got.get(name) != version:
            return f"written under {name} {got.get(name)}, installed is {version}"
    if part.get("source_hash") != source_hash(op, backend):
        return f"written for another {backend} kernel source (hash {part.get('source_hash')}, now {source_hash(op, backend)})"
    return ""


def read_entries(path: pathlib.Path, *, op: str, key: str, backend: str) -> dict:
    """The trusted entries of ``backend`` in the file at ``path`` ({} if absent or untrusted, with a warning)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _warn_once((str(path), "corrupt"), f"tuned config file {path} is unreadable ({type(e).__name__}: {e}); ignoring it")
        return {}
    why = check_file(data, op=op, key=key, backend=backend)
    if why:
        _warn_once((str(path), backend, why), f"tuned config file {path} ignored: {why}")
        return {}
    entries = ((data.get("backends") or {}).get(backend) or {}).get("entries") or {}
    return {k: e for k, e in entries.items() if isinstance(e, dict) and isinstance(e.get("config"), dict)}


def _blacklisted(root: pathlib.Path, key: str, op: str, backend: str) -> list[dict]:
    path = root / key / "blacklist.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        items = data["entries"] if data.get("format") == FORMAT and data.get("device") == key else None
    except (OSError, ValueError, KeyError, AttributeError) as e:
        _warn_once((str(path), "corrupt"), f"blacklist {path} is unreadable ({type(e).__name__}); ignoring it")
        return []
    if items is None:
        _warn_once((str(path), "foreign"), f"blacklist {path} ignored: not this device's {FORMAT} file")
        return []
    src = source_hash(op, backend)
    return [b["config"] for b in items if b.get("op") == op and b.get("backend") == backend and b.get("source_hash") == src]


def entries(op: str, *, backend: str, device="cpu", root=None) -> dict:
    """Every trusted entry for ``op`` on ``backend``: shipped defaults, overridden by the user's cache."""
    root = pathlib.Path(root or cache_root())
    key = device_key(device)
    merged = read_entries(SHIPPED / key / f"{op}.json", op=op, key=key, backend=backend)
    merged.update(read_entries(root / key / f"{op}.json", op=op, key=key, backend=backend))
    return merged


@lru_cache(maxsize=1)
def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def lookup(op: str, *, backend: str, device="cpu", shape: dict) -> dict | None:
    """The tuned config of ``op`` on ``backend`` for the bucket nearest ``shape`` on ``device``, or None.

    Only entries whose fixed sizes equal the shape's are candidates; among them the nearest
    bucket of the run-time sizes wins (ties: the same dtype, then the smaller bucket).
    Blacklisted configs are skipped. Answers are cached in memory per bucket.
    """
    root = os.environ.get(ENV_CACHE) or ""
    # Fast path: this exact shape was asked before (the common case of a kernel in a loop).
    raw = (root, op, backend, device, tuple(shape.items()))
    try:
        hit = _raw_answers[raw]
        return None if hit is None else dict(hit)
    except (KeyError, TypeError):  # TypeError: an unhashable device or size; take the slow path
        pass
    if str(device).startswith("cuda") and not _cuda_present():
        return None  # planning for a GPU this machine lacks: its configs cannot be told apart
    fixed, varying, dtype = split_shape(shape)
    memo = (root, op, backend, str(device), tuple(sorted(fixed.items())), tuple(sorted(varying.items())), dtype)
    try:
        hit = _answers[memo]
        return None if hit is None else dict(hit)
    except KeyError:
        pass
    table = entries(op, backend=backend, device=device)
    banned = _blacklisted(cache_root(), device_key(device), op, backend) if table else []
    best, best_rank = None, None
    for entry in table.values():
        if entry.get("fixed") != fixed or entry["config"] in banned:
            continue
        rank = (_distance(entry.get("bucket") or {}, varying), entry.get("dtype") != dtype,
                sum((entry.get("bucket") or {}).values()))
        if best_rank is None or rank < best_rank:
            best, best_rank = entry["config"], rank
    with _lock:
        _answers[memo] = best
        if len(_raw_answers) > 4096:  # decode walks through lengths: keep the exact-shape memo bounded
            _raw_answers.clear()
        try:
            _raw_answers[raw] = best
        except TypeError:
            pass
    return None if best is None else dict(best)


# ---------------------------------------------------------------- writing files


@contextlib.contextmanager
def file_lock(path, *, blocking: bool = True) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``path`` (created if needed) for the block.

    Non-blocking: raises :class:`TunerBusyError` at once when another holder has it.
    """
    import fcntl  # POSIX only; imported here so the lookup itself needs nothing beyond the stdlib core

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = pathlib.Path(path).read_text().strip() or "another process"
                raise TunerBusyError(f"{path} is held by {holder}: another tuner is writing this device's configs") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_json_atomic(path, data) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def store(op: str, *, backend: str, device="cpu", shape: dict, config: dict, time_ms: float | None = None,
          heuristic_ms: float | None = None, extra: dict | None = None, root=None) -> pathlib.Path:
    """Record ``config`` as the tuned config of ``op`` / ``backend`` for ``shape``'s bucket; returns the file.

    Under the device folder's write lock: reads the file (an untrusted part is dropped, with the
    warning), sets the entry, writes atomically and forgets the in-memory answers.
    """
    root = pathlib.Path(root or cache_root())
    desc = device_description(str(device))
    path = root / desc["key"] / f"{op}.json"
    fixed, varying, dtype = split_shape(shape)
    entry = {"fixed": fixed, "bucket": varying, "dtype": dtype, "shape": dict(shape), "config": dict(config),
             "time_ms": time_ms, "heuristic_ms": heuristic_ms, "date": _now(), **(extra or {})}
    with file_lock(root / desc["key"] / ".write.lock"):
        data = None
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = None
        if data is None or check_file(data, op=op, key=desc["key"], backend="") or not isinstance(data.get("backends"), dict):
            data = {"format": FORMAT, "op": op, "device": {}, "backends": {}}
        part = data["backends"].get(backend)
        if part is None or check_file(data, op=op, key=desc["key"], backend=backend):
            part = {"entries": {}}
        part.update(versions=backend_versions(backend), source_hash=source_hash(op, backend))
        part["entries"][bucket_key(shape)] = entry
        data["backends"][backend] = part
        data.update(device={k: desc[k] for k in ("key", "name", "type")}, versions=versions(), date=_now())
        write_json_atomic(path, data)
    invalidate()
    return path


def blacklist(op: str, *, backend: str, device="cpu", config: dict, reason: str, root=None) -> None:
    """Persist that ``config`` fails for ``op`` / ``backend`` here; :func:`lookup` skips it from now on."""
    root = pathlib.Path(root or cache_root())
    key = device_key(device)
    path = root / key / "blacklist.json"
    with file_lock(root / key / ".write.lock"):
        try:
            data = json.loads(path.read_text())
            assert data.get("format") == FORMAT and data.get("device") == key and isinstance(data["entries"], list)
        except Exception:
            data = {"format": FORMAT, "device": key, "entries": []}
        data["entries"].append({"op": op, "backend": backend, "config": dict(config), "reason": reason[:500],
                                "source_hash": source_hash(op, backend), "date": _now()})
        write_json_atomic(path, data)
    invalidate()


# ---------------------------------------------------------------- the kernels' entry point


def warn_heuristic(op: str, backend: str, device="cpu", heuristic=None) -> None:
    """The one warning per process and device that kernels run heuristic configs (no tuned entry).

    One line, not one per op: on an untuned machine every op is untuned, and a list of them says
    nothing more than "this machine is not tuned"; ``hysparse ir MODEL`` shows per op whether
    its config is tuned or heuristic.
    """
    _warn_once(("heuristic", device_key(device)),
               f"no tuned config for {op} ({backend}) on {device_description(str(device))['name']}: it and any other "
               f"untuned kernel run heuristic defaults (said once per process); `hysparse autotune` tunes this "
               f"machine, `hysparse ir MODEL` shows which ops are tuned",
               stacklevel=5)


def launch(op: str, *, backend: str, device="cpu", shape: dict, heuristic: dict, run: Callable[[dict], object]):
    """Run ``run(config)`` with the tuned config for ``shape`` (missing knobs from ``heuristic``).

    No tuned config: ``run(heuristic)`` with one :class:`TunedConfigWarning` per process and device.
    A tuned config that raises: the heuristic runs; if it succeeds the tuned config is reported
    and blacklisted, if it fails too the error is the input's and is raised unchanged.
    """
    config = lookup(op, backend=backend, device=device, shape=shape)
    if config is None:
        warn_heuristic(op, backend, device, heuristic)
        return run(dict(heuristic))
    tuned = config
    config = {**heuristic, **tuned}
    try:
        return run(config)
    except Exception as e:
        out = run(dict(heuristic))
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"tuned config {config} of {op} ({backend}) failed at launch ({reason}); blacklisted, "
                      f"using the heuristic {heuristic}", TunedConfigWarning, stacklevel=3)
        try:
            blacklist(op, backend=backend, device=device, config=tuned, reason=reason)
        except OSError as w:  # a read-only cache: still fall back, just not persisted
            warnings.warn(f"could not persist the blacklist ({w})", TunedConfigWarning, stacklevel=3)
        return out
