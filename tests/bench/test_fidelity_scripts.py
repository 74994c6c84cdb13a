"""The fidelity experiments in bench/fidelity/ keep working: each runs at a minimal size, and the
MTP entropy fit recovers known constants."""

import importlib.util
import json
import math
import pathlib
import sys

import numpy as np
import pytest

FIDELITY = pathlib.Path(__file__).resolve().parents[2] / "bench" / "fidelity"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"fidelity_{name}", FIDELITY / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_entropy_fit_recovers_known_constants():
    """Points on L = 4(1 - 0.58 H^0.58) give back a = b = 0.58 and R^2 = 1; noise lowers R^2."""
    fit = _load("mtp_entropy").fit
    h = np.array([0.05, 0.1, 0.3, 0.6, 1.0, 1.5, 2.2])
    acc = 4 * (1 - 0.58 * h ** 0.58)
    p = fit(h, acc, 3)
    assert p["a"] == pytest.approx(0.58, rel=1e-6) and p["b"] == pytest.approx(0.58, rel=1e-6)
    assert p["r2"] == pytest.approx(1.0, abs=1e-9) and p["points"] == len(h)
    noisy = acc + np.array([0.2, -0.2, 0.2, -0.2, 0.2, -0.2, 0.2])
    assert fit(h, noisy, 3)["r2"] < 0.99
    # points outside the form's range (L >= K + 1, H = 0) are left out, not fitted
    assert fit(np.array([0.0, 0.5, 1.0]), np.array([3.0, 4.0, 2.0]), 3)["points"] == 1


def test_kv_bytes_measured_equals_the_plan(tmp_path):
    mod = _load("kv_bytes")
    rc = mod.main(["--prefill", "140", "--decode", "3", "--models", "tiny-hysparse-80b-a3b", "tiny-mimo-v2-flash",
                   "--out", str(tmp_path)])
    result = json.loads((tmp_path / "result.json").read_text())
    assert rc == 0 and len(result["tiny"]) == 6
    for row in result["tiny"]:
        assert row["tokens"] == 143 and row["measured"] == row["plan"] > 0
    big = {r["model"]: r for r in result["full_size"]}
    assert big["hysparse-80b-a3b"]["saving"] == pytest.approx(9.47, abs=0.005)
    assert (tmp_path / "table.md").read_text().count("| yes |") == 6


@pytest.mark.slow
def test_mtp_entropy_runs_at_a_minimal_size(tmp_path):
    """Trains the demo checkpoint first when it is not cached (minutes)."""
    mod = _load("mtp_entropy")
    assert mod.main(["--seeds", "0", "--prompts", "2", "--new-tokens", "8", "--bins", "2", "--temperature", "0",
                     "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert sum(b["rounds"] for b in result["bins"]) >= 4
    for b in result["bins"]:
        assert 1.0 <= b["acceptance"] <= 4.0 and b["entropy"] >= 0 and math.isfinite(b["entropy"])
    assert (tmp_path / "acceptance_vs_entropy.png").stat().st_size > 0


@pytest.mark.slow
def test_sink_experiment_runs_at_a_minimal_size(tmp_path):
    mod = _load("sink")
    assert mod.main(["--seeds", "0", "--steps", "3", "--batch", "2", "--seq-len", "40", "--corpus-lines", "200",
                     "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "result.json").read_text())["runs"]
    assert [r["sink"] for r in runs] == [True, False]
    with_sink, without = runs
    assert all(math.isfinite(v) for r in runs for v in r["curve"]) and len(with_sink["curve"]) == 3
    assert with_sink["sink_values"] and not without["sink_values"]
    assert (tmp_path / "loss_curves.png").stat().st_size > 0


def test_retrieval_examples_plant_and_ask_keys_at_random_depths():
    """Every asked key is planted once with its value, the query's answer positions hold that
    value, and asked keys land in every quarter of the context (not only the first slots)."""
    import random

    mod = _load("retrieval")
    tok = mod.ByteTokenizer()
    rng = random.Random(0)
    quarters = set()
    for _ in range(40):
        e = mod.make_example(rng, mod.NOISE, tok, 96, 4, 2, 1, 2, 2)
        text = tok.decode(e.ids)
        for pos, depth in e.answers:
            value = tok.decode(e.ids[pos:pos + 2])
            key = tok.decode(e.ids[pos - 2:pos])  # "? KK" then the value
            assert value.isdigit() and text.count(f"key {key}{value}\n") == 1
            quarters.add(int(depth * 4))
    assert quarters == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="keys"):
        mod.make_example(rng, mod.NOISE, tok, 96, 400, 2, 1, 2, 2)


@pytest.mark.slow
def test_retrieval_runs_at_a_minimal_size(tmp_path):
    mod = _load("retrieval")
    assert mod.main(["--seeds", "0", "--steps", "3", "--batch", "2", "--context", "32", "--eval-contexts", "32", "64",
                     "--eval-n", "2", "--models", "hysparse", "hybrid-swa", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert [r["model"] for r in result["runs"]] == ["hysparse", "hybrid-swa"]
    for r in result["runs"]:
        assert len(r["curve"]) == 3 and all(0.0 <= r["accuracy"][c] <= 1.0 for c in ("32", "64"))
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and "| hysparse |" in (tmp_path / "table.md").read_text()


def _fake_run(directory, model, seed, setting, acc):
    directory.mkdir(parents=True)
    run = {"model": model, "seed": seed, "curve": [3.0, 2.0], "answer_curve": [2.3, 2.2], "params": 10,
           "accuracy": {"96": acc, "192": acc / 2}, "by_depth": {"96": [acc] * 4, "192": [acc / 2] * 4}}
    (directory / "result.json").write_text(json.dumps({"args": {**setting, "seeds": [seed], "models": [model]},
                                                       "runs": [run]}))


def test_escape_step_is_the_first_window_below_the_threshold():
    escape_step = _load("retrieval").escape_step
    nan = float("nan")
    curve = [nan] * 5 + [2.3] * 10 + [0.5] * 10
    assert escape_step(curve, threshold=1.0, window=4) == 5 + 10 + 3  # the window mean 0.95 < 1 at the third 0.5
    assert escape_step([2.3] * 50) is None
    assert escape_step(curve, window=30) is None  # fewer scored steps than the window


def test_retrieval_combines_separate_runs_into_one_table(tmp_path):
    """Runs trained as separate processes (one model and seed each) make one table; a run with
    another training setting, or a directory without a result, is refused by name."""
    mod = _load("retrieval")
    setting = {"steps": 20, "copy_steps": 10, "batch": 2, "context": 32, "keys": 4, "queries": 2, "distractors": 1,
               "eval_contexts": [96, 192], "lr": 1e-3}
    for model, seed, acc in [("hysparse", 0, 0.5), ("hysparse", 1, 0.7), ("full", 0, 0.25)]:
        _fake_run(tmp_path / f"{model}{seed}", model, seed, setting, acc)
    dirs = [tmp_path / "hysparse0", tmp_path / "hysparse1", tmp_path / "full0"]
    assert mod.main(["--combine", *map(str, dirs), "--out", str(tmp_path / "all")]) == 0
    table = (tmp_path / "all" / "table.md").read_text()
    assert "the first 10 on copy sequences alone" in table
    assert "| hysparse |" in table and "0.600 ± 0.100 (0.50, 0.70)" in table  # mean ± spread of the two seeds
    assert "| full | 192 | 0.12 | 0.12 | 0.12 | 0.12 |" in table
    assert "| 2.250 ± 0.000 (2.25) | never |" in table  # final value CE of full, which never left chance
    _fake_run(tmp_path / "other", "full", 1, {**setting, "lr": 3e-3}, 0.1)
    with pytest.raises(ValueError, match=r"other.*\(lr\)"):
        mod.combine([dirs[0], tmp_path / "other"])
    with pytest.raises(ValueError, match="result.json"):
        mod.combine([tmp_path / "missing"])
