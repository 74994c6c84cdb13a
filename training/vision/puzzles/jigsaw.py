"""Jigsaw: a generated picture cut into ``k x k`` tiles and shuffled.

State: ``perm`` (puzzle position ``i`` shows original tile ``perm[i]``, never the identity) and
``order`` (its inverse: solved position ``j`` takes the tile at puzzle position ``order[j]``; the
text form, e.g. ``"2 0 3 1"``). The solution image is the unshuffled picture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .draw import bounds


def _picture(rng: np.random.Generator, px: int) -> np.ndarray:
    """A bilinear blend of four random corner colours with three random shapes on top."""
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float64)
    t = np.linspace(0.0, 1.0, px)[:, None, None]
    s = np.linspace(0.0, 1.0, px)[None, :, None]
    top = corners[0, 0] * (1 - s) + corners[0, 1] * s
    bottom = corners[1, 0] * (1 - s) + corners[1, 1] * s
    img = Image.fromarray(np.round(top * (1 - t) + bottom * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, px - 4, size=2))
        w, h = (int(v) for v in rng.integers(4, px // 2 + 2, size=2))
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        box = [x0, y0, min(px - 1, x0 + w), min(px - 1, y0 + h)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return np.asarray(img, dtype=np.uint8).copy()


def tiles(image: np.ndarray, k: int) -> list[np.ndarray]:
    """The ``k * k`` tiles of ``image`` in row-major order, each ``[px/k, px/k, 3]``."""
    px = image.shape[0]
    out = []
    for r in range(k):
        r0, r1 = bounds(r, k, px)
        for c in range(k):
            c0, c1 = bounds(c, k, px)
            out.append(image[r0:r1, c0:c1])
    return out


def assemble(parts: list[np.ndarray], k: int) -> np.ndarray:
    """Inverse of ``tiles``: ``k * k`` equal tiles (row-major) -> one image."""
    return np.concatenate([np.concatenate(parts[r * k:(r + 1) * k], axis=1) for r in range(k)], axis=0)


def generate(rng: np.random.Generator, k: int, px: int) -> dict:
    while True:  # tiles must differ visibly, or the answer is ambiguous
        picture = _picture(rng, px)
        parts = tiles(picture, k)
        flat = np.stack([p.astype(np.float64).ravel() for p in parts])
        gaps = np.abs(flat[:, None] - flat[None]).mean(-1) + np.eye(len(parts)) * 1e9
        if gaps.min() > 20.0:
            break
    perm = np.arange(k * k)
    while (perm == np.arange(k * k)).all():
        perm = rng.permutation(k * k)
    order = np.argsort(perm)
    image = assemble([parts[i] for i in perm], k)
    state = {"k": k, "perm": perm.tolist(), "order": order.tolist()}
    return dict(image=image, solution_image=picture, solution_text=" ".join(map(str, order.tolist())), state=state)


def read_order(puzzle_image: np.ndarray, image: np.ndarray, k: int) -> list[int]:
    """For each tile position of ``image``, the puzzle position whose tile is nearest (MSE)."""
    src = np.stack([t.astype(np.float64) for t in tiles(puzzle_image, k)])
    out = []
    for t in tiles(image, k):
        out.append(int(((src - t.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)).argmin()))
    return out


def verify_text(state: dict, text: str) -> bool:
    """True iff ``text`` lists the puzzle positions in solved order (e.g. ``"2 0 3 1"``)."""
    try:
        order = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        return False
    return order == state["order"]


def verify_image(state: dict, puzzle_image: np.ndarray, image: np.ndarray) -> bool:
    """Match each answer tile to its nearest puzzle tile; True iff that is the solved order."""
    return read_order(puzzle_image, image, state["k"]) == state["order"]


def describe(state: dict) -> str:
    return f"jigsaw {state['k']}x{state['k']}: restore the picture from its shuffled tiles"
