"""Generated vision-reasoning puzzles, each with a verifier of a text answer and of an image answer.

Domains (``DOMAINS``) and what ``size`` means (default in brackets):

- ``maze``: rooms per side [3]; drawn as a ``2*size+1`` block grid, walls black, start green,
  goal gold; the solution paints the path red. Text: moves ``U D L R``.
- ``frozenlake``: cells per side [4]; holes dark blue on ice. Same answer forms as the maze.
- ``jigsaw``: tiles per side [2] (``px`` a multiple of it); the solution is the restored picture.
  Text: the puzzle tile positions in solved order.
- ``sudoku``: 4 (the only size); 8 givens in black, the solution fills the rest in red.
  Text: four lines of four digits.
- ``tsp``: points [5]; the solution draws an optimal closed tour in red. Text: point indices.

Everything is deterministic by ``(domain, size, px, seed)``. Example::

    p = make_puzzle("maze", seed=3)
    assert verify_image(p, p.solution_image) and verify_text(p, p.solution_text)
    render_grid([[q.image, q.solution_image] for q in make_split("tsp", "test", 4)], "tsp.png")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import gridpath, jigsaw, sudoku, tsp
from .draw import render_grid, to_uint8

DOMAINS = ("maze", "frozenlake", "jigsaw", "sudoku", "tsp")
DEFAULT_SIZE = {"maze": 3, "frozenlake": 4, "jigsaw": 2, "sudoku": 4, "tsp": 5}
SPLITS = ("train", "test")

__all__ = ["DOMAINS", "DEFAULT_SIZE", "Puzzle", "make_puzzle", "make_split", "verify_text", "verify_image",
           "describe", "render_grid"]


@dataclass
class Puzzle:
    """One puzzle: ``image`` and ``solution_image`` ``[px, px, 3]`` uint8, ``solution_text``, and
    ``state`` (the JSON-serialisable structure the verifiers read)."""

    domain: str
    size: int
    seed: int
    image: np.ndarray
    solution_image: np.ndarray
    solution_text: str
    state: dict


def _check(domain: str, size: int | None, px: int) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"domain: expected one of {DOMAINS}, got {domain!r}")
    if not isinstance(px, (int, np.integer)) or px < 8:
        raise ValueError(f"px: expected an int >= 8, got {px!r}")
    size = DEFAULT_SIZE[domain] if size is None else size
    if not isinstance(size, (int, np.integer)):
        raise ValueError(f"size: expected an int, got {size!r}")
    limits = {
        "maze": (2, (px // 2 - 1) // 2, "rooms per side, the block grid 2*size+1 at least 2 px a cell"),
        "frozenlake": (3, px // 2, "cells per side, at least 2 px each"),
        "jigsaw": (2, px // 4, "tiles per side, at least 4 px each"),
        "sudoku": (4, 4, "4 (the 4x4 sudoku)"),
        "tsp": (3, 7 if px < 64 else 10, "points; more than 7 need px >= 64 to stay apart"),
    }
    lo, hi, what = limits[domain]
    if not lo <= size <= hi:
        raise ValueError(f"size: expected {lo}..{hi} for {domain} at px={px} ({what}), got {size}")
    if domain == "jigsaw" and px % size:
        raise ValueError(f"px: expected a multiple of the jigsaw size {size}, got {px}")
    if domain == "sudoku" and px % 4:
        raise ValueError(f"px: expected a multiple of 4 for sudoku, got {px}")
    return int(size)


def make_puzzle(domain: str, seed: int, size: int | None = None, px: int = 32) -> Puzzle:
    """The puzzle of ``(domain, size, px, seed)`` (same arguments, same puzzle)."""
    size = _check(domain, size, px)
    rng = np.random.default_rng([DOMAINS.index(domain), size, px, int(seed)])
    if domain in ("maze", "frozenlake"):
        fields = gridpath.generate(domain, rng, size, px)
    elif domain == "jigsaw":
        fields = jigsaw.generate(rng, size, px)
    elif domain == "sudoku":
        fields = sudoku.generate(rng, px)
    else:
        fields = tsp.generate(rng, size, px)
    return Puzzle(domain=domain, size=size, seed=int(seed), **fields)


def make_split(domain: str, split: str, n: int, size: int | None = None, px: int = 32) -> list[Puzzle]:
    """``n`` puzzles of a split: train uses even seeds ``0, 2, 4, ...``, test odd seeds
    ``1, 3, 5, ...``, so the two never share a seed."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    offset = 0 if split == "train" else 1
    return [make_puzzle(domain, 2 * i + offset, size, px) for i in range(n)]


def verify_text(puzzle: Puzzle, text: str) -> bool:
    """True iff the text answer solves ``puzzle`` (see the module docstring for each form)."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    if puzzle.domain in ("maze", "frozenlake"):
        return gridpath.verify_text(puzzle.state, text)
    return {"jigsaw": jigsaw.verify_text, "sudoku": sudoku.verify_text, "tsp": tsp.verify_text}[puzzle.domain](
        puzzle.state, text)


def verify_image(puzzle: Puzzle, image) -> bool:
    """True iff the answer image ``[px, px, 3]`` (uint8, or float in [0, 1]) solves ``puzzle``,
    read back by the domain's pixel parser."""
    image = to_uint8(image)
    if image.shape != puzzle.image.shape:
        raise ValueError(f"image: expected shape {puzzle.image.shape}, got {image.shape}")
    if puzzle.domain in ("maze", "frozenlake"):
        return gridpath.verify_image(puzzle.state, image)
    if puzzle.domain == "jigsaw":
        return jigsaw.verify_image(puzzle.state, puzzle.image, image)
    if puzzle.domain == "sudoku":
        return sudoku.verify_image(puzzle.state, image)
    return tsp.verify_image(puzzle.state, image)


def describe(puzzle: Puzzle) -> str:
    """The puzzle in text form (grid rows, givens, point coordinates)."""
    if puzzle.domain in ("maze", "frozenlake"):
        return gridpath.describe(puzzle.state)
    return {"jigsaw": jigsaw.describe, "sudoku": sudoku.describe, "tsp": tsp.describe}[puzzle.domain](puzzle.state)
