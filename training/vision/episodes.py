"""Tool-use episodes over generated puzzles: the prompt (the puzzle image and the episode's tool
list), the generated SFT traces, the verifier and the per-domain tool-call counts.

An episode's prompt, in tokens: ``BOS``, then the text below with the puzzle image's patch
placeholders at ``<image>``::

    Q: maze <image>
    tools: planner=kev read=rul zoom=zam verify=bof dark=dap

Each tool is listed as ``description=name``; a trace's call repeats the description before the
name (``call: planner=kev img_1``), so finding the name is a look-up of the description in the
prompt (an induction copy). Without that note, the 4-layer byte model trained for 1200 SFT steps
still wrote names not offered in 95% of test episodes; the tool that runs is the one named.

Tool names are three-letter words drawn per episode (``training.rl.tasks.mixed.name_pool``):
``names="train"`` from one half of the pool, ``names="heldout"`` from the other (never seen in
training); the roles are listed in a fixed order (with a shuffled order the tiny ``toolmix``
warm start did not learn to copy names). ``tools=False`` gives ``tools: none`` (the same model
without tools). Puzzles: ``training.vision.puzzles`` (train seeds for ``train``, test seeds for
``test``); a domain's board (what the tools read) comes from the puzzle's ``state``:

* maze / frozenlake: the block grid (``1`` blocked), start and goal; ``cell`` reads ``wall`` or
  ``hole``, ``free``, ``start``, ``goal``; the planner answers in the puzzle's move format.
* jigsaw: ``cell R C`` names the puzzle tile that belongs at solved cell ``(R, C)`` (a tile
  matcher), so reading every cell in order spells the answer; the planner has nothing to plan.
* sudoku: ``cell R C`` reads the solved digit; the planner has nothing to plan.

SFT traces (``demonstration``) mix strategies per episode, drawn from a hash of its id, so that
the warm start knows the protocol and every tool's name-copying but not which tool pays:

* path puzzles: planner then answer, answer directly, or the distractor ``count`` then answer
  directly (a third each);
* jigsaw / sudoku: read every cell then answer, answer directly, or the planner (which says
  ``no path``) then answer directly (a third each);
* ``tools: none``: answer directly.

Direct answers are the gold answer: a tiny model rarely gets them right from pixels, which is
what RL can discover. The reward (``tools.episode_reward``) and the verifier never look at which
tool was called.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

from .tools import DESCRIPTIONS, IMAGE_MARK, ROLES, Board, ToolSession, parse_answer

PATH_DOMAINS = ("maze", "frozenlake")
GRID_DOMAINS = ("jigsaw", "sudoku")
TASK_DOMAINS = PATH_DOMAINS + GRID_DOMAINS
CONDITIONS = ("tools", "unseen", "notools")  # train-pool names, held-out names, no tools


def board_of(puzzle) -> Board:
    """The tools' view of ``puzzle`` (module docstring)."""
    st = puzzle.state
    if puzzle.domain in PATH_DOMAINS:
        grid = np.asarray(st["grid"])
        n = grid.shape[0]
        blocked = "wall" if puzzle.domain == "maze" else "hole"
        start, goal = tuple(st["start"]), tuple(st["goal"])
        cells = [[blocked if grid[r, c] else "free" for c in range(n)] for r in range(n)]
        cells[start[0]][start[1]], cells[goal[0]][goal[1]] = "start", "goal"
        free = frozenset((r, c) for r in range(n) for c in range(n) if not grid[r, c])
        return Board(puzzle.domain, n, tuple(map(tuple, cells)), free, start, goal)
    if puzzle.domain == "jigsaw":
        k, order = st["k"], st["order"]
        return Board("jigsaw", k, tuple(tuple(str(order[r * k + c]) for c in range(k)) for r in range(k)))
    if puzzle.domain == "sudoku":
        sol = st["solution"]
        return Board("sudoku", len(sol), tuple(tuple(str(v) for v in row) for row in sol))
    raise ValueError(f"domain: expected one of {TASK_DOMAINS}, got {puzzle.domain!r}")


def path_text(moves: list[str]) -> str:
    """A move list in the path puzzles' answer format (``"RRDL"``)."""
    return "".join(moves)


def draw_names(key: str, pool: str) -> dict:
    """``{name: role}`` for one episode, names drawn from ``pool`` by a hash of ``key``."""
    from ..rl.tasks.mixed import name_pool

    rng = random.Random(key)
    return dict(zip(rng.sample(name_pool(pool), len(ROLES)), ROLES))


@dataclass
class Episode:
    """One puzzle with the episode's tools. ``tools``: ``{name: role}`` (empty without tools);
    ``prompt``: the prompt text (``IMAGE_MARK`` where the puzzle image goes)."""

    id: str
    domain: str
    puzzle: object
    board: Board
    tools: dict
    prompt: str

    def session(self) -> ToolSession:
        from .puzzles import verify_text

        return ToolSession(self.board, dict(self.tools), [self.puzzle.image], lambda t: verify_text(self.puzzle, t),
                           path_text)

    @property
    def answer(self) -> str:
        return self.puzzle.solution_text

    def name_of(self, role: str) -> str:
        return next(n for n, r in self.tools.items() if r == role)


def make_episode(puzzle, split: str, *, names: str = "train", tools: bool = True, salt: str = "") -> Episode:
    """The episode of ``puzzle`` (tools drawn from the ``names`` pool, or none)."""
    eid = f"{puzzle.domain}:{split}:{puzzle.seed}"
    offered = draw_names(f"names:{names}:{salt}:{eid}", names) if tools else {}
    header = "tools: " + (" ".join(f"{DESCRIPTIONS[r]}={n}" for n, r in offered.items()) if offered else "none")
    return Episode(eid, puzzle.domain, puzzle, board_of(puzzle), offered,
                   f"Q: {puzzle.domain} {IMAGE_MARK}\n{header}\n")


def make_episodes(domains, split: str, n: int, *, names: str = "train", tools: bool = True, px: int = 32,
                  salt: str = "") -> list[Episode]:
    """``n`` puzzles per domain of ``split`` (``train`` or ``test``), interleaved by domain."""
    from .puzzles import make_split

    per = [[make_episode(p, split, names=names, tools=tools, salt=salt) for p in make_split(d, split, n, px=px)]
           for d in domains]
    return [e for row in zip(*per) for e in row]


def strategy(ep: Episode) -> str:
    """The SFT trace's strategy of ``ep`` (module docstring): ``tool``, ``direct`` or ``wrong_tool``."""
    if not ep.tools:
        return "direct"
    u = int.from_bytes(hashlib.sha256(f"strategy:{ep.id}:{sorted(ep.tools)}".encode()).digest()[:4], "big") / 2**32
    return "tool" if u < 1 / 3 else ("direct" if u < 2 / 3 else "wrong_tool")


def demonstration(ep: Episode) -> list[tuple[str, bool, np.ndarray | None]]:
    """A generated trace: ``(text, written_by_model, image)`` pieces; observations come from
    running the tools (``image``: the picture an ``IMAGE_MARK`` in ``text`` stands for)."""
    session = ep.session()
    out = [(ep.prompt, False, ep.puzzle.image)]

    def call(role: str, args: str) -> str:
        line = f"call: {DESCRIPTIONS[role]}={ep.name_of(role)} {args}\n"
        obs, image = session.observe(line)
        out.extend([(line, True, None), (obs, False, image)])
        return obs

    kind = strategy(ep)
    if kind == "tool" and ep.domain in PATH_DOMAINS:
        call("planner", "img_1")
    elif kind == "tool":
        for r in range(ep.board.size):
            for c in range(ep.board.size):
                call("cell", f"{r} {c}")
    elif kind == "wrong_tool":
        call("count" if ep.domain in PATH_DOMAINS else "planner", "img_1")
    out.append((f"answer: {ep.answer}\n", True, None))
    return out


def verify(ep: Episode, turn_texts: list[str]) -> bool:
    """Whether the episode's last turn is an answer that solves the puzzle."""
    from .puzzles import verify_text

    if not turn_texts:
        return False
    answer = parse_answer(turn_texts[-1])
    return answer is not None and verify_text(ep.puzzle, answer)


def call_counts(episodes: list[Episode], turn_texts: list[list[str]]) -> dict:
    """Per domain ``d`` and role: ``calls_<d>_<role>`` (calls per episode; ``unknown`` for names
    not offered) and ``used_<d>_<role>`` (share of episodes calling it)."""
    out = {}
    for d in sorted({e.domain for e in episodes}):
        idx = [i for i, e in enumerate(episodes) if e.domain == d]
        roles = [episodes[i].session().roles_called(turn_texts[i]) for i in idx]
        for role in ROLES + ("unknown",):
            out[f"calls_{d}_{role}"] = sum(r.count(role) for r in roles) / len(idx)
            out[f"used_{d}_{role}"] = sum(role in r for r in roles) / len(idx)
    return out
