"""Training checkpoints: written whole or not at all, read back exactly, resumed only by their own run.

A checkpoint is a directory ``<out>/checkpoints/step-NNNNNN/`` holding the model in the zoo's
safetensors layout (``models.save_pretrained``), the optimizer's tensors and the RNG states in
``trainer.safetensors`` (its tensors' SHA-256 in its header), and the scalars in ``trainer.json``:
the step, the optimizer's hyper-parameters, and the run's ``settings`` (what must match for a
resume to continue the same run). The directory is written under a hidden name and swapped in
with one rename (``models.files.replace_directory``); ``<out>/checkpoints/latest`` (replaced
atomically) names the newest. No pickle is written or read.

``resume`` reads the newest checkpoint completely (checksums, keys, shapes) before anything is
restored; one that cannot be read is skipped with a warning naming it and why, and the one
before it is tried. A checkpoint written with other settings is an error, not a fallback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from hysparse_kernels.models import CheckpointError, load_pretrained, save_pretrained
from hysparse_kernels.models.files import CHECKSUM_KEY, read_safetensors, replace_directory, write_safetensors

TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
_STEP = re.compile(r"^step-(\d+)$")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unreadable) and an older one is used instead."""


def _flatten_optimizer(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(out: Path, step: int, model, optimizer, data_generator: torch.Generator, extra: dict) -> Path:
    """Write checkpoint ``step`` under ``out/checkpoints`` (whole or not at all) and point ``latest`` at it.

    ``extra`` goes into ``trainer.json`` (``settings`` there is what ``resume`` compares).
    """
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"

    def write(tmp: Path) -> None:
        save_pretrained(model, tmp / "model")
        tensors, meta = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = data_generator.get_state()
        digest = write_safetensors(tmp / TRAINER_TENSORS, tensors)
        record = {"step": step, "optimizer": meta, "trainer_sha256": digest, **extra}
        (tmp / TRAINER_JSON).write_text(json.dumps(record, indent=2))

    replace_directory(final, write)
    point_latest(final)
    return final


def point_latest(final: Path) -> None:
    """Make ``<checkpoints>/latest`` name the complete checkpoint ``final`` (replaced atomically)."""
    fd, pointer = tempfile.mkstemp(dir=final.parent, prefix=".latest.")
    with os.fdopen(fd, "w") as f:
        f.write(final.name)
    os.replace(pointer, final.parent / "latest")


def latest(out: Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names (None without a pointer)."""
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / TRAINER_JSON).exists():
        raise FileNotFoundError(f"{pointer}: names {path.name}, which is not a complete checkpoint")
    return path


def candidates(out: Path) -> list[Path]:
    """The checkpoints under ``out/checkpoints``, newest step first."""
    root = Path(out) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))] if root.is_dir() else []
    return [p for _, p in sorted(found, reverse=True)]


def remove_leftovers(out: Path) -> list[Path]:
    """Remove what a killed save left in ``out/checkpoints`` (hidden ``.step-*`` folders,
    ``.latest.*`` pointer drafts); returns what was removed."""
    root = Path(out) / "checkpoints"
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                gone.append(p)
            elif p.name.startswith(".latest."):
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


@dataclass
class _Loaded:
    path: Path
    meta: dict
    model_state: dict
    trainer: dict

    def restore(self, model, optimizer, data_generator: torch.Generator) -> None:
        """Put the read state into ``model``, ``optimizer`` and the generators (all read and checked before)."""
        try:  # the optimizer checks its own structure before changing
            optimizer.load_state_dict(_unflatten_optimizer(self.trainer, self.meta["optimizer"]))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.path / TRAINER_TENSORS}: optimizer state does not fit ({exc})") from exc
        model.load_state_dict(self.model_state, strict=True)
        torch.set_rng_state(self.trainer["rng.torch"])
        data_generator.set_state(self.trainer["rng.data"])


def read(path: Path, model) -> _Loaded:
    """Read and check checkpoint ``path`` completely for ``model``; nothing is restored yet."""
    path = Path(path)
    try:
        meta = json.loads((path / TRAINER_JSON).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path / TRAINER_JSON}: missing") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / TRAINER_JSON}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not {"step", "optimizer", "settings"} <= set(meta):
        raise CheckpointError(f"{path / TRAINER_JSON}: expected step, optimizer and settings, got "
                              f"{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}")
    trainer, header = read_safetensors(path / TRAINER_TENSORS)
    if meta.get("trainer_sha256") != header.get(CHECKSUM_KEY):
        raise CheckpointError(f"{path / TRAINER_TENSORS}: not the file {TRAINER_JSON} was written with (checksum differs)")
    missing = {"rng.torch", "rng.data"} - set(trainer)
    if missing:
        raise CheckpointError(f"{path / TRAINER_TENSORS}: missing {sorted(missing)}")
    loaded = load_pretrained(path / "model")
    state, ours = loaded.state_dict(), model.state_dict()
    if state.keys() != ours.keys() or any(state[k].shape != ours[k].shape for k in ours):
        raise CheckpointError(f"{path / 'model'}: a different model ({loaded.graph.name or 'unnamed'}) "
                              f"than the one being trained ({model.graph.name or 'unnamed'})")
    return _Loaded(path, meta, state, trainer)


def _differences(recorded: dict, settings: dict) -> list[str]:
    keys = sorted(set(recorded) | set(settings))
    return [f"--{k.replace('_', '-')} {recorded.get(k)!r} there, {settings.get(k)!r} here"
            for k in keys if recorded.get(k) != settings.get(k)]


def resume(out: Path, model, optimizer, data_generator: torch.Generator, settings: dict, *, reader=None) -> dict | None:
    """Restore the newest readable checkpoint under ``out`` whose run had ``settings``.

    Returns its ``trainer.json`` values, or None when ``out`` has no checkpoint. Unreadable
    checkpoints are skipped (``CheckpointWarning`` naming each and why); none readable, or one
    written with other settings, is a ``CheckpointError``. ``reader(path)`` reads one checkpoint
    completely (default ``read(path, model)``): it returns an object with ``meta`` (the
    ``trainer.json`` values) and ``restore(model, optimizer, data_generator)``, or raises
    ``CheckpointError`` / ``OSError`` when the checkpoint is unreadable.
    """
    reader = reader or (lambda p: read(p, model))
    found = candidates(out)
    if not found:
        return None
    skipped = []
    for path in found:
        try:
            loaded = reader(path)
        except (CheckpointError, OSError) as exc:
            reason = str(exc).replace("\n", " ")
            skipped.append(f"{path.name} ({reason})")
            warnings.warn(f"resume: skipped checkpoint {path}: {reason}", CheckpointWarning, stacklevel=2)
            continue
        diff = _differences(loaded.meta["settings"], settings)
        if diff:
            raise CheckpointError(f"--resume: {path} belongs to a run with other settings ({'; '.join(diff)}); "
                                  f"resume with the same settings or choose another --out")
        loaded.restore(model, optimizer, data_generator)  # everything is read and checked
        return loaded.meta
    raise CheckpointError(f"--resume: no readable checkpoint in {Path(out) / 'checkpoints'} (skipped {'; '.join(skipped)}); "
                          f"delete that folder to start over")


def load(path: Path, model, optimizer, data_generator: torch.Generator) -> dict:
    """Restore model, optimizer and RNG states from checkpoint ``path`` (all or nothing); returns ``trainer.json``'s values."""
    loaded = read(path, model)
    loaded.restore(model, optimizer, data_generator)
    return loaded.meta
