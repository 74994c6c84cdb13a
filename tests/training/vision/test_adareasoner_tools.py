"""The visual tools, the call protocol and the Tool-GRPO episode reward on hand-worked boards."""

import numpy as np
import pytest

from hysparse_kernels.training.vision.tools import (IMAGE_MARK, Board, ToolSession, astar, crop, episode_reward,
                                                    parse_answer, parse_call, tool_reward, well_formed)

# 3x3 board: S . #
#            # . .
#            G . .   (free cells everywhere but the two walls)
FREE = frozenset({(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)})
CELLS = (("start", "free", "wall"), ("wall", "free", "free"), ("goal", "free", "free"))
BOARD = Board("maze", 3, CELLS, FREE, (0, 0), (2, 0))
TOOLS = {"kev": "planner", "rul": "cell", "zam": "crop", "bof": "check", "dap": "count"}


def session(board=BOARD):
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    image[:4, :4] = 255  # 16 white pixels, the rest dark
    return ToolSession(board, dict(TOOLS), [image], lambda text: text.replace(" ", "") == "RDDL", "".join)


def test_astar_shortest_path_and_walls():
    assert astar(BOARD) == ["R", "D", "D", "L"]
    walled = Board("maze", 3, CELLS, FREE, (0, 0), (2, 0), walls=frozenset({((1, 1), (2, 1)), ((2, 1), (1, 1))}))
    assert astar(walled) == ["R", "D", "R", "D", "L", "L"]
    assert astar(Board("maze", 3, CELLS, FREE - {(1, 1)}, (0, 0), (2, 0))) is None
    assert astar(Board("jigsaw", 2, (("1", "0"), ("3", "2")))) is None


def test_parse_call_answer_and_format_gate():
    assert parse_call("call: kev img_1\n") == ("kev", "img_1")
    assert parse_call("call: kev") == ("kev", "")
    assert parse_call("call: planner=kev img_1\n") == ("kev", "img_1")  # the description is a note
    assert parse_call("call: count=kev img_1\n") == ("kev", "img_1")  # the name decides the tool
    assert parse_call("answer: RD") is None and parse_call("call: Kev x") is None
    assert parse_answer("answer: R D\n") == "R D" and parse_answer("answer:  \n") is None
    assert well_formed(["call: kev img_1\n", "answer: RDDL\n"])
    assert well_formed(["answer: RDDL\n"])
    assert not well_formed(["call: kev img_1\n"])  # no answer
    assert not well_formed(["hmm\n", "answer: RDDL\n"])  # a turn that is not a call
    assert not well_formed(["answer: R\n", "answer: RDDL\n"])  # two answers
    assert not well_formed([])


def test_call_scores():
    s = session()
    assert s.call_score("answer: R\n") == 0
    assert s.call_score("call: xyz img_1\n") == 1  # parsed, not offered
    assert s.call_score("call: kev img_9\n") == 2  # offered, no such image
    assert s.call_score("call: kev img_1\n") == 3
    assert s.call_score("call: rul 2 0\n") == 3 and s.call_score("call: rul 3 0\n") == 2
    assert s.call_score("call: zam img_1 1 1\n") == 3 and s.call_score("call: zam 1 1\n") == 2
    assert s.call_score("call: bof RDDL\n") == 3 and s.call_score("call: bof\n") == 2
    assert s.call_score("call: dap img_1\n") == 3


def test_reward_hand_worked():
    # correct and well formed: 1, whatever the calls
    assert episode_reward(True, True, tool_reward([3, 1])) == 1.0
    # wrong: 0.25 x mean(3/3, 1/3) = 0.25 x 2/3
    assert episode_reward(True, False, tool_reward([3, 1])) == pytest.approx(0.25 * 2 / 3)
    # wrong without calls: 0; format broken: 0 even when correct
    assert episode_reward(True, False, tool_reward([])) == 0.0
    assert episode_reward(False, True, 1.0) == 0.0
    with pytest.raises(ValueError, match="scores"):
        tool_reward([4])


def test_each_tool():
    s = session()
    assert s.observe("call: kev img_1\n") == ("> RDDL\n", None)
    assert s.observe("call: rul 1 0\n") == ("> wall\n", None)
    assert s.observe("call: rul 2 0\n") == ("> goal\n", None)
    assert s.observe("call: bof R D D L\n") == ("> correct\n", None)
    assert s.observe("call: bof RRDL\n") == ("> wrong\n", None)
    assert s.observe("call: dap img_1\n") == ("> 128\n", None)  # 144 - 16 white pixels
    text, image = s.observe("call: zam img_1 0 0\n")
    assert text == f"> img_2 {IMAGE_MARK}\n" and image.shape == (12, 12, 3)
    # the top-left 2x2 cells (8x8 px) scaled to 12x12: the 4x4 white corner becomes 6x6
    assert (image[:6, :6] == 255).all() and (image[6:] == 0).all() and (image[:, 6:] == 0).all()
    assert s.observe("call: dap img_2\n") == ("> 108\n", None)
    assert s.observe("call: qqq img_1\n") == ("> error: no tool qqq\n", None)
    assert s.observe("call: rul 9 9\n") == ("> error: bad arguments for cell\n", None)
    assert s.observe("answer: RDDL\n") is None
    assert s.roles_called(["call: kev img_1\n", "call: qqq x\n", "answer: R\n"]) == ["planner", "unknown"]
    jig = ToolSession(Board("jigsaw", 2, (("1", "0"), ("3", "2"))), dict(TOOLS), [np.zeros((8, 8, 3), np.uint8)])
    assert jig.observe("call: kev img_1\n") == ("> no path\n", None)
    assert jig.observe("call: rul 1 0\n") == ("> 3\n", None)


def test_crop_region():
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    out = crop(image, 4, 3, 3)  # the bottom-right 2x2 cells
    assert out.shape == (16, 16, 3)
    assert (out[::2, ::2] == image[8:, 8:]).all()
