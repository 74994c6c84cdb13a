"""Visual tools a multimodal model may call in a multi-turn rollout over a puzzle image, and the
Tool-GRPO scoring of those calls.

Protocol (one line per model turn, as the RL core's ``toolmix``; an observation line follows a
call)::

    Q: maze <image>
    tools: planner=kev read=rul zoom=zam verify=bof dark=dap
    call: planner=kev img_1
    > RRDD
    answer: RRDD

A call is ``call: NAME ARGS``, optionally with the description the model reads it under before
the name (``call: DESC=NAME ARGS``: what the tool is for, as a thought; the tool that runs is the
one called ``NAME``, whatever ``DESC`` says); the answer is ``answer: X``. The tools, by role:

* ``planner`` (A* over the board's free cells, start to goal): ``ARGS`` = an image name; returns
  the shortest path as moves in the puzzle's answer format. Helps on path puzzles (maze,
  frozenlake); on jigsaw and sudoku it answers ``no path`` (nothing to plan).
* ``cell`` (described as ``read``: read a grid cell): ``ARGS`` = ``R C`` (0-based row, column); returns what is there
  (``wall``, ``free``, ``hole``, ``start``, ``goal``; for jigsaw the home index of the tile shown
  there; for sudoku the digit or ``empty``).
* ``crop`` (described as ``zoom``): ``ARGS`` = ``IMG R C``: the half of the board around cell ``(R, C)`` scaled to
  the full image size, returned as a new image ``img_k`` (its patch tokens are spliced into the
  context: ``<image>`` in the observation text marks where).
* ``check`` (described as ``verify``: draw a candidate and get it checked): ``ARGS`` = a candidate answer; returns
  ``correct`` or ``wrong`` (the puzzle's verifier on the drawn candidate).
* ``count`` (described as ``dark``; a distractor: the number of dark pixels of an image): ``ARGS`` = an image name.
  It helps with nothing.

Per-call tool score (0..3, as ``tool_grpo``'s): 0 not a ``call:`` line, 1 parsed, 2 the name is
one of the episode's tools, 3 and its arguments are valid for that tool. Episode reward::

    F   = 1 if every turn but the last is a parsable call and the last (only) one an answer
    R   = F * (1[correct] + 0.25 * mean_k(score_k / 3) * (1 - 1[correct]))
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field

import numpy as np

ROLES = ("planner", "cell", "crop", "check", "count")
# The word a tool is described by in the prompt (and that a call may repeat before the name).
# Distinct first letters, so no two tools share the token that starts a call's description
# (first runs used cell / crop / check / count; see bench/RESULTS_vision.md for what changed).
DESCRIPTIONS = {"planner": "planner", "cell": "read", "crop": "zoom", "check": "verify", "count": "dark"}
IMAGE_MARK = "<image>"
LAMBDA_ACC = 1.0
LAMBDA_TOOL = 0.25
_CALL = re.compile(r"^call:\s*(?:[a-z]+=)?([a-z]+)(?:\s+(.*?))?\s*$")
_IMG = re.compile(r"^img_([1-9][0-9]*)$")
MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}


@dataclass(frozen=True)
class Board:
    """What the tools know of a puzzle. ``cells[r][c]``: the text a ``cell`` read returns;
    ``free``: cells a path may enter (path puzzles; empty otherwise); ``start`` / ``goal``: cells
    (None when the puzzle has no path); ``walls``: blocked moves between adjacent cells, as
    ``((r, c), (r2, c2))`` pairs in both orders (mazes with walls between cells)."""

    domain: str
    size: int
    cells: tuple[tuple[str, ...], ...]
    free: frozenset = frozenset()
    start: tuple[int, int] | None = None
    goal: tuple[int, int] | None = None
    walls: frozenset = frozenset()

    def neighbours(self, rc: tuple[int, int]):
        r, c = rc
        for move, (dr, dc) in MOVES.items():
            nxt = (r + dr, c + dc)
            if nxt in self.free and (rc, nxt) not in self.walls:
                yield move, nxt


def astar(board: Board) -> list[str] | None:
    """The shortest move list from ``board.start`` to ``board.goal`` (A*, Manhattan distance;
    ties broken by move order U D L R, so the result is deterministic), or None without a path."""
    if board.start is None or board.goal is None:
        return None
    goal = board.goal

    def h(rc):
        return abs(rc[0] - goal[0]) + abs(rc[1] - goal[1])

    frontier = [(h(board.start), 0, board.start, [])]
    seen = {board.start: 0}
    while frontier:
        _, g, rc, path = heapq.heappop(frontier)
        if rc == goal:
            return path
        for move, nxt in board.neighbours(rc):
            if nxt not in seen or seen[nxt] > g + 1:
                seen[nxt] = g + 1
                heapq.heappush(frontier, (g + 1 + h(nxt), g + 1, nxt, path + [move]))
    return None


def parse_call(line: str) -> tuple[str, str] | None:
    """``"call: kev img_1"`` or ``"call: planner=kev img_1"`` -> ``("kev", "img_1")`` (the name
decides the tool; the description before ``=`` is the model's note); None when not a call."""
    m = _CALL.match(line.strip())
    return None if m is None else (m.group(1), (m.group(2) or "").strip())


def parse_answer(line: str) -> str | None:
    """``"answer: R R D"`` -> ``"R R D"``; None when the line is not a non-empty answer."""
    line = line.strip()
    if not line.startswith("answer:") or not line[len("answer:"):].strip():
        return None
    return line[len("answer:"):].strip()


def well_formed(turn_texts: list[str]) -> bool:
    """The format gate ``F``: every turn but the last a parsable call, the last an answer."""
    if not turn_texts:
        return False
    *calls, last = turn_texts
    return parse_answer(last) is not None and all(parse_call(t) is not None for t in calls)


def tool_reward(scores: list[int]) -> float:
    """``R_tool``: the mean per-call score over 3 (each 0..3); 0 without calls."""
    if any(not 0 <= s <= 3 for s in scores):
        raise ValueError(f"scores: expected per-call scores in 0..3, got {scores}")
    return sum(scores) / (3 * len(scores)) if scores else 0.0


def episode_reward(gate: bool, correct: bool, r_tool: float) -> float:
    """``R = F * (λ_acc * 1[correct] + λ_tool * R_tool * (1 - 1[correct]))`` (module docstring)."""
    acc = float(correct)
    return float(gate) * (LAMBDA_ACC * acc + LAMBDA_TOOL * r_tool * (1.0 - acc))


def crop(image: np.ndarray, size: int, r: int, c: int) -> np.ndarray:
    """The ``ceil(size/2)``-cell square of ``image`` ``[px, px, 3]`` containing cell ``(r, c)``
    (clamped to the board), scaled back to ``px`` by nearest neighbour."""
    px = image.shape[0]
    half = (size + 1) // 2
    r0, c0 = min(max(r - half // 2, 0), size - half), min(max(c - half // 2, 0), size - half)
    y0, y1 = r0 * px // size, (r0 + half) * px // size
    x0, x1 = c0 * px // size, (c0 + half) * px // size
    part = image[y0:y1, x0:x1]
    ys = np.arange(px) * part.shape[0] // px
    xs = np.arange(px) * part.shape[1] // px
    return part[ys][:, xs]


@dataclass
class ToolSession:
    """The tools of one episode: ``tools`` maps each offered name to its role; ``images`` the
    images so far (``img_1`` is the puzzle; crops add more). ``check`` is ``text -> bool`` (the
    puzzle's verifier); ``path_text`` turns a move list into the answer format."""

    board: Board
    tools: dict
    images: list = field(default_factory=list)
    check: object = None
    path_text: object = None

    def image_index(self, name: str) -> int | None:
        m = _IMG.match(name.strip())
        if m is None or int(m.group(1)) > len(self.images):
            return None
        return int(m.group(1)) - 1

    def _cell(self, args: str) -> tuple[int, int] | None:
        parts = args.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return None
        r, c = int(parts[0]), int(parts[1])
        return (r, c) if r < self.board.size and c < self.board.size else None

    def args_valid(self, role: str, args: str) -> bool:
        """Whether ``args`` are valid for a tool of ``role`` (module docstring)."""
        if role in ("planner", "count"):
            return self.image_index(args) is not None
        if role == "cell":
            return self._cell(args) is not None
        if role == "crop":
            parts = args.split(maxsplit=1)
            return len(parts) == 2 and self.image_index(parts[0]) is not None and self._cell(parts[1]) is not None
        if role == "check":
            return bool(args.strip())
        raise ValueError(f"role: expected one of {ROLES}, got {role!r}")

    def call_score(self, line: str) -> int:
        """Per-call score 0..3 of one turn (module docstring)."""
        call = parse_call(line)
        if call is None:
            return 0
        role = self.tools.get(call[0])
        if role is None:
            return 1
        return 3 if self.args_valid(role, call[1]) else 2

    def roles_called(self, turn_texts: list[str]) -> list[str]:
        """The role of each call among ``turn_texts`` (``unknown`` for a name not offered)."""
        return [self.tools.get(c[0], "unknown") for c in map(parse_call, turn_texts) if c is not None]

    def run(self, role: str, args: str) -> tuple[str, np.ndarray | None]:
        """Run a tool: the observation line (``IMAGE_MARK`` where a new image goes) and the new
        image ``[px, px, 3]`` uint8 (None for text-only results)."""
        if not self.args_valid(role, args):
            return f"> error: bad arguments for {role}\n", None
        if role == "planner":
            path = astar(self.board)
            return ("> no path\n" if path is None else f"> {self.path_text(path)}\n"), None
        if role == "cell":
            r, c = self._cell(args)
            return f"> {self.board.cells[r][c]}\n", None
        if role == "crop":
            name, where = args.split(maxsplit=1)
            r, c = self._cell(where)
            image = crop(self.images[self.image_index(name)], self.board.size, r, c)
            self.images.append(image)
            return f"> img_{len(self.images)} {IMAGE_MARK}\n", image
        if role == "check":
            return ("> correct\n" if self.check(args) else "> wrong\n"), None
        image = self.images[self.image_index(args)]
        return f"> {int((image.astype(int).sum(-1) < 192).sum())}\n", None

    def observe(self, turn_text: str) -> tuple[str, np.ndarray | None] | None:
        """The observation after a model turn, or None when the turn ends the episode (an answer
        or anything that is not a call)."""
        call = parse_call(turn_text)
        if call is None:
            return None
        role = self.tools.get(call[0])
        return (f"> error: no tool {call[0]}\n", None) if role is None else self.run(role, call[1])
