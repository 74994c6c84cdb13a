"""What a tuned config depends on besides the device: the installed versions and the kernel
sources. A file written under other versions or for another kernel source is not trusted.

Each op family declares its ops and, per backend, the source files or folders of its kernels
(``register_sources``, called by the family's ``ops.py``); ``source_hash(op, backend)`` hashes
them, so an edited kernel never trusts tunings of the old one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pathlib
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

_PACKAGES = {"triton": "triton", "tvm": "apache-tvm"}
_FAMILY: dict[str, str] = {}  # op -> its family
_SOURCES: dict[tuple[str, str], tuple[pathlib.Path, ...]] = {}  # (family, backend) -> files / folders


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


def register_sources(family: str, ops: Iterable[str], sources: Mapping[str, Sequence]) -> None:
    """Declare the ops of ``family`` and, per backend, the kernel source files or folders (every
    ``*.py`` in a folder, in name order) whose hash keys their tuned configs."""
    for op in ops:
        _FAMILY[op] = family
    for backend, paths in sources.items():
        _SOURCES[(family, backend)] = tuple(pathlib.Path(p) for p in paths)
    source_hash.cache_clear()


def op_family(op: str) -> str | None:
    """The family (``"attention"``, ``"moe"``) that registered ``op``, None for an unknown op."""
    return _FAMILY.get(op)


@lru_cache(maxsize=None)
def source_hash(op: str, backend: str) -> str:
    """sha256 (16 hex digits) of the kernel sources that implement ``op`` on ``backend``: each file's
    name and bytes, in the order registered (a folder's files sorted by name)."""
    h = hashlib.sha256()
    for path in _SOURCES.get((op_family(op), backend), ()):
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]
