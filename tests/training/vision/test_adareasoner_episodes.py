"""Tool-use episodes over the generated puzzles: boards agree with the verifiers, SFT traces
solve their puzzles, names come from disjoint pools; rollouts of the vision model keep their
masks, images and log-probs consistent with the training forward."""

import pytest
import torch

from hysparse_kernels.models.vision.multimodal import IMAGE_TOKEN, VisionConfig, VisionLM
from hysparse_kernels.training.vision.agent import render, score, sft_loss
from hysparse_kernels.training.vision.episodes import (board_of, demonstration, draw_names, make_episode, make_episodes,
                                                       strategy, verify)
from hysparse_kernels.training.vision.puzzles import make_puzzle, verify_text
from hysparse_kernels.training.vision.rollout import Limits, collate, generate, response_logprobs
from hysparse_kernels.training.vision.tools import DESCRIPTIONS, astar
from hysparse_kernels.training.data import ByteTokenizer

DOMAINS = ("maze", "frozenlake", "jigsaw", "sudoku")


@pytest.mark.parametrize("domain", ("maze", "frozenlake"))
def test_planner_path_solves_path_puzzles(domain):
    for seed in range(6):
        p = make_puzzle(domain, seed)
        path = astar(board_of(p))
        assert path is not None and verify_text(p, "".join(path))
        assert len(path) == len(p.solution_text)  # shortest, as the generator's BFS


@pytest.mark.parametrize("domain", ("jigsaw", "sudoku"))
def test_cell_reads_spell_the_answer(domain):
    p = make_puzzle(domain, 3)
    b = board_of(p)
    cells = [b.cells[r][c] for r in range(b.size) for c in range(b.size)]
    text = " ".join(cells) if domain == "jigsaw" else "\n".join("".join(b.cells[r]) for r in range(b.size))
    assert verify_text(p, text)
    assert astar(b) is None


def test_traces_solve_their_puzzles_and_mix_strategies():
    eps = make_episodes(DOMAINS, "train", 12)
    kinds = set()
    for ep in eps:
        pieces = demonstration(ep)
        model_lines = [t for t, by_model, _ in pieces if by_model]
        assert verify(ep, model_lines)
        kinds.add((ep.domain, strategy(ep)))
        if strategy(ep) == "tool":
            roles = ep.session().roles_called(model_lines)
            assert set(roles) == ({"planner"} if ep.domain in ("maze", "frozenlake") else {"cell"})
    assert {k for _, k in kinds} == {"tool", "direct", "wrong_tool"}


def test_names_pools_are_disjoint_and_prompts_list_them():
    train = {n for i in range(40) for n in draw_names(f"k{i}", "train")}
    held = {n for i in range(40) for n in draw_names(f"k{i}", "heldout")}
    assert train and held and not train & held
    p = make_puzzle("maze", 0)
    ep = make_episode(p, "train")
    assert all(f"{DESCRIPTIONS[r]}={n}" in ep.prompt for n, r in ep.tools.items())
    bare = make_episode(p, "train", tools=False)
    assert "tools: none" in bare.prompt and not bare.tools and strategy(bare) == "direct"


def test_rollouts_masks_images_and_logprobs():
    torch.manual_seed(0)
    model = VisionLM(VisionConfig()).eval()
    eps = make_episodes(("maze", "jigsaw"), "test", 1)
    eps = [eps[0], eps[0], eps[1]]  # a group of two shares its prefill
    rollouts = generate(model, eps, Limits(max_new_tokens=12, max_total_tokens=40, max_turns=3), 1.0,
                        torch.Generator().manual_seed(0))
    for r in rollouts:
        assert len(r.tokens) == len(r.logprobs) == len(r.mask) == len(r.turn) and sum(r.mask) <= 12
        assert (r.prompt + r.tokens).count(IMAGE_TOKEN) == model.n_patches * len(r.images)
        assert r.finish in ("stop", "length", "turns")
    batch = collate(rollouts, ByteTokenizer().pad)
    with torch.no_grad():
        lp, _ = response_logprobs(model, batch)
    m = batch["response_mask"].bool()
    torch.testing.assert_close(lp[m].double(), batch["old_logprobs"][m], atol=2e-4, rtol=0)
    rows = score(eps, rollouts)
    assert all(0.0 <= r["reward"] <= 1.0 for r in rows)


def test_sft_render_and_loss():
    ep = next(e for e in make_episodes(("jigsaw",), "train", 8) if strategy(e) == "tool")
    tok = ByteTokenizer()
    ids, mask, images = render(ep, tok, 16)
    assert len(ids) == len(mask) and ids.count(IMAGE_TOKEN) == 16 * len(images) == 16
    text = tok.decode([i for i, m in zip(ids, mask) if m])
    assert text.count("call: ") == 4 and text.endswith(f"answer: {ep.answer}\n")
    torch.manual_seed(0)
    loss = sft_loss(VisionLM(VisionConfig()), [ep], tok)
    assert torch.isfinite(loss) and float(loss.detach()) > 0


def test_score_hand_worked_rollouts():
    from hysparse_kernels.training.vision.rollout import VRollout

    ep = make_episodes(("maze",), "test", 1)[0]
    planner, count = ep.name_of("planner"), ep.name_of("count")
    wrong = "U" if not ep.answer.startswith("U") else "D"

    def rollout(*turns):
        return VRollout(prompt=[0], turn_texts=list(turns))

    rows = score([ep] * 5, [
        rollout(f"call: planner={planner} img_1\n", f"answer: {ep.answer}\n"),   # right: 1
        rollout(f"call: {planner} img_1\n", f"answer: {wrong}\n"),               # wrong, one perfect call: 0.25
        rollout(f"call: {count} img_7\n", "call: zzz img_1\n", f"answer: {wrong}\n"),  # (2/3 + 1/3) / 2 x 0.25
        rollout(f"answer: {ep.answer}\n", f"answer: {ep.answer}\n"),             # two answers: gate fails
        rollout(f"call: {planner} img_1\n"),                                     # no answer
    ])
    assert [r["correct"] for r in rows] == [True, False, False, True, False]
    assert [r["gate"] for r in rows] == [True, True, True, False, False]
    assert [r["reward"] for r in rows] == pytest.approx([1.0, 0.25, 0.125, 0.0, 0.0])
