"""Shared drawing and pixel-reading helpers of the puzzles: colours, cell boxes, the bitmap font,
and ``render_grid`` (a PNG contact sheet).

Images are ``numpy`` ``uint8`` arrays ``[px, px, 3]``. A grid of ``n`` cells over ``px`` pixels
puts cell ``i`` on pixels ``[i*px//n, (i+1)*px//n)``, so any ``n <= px`` tiles the image exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
RED = (230, 20, 20)
GREEN = (0, 180, 0)
GOLD = (250, 190, 0)
BLUE = (30, 60, 230)
ICE = (200, 230, 255)
HOLE = (20, 40, 110)
GREY = (215, 215, 215)


def bounds(i: int, n: int, px: int) -> tuple[int, int]:
    """Pixel span ``[lo, hi)`` of cell ``i`` of ``n`` along a side of ``px`` pixels."""
    return i * px // n, (i + 1) * px // n


def fill_cell(img: np.ndarray, r: int, c: int, n: int, color) -> None:
    """Paint cell (row ``r``, column ``c``) of an ``n x n`` grid over ``img`` ``[px, px, 3]``."""
    px = img.shape[0]
    r0, r1 = bounds(r, n, px)
    c0, c1 = bounds(c, n, px)
    img[r0:r1, c0:c1] = color


def cell_means(img: np.ndarray, n: int) -> np.ndarray:
    """Mean colour of each cell's interior (the border pixel trimmed when the cell is wide enough):
    ``[n, n, 3]`` float."""
    img = np.asarray(img, dtype=np.float64)
    px = img.shape[0]
    out = np.zeros((n, n, 3))
    for r in range(n):
        r0, r1 = bounds(r, n, px)
        t = 1 if r1 - r0 >= 4 else 0
        for c in range(n):
            c0, c1 = bounds(c, n, px)
            u = 1 if c1 - c0 >= 4 else 0
            out[r, c] = img[r0 + t:r1 - t, c0 + u:c1 - u].reshape(-1, 3).mean(0)
    return out


def is_red(rgb: np.ndarray) -> np.ndarray:
    """Red-pixel mask of colours ``[..., 3]`` (R high, G and B low)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return (rgb[..., 0] > 150) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)


# 3 x 5 bitmap glyphs of the digits 1-4 (rows top to bottom, '#' = ink).
GLYPHS = {
    1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("##.", "..#", ".#.", "#..", "###"),
    3: ("##.", "..#", ".#.", "..#", "##."),
    4: ("#.#", "#.#", "###", "..#", "..#"),
}


def glyph_mask(digit: int) -> np.ndarray:
    """``[5, 3]`` bool ink mask of ``digit`` in the bitmap font."""
    return np.array([[ch == "#" for ch in row] for row in GLYPHS[digit]])


def glyph_box(cell: int) -> tuple[int, int, int]:
    """Where a glyph sits in a square cell of ``cell`` pixels: (row offset, column offset, scale)."""
    scale = max(1, min((cell - 2) // 5, (cell - 2) // 3))
    return (cell - 5 * scale) // 2, (cell - 3 * scale) // 2, scale


def to_uint8(image) -> np.ndarray:
    """Validate an image: ``[H, W, 3]`` uint8 (a float array in ``[0, 1]`` is scaled and rounded)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image: expected an array [H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"image: expected uint8 or float in [0, 1], got dtype {arr.dtype}")
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    return arr


def render_grid(rows, path, *, scale: int = 4, labels=None) -> Path:
    """Write a PNG contact sheet and return its path.

    ``rows``: a list of images (one row) or a list of lists of images (one row each), each image
    ``[H, W, 3]`` uint8 (or a ``Puzzle``, drawn as its puzzle image). Images are upscaled by
    ``scale`` (nearest) and separated by a 2-pixel grey gap; ``labels`` (one per row) are printed
    at the left of each row. Written atomically (temporary file, then rename).
    """
    from PIL import Image, ImageDraw

    if len(rows) == 0:
        raise ValueError("rows: expected at least one image, got none")
    if not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    rows = [[to_uint8(getattr(im, "image", im)) for im in row] for row in rows]
    h = max(im.shape[0] for row in rows for im in row) * scale
    w = max(im.shape[1] for row in rows for im in row) * scale
    gap, left = 2, (60 if labels else 0)
    ncol = max(len(row) for row in rows)
    sheet = Image.new("RGB", (left + ncol * (w + gap) + gap, len(rows) * (h + gap) + gap), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        y = gap + i * (h + gap)
        if labels:
            draw.text((2, y + h // 2 - 5), str(labels[i])[:9], fill=(255, 255, 255))
        for j, im in enumerate(row):
            tile = Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST)
            sheet.paste(tile, (left + gap + j * (w + gap), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)
    return path
