"""Checkpoint files that are whole, verified and never mixed: checksummed safetensors files and
directories replaced in one step.

* ``write_safetensors`` / ``read_safetensors``: a safetensors file whose header metadata records
  ``sha256``, the checksum of its tensors (see ``tensors_sha256``); reading verifies it, so a
  flipped byte in the tensor data is an error, not a silently different weight. Files without the
  key (written elsewhere) are read unverified.
* ``replace_directory``: a directory is written under a new hidden name next to its target and
  swapped in with one rename (``renameat2(RENAME_EXCHANGE)`` on Linux), so a reader finds the old
  directory or the new one, never a mix; a write that fails or is killed half-way leaves the old
  one as it was (the hidden leftover of a killed write is removed by the next write of that name).

Every problem is a ``CheckpointError`` naming the file and what is wrong.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

CHECKSUM_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint that does not match the model or cannot be trusted: what is wrong is in the message."""


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the tensors in name order: each name, dtype, shape and raw bytes.

    Independent of the file layout, so it checks the tensors exactly as a reader gets them.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        if t.numel():
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def write_safetensors(path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` to ``path`` atomically (temporary name, then rename) with their checksum
    in the header metadata; returns the checksum."""
    from safetensors.torch import save_file

    path = Path(path)
    digest = tensors_sha256(tensors)
    meta = {**(metadata or {}), CHECKSUM_KEY: digest}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def read_safetensors(path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of one safetensors file and its header metadata; the checksum is verified when recorded."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(exc).__name__}: {exc})") from exc
    recorded = metadata.get(CHECKSUM_KEY)
    if recorded is not None:
        actual = tensors_sha256(tensors)
        if actual != recorded:
            raise CheckpointError(f"{path}: tensor data does not match its checksum (sha256 {actual[:16]}..., "
                                  f"recorded {recorded[:16]}...): the file is corrupt")
    return tensors, metadata


def is_plain_file_name(name) -> bool:
    """True for a file name that stays inside its folder (no separators, not ``.``/``..``, not absolute)."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        return False
    return "/" not in name and "\\" not in name and (os.altsep is None or os.altsep not in name) and "\0" not in name


# --------------------------------------------------------------------------- directories


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # old kernel or a filesystem without the flag
    raise OSError(err, os.strerror(err), str(b))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def remove_leftovers(directory) -> list[Path]:
    """Remove the hidden ``.<name>.new-*`` / ``.<name>.old-*`` folders that a killed write of
    ``directory`` left next to it; returns what was removed."""
    directory = Path(directory)
    gone = []
    if directory.parent.is_dir():
        for p in directory.parent.glob(f".{directory.name}.new-*"):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
        if directory.exists():
            for p in directory.parent.glob(f".{directory.name}.old-*"):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


def replace_directory(directory, write: Callable[[Path], None], *, ours: Callable[[str], bool] = lambda name: True) -> Path:
    """Write ``directory`` whole: ``write(tmp)`` fills a new hidden sibling folder, which then takes
    ``directory``'s place in one rename. Entries of an existing ``directory`` for which ``ours(name)``
    is False (files that are not part of what ``write`` produces) are carried over (hard links).

    If ``write`` raises (or the process dies) the old directory is untouched.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    old_left = sorted(directory.parent.glob(f".{directory.name}.old-*"))
    if not directory.exists() and old_left:
        # A killed non-atomic swap (no RENAME_EXCHANGE) moved the old directory aside: put it back.
        os.rename(old_left[-1], directory)
    remove_leftovers(directory)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        write(tmp)
        if not directory.exists():
            os.rename(tmp, directory)
            return directory
        for entry in os.scandir(directory):
            if ours(entry.name) or (tmp / entry.name).exists():
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, tmp / entry.name, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, str(tmp / entry.name))
        if not _exchange(tmp, directory):
            aside = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, aside)  # killed here: the next write puts it back (see above)
            os.rename(tmp, directory)
            shutil.rmtree(aside, ignore_errors=True)
            return directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # after the exchange it holds the old directory
    return directory
