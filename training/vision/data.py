"""Puzzle sets as tensors for training and evaluation.

A ``PuzzleSet`` holds the puzzles of several (domain, size) settings with their images as
``[N, 3, px, px]`` float tensors in ``[-1, 1]`` (``cond``: the puzzles, ``target``: the solution
images) and the setting of each row (``keys``, e.g. ``"maze-3"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .puzzles import Puzzle, make_split


@dataclass
class PuzzleSet:
    puzzles: list[Puzzle]
    keys: list[str]
    cond: torch.Tensor
    target: torch.Tensor


def to_tensor(images) -> torch.Tensor:
    """``[N, px, px, 3]`` uint8 -> ``[N, 3, px, px]`` float32 in ``[-1, 1]``."""
    arr = np.stack([np.asarray(im) for im in images]).astype(np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def to_images(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_tensor``: ``[N, 3, px, px]`` in ``[-1, 1]`` -> ``[N, px, px, 3]`` uint8."""
    arr = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte()
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def build_set(settings: list[tuple[str, int]], split: str, n: int, px: int) -> PuzzleSet:
    """``n`` puzzles of ``split`` for each ``(domain, size)`` of ``settings``."""
    puzzles, keys = [], []
    for domain, size in settings:
        batch = make_split(domain, split, n, size, px)
        puzzles += batch
        keys += [f"{domain}-{size}"] * len(batch)
    return PuzzleSet(puzzles, keys, to_tensor([p.image for p in puzzles]), to_tensor([p.solution_image for p in puzzles]))


def parse_settings(text: str) -> list[tuple[str, int]]:
    """``"maze-3,tsp-5"`` -> ``[("maze", 3), ("tsp", 5)]``."""
    from .puzzles import DOMAINS

    out = []
    for item in text.split(","):
        domain, sep, size = item.strip().rpartition("-")
        if not sep or domain not in DOMAINS or not size.isdigit():
            raise ValueError(f"settings: expected DOMAIN-SIZE items from {DOMAINS} joined by commas, got {item!r}")
        out.append((domain, int(size)))
    return out
