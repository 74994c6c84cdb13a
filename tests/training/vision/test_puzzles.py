"""Generators and verifiers of the vision puzzles: determinism, split disjointness, the reference
solution passes both verifiers, and corrupted answers fail them."""

import json

import numpy as np
import pytest

from hysparse_kernels.training.vision.puzzles import (
    DOMAINS, describe, make_puzzle, make_split, render_grid, verify_image, verify_text,
)
from hysparse_kernels.training.vision.puzzles import draw, gridpath, jigsaw, sudoku, tsp

SIZES = [("maze", 3), ("maze", 5), ("frozenlake", 4), ("frozenlake", 6), ("jigsaw", 2), ("jigsaw", 4),
         ("sudoku", 4), ("tsp", 5), ("tsp", 6)]


@pytest.mark.parametrize("domain,size", SIZES, ids=[f"{d}-{s}" for d, s in SIZES])
def test_solution_passes_and_puzzle_fails(domain, size):
    for p in make_split(domain, "test", 12, size):
        assert p.image.shape == p.solution_image.shape == (32, 32, 3) and p.image.dtype == np.uint8
        assert verify_image(p, p.solution_image), (domain, size, p.seed)
        assert verify_text(p, p.solution_text), (domain, size, p.seed)
        assert not verify_image(p, p.image), (domain, size, p.seed)  # the unsolved puzzle is no answer
        json.dumps(p.state)
        assert describe(p)


@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic_by_seed_and_splits_disjoint(domain):
    a, b = make_puzzle(domain, 7), make_puzzle(domain, 7)
    assert np.array_equal(a.image, b.image) and a.solution_text == b.solution_text and a.state == b.state
    train = {p.seed for p in make_split(domain, "train", 20)}
    test = {p.seed for p in make_split(domain, "test", 20)}
    assert len(train) == len(test) == 20 and not train & test
    images = {make_puzzle(domain, s).image.tobytes() for s in range(8)}
    assert len(images) > 1


def test_float_image_accepted():
    p = make_puzzle("maze", 1)
    assert verify_image(p, p.solution_image.astype(np.float32) / 255.0)


@pytest.mark.parametrize("domain", ["maze", "frozenlake"])
def test_gridpath_corruptions_fail(domain):
    for p in make_split(domain, "test", 10):
        path = [tuple(c) for c in p.state["path"]]
        n = len(p.state["grid"])
        # a path cell erased breaks the trace
        if len(path) > 2:
            broken = p.solution_image.copy()
            draw.fill_cell(broken, *path[len(path) // 2], n, draw.WHITE)
            assert not verify_image(p, broken)
        # a stray red cell off the path is rejected
        free = [(r, c) for r in range(n) for c in range(n) if not p.state["grid"][r][c] and (r, c) not in path]
        if free:
            stray = p.solution_image.copy()
            draw.fill_cell(stray, *free[0], n, draw.RED)
            assert not verify_image(p, stray)
        # text: dropping the last move misses the goal; a move into a wall or off the grid fails
        assert not verify_text(p, p.solution_text[:-1])
        assert not verify_text(p, p.solution_text + "X")
        blocked = [m for m, (dr, dc) in gridpath.MOVES.items()
                   if not (0 <= p.state["start"][0] + dr < n and 0 <= p.state["start"][1] + dc < n)
                   or p.state["grid"][p.state["start"][0] + dr][p.state["start"][1] + dc]]
        if blocked:
            assert not verify_text(p, blocked[0] + p.solution_text)


def test_jigsaw_corruptions_fail():
    for p in make_split("jigsaw", "test", 10, 2):
        k = p.state["k"]
        parts = jigsaw.tiles(p.solution_image, k)
        parts[0], parts[1] = parts[1], parts[0]
        assert not verify_image(p, jigsaw.assemble(parts, k))
        order = p.state["order"]
        assert not verify_text(p, " ".join(map(str, order[1:] + order[:1])))
        assert not verify_text(p, "a b")


def test_sudoku_reads_digits_and_rejects_wrong_ones():
    for p in make_split("sudoku", "test", 10):
        assert sudoku.read_digits(p.solution_image).tolist() == p.state["solution"]
        assert sudoku.read_digits(p.image).tolist() == p.state["givens"]
        grid = np.array(p.state["solution"])
        empty = [tuple(rc) for rc in np.argwhere(np.array(p.state["givens"]) == 0)]
        r, c = empty[0]
        wrong = grid.copy()
        wrong[r, c] = wrong[r, c] % 4 + 1
        filled = np.where(np.array(p.state["givens"]) == 0, wrong, 0)
        assert not verify_image(p, sudoku.render(np.array(p.state["givens"]), filled, 32))
        assert not verify_text(p, "".join(map(str, wrong.ravel())))
        assert not verify_text(p, p.solution_text[:-1])


def test_sudoku_givens_have_unique_solution():
    for p in make_split("sudoku", "train", 10):
        assert sudoku.count_solutions(np.array(p.state["givens"])) == 1


def test_tsp_optimum_and_corruptions():
    import itertools

    for p in make_split("tsp", "test", 8, 5):
        pts = p.state["points"]
        brute = min(tsp.tour_length(pts, (0,) + perm) for perm in itertools.permutations(range(1, 5)))
        assert abs(brute - p.state["optimal"]) < 1e-9
        tour = p.state["tour"]
        assert verify_text(p, " ".join(map(str, tour[::-1])))  # the reverse direction is as short
        worse = max(itertools.permutations(range(1, 5)), key=lambda q: tsp.tour_length(pts, (0,) + q))
        assert not verify_text(p, " ".join(map(str, (0,) + worse)))
        assert not verify_text(p, " ".join(map(str, tour[:-1])))
        edges = list(zip(tour, tour[1:] + tour[:1]))
        assert sorted(tsp.read_edges(p.state, p.solution_image)) == sorted(tuple(sorted(e)) for e in edges)
        assert not verify_image(p, tsp.render(pts, edges[:-1], 32))  # an open path is no tour
        assert not verify_image(p, tsp.render(pts, list(zip((0,) + worse, (worse + (0,)))), 32))


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="domain"):
        make_puzzle("chess", 0)
    with pytest.raises(ValueError, match="size"):
        make_puzzle("sudoku", 0, size=9)
    with pytest.raises(ValueError, match="px"):
        make_puzzle("jigsaw", 0, size=3, px=32)
    with pytest.raises(ValueError, match="split"):
        make_split("maze", "dev", 2)
    p = make_puzzle("maze", 0)
    with pytest.raises(ValueError, match="image"):
        verify_image(p, np.zeros((16, 16, 3), np.uint8))


def test_render_grid_writes_png(tmp_path):
    from PIL import Image

    ps = make_split("maze", "test", 3)
    path = render_grid([[p.image, p.solution_image] for p in ps], tmp_path / "g.png", scale=2, labels=["a", "b", "c"])
    img = Image.open(path)
    assert img.format == "PNG" and img.size[1] == 3 * (64 + 2) + 2
