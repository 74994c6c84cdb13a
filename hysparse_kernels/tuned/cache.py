"""The tuned-config cache on disk: the file format, where files live, the trust check, the write
lock, atomic stores and the blacklist (the module docstring of ``hysparse_kernels.tuned`` shows
the format). Also the in-memory answers that ``query.lookup`` fills and every write forgets.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import pathlib
import tempfile
import threading
import warnings
from typing import Iterator

from .buckets import bucket_key, split_shape
from .device import device_description, device_key
from .sources import backend_versions, source_hash, versions

FORMAT = "hysparse-tuned/1"
ENV_CACHE = "HYSPARSE_CACHE"
SHIPPED = pathlib.Path(__file__).parent.parent / "configs"


class TunedConfigWarning(UserWarning):
    """A tuned config is missing (heuristic used), unusable (file ignored) or failed (blacklisted)."""


class TunerBusyError(RuntimeError):
    """Another process holds the tuner lock of this device's cache."""


# ---------------------------------------------------------------- where


def cache_root() -> pathlib.Path:
    """``$HYSPARSE_CACHE`` or ``~/.cache/hysparse-kernels``."""
    return pathlib.Path(os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "hysparse-kernels"))


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


