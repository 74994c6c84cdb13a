"""A tiny multimodal LM: a patch-embedding vision encoder feeding a zoo decoder.

An image ``[3, H, W]`` (floats in 0..1) is cut into ``(H/p) x (W/p)`` patches of ``p x p``
pixels; each patch is flattened, projected to the LM's hidden size and given a learned position
vector (``PatchEncoder``). In a token sequence an image is a run of ``n_patches`` copies of the
placeholder id ``IMAGE_TOKEN``; :meth:`VisionLM.embed` replaces those positions by the image's
patch vectors (the text positions keep their token embeddings), and the zoo decoder
(``HybridLM``, attention through the ``hysparse`` ops) runs on the result, with or without a
``KVCache``. So an image may sit anywhere: in the prompt, or in a tool's observation in the
middle of a multi-turn rollout (the rollout appends its placeholder run and its pixels).

Images of a batch are passed as one tensor ``[M, 3, H, W]``, in the order their placeholder
runs appear in ``ids`` read row by row, left to right; the number of placeholder positions must
be ``M * n_patches``.

Example::

    lm = VisionLM(VisionConfig(backbone="tiny-mimo-7b", image_size=32, patch=8))
    ids = torch.tensor([[BOS] + [IMAGE_TOKEN] * lm.n_patches + list(b"Q: maze\\n")])
    logits = lm(ids, images=torch.rand(1, 3, 32, 32))        # [1, S, vocab]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hysparse_kernels import ir
from ..model import HybridLM

IMAGE_TOKEN = 300  # placeholder id of an image patch (above the byte tokenizer's 259 ids)


@dataclass(frozen=True)
class VisionConfig:
    """``backbone``: the zoo graph of the decoder (its MTP blocks are dropped: a rollout here does
    not draft); ``image_size``: side of the square input images in pixels; ``patch``: side of a
    patch (``image_size`` must be a multiple)."""

    backbone: str = "tiny-mimo-7b"
    image_size: int = 32
    patch: int = 8

    def __post_init__(self):
        if self.patch < 1 or self.image_size < 1 or self.image_size % self.patch:
            raise ValueError(f"patch: expected a positive divisor of image_size {self.image_size}, got {self.patch}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch) ** 2


class PatchEncoder(nn.Module):
    """``[M, 3, H, W]`` images -> ``[M, n_patches, D]`` patch vectors (linear patch projection,
    LayerNorm, learned position per patch)."""

    def __init__(self, cfg: VisionConfig, hidden: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Conv2d(3, hidden, kernel_size=cfg.patch, stride=cfg.patch)
        self.norm = nn.LayerNorm(hidden)
        self.pos = nn.Parameter(torch.randn(cfg.n_patches, hidden) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        s = self.cfg.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"images: expected [M, 3, {s}, {s}], got shape {tuple(images.shape)}")
        x = self.proj(images.to(self.proj.weight.dtype))  # [M, D, s/p, s/p]
        return self.norm(x.flatten(2).transpose(1, 2)) + self.pos


def _graph(backbone: str):
    graph = ir.get_graph(backbone)
    if graph.vocab <= IMAGE_TOKEN:
        raise ValueError(f"backbone: expected a vocabulary above {IMAGE_TOKEN} (the image placeholder), "
                         f"{backbone!r} has {graph.vocab}")
    return dataclasses.replace(graph, mtp=None) if graph.mtp is not None else graph


class VisionLM(nn.Module):
    """Patch encoder + zoo decoder (module docstring). ``lm`` is the ``HybridLM``; ``vision`` the
    ``PatchEncoder``; ``graph`` the decoder's graph (what the rollout's ``KVCache`` is built for)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.lm = HybridLM(_graph(cfg.backbone))
        self.vision = PatchEncoder(cfg, self.lm.graph.hidden)

    @property
    def graph(self):
        return self.lm.graph

    @property
    def n_patches(self) -> int:
        return self.cfg.n_patches

    def embed(self, ids: Tensor, images: Tensor | None = None) -> Tensor:
        """``ids [B, S]`` (placeholders included) and ``images [M, 3, H, W]`` -> input vectors
        ``[B, S, D]``: token embeddings, with placeholder positions replaced by patch vectors."""
        if ids.dim() != 2:
            raise ValueError(f"ids: expected [B, S], got shape {tuple(ids.shape)}")
        slots = ids == IMAGE_TOKEN
        n = int(slots.sum())
        m = 0 if images is None else images.shape[0]
        if n != m * self.n_patches:
            raise ValueError(f"images: expected {n} placeholder positions / {self.n_patches} = {n / self.n_patches:g} "
                             f"images for ids, got {m}")
        x = self.lm.model.embed_tokens(ids.masked_fill(slots, 0))
        if n:
            x = x.masked_scatter(slots[..., None], self.vision(images).reshape(-1, x.shape[-1]).to(x.dtype))
        return x

    def hidden_states(self, ids: Tensor, images: Tensor | None = None, cache=None) -> Tensor:
        """Last hidden states ``[B, S, D]`` of ``ids`` (appended to ``cache`` when given)."""
        return self.lm.hidden_states(None, cache, inputs_embeds=self.embed(ids, images))

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm.logits(hidden)

    def forward(self, ids: Tensor, images: Tensor | None = None, cache=None) -> Tensor:
        """``ids [B, S]``, ``images [M, 3, H, W]`` -> logits ``[B, S, vocab]``."""
        return self.logits(self.hidden_states(ids, images, cache))


def save_vision_lm(model: VisionLM, directory) -> Path:
    """Write ``vision.json`` (the ``VisionConfig``) and ``model.safetensors`` to ``directory``,
    through a temporary folder swapped in at the end (an interrupted save keeps the old one)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "vision.json").write_text(json.dumps(asdict(model.cfg)))
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_vision_lm(directory) -> VisionLM:
    """The ``VisionLM`` saved by :func:`save_vision_lm` in ``directory``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "vision.json").exists():
        raise FileNotFoundError(f"{directory}: no vision.json (expected a folder written by save_vision_lm)")
    model = VisionLM(VisionConfig(**json.loads((directory / "vision.json").read_text())))
    model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return model
