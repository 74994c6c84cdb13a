"""Distributed checkpoints: ``torch.distributed.checkpoint`` (DCP) folders written by every rank,
with the guarantees of the one-process checkpoints (``training.checkpoint``).

A checkpoint of a run on several ranks is ``<out>/checkpoints/step-NNNNNN/`` holding

* ``state/``: the DCP folder (``.metadata`` and each rank's ``*.distcp`` files) of
  ``{"model": ..., "optim": ...}`` as ``torch.distributed.checkpoint.state_dict.get_state_dict``
  gives them: tensors under their global names and shapes, whatever the ranks held (FSDP
  shards, expert-parallel shards, DDP replicas), so the checkpoint loads on any number of ranks,
  one process included;
* ``trainer.safetensors``: the RNG states (checksummed, as in one process); ``config.json``: the
  model's Hugging Face config (what ``to_safetensors`` builds the model from);
* ``trainer.json``: ``format: "dcp"``, the step, the run's ``settings``, the ranks it was written
  by, and the SHA-256 of every file under ``state/`` (``files``).

Written whole or not at all: the ranks write into a hidden folder that rank 0 creates, then rank 0
checksums the files and swaps the folder in with one rename (``models.files.replace_directory``)
and points ``latest`` at it. A resume verifies the checksums (the files split over the ranks),
checks that the stored names and shapes fit the model, and loads into copies before anything is
restored; an unreadable checkpoint is skipped by every rank alike (``checkpoint.resume``'s rules).

``reader`` reads a checkpoint of either format for any number of ranks: DCP ones anywhere, and
one-process ones (``training.checkpoint``) on several ranks through full state dicts.
``to_safetensors`` / ``from_safetensors`` convert between a DCP checkpoint and the single-file
safetensors layout ``models.load_pretrained`` reads.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hysparse_kernels.models import CheckpointError, ModelConfig, save_pretrained
from hysparse_kernels.models.files import CHECKSUM_KEY, read_safetensors, replace_directory, write_safetensors
from . import checkpoint
from .distributed import Parallel

FORMAT = "dcp"
MODEL_FORMAT = "dcp-model"  # a model without trainer state (``from_safetensors``)
STATE = "state"


@contextmanager
def _quiet_one_process(no_dist: bool):
    """DCP warns on every single-process load or save, even one asked for with ``no_dist``."""
    with warnings.catch_warnings():
        if no_dist:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _agree(error: str | None, par: Parallel) -> None:
    """Raise the same ``CheckpointError`` on every rank when any rank found a problem."""
    errors = [error]
    if par.distributed:
        errors = [None] * par.world
        dist.all_gather_object(errors, error)
    found = [e for e in errors if e]
    if found:
        raise CheckpointError(found[0])


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def save(out: Path, step: int, model, optimizer, data_generator: torch.Generator, extra: dict, par: Parallel) -> Path:
    """Write checkpoint ``step`` of ``model`` and ``optimizer`` from every rank (a collective call).

    ``extra`` goes into ``trainer.json`` (``settings`` there is what a resume compares)."""
    import torch.distributed.checkpoint as dcp

    final = Path(out) / "checkpoints" / f"step-{step:06d}"
    model_sd, optim_sd = _state_dicts(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if not par.is_main:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        dcp.save(state, checkpoint_id=Path(box[0]) / STATE)
        dist.barrier()  # rank 0 has swapped the folder in
        return final

    def write(tmp: Path) -> None:
        if par.distributed:
            dist.broadcast_object_list([str(tmp)], src=0)
        dcp.save(state, checkpoint_id=tmp / STATE)  # returns once every rank has written
        digest = write_safetensors(tmp / checkpoint.TRAINER_TENSORS,
                                   {"rng.torch": torch.get_rng_state(), "rng.data": data_generator.get_state()})
        (tmp / "config.json").write_text(json.dumps(ModelConfig.from_graph(model.graph).to_hf_config(), indent=2))
        record = {"format": FORMAT, "step": step, "world": par.world, "files": _manifest(tmp / STATE),
                  "trainer_sha256": digest, **extra}
        (tmp / checkpoint.TRAINER_JSON).write_text(json.dumps(record, indent=2))

    final.parent.mkdir(parents=True, exist_ok=True)
    replace_directory(final, write)
    checkpoint.point_latest(final)
    if par.distributed:
        dist.barrier()
    return final


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / checkpoint.TRAINER_JSON).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path / checkpoint.TRAINER_JSON}: missing") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / checkpoint.TRAINER_JSON}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / checkpoint.TRAINER_JSON}: expected an object, got {type(meta).__name__}")
    return meta


def verify(path: Path, meta: dict, par: Parallel) -> None:
    """Check the SHA-256 of every file under ``path/state`` against ``meta["files"]`` (rank ``r``
    checks files ``r, r + N, ...``); every rank raises the same ``CheckpointError`` on a mismatch."""
    files = meta.get("files")
    error = None
    if not isinstance(files, dict) or not files:
        error = f"{path / checkpoint.TRAINER_JSON}: expected \"files\", the checksums of {STATE}/, got {files!r}"
    else:
        names = sorted(files)
        present = {p.name for p in (path / STATE).iterdir()} if (path / STATE).is_dir() else set()
        if set(names) != present:
            error = (f"{path / STATE}: holds {sorted(present)[:6]}, expected the files {names[:6]} "
                     f"(missing {sorted(set(names) - present)[:4]}, unexpected {sorted(present - set(names))[:4]})")
        else:
            for name in names[par.rank::par.world]:
                if _sha256(path / STATE / name) != files[name]:
                    error = f"{path / STATE / name}: data does not match its checksum in {checkpoint.TRAINER_JSON}: the file is corrupt"
                    break
    _agree(error, par)


def _stored_shapes(path: Path) -> dict[str, tuple]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(path / STATE)).read_metadata().state_dict_metadata
    return {k: tuple(v.size) for k, v in md.items() if isinstance(v, TensorStorageMetadata)}


def check_fits(path: Path, model_sd: dict, par: Parallel) -> None:
    """The stored model tensors must be the model's: the same names and global shapes."""
    error = None
    try:
        stored = {k.removeprefix("model."): v for k, v in _stored_shapes(path).items() if k.startswith("model.")}
    except Exception as exc:  # DCP raises assorted types for a damaged .metadata
        stored, error = {}, f"{path / STATE}: cannot read its metadata ({type(exc).__name__}: {exc})"
    if error is None:
        ours = {k: tuple(v.shape) for k, v in model_sd.items() if torch.is_tensor(v)}
        missing, unexpected = sorted(set(ours) - set(stored)), sorted(set(stored) - set(ours))
        shapes = [k for k in ours if k in stored and stored[k] != ours[k]]
        if missing or unexpected or shapes:
            error = (f"{path / STATE}: a different model than the one being trained (missing {missing[:4]}, "
                     f"unexpected {unexpected[:4]}, other shapes {shapes[:4]})")
    _agree(error, par)


def _clone(tree):
    if torch.is_tensor(tree):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_clone(v) for v in tree]
    return tree


@dataclass
class _LoadedDCP:
    path: Path
    meta: dict
    model_sd: dict
    optim_sd: dict
    trainer: dict

    def restore(self, model, optimizer, data_generator: torch.Generator) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(model, optimizer, model_state_dict=self.model_sd, optim_state_dict=self.optim_sd)
        torch.set_rng_state(self.trainer["rng.torch"])
        data_generator.set_state(self.trainer["rng.data"])


def _read_trainer(path: Path, meta: dict) -> dict:
    trainer, header = read_safetensors(path / checkpoint.TRAINER_TENSORS)
    if meta.get("trainer_sha256") != header.get(CHECKSUM_KEY):
        raise CheckpointError(f"{path / checkpoint.TRAINER_TENSORS}: not the file {checkpoint.TRAINER_JSON} "
                              f"was written with (checksum differs)")
    missing = {"rng.torch", "rng.data"} - set(trainer)
    if missing:
        raise CheckpointError(f"{path / checkpoint.TRAINER_TENSORS}: missing {sorted(missing)}")
    return trainer


def read_dcp(path: Path, model, optimizer, par: Parallel) -> _LoadedDCP:
    """Read DCP checkpoint ``path`` completely (checksums, names, shapes, data) into copies of the
    model's and optimizer's state; nothing is restored yet. A collective call."""
    import torch.distributed.checkpoint as dcp

    meta = _read_meta(path)
    if not {"step", "settings"} <= set(meta):
        raise CheckpointError(f"{path / checkpoint.TRAINER_JSON}: expected step and settings, got {sorted(meta)}")
    verify(path, meta, par)
    error, trainer = None, {}
    try:
        trainer = _read_trainer(path, meta)
    except CheckpointError as exc:
        error = str(exc)
    _agree(error, par)
    model_sd, optim_sd = _state_dicts(model, optimizer)
    check_fits(path, model_sd, par)
    state = {"model": _clone(model_sd), "optim": _clone(optim_sd)}
    try:
        with _quiet_one_process(not par.distributed):
            dcp.load(state, checkpoint_id=path / STATE, no_dist=not par.distributed)
    except Exception as exc:  # DCP wraps the ranks' failures; every rank gets the same one
        raise CheckpointError(f"{path / STATE}: cannot be loaded ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from exc
    return _LoadedDCP(path, meta, state["model"], state["optim"], trainer)


@dataclass
class _LoadedFull:
    """A one-process checkpoint read whole, restored into a model spread over several ranks."""

    loaded: object  # checkpoint._Loaded

    @property
    def meta(self) -> dict:
        return self.loaded.meta

    def restore(self, model, optimizer, data_generator: torch.Generator) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        full = checkpoint._unflatten_optimizer(self.loaded.trainer, self.loaded.meta["optimizer"])
        names = [n for n, p in model.named_parameters() if p.requires_grad]  # the optimizer's order
        try:
            by_name = {names[pid]: state for pid, state in full["state"].items()}
            groups = [{**g, "params": [names[pid] for pid in g["params"]]} for g in full["param_groups"]]
        except IndexError as exc:
            raise CheckpointError(f"{self.loaded.path}: optimizer state does not fit ({exc})") from exc
        set_state_dict(model, optimizer, model_state_dict=self.loaded.model_state,
                       optim_state_dict={"state": by_name, "param_groups": groups},
                       options=StateDictOptions(full_state_dict=True))
        torch.set_rng_state(self.loaded.trainer["rng.torch"])
        data_generator.set_state(self.loaded.trainer["rng.data"])


def reader(model, optimizer, par: Parallel):
    """``path -> loaded`` for ``checkpoint.resume``: DCP checkpoints on any number of ranks,
    one-process checkpoints in one process or, through full state dicts, on several ranks."""

    def read(path: Path):
        error, fmt = None, None
        try:
            fmt = _read_meta(Path(path)).get("format")
        except CheckpointError as exc:
            error = str(exc)
        _agree(error, par)
        if fmt == FORMAT:
            return read_dcp(Path(path), model, optimizer, par)
        loaded = None
        try:
            loaded = checkpoint.read(path, model)
        except (CheckpointError, OSError) as exc:
            error = str(exc)
        _agree(error, par)
        return _LoadedFull(loaded) if par.distributed else loaded

    return read


# --------------------------------------------------------------------------- conversion


def _dcp_meta(path: Path) -> dict:
    """The ``trainer.json`` record of DCP folder ``path``; a clear error for any other folder."""
    if not (path / checkpoint.TRAINER_JSON).is_file():
        raise CheckpointError(f"{path}: not a distributed checkpoint (no {checkpoint.TRAINER_JSON})")
    meta = _read_meta(path)
    if meta.get("format") not in (FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{path}: not a distributed checkpoint ({checkpoint.TRAINER_JSON} format {meta.get('format')!r})")
    return meta


def _load_model_state(path: Path, model) -> None:
    """Load the model tensors of DCP folder ``path`` (a checkpoint or a ``from_safetensors`` folder)
    into ``model`` in this process alone."""
    import torch.distributed.checkpoint as dcp

    meta = _dcp_meta(path)
    one = Parallel()
    verify(path, meta, one)
    sd = model.state_dict()
    check_fits(path, sd, one)
    state = {"model": _clone(sd)}
    try:
        with _quiet_one_process(True):
            dcp.load(state, checkpoint_id=path / STATE, no_dist=True)
    except Exception as exc:
        raise CheckpointError(f"{path / STATE}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    model.load_state_dict(state["model"], strict=True)


def load_model(path) -> torch.nn.Module:
    """The model of DCP folder ``path`` in this process (built from its ``config.json``, in the
    stored dtype): what ``to_safetensors`` writes out."""
    from hysparse_kernels.models import HybridLM
    from hysparse_kernels.models.loading import read_graph

    path = Path(path)
    _dcp_meta(path)
    graph = read_graph(path)
    dtypes = {}
    try:
        from torch.distributed.checkpoint import FileSystemReader

        for k, v in FileSystemReader(str(path / STATE)).read_metadata().state_dict_metadata.items():
            if k.startswith("model.") and hasattr(v, "properties") and v.properties.dtype.is_floating_point:
                dtypes[v.properties.dtype] = k
    except Exception as exc:
        raise CheckpointError(f"{path / STATE}: cannot read its metadata ({type(exc).__name__}: {exc})") from exc
    dtype = None  # the floating dtype that holds every stored tensor exactly
    for d in dtypes:
        dtype = d if dtype is None else torch.promote_types(dtype, d)
    model = HybridLM(graph).to(dtype or torch.float32)
    _load_model_state(path, model)
    return model


def to_safetensors(src, dst, *, max_shard_bytes: int | None = None) -> Path:
    """Write the model of the DCP checkpoint ``src`` as a ``load_pretrained`` folder ``dst``."""
    return save_pretrained(load_model(src), dst, max_shard_bytes=max_shard_bytes)


def from_safetensors(src, dst) -> Path:
    """Write the ``load_pretrained`` checkpoint ``src`` as a DCP model folder ``dst`` (what
    ``--init-from`` accepts, loaded by each rank for its shards)."""
    import torch.distributed.checkpoint as dcp

    from hysparse_kernels.models import load_pretrained

    model = load_pretrained(src)

    def write(tmp: Path) -> None:
        with _quiet_one_process(True):
            dcp.save({"model": model.state_dict()}, checkpoint_id=tmp / STATE, no_dist=True)
        (tmp / "config.json").write_text(json.dumps(ModelConfig.from_graph(model.graph).to_hf_config(), indent=2))
        record = {"format": MODEL_FORMAT, "files": _manifest(tmp / STATE)}
        (tmp / checkpoint.TRAINER_JSON).write_text(json.dumps(record, indent=2))

    return replace_directory(Path(dst), write)
