"""Checkpoints in the Hugging Face layout: safetensors (one file, or shards with
``model.safetensors.index.json``) plus ``config.json``. No pickle is ever loaded.

``save_pretrained`` writes every file to a temporary name and renames it into place, so an
interrupted save never leaves a half-written checkpoint behind a valid name. ``load_pretrained``
checks the whole checkpoint (missing and unexpected keys, shapes, unreadable files) before any
weight reaches the model: it loads all or nothing.

Names: the module tree already uses HF names (``model.layers.{i}.self_attn.q_proj.weight``, ...);
MoE experts are stacked in memory and split per expert on disk
(``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from hysparse_kernels import ir
from .config import ModelConfig
from .model import HybridLM

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_STACKED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: what is wrong is in the message."""


def to_hf_state_dict(model: HybridLM) -> dict[str, Tensor]:
    """The model's tensors under Hugging Face names (experts split, tied head dropped)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.graph.tie_embeddings:
            continue
        m = _STACKED.match(name)
        if m is None:
            out[name] = t
            continue
        prefix, kind = m.groups()
        for e in range(t.shape[0]):
            if kind == "gate_up_proj":
                half = t.shape[1] // 2
                out[f"{prefix}.{e}.gate_proj.weight"] = t[e, :half]
                out[f"{prefix}.{e}.up_proj.weight"] = t[e, half:]
            else:
                out[f"{prefix}.{e}.down_proj.weight"] = t[e]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(tensors: dict[str, Tensor], model: HybridLM) -> dict[str, Tensor]:
    """Hugging Face names -> the model's state dict (experts stacked); checks keys and shapes."""
    expected = to_hf_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint keys do not match the model: missing {len(missing)} {missing[:8]}, "
            f"unexpected {len(unexpected)} {unexpected[:8]}"
        )
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{name}: expected shape {tuple(expected[name].shape)}, got {tuple(t.shape)}")
    state, experts = {}, {}
    for name, t in tensors.items():
        m = _PER_EXPERT.match(name)
        if m is None:
            state[name] = t
        else:
            experts[(m.group(1), int(m.group(2)), m.group(3))] = t
    for name, ref in model.state_dict().items():
        m = _STACKED.match(name)
        if m is None:
            continue
        prefix, kind = m.groups()
        E = ref.shape[0]
        if kind == "gate_up_proj":
            state[name] = torch.stack([torch.cat([experts[(prefix, e, "gate_proj")], experts[(prefix, e, "up_proj")]]) for e in range(E)])
        else:
            state[name] = torch.stack([experts[(prefix, e, "down_proj")] for e in range(E)])
    if model.graph.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_pretrained(model: HybridLM, directory, *, max_shard_bytes: int | None = None) -> Path:
    """Write ``config.json`` and the weights (sharded when over ``max_shard_bytes``) to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_state_dict(model)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if max_shard_bytes and current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    meta = {"format": "pt"}
    if len(shards) == 1:
        _atomic_write(directory / SINGLE, lambda tmp: save_file(shards[0], tmp, metadata=meta))
        (directory / INDEX).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_write(directory / fname, lambda tmp, shard=shard: save_file(shard, tmp, metadata=meta))
            weight_map.update({name: fname for name in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _atomic_write(directory / INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
        (directory / SINGLE).unlink(missing_ok=True)
    config = ModelConfig.from_graph(model.graph).to_hf_config()
    _atomic_write(directory / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return directory


def _read(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc


def load_tensors(path) -> dict[str, Tensor]:
    """All tensors of a checkpoint: a ``.safetensors`` file, or a directory (single or sharded)."""
    path = Path(path)
    if path.is_file():
        return _read(path)
    if (path / INDEX).exists():
        index = json.loads((path / INDEX).read_text())
        files = sorted(set(index["weight_map"].values()))
        tensors = {}
        for f in files:
            if not (path / f).exists():
                raise CheckpointError(f"{path / INDEX}: lists shard {f}, which is missing")
            tensors.update(_read(path / f))
        listed = set(index["weight_map"])
        if set(tensors) != listed:
            raise CheckpointError(f"{path / INDEX}: the shards hold {len(tensors)} tensors, the index lists {len(listed)}")
        return tensors
    if (path / SINGLE).exists():
        return _read(path / SINGLE)
    raise CheckpointError(f"{path}: expected a .safetensors file or a directory with {SINGLE} or {INDEX}")


def load_pretrained(path, name: str | None = None, *, dtype=None) -> HybridLM:
    """Build the model (from ``config.json`` in Hugging Face terms, or the zoo flavor ``name``) and
    load its weights: all of them or none."""
    path = Path(path)
    if name is not None:
        graph = ir.get_graph(name)
    else:
        cfg_path = (path if path.is_dir() else path.parent) / CONFIG
        if not cfg_path.exists():
            raise CheckpointError(f"{cfg_path}: missing; pass name= to pick a zoo model")
        try:
            graph = ModelConfig.from_hf_config(json.loads(cfg_path.read_text())).to_graph()
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{cfg_path}: not a usable model config ({type(exc).__name__}: {exc})") from exc
    model = HybridLM(graph)
    state = from_hf_state_dict(load_tensors(path), model)
    model.load_state_dict(state, strict=True)
    return model.to(dtype) if dtype is not None else model
