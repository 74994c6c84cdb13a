"""Training checkpoints: written whole or not at all, read back exactly.

A checkpoint is a directory ``<out>/checkpoints/step-NNNNNN/`` holding the model in the zoo's
safetensors layout (``models.save_pretrained``), the optimizer's tensors and the RNG states in
``trainer.safetensors``, and the scalars in ``trainer.json``. It is written under a temporary
name and renamed into place; ``<out>/checkpoints/latest`` (itself replaced atomically) names the
newest complete one. No pickle is written or read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from hysparse_kernels.models import load_pretrained, save_pretrained


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
    """Write checkpoint ``step`` under ``out/checkpoints`` and point ``latest`` at it."""
    from safetensors.torch import save_file

    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:06d}."))
    try:
        save_pretrained(model, tmp / "model")
        tensors, meta = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = data_generator.get_state()
        save_file(tensors, str(tmp / "trainer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "optimizer": meta, **extra}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd, pointer = tempfile.mkstemp(dir=root, prefix=".latest.")
    with os.fdopen(fd, "w") as f:
        f.write(final.name)
    os.replace(pointer, root / "latest")
    return final


def latest(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "trainer.json").exists():
        raise FileNotFoundError(f"{pointer}: names {path.name}, which is not a complete checkpoint")
    return path


def load(path: Path, model, optimizer, data_generator: torch.Generator) -> dict:
    """Restore model, optimizer and RNG states from ``path``; returns ``trainer.json``'s values."""
    from safetensors.torch import load_file

    path = Path(path)
    loaded = load_pretrained(path / "model")
    model.load_state_dict(loaded.state_dict(), strict=True)
    tensors = load_file(str(path / "trainer.safetensors"))
    meta = json.loads((path / "trainer.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    data_generator.set_state(tensors["rng.data"])
    return meta
