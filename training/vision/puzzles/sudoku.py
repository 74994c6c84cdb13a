"""Sudoku 4 x 4 (2 x 2 boxes, digits 1-4) with a unique solution.

State: ``givens`` ``[4][4]`` (0 = empty) and ``solution`` ``[4][4]``. Givens are drawn black in
the bitmap font of ``draw.GLYPHS``, filled digits red; the boxes are shaded alternately white and
grey. Text form: four lines of four digits.
"""

from __future__ import annotations

import numpy as np

from .draw import BLACK, GREY, RED, WHITE, bounds, glyph_box, glyph_mask

N = 4
GIVENS = 8


def _valid(grid: np.ndarray) -> bool:
    """A full grid is a sudoku: every row, column and 2 x 2 box holds 1-4 once."""
    want = set(range(1, N + 1))
    rows = all(set(grid[r].tolist()) == want for r in range(N))
    cols = all(set(grid[:, c].tolist()) == want for c in range(N))
    boxes = all(set(grid[r:r + 2, c:c + 2].ravel().tolist()) == want for r in (0, 2) for c in (0, 2))
    return rows and cols and boxes


def count_solutions(grid: np.ndarray, limit: int = 2) -> int:
    """Number of completions of ``grid`` (0 = empty), counted up to ``limit``."""
    grid = grid.copy()
    empty = list(zip(*np.nonzero(grid == 0)))

    def rec(i: int) -> int:
        if i == len(empty):
            return 1
        r, c = empty[i]
        total = 0
        for d in range(1, N + 1):
            br, bc = r // 2 * 2, c // 2 * 2
            if d in grid[r] or d in grid[:, c] or d in grid[br:br + 2, bc:bc + 2]:
                continue
            grid[r, c] = d
            total += rec(i + 1)
            grid[r, c] = 0
            if total >= limit:
                break
        return total

    return rec(0)


def generate(rng: np.random.Generator, px: int) -> dict:
    base = np.array([[(r * 2 + r // 2 + c) % N + 1 for c in range(N)] for r in range(N)])
    digits = rng.permutation(N) + 1
    grid = digits[base - 1]
    bands = rng.permutation(2)
    rows = [2 * b + i for b in bands for i in rng.permutation(2)]
    stacks = rng.permutation(2)
    cols = [2 * b + i for b in stacks for i in rng.permutation(2)]
    grid = grid[rows][:, cols]
    if rng.random() < 0.5:
        grid = grid.T.copy()
    assert _valid(grid)
    givens = grid.copy()
    for idx in rng.permutation(N * N):
        if int((givens > 0).sum()) <= GIVENS:
            break
        r, c = divmod(int(idx), N)
        keep = givens[r, c]
        givens[r, c] = 0
        if count_solutions(givens) != 1:
            givens[r, c] = keep
    image = render(givens, np.zeros_like(givens), px)
    solution_image = render(givens, np.where(givens == 0, grid, 0), px)
    text = "\n".join("".join(map(str, row)) for row in grid.tolist())
    state = {"givens": givens.tolist(), "solution": grid.tolist()}
    return dict(image=image, solution_image=solution_image, solution_text=text, state=state)


def render(givens: np.ndarray, filled: np.ndarray, px: int) -> np.ndarray:
    """Image ``[px, px, 3]``: shaded boxes, ``givens`` in black, ``filled`` in red (0 = none)."""
    img = np.zeros((px, px, 3), dtype=np.uint8)
    cell = px // N
    oy, ox, s = glyph_box(cell)
    for r in range(N):
        r0, r1 = bounds(r, N, px)
        for c in range(N):
            c0, c1 = bounds(c, N, px)
            img[r0:r1, c0:c1] = WHITE if (r // 2 + c // 2) % 2 == 0 else GREY
            for digit, color in ((givens[r, c], BLACK), (filled[r, c], RED)):
                if digit:
                    mask = np.kron(glyph_mask(int(digit)), np.ones((s, s), dtype=bool))
                    img[r0 + oy:r0 + oy + 5 * s, c0 + ox:c0 + ox + 3 * s][mask] = color
    return img


def read_digits(image: np.ndarray) -> np.ndarray:
    """Read every cell back: ink (any channel below 128) compared with each glyph and with an
    empty cell; the closest wins. ``[4, 4]`` int, 0 = empty."""
    arr = np.asarray(image)
    px = arr.shape[0]
    cell = px // N
    oy, ox, s = glyph_box(cell)
    templates = {0: np.zeros((cell, cell), dtype=bool)}
    for d in range(1, N + 1):
        t = np.zeros((cell, cell), dtype=bool)
        t[oy:oy + 5 * s, ox:ox + 3 * s] = np.kron(glyph_mask(d), np.ones((s, s), dtype=bool))
        templates[d] = t
    out = np.zeros((N, N), dtype=np.int64)
    for r in range(N):
        r0 = bounds(r, N, px)[0]
        for c in range(N):
            c0 = bounds(c, N, px)[0]
            ink = arr[r0:r0 + cell, c0:c0 + cell].min(axis=-1) < 128
            out[r, c] = min(templates, key=lambda d: int((templates[d] != ink).sum()))
    return out


def _matches(state: dict, grid: np.ndarray) -> bool:
    givens = np.asarray(state["givens"])
    return grid.shape == (N, N) and _valid(grid) and bool((grid[givens > 0] == givens[givens > 0]).all())


def verify_text(state: dict, text: str) -> bool:
    """True iff ``text`` holds 16 digits (other characters ignored) forming a valid grid that
    keeps the givens."""
    digits = [int(ch) for ch in text if ch.isdigit()]
    if len(digits) != N * N:
        return False
    return _matches(state, np.array(digits).reshape(N, N))


def verify_image(state: dict, image: np.ndarray) -> bool:
    """Read all 16 digits from the image; True iff they form a valid grid that keeps the givens."""
    return _matches(state, read_digits(image))


def describe(state: dict) -> str:
    return "\n".join("".join(str(v) if v else "." for v in row) for row in state["givens"])
