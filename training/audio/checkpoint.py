"""Training checkpoints of the audio models: written whole or not at all, read back exactly.

``<out>/checkpoints/step-NNNNNN/`` holds the model as ``models.audio.io.save_checkpoint`` writes it
(``model/``), the optimizer's tensors and the torch RNG state in ``trainer.safetensors``, and the
scalars in ``trainer.json``. The directory is written under a temporary name and renamed into
place; ``<out>/checkpoints/latest`` (replaced atomically, last) names the newest complete one.
No pickle is written or read. Batches are drawn from generators seeded by ``(seed, step)``, so
the data needs no state of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from hysparse_kernels.models.audio.io import load_checkpoint, save_checkpoint
# the optimizer's state as flat tensors + JSON scalars, as pretraining checkpoints keep it
from hysparse_kernels.training.checkpoint import _flatten_optimizer as _optimizer_tensors
from hysparse_kernels.training.checkpoint import _unflatten_optimizer as _optimizer_state
from hysparse_kernels.training.pretrain import read_metrics


def save(out, step: int, model, optimizer, extra: dict | None = None) -> Path:
    """Write checkpoint ``step`` under ``out/checkpoints`` and point ``latest`` at it."""
    from safetensors.torch import save_file

    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:06d}."))
    try:
        save_checkpoint(model, tmp / "model")
        tensors, meta = _optimizer_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "trainer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "optimizer": meta, **(extra or {})}, indent=2))
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


def latest(out) -> Path | None:
    """The newest complete checkpoint under ``out``, or None."""
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "trainer.json").exists():
        raise FileNotFoundError(f"{pointer}: names {path.name}, which is not a complete checkpoint")
    return path


def load(path, model, optimizer) -> dict:
    """Restore model weights (and buffers), optimizer and torch RNG from ``path``; returns ``trainer.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    model.load_state_dict(load_checkpoint(path / "model").state_dict(), strict=True)
    tensors = load_file(str(path / "trainer.safetensors"))
    meta = json.loads((path / "trainer.json").read_text())
    optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def resume_or_start(out: Path, model, optimizer, resume: bool) -> int:
    """The step a run starts from: the latest checkpoint's with ``resume`` (model and optimizer
    loaded, ``metrics.jsonl`` cut back to the steps before it, lines a kill cut short dropped with
    a warning), else 0 with ``metrics.jsonl`` removed."""
    metrics_path = Path(out) / "metrics.jsonl"
    if resume and (ckpt := latest(out)) is not None:
        start = load(ckpt, model, optimizer)["step"]
        kept = [r for r in read_metrics(metrics_path) if r["step"] < start] if metrics_path.exists() else []
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return start
    if metrics_path.exists():
        metrics_path.unlink()
    return 0
