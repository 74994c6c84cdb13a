"""`hysparse recipe`: list, run (RL and SFT) end to end on tiny settings, errors, frozen options."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from hysparse_kernels import cli
from hysparse_kernels.models import save_pretrained
from hysparse_kernels.training.rl import cli as recipe_cli
from hysparse_kernels.training.rl.policy import build_policy
from hysparse_kernels.training.rl.recipes import get_recipe, list_recipes

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning"), pytest.mark.one_thread]


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "model"
    save_pretrained(build_policy("tiny-mimo-7b", seed=0), path)
    return str(path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "hysparse_kernels.cli", *args], capture_output=True, text=True)


def test_list_names_every_recipe(capsys):
    assert cli.main(["recipe", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "grpo", "dapo", "dr_grpo"):
        assert f"\n{name} " in "\n" + out
    assert {r.name for r in list_recipes()} >= {"sft", "grpo", "dapo", "dr_grpo"}


def test_every_recipe_opens_with_its_objective():
    import importlib

    for r in list_recipes():
        doc = importlib.import_module(r.module).__doc__
        assert doc and ("J(θ)" in doc or "L(θ)" in doc) and "GRPO" in doc, r.name


def test_recipes_set_their_algorithms():
    assert get_recipe("dapo").overrides["eps_high"] == 0.28 and get_recipe("dapo").overrides["dynamic_sampling"]
    assert get_recipe("dr_grpo").overrides["aggregation"] == "seq-mean-token-sum-norm"
    assert get_recipe("grpo").overrides["kl_coef"] > 0


def test_run_options_are_frozen():
    """Changing `hysparse recipe run`'s options is a deliberate act: update this list with it."""
    parser = argparse.ArgumentParser()
    recipe_cli.add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    assert sorted(a.dest for a in run._actions) == sorted(
        ["help", "name", "out", "quick", "steps", "seed", "task", "model", "init_from", "eval_n", "num_draft", "threads",
         "resume", "no_progress", "nproc", "settings"])
    assert sorted(sub.choices) == ["list", "run"]


def test_grpo_run_writes_every_file_and_resumes(tmp_path, init, capsys):
    out = tmp_path / "grpo"
    args = ["recipe", "run", "grpo", "--out", str(out), "--task", "arith", "--steps", "2", "--init-from", init,
            "--eval-n", "4", "--no-progress"]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"before", "after", "out"}
    for name in ("config.json", "metrics.jsonl", "curves.png", "eval.json", "final"):
        assert (out / name).exists(), name
    report = json.loads((out / "eval.json").read_text())
    assert report["recipe"] == "grpo" and report["n_eval"] == 4 and report["after"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["kl_coef"] == 0.04 and config["steps"] == 2 and config["task"] == "arith"
    # resuming a finished run changes nothing; resuming with other settings is refused
    assert cli.main(args + ["--resume"]) == 0
    capsys.readouterr()
    assert cli.main(["recipe", "run", "grpo", "--out", str(out), "--task", "arith", "--steps", "3", "--init-from", init,
                     "--eval-n", "4", "--no-progress", "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    # and a fresh run over it is refused
    assert cli.main(args) == 2
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err


def test_sft_run_trains_and_reports(tmp_path, capsys):
    out = tmp_path / "sft"
    assert cli.main(["recipe", "run", "sft", "--out", str(out), "--task", "arith", "--steps", "3", "--eval-n", "4",
                     "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["recipe"] == "sft" and report["before"]["n"] == 4 and report["after"]["n"] == 4
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "final" / "config.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["run", "nope", "--out", "x"], "recipe: expected one of"),
    (["run", "grpo", "--out", "x", "--task", "chess"], "--task: recipe 'grpo' runs on"),
    (["run", "grpo", "--out", "x", "--steps", "0"], "steps: expected a positive int"),
    (["run", "grpo", "--out", "x", "--threads", "0"], "--threads: expected a positive int"),
    (["run", "grpo", "--out", "x", "--init-from", "/nonexistent/ckpt"], "error:"),
])
def test_errors_name_the_problem(argv, message, capsys):
    assert cli.main(["recipe", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_errors_are_one_line_without_traceback():
    res = run_cli("recipe", "run", "grpo", "--out", "x", "--task", "chess")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "hysparse recipe: error: --task: recipe 'grpo' runs on ['lookup', 'arith', 'arith30', 'mixed', 'toolmix'], got 'chess'"


def test_model_and_init_from_exclude_each_other():
    res = run_cli("recipe", "run", "grpo", "--out", "x", "--model", "tiny-mimo-7b", "--init-from", "y")
    assert res.returncode == 2 and "not allowed with argument" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_quick_grpo_end_to_end(tmp_path):
    """The documented `--quick` run, as a user starts it (SFT warm start cached under HYSPARSE_CACHE)."""
    out = tmp_path / "quick"
    res = subprocess.run([sys.executable, "-m", "hysparse_kernels.cli", "recipe", "run", "grpo", "--quick", "--out", str(out),
                          "--no-progress"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["task"] == "lookup" and report["n_eval"] == 200
    assert report["before"]["success"] > 0.05  # the SFT warm start succeeds sometimes
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == json.loads((out / "config.json").read_text())["steps"]


def test_steps_set_sft_steps_only_for_the_sft_recipe():
    """`--steps` counts the recipe's own steps; only `sft` trains the warm start with them (a
    `mopd --steps 90` once built a 90-step SFT warm start)."""
    from hysparse_kernels.training.rl.recipes import get_recipe

    parser = argparse.ArgumentParser()
    recipe_cli.add_arguments(parser)
    for name in ("mopd", "faithrl", "latentmem", "grpo"):
        cfg = recipe_cli.build_config(get_recipe(name), parser.parse_args(["run", name, "--out", "x", "--steps", "7"]))
        assert cfg.steps == 7 and cfg.sft_steps != 7, name
    cfg = recipe_cli.build_config(get_recipe("sft"), parser.parse_args(["run", "sft", "--out", "x", "--steps", "7"]))
    assert cfg.sft_steps == 7
