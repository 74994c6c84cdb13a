"""Training artifacts cached between runs: `make demo`'s checkpoint, the RL recipes' SFT warm
starts, MOPD's teachers.

Each lives in ``$HYSPARSE_CACHE/<kind>/<prefix><key>`` (default ``~/.cache/hysparse-kernels``),
where ``key`` hashes the settings that trained it **and the code that trained it**: a
fingerprint of every Python source of the installed package (kernels, IR, models, training). A
checkpoint trained by another version of the code is therefore never picked up in place of what
this code would train (a warm start cached before a model change used to come back and shift
every number measured from it); after a code change the first run trains the artifact again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

# The packages whose code decides what a cached training run produces (setup.py installs ir/,
# models/, training/ as subpackages of hysparse_kernels); autotune only picks kernel configs.
_PACKAGES = ("hysparse_kernels",)
_SKIP_DIRS = {"autotune", "__pycache__"}


def cache_root() -> Path:
    return Path(os.environ.get("HYSPARSE_CACHE", Path.home() / ".cache" / "hysparse-kernels"))


def _package_dirs() -> list[Path]:
    import importlib

    dirs = []
    for name in _PACKAGES:
        module = importlib.import_module(name)
        dirs.append(Path(module.__file__).parent)
        # subpackages installed from other folders (package_dir mapping) live elsewhere on disk
        for sub in ("ir", "models", "training"):
            path = Path(importlib.import_module(f"{name}.{sub}").__file__).parent
            if not path.is_relative_to(dirs[0]):
                dirs.append(path)
    return dirs


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over (relative path, bytes) of every ``.py`` file of the package (the ``autotune``
    subpackage and caches left out), 16 hex digits; computed once per process."""
    h = hashlib.sha256()
    for root in _package_dirs():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if _SKIP_DIRS.intersection(rel.parts[:-1]):
                continue
            h.update(f"{root.name}/{rel.as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:16]


def settings_key(settings) -> str:
    """12 hex digits naming a run of ``settings`` (a dataclass or a JSON-able dict) by this code."""
    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    payload = json.dumps({"settings": settings, "code": code_fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def artifact_dir(kind: str, settings, prefix: str = "") -> Path:
    """``$HYSPARSE_CACHE/<kind>/<prefix><settings_key(settings)>``."""
    return cache_root() / kind / f"{prefix}{settings_key(settings)}"
