"""Path-planning puzzles on a grid: ``maze`` (walls carved by a randomised depth-first search)
and ``frozenlake`` (random holes, solvable by construction).

State: ``grid`` ``[n][n]`` of 0 (free) / 1 (wall or hole), ``start`` and ``goal`` ``[row, col]``,
``path`` (the shortest path, cells from start to goal). The solution image paints the path cells
between start and goal red; the text form is the move string over ``U D L R``.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .draw import BLACK, GOLD, GREEN, HOLE, ICE, RED, WHITE, cell_means, fill_cell, is_red

MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
COLORS = {"maze": (WHITE, BLACK), "frozenlake": (ICE, HOLE)}  # (free, blocked)


def _bfs(grid: np.ndarray, start, goal) -> list[tuple[int, int]] | None:
    """Shortest path (list of cells) from ``start`` to ``goal`` over free cells, or None."""
    n = grid.shape[0]
    prev = {tuple(start): None}
    queue = deque([tuple(start)])
    while queue:
        cur = queue.popleft()
        if cur == tuple(goal):
            path = []
            while cur is not None:
                path.append(cur)
                cur = prev[cur]
            return path[::-1]
        for dr, dc in MOVES.values():
            nxt = (cur[0] + dr, cur[1] + dc)
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n and not grid[nxt] and nxt not in prev:
                prev[nxt] = cur
                queue.append(nxt)
    return None


def _maze(rng: np.random.Generator, rooms: int):
    """Perfect maze of ``rooms x rooms`` rooms on a ``(2*rooms+1)``-cell block grid."""
    n = 2 * rooms + 1
    grid = np.ones((n, n), dtype=np.int64)
    stack = [(int(rng.integers(rooms)), int(rng.integers(rooms)))]
    seen = {stack[0]}
    grid[2 * stack[0][0] + 1, 2 * stack[0][1] + 1] = 0
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in MOVES.values()
                   if 0 <= r + dr < rooms and 0 <= c + dc < rooms and (r + dr, c + dc) not in seen]
        if not options:
            stack.pop()
            continue
        nr, nc = options[int(rng.integers(len(options)))]
        grid[r + nr + 1, c + nc + 1] = 0  # the wall between the two rooms
        grid[2 * nr + 1, 2 * nc + 1] = 0
        seen.add((nr, nc))
        stack.append((nr, nc))
    a, b = rng.choice(rooms * rooms, size=2, replace=False)
    start = (2 * int(a // rooms) + 1, 2 * int(a % rooms) + 1)
    goal = (2 * int(b // rooms) + 1, 2 * int(b % rooms) + 1)
    return grid, start, goal


def _lake(rng: np.random.Generator, n: int, hole_p: float = 0.3):
    """``n x n`` frozen lake with holes (probability ``hole_p``) and a reachable goal."""
    while True:
        grid = (rng.random((n, n)) < hole_p).astype(np.int64)
        free = np.flatnonzero(grid.ravel() == 0)
        if len(free) < 2:
            continue
        a, b = rng.choice(free, size=2, replace=False)
        start, goal = (int(a // n), int(a % n)), (int(b // n), int(b % n))
        if abs(start[0] - goal[0]) + abs(start[1] - goal[1]) >= 2 and _bfs(grid, start, goal) is not None:
            return grid, start, goal


def generate(domain: str, rng: np.random.Generator, size: int, px: int) -> dict:
    """Fields of a ``Puzzle`` for ``maze`` (``size`` rooms per side) or ``frozenlake`` (``size`` cells)."""
    grid, start, goal = _maze(rng, size) if domain == "maze" else _lake(rng, size)
    path = _bfs(grid, start, goal)
    n = grid.shape[0]
    free, blocked = COLORS[domain]
    image = np.zeros((px, px, 3), dtype=np.uint8)
    for r in range(n):
        for c in range(n):
            fill_cell(image, r, c, n, blocked if grid[r, c] else free)
    fill_cell(image, *start, n, GREEN)
    fill_cell(image, *goal, n, GOLD)
    solution = image.copy()
    for cell in path[1:-1]:
        fill_cell(solution, *cell, n, RED)
    text = "".join(next(k for k, d in MOVES.items() if (b[0] - a[0], b[1] - a[1]) == d) for a, b in zip(path, path[1:]))
    state = {"grid": grid.tolist(), "start": list(start), "goal": list(goal), "path": [list(p) for p in path]}
    return dict(image=image, solution_image=solution, solution_text=text, state=state)


def _replay(state: dict, cells: list[tuple[int, int]]) -> bool:
    """True iff consecutive cells are neighbours, all free and on the grid, from start to goal."""
    grid = np.asarray(state["grid"])
    n = grid.shape[0]
    if not cells or cells[0] != tuple(state["start"]) or cells[-1] != tuple(state["goal"]):
        return False
    for a, b in zip(cells, cells[1:]):
        if abs(a[0] - b[0]) + abs(a[1] - b[1]) != 1:
            return False
    return all(0 <= r < n and 0 <= c < n and not grid[r, c] for r, c in cells)


def verify_text(state: dict, text: str) -> bool:
    """Replay a move string (``U D L R``; spaces and commas ignored) from start; True iff it
    stays on free cells of the grid and ends on the goal."""
    moves = [ch for ch in text.upper() if ch not in " ,\n\t"]
    if not moves or any(ch not in MOVES for ch in moves):
        return False
    cells = [tuple(state["start"])]
    for ch in moves:
        dr, dc = MOVES[ch]
        cells.append((cells[-1][0] + dr, cells[-1][1] + dc))
    return _replay(state, cells)


def read_path(state: dict, image: np.ndarray) -> list[tuple[int, int]] | None:
    """Trace the red path of an answer image: from start, step to the one unvisited red
    neighbour (or the goal) until the goal; None when the trace is ambiguous, broken, or leaves
    red cells unused."""
    grid = np.asarray(state["grid"])
    n = grid.shape[0]
    red = is_red(cell_means(image, n))
    start, goal = tuple(state["start"]), tuple(state["goal"])
    red[start] = red[goal] = False
    cells, seen = [start], {start}
    while True:
        r, c = cells[-1]
        nbrs = [(r + dr, c + dc) for dr, dc in MOVES.values() if 0 <= r + dr < n and 0 <= c + dc < n]
        if goal in nbrs:
            cells.append(goal)
            break
        nxt = [p for p in nbrs if red[p] and p not in seen]
        if len(nxt) != 1:
            return None
        cells.append(nxt[0])
        seen.add(nxt[0])
    if int(red.sum()) != len(cells) - 2:  # red cells off the traced path
        return None
    return cells


def verify_image(state: dict, image: np.ndarray) -> bool:
    """Read the red path back from the image and replay it (walls/holes, start, goal)."""
    cells = read_path(state, image)
    return cells is not None and _replay(state, cells)


def describe(state: dict) -> str:
    """Text form of the puzzle: one line per row, ``#`` blocked, ``.`` free, ``S`` start, ``G`` goal."""
    rows = [["#" if v else "." for v in row] for row in state["grid"]]
    rows[state["start"][0]][state["start"][1]] = "S"
    rows[state["goal"][0]][state["goal"][1]] = "G"
    return "\n".join("".join(r) for r in rows)
