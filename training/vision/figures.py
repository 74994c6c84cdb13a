"""Figures of a tool-use run: each puzzle, the model's answer drawn on it, and the solution."""

from __future__ import annotations

import numpy as np

from .tools import MOVES, parse_answer


def answer_image(puzzle, answer: str | None) -> np.ndarray:
    """The model's answer drawn like a solution: path puzzles paint the replayed cells red (until
    the path leaves the grid); jigsaw reassembles the tiles in the given order; otherwise (or
    when the answer does not parse) a grey image."""
    from .puzzles.draw import GREY, RED, fill_cell

    grey = np.full_like(puzzle.image, GREY[0])
    if answer is None:
        return grey
    if puzzle.domain in ("maze", "frozenlake"):
        img = puzzle.image.copy()
        n = len(puzzle.state["grid"])
        r, c = puzzle.state["start"]
        for ch in answer.replace(" ", "").upper():
            if ch not in MOVES:
                break
            r, c = r + MOVES[ch][0], c + MOVES[ch][1]
            if not (0 <= r < n and 0 <= c < n):
                break
            fill_cell(img, r, c, n, RED)
        return img
    if puzzle.domain == "jigsaw":
        from .puzzles.jigsaw import assemble, tiles

        k = puzzle.state["k"]
        try:
            order = [int(v) for v in answer.replace(",", " ").split()]
        except ValueError:
            return grey
        if sorted(order) != list(range(k * k)):
            return grey
        parts = tiles(puzzle.image, k)
        return assemble([parts[i] for i in order], k)
    return grey


def write_grid(episodes, transcripts: dict, path, per_domain: int = 2) -> None:
    """A PNG with one row per shown episode: puzzle | answer before RL | answer after RL |
    solution. ``transcripts``: ``{"before": [...], "after": [...]}`` turn texts per episode."""
    from .puzzles import render_grid

    rows, labels = [], []
    shown: dict[str, int] = {}
    for i, ep in enumerate(episodes):
        if shown.get(ep.domain, 0) >= per_domain:
            continue
        shown[ep.domain] = shown.get(ep.domain, 0) + 1
        answers = {k: parse_answer(t[i][-1]) if t[i] else None for k, t in transcripts.items()}
        rows.append([ep.puzzle.image, answer_image(ep.puzzle, answers["before"]),
                     answer_image(ep.puzzle, answers["after"]), ep.puzzle.solution_image])
        labels.append(ep.domain)
    render_grid(rows, path, labels=labels)
