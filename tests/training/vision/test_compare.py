"""DiffThinker vs the text baseline end to end on a tiny setting, and the recipe through the CLI."""

import json

import numpy as np
import pytest
import torch

import hysparse_kernels as hk

from hysparse_kernels.training.vision.compare import CompareConfig, run_compare
from hysparse_kernels.training.vision.data import build_set, to_images, to_tensor
from hysparse_kernels.training.vision.text_baseline import BOS, EOS, TextReasoner, batch_ids, decode, encode

@pytest.fixture(autouse=True)
def _reference_attention():
    """The models' attention through the op's reference backend: these tests check the models
    and the loop, the kernels have their own tests (and TVM would compile each new shape)."""
    with hk.use_backend("reference"):
        yield


TINY = dict(settings=(("maze", 2), ("jigsaw", 2)), px=16, n_train=6, n_test=3, steps=2, batch=4,
            sampling_steps=(1, 2), n_samples=2,
            dit=dict(patch=4, dim=16, depth=1, heads=2, mlp_ratio=2),
            text=dict(patch=4, hidden=16, layers=1, heads=2, intermediate=32))


def test_tensor_round_trip():
    data = build_set([("jigsaw", 2)], "test", 3, 16)
    assert data.cond.shape == (3, 3, 16, 16) and data.cond.min() >= -1 and data.cond.max() <= 1
    assert np.array_equal(to_images(to_tensor([p.image for p in data.puzzles])), np.stack([p.image for p in data.puzzles]))


def test_text_codec_and_batch_mask():
    assert decode(encode("UDLR 12\n")) == "UDLR 12\n"
    ids, mask = batch_ids(["UD", "1234"])
    assert ids[0].tolist()[:4] == [BOS, *encode("UD"), EOS] and mask[0].tolist()[:4] == [1, 1, 1, 0]
    model = TextReasoner(px=16, patch=4, hidden=16, layers=1, heads=2, intermediate=32)
    assert model(torch.zeros(2, 3, 16, 16), ids).shape == (2, ids.shape[1], EOS + 1)


def test_run_compare_writes_report_and_grids(tmp_path):
    report = run_compare(tmp_path, CompareConfig(**TINY))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["params"] == report["params"] and set(saved["dit"]) == {"1", "2"}
    for section in (saved["dit"]["2"], saved["text"]):
        assert set(section) >= {"maze-2", "jigsaw-2", "all"} and section["all"]["n"] == 6
        assert 0.0 <= section["all"]["best_of_1"] <= section["all"]["best_of_2"] <= 1.0
    for name in ("puzzles", "dit_outputs", "solutions", "grid"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert (tmp_path / "dit.pt").exists() and (tmp_path / "text.pt").exists()


def test_bad_config_raises():
    with pytest.raises(ValueError, match="n_samples"):
        run_compare("unused", CompareConfig(**{**TINY, "n_samples": 0}))


@pytest.mark.slow
def test_recipe_quick_cli(tmp_path):
    """``hysparse recipe run diffthinker`` end to end on a short setting (a minute or two)."""
    from hysparse_kernels import cli

    out = tmp_path / "run"
    assert cli.main(["recipe", "run", "diffthinker", "--out", str(out), "--steps", "20", "--eval-n", "4",
                     "--no-progress", "--set", "eval_samples=2"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["recipe"] == "diffthinker" and report["text"]["all"]["n"] == 4 * 7
    assert (out / "grid.png").exists()
