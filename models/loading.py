"""Checkpoints in the Hugging Face layout: safetensors (one file, or shards with
``model.safetensors.index.json``) plus ``config.json``. No pickle is ever loaded.

``save_pretrained`` writes the whole checkpoint into a new folder and swaps it in with one rename
(``files.replace_directory``), so a reader finds the old checkpoint or the new one, never a mix;
other files in the folder (a tokenizer, a README) are kept. Each safetensors file records the
SHA-256 of its tensors in its header, and the index records each shard's.

``load_pretrained`` checks the whole checkpoint before any weight reaches the model (it loads
all or nothing): the index (valid JSON, shard names inside the folder, every tensor in exactly one
shard, the shard it names), the checksums, missing and unexpected keys, shapes, and dtypes (a
float parameter is never filled from integer data). The model is built in the checkpoint's
floating dtype, so the round trip is bit-exact.

Names: the module tree already uses HF names (``model.layers.{i}.self_attn.q_proj.weight``, ...);
MoE experts are stacked in memory and split per expert on disk
(``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight``), and MiMo-7B's MTP blocks,
``model.mtp.layers.{k}`` in memory, are ``model.mtp_layers.{k}`` on disk. ``hf_names(model)`` lists
the names a checkpoint of the model holds (``hysparse models --names MODEL`` prints them), so a
published checkpoint's index can be checked against a model built on the meta device.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from hysparse_kernels import ir
from .config import ModelConfig
from .files import CHECKSUM_KEY, CheckpointError, is_plain_file_name, read_safetensors, replace_directory, write_safetensors
from .model import HybridLM

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_STACKED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_MTP_IN_MEMORY, _MTP_MIMO = "model.mtp.layers.", "model.mtp_layers."

__all__ = ["CheckpointError", "to_hf_state_dict", "from_hf_state_dict", "hf_names", "save_pretrained", "load_tensors",
           "load_pretrained"]


def _disk_name(name: str, graph) -> str:
    """A module-tree name -> the checkpoint's name (only MiMo-7B's MTP prefix differs)."""
    if graph.mtp is not None and graph.mtp.layout == "mimo" and name.startswith(_MTP_IN_MEMORY):
        return _MTP_MIMO + name[len(_MTP_IN_MEMORY):]
    return name


def to_hf_state_dict(model, state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The model's tensors (or ``state``, a state dict of the model) under Hugging Face names
    (experts split, tied head dropped, MTP blocks where the layout stores them)."""
    out = {}
    for name, t in (model.state_dict() if state is None else state).items():
        if name == "lm_head.weight" and model.graph.tie_embeddings:
            continue
        m = _STACKED.match(name)
        if m is None:
            out[_disk_name(name, model.graph)] = t
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


def hf_names(model) -> list[str]:
    """The tensor names a checkpoint of ``model`` holds, sorted (works on the meta device)."""
    return sorted(to_hf_state_dict(model))


def from_hf_state_dict(tensors: dict[str, Tensor], model) -> dict[str, Tensor]:
    """Hugging Face names -> the model's state dict (experts stacked); checks keys and shapes."""
    expected = to_hf_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    scales = [k for k in unexpected if k.endswith(".weight_scale_inv")]
    if scales:
        raise CheckpointError(f"the checkpoint is FP8 block-quantized ({len(scales)} tensors like {scales[0]}): "
                              f"dequantize it to bfloat16 first (each weight block times its weight_scale_inv)")
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint keys do not match the model: missing {len(missing)} {missing[:8]}, "
            f"unexpected {len(unexpected)} {unexpected[:8]}"
        )
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{name}: expected shape {tuple(expected[name].shape)}, got {tuple(t.shape)}")
        want = expected[name].dtype
        if want.is_floating_point != t.dtype.is_floating_point or (not want.is_floating_point and t.dtype != want):
            kind = "a floating-point" if want.is_floating_point else str(want).removeprefix("torch.")
            raise CheckpointError(f"{name}: expected {kind} tensor, got {str(t.dtype).removeprefix('torch.')}")
    state, experts = {}, {}
    memory_name = {_disk_name(name, model.graph): name for name in model.state_dict()}
    for name, t in tensors.items():
        m = _PER_EXPERT.match(name)
        if m is None:
            state[memory_name[name]] = t
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


def _ours(name: str) -> bool:
    """Files a save writes (and so replaces); anything else in the folder is carried over."""
    return name in (CONFIG, SINGLE, INDEX) or bool(_SHARD.match(name))


def save_pretrained(model, directory, *, max_shard_bytes: int | None = None, state: dict | None = None) -> Path:
    """Write ``config.json`` and the weights (sharded when over ``max_shard_bytes``) to ``directory``.

    ``model``: a ``HybridLM`` (or the ``transformers`` class of ``models.hf``); ``state``: its
    tensors to write when not its own (a state dict with the model's names).
    The checkpoint is written into a new folder that replaces ``directory`` in one step: an
    interrupted save leaves the previous checkpoint there, whole.
    """
    directory = Path(directory)
    tensors = to_hf_state_dict(model, state)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if max_shard_bytes and current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    config = ModelConfig.from_graph(model.graph).to_hf_config()
    meta = {"format": "pt"}

    def write(tmp: Path) -> None:
        if len(shards) == 1:
            write_safetensors(tmp / SINGLE, shards[0], meta)
        else:
            weight_map, checksums = {}, {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                checksums[fname] = write_safetensors(tmp / fname, shard, meta)
                weight_map.update({name: fname for name in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total, CHECKSUM_KEY: checksums}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))

    return replace_directory(directory, write, ours=_ours)


def _read_index(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``(weight_map, shard checksums)`` of an index file, checked."""
    try:
        index = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: expected an object with a non-empty \"weight_map\" of tensor name -> shard file, "
                              f"got {type(weight_map).__name__ if isinstance(index, dict) else type(index).__name__}")
    for shard in sorted(set(weight_map.values())):
        if not is_plain_file_name(shard):
            raise CheckpointError(f"{path}: shard {shard!r} is not a file name inside {path.parent}")
    meta = index.get("metadata")
    checksums = meta.get(CHECKSUM_KEY) if isinstance(meta, dict) else None
    if checksums is not None and not (isinstance(checksums, dict) and all(isinstance(v, str) for v in checksums.values())):
        raise CheckpointError(f"{path}: metadata.{CHECKSUM_KEY}: expected shard file -> checksum, got {checksums!r}")
    return weight_map, checksums or {}


def _read_sharded(path: Path) -> dict[str, Tensor]:
    weight_map, checksums = _read_index(path / INDEX)
    tensors, source = {}, {}
    for f in sorted(set(weight_map.values())):
        if not (path / f).is_file():
            raise CheckpointError(f"{path / INDEX}: lists shard {f}, which is missing")
        shard, meta = read_safetensors(path / f)
        if f in checksums and meta.get(CHECKSUM_KEY) != checksums[f]:
            raise CheckpointError(f"{path / f}: not the shard the index was written with (checksum "
                                  f"{str(meta.get(CHECKSUM_KEY))[:16]}..., index records {checksums[f][:16]}...)")
        for name, t in shard.items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {name} is in two shards, {source[name]} and {f}")
            if weight_map.get(name) != f:
                where = f"lists it in {weight_map[name]}" if name in weight_map else "does not list it"
                raise CheckpointError(f"{path / f}: holds tensor {name}, but the index {where}")
            tensors[name], source[name] = t, f
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{path / INDEX}: lists {len(missing)} tensor(s) no shard holds: {missing[:8]}")
    return tensors


def load_tensors(path) -> dict[str, Tensor]:
    """All tensors of a checkpoint: a ``.safetensors`` file, or a directory (single or sharded);
    checksums verified where recorded."""
    path = Path(path)
    if path.is_file():
        return read_safetensors(path)[0]
    if (path / INDEX).exists():
        return _read_sharded(path)
    if (path / SINGLE).exists():
        return read_safetensors(path / SINGLE)[0]
    raise CheckpointError(f"{path}: expected a .safetensors file or a directory with {SINGLE} or {INDEX}")


def _checkpoint_dtype(tensors: dict[str, Tensor]) -> torch.dtype:
    """The floating dtype that holds every floating tensor of the checkpoint exactly."""
    dtype = None
    for t in tensors.values():
        if t.dtype.is_floating_point:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype or torch.float32


def read_graph(path) -> ir.ModelGraph:
    """The graph of a checkpoint's ``config.json`` (``path``: the folder or a file in it)."""
    path = Path(path)
    cfg_path = (path if path.is_dir() else path.parent) / CONFIG
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path}: missing; pass name= to pick a zoo model")
    try:
        return ModelConfig.from_hf_config(json.loads(cfg_path.read_text())).to_graph()
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not a usable model config ({type(exc).__name__}: {exc})") from exc


def load_pretrained(path, name: str | None = None, *, dtype=None, build=None):
    """Build the model (from ``config.json`` in Hugging Face terms, or the zoo flavor ``name``) and
    load its weights: all of them or none. The model takes the checkpoint's floating dtype
    (bit-exact), or ``dtype`` when given. ``build``: ``graph -> model`` (default ``HybridLM``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (expected a folder or a .safetensors file)")
    graph = ir.get_graph(name) if name is not None else read_graph(path)
    tensors = load_tensors(path)
    model = (build or HybridLM)(graph).to(_checkpoint_dtype(tensors))
    state = from_hf_state_dict(tensors, model)
    model.load_state_dict(state, strict=True)
    return model.to(dtype) if dtype is not None else model
