"""Small travelling-salesman puzzles: ``n`` points (blue squares) on white; the solution draws the
optimal closed tour in red.

State: ``points`` ``[[x, y], ...]`` (pixel centres, numbered in the order listed), ``tour`` (an
optimal tour from point 0) and ``optimal`` (its length in pixels, exact by Held-Karp dynamic
programming). Text form: the tour as indices, e.g. ``"0 3 1 4 2"``. An answer is correct when it
is a closed tour through every point no longer than the optimum (any optimal tour counts).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

from .draw import BLUE, RED, WHITE, is_red

MIN_GAP = 7.0  # pixels between points
CLEARANCE = 2.5  # pixels between a point and any segment joining two others
EDGE_RED = 0.7
TRIM = 2.3  # edge samples this far from a point centre clear its 3x3 square  # an edge is drawn when more than this fraction of its samples is red


def _seg_dist(p, a, b) -> float:
    """Distance from point ``p`` to the segment ``a``-``b`` (pixels)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / (dx * dx + dy * dy)))
    return math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy)


def tour_length(points, tour) -> float:
    return sum(math.dist(points[a], points[b]) for a, b in zip(tour, list(tour[1:]) + [tour[0]]))


def optimal_tour(points) -> tuple[list[int], float]:
    """Held-Karp: the shortest closed tour from point 0 and its length (exact; n <= 12)."""
    n = len(points)
    d = [[math.dist(p, q) for q in points] for p in points]
    best = {(1 << j, j): (d[0][j], 0) for j in range(1, n)}
    for size in range(2, n):
        for subset in itertools.combinations(range(1, n), size):
            mask = sum(1 << j for j in subset)
            for j in subset:
                prev = mask ^ (1 << j)
                best[(mask, j)] = min((best[(prev, i)][0] + d[i][j], i) for i in subset if i != j)
    full = (1 << n) - 2
    length, last = min((best[(full, j)][0] + d[j][0], j) for j in range(1, n))
    tour, mask = [], full
    while last != 0:
        tour.append(last)
        mask, last = mask ^ (1 << last), best[(mask, last)][1]
    tour = [0] + tour[::-1]
    if tour[1] > tour[-1]:  # canonical direction
        tour = [0] + tour[1:][::-1]
    return tour, length


def render(points, edges, px: int) -> np.ndarray:
    img = Image.new("RGB", (px, px), WHITE)
    draw = ImageDraw.Draw(img)
    for a, b in edges:
        draw.line([tuple(points[a]), tuple(points[b])], fill=RED, width=1)
    for x, y in points:
        draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=BLUE)
    return np.asarray(img, dtype=np.uint8).copy()


def _place(rng: np.random.Generator, n: int, px: int) -> list[list[int]] | None:
    """Points added one at a time, each kept only if it is ``MIN_GAP`` from the others and
    ``CLEARANCE`` from every segment (and every point from its segments); None when stuck."""
    pts: list[list[int]] = []
    for _ in range(50 * n):
        if len(pts) == n:
            return pts
        p = [int(v) for v in rng.integers(3, px - 3, size=2)]
        if any(math.dist(p, q) < MIN_GAP for q in pts):
            continue
        if any(_seg_dist(p, a, b) < CLEARANCE for a, b in itertools.combinations(pts, 2)):
            continue
        if any(_seg_dist(q, p, a) < CLEARANCE for a in pts for q in pts if q is not a):
            continue
        pts.append(p)
    return pts if len(pts) == n else None


def generate(rng: np.random.Generator, n: int, px: int) -> dict:
    pts = None
    while pts is None:
        pts = _place(rng, n, px)
    pts.sort()
    tour, length = optimal_tour(pts)
    edges = list(zip(tour, tour[1:] + tour[:1]))
    state = {"points": pts, "tour": tour, "optimal": length}
    return dict(image=render(pts, [], px), solution_image=render(pts, edges, px),
                solution_text=" ".join(map(str, tour)), state=state)


def read_edges(state: dict, image: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of points whose joining segment is mostly red: samples along the segment (off both
    3x3 point squares, ``TRIM`` pixels from the centres, and always the midpoint) count as red
    when the pixel or a 4-neighbour is red."""
    red = is_red(image)
    h, w = red.shape
    padded = np.pad(red, 1)
    near = padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    pts = state["points"]
    edges = []
    for i, j in itertools.combinations(range(len(pts)), 2):
        a, b = np.asarray(pts[i], float), np.asarray(pts[j], float)
        length = float(np.linalg.norm(b - a))
        ts = np.linspace(0.0, 1.0, max(8, int(2 * length)))
        ts = np.append(ts[(ts * length > TRIM) & ((1 - ts) * length > TRIM)], 0.5)
        xy = np.round(a[None] + ts[:, None] * (b - a)[None]).astype(int)
        hits = near[np.clip(xy[:, 1], 0, h - 1), np.clip(xy[:, 0], 0, w - 1)]
        if hits.mean() > EDGE_RED:
            edges.append((i, j))
    return edges


def _tour_from_edges(n: int, edges) -> list[int] | None:
    adj = {i: [] for i in range(n)}
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    if any(len(v) != 2 for v in adj.values()):
        return None
    tour = [0, adj[0][0]]
    while len(tour) < n:
        nxt = [v for v in adj[tour[-1]] if v != tour[-2]]
        tour.append(nxt[0])
    return tour if len(set(tour)) == n and tour[0] in adj[tour[-1]] else None


def _ok(state: dict, tour) -> bool:
    n = len(state["points"])
    if tour is None or sorted(tour) != list(range(n)):
        return False
    return tour_length(state["points"], tour) <= state["optimal"] + 1e-6


def verify_text(state: dict, text: str) -> bool:
    """True iff ``text`` lists every point once (a closed tour) no longer than the optimum."""
    try:
        tour = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        return False
    return _ok(state, tour)


def verify_image(state: dict, image: np.ndarray) -> bool:
    """Read the red edges; True iff they form one closed tour through all points, no longer than
    the optimum."""
    return _ok(state, _tour_from_edges(len(state["points"]), read_edges(state, image)))


def describe(state: dict) -> str:
    return " ".join(f"{i}:({x},{y})" for i, (x, y) in enumerate(state["points"]))
