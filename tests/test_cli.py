"""The `hysparse` command line: top-level help, `info`, and frozen options."""

import json
import os
import subprocess
import sys

import pytest
import torch

from hysparse_kernels import cli


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "hysparse_kernels.cli", *args], capture_output=True, text=True)


def test_top_level_help_lists_subcommands():
    res = run_cli("--help")
    assert res.returncode == 0
    assert "info" in res.stdout and "versions, device" in res.stdout


def test_unknown_subcommand_fails_clearly():
    res = run_cli("frobnicate")
    assert res.returncode != 0 and "invalid choice: 'frobnicate'" in res.stderr


def test_info_table_names_every_backend_and_op(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for backend in ("reference", "triton", "tvm", "cutlass"):
        assert f"\n{backend}" in out
    assert "attention_fwd" in out and "auto picks" in out


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = [b["name"] for b in info["backends"]]
    assert names == ["reference", "triton", "tvm", "cutlass"]
    ref = info["backends"][0]
    assert ref["installed"] and "attention_fwd" in ref["ops"]
    assert set(info["auto"]) >= {"attention_fwd", "sparse_attention_fwd", "topk_blocks"}
    th = info["threads"]
    assert th["torch_intra_op"] == torch.get_num_threads()
    if info["backends"][2]["installed"]:  # tvm: the policy's count, and what TVM's runtime reports
        assert th["tvm"]["threads"] == th["tvm"]["tvm_runtime_threads"] >= 1
        assert th["tvm"]["pool"] >= th["tvm"]["threads"]
        pool = th["output_pool"]  # the CPU kernels' output pool: its budget from the environment
        assert pool["budget_mb"] == (int(os.environ.get("HYSPARSE_OUTPUT_POOL_MB", "512")) if pool["available"] else 0)
        assert pool["in_use_mb"] >= 0 and pool["free_mb"] >= 0


def test_info_table_shows_the_output_pool(capsys, monkeypatch):
    pytest.importorskip("tvm")
    monkeypatch.setenv("HYSPARSE_OUTPUT_POOL_MB", "0")
    assert cli.main(["info"]) == 0
    assert "CPU kernel output pool off (HYSPARSE_OUTPUT_POOL_MB=0" in capsys.readouterr().out


def test_info_options_are_frozen():
    """Changing `hysparse info`'s options is a deliberate act: update this list with it."""
    import argparse

    from hysparse_kernels import info

    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    assert sorted(a.dest for a in parser._actions) == ["help", "json"]


@pytest.mark.parametrize("argv", [["info", "--bogus"]])
def test_bad_option_exits_nonzero(argv):
    res = run_cli(*argv)
    assert res.returncode == 2 and "unrecognized arguments: --bogus" in res.stderr


# --------------------------------------------------------------------------- one-line errors

GRAPH_JUNK = "not a graph"


def _bad_inputs(tmp):
    (tmp / "junk.json").write_text(GRAPH_JUNK)
    (tmp / "empty").mkdir()
    return [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["info", "--bogus"], "unrecognized arguments: --bogus"),
        (["ir", "tiny-mimo-7b", "--backend", "bad"], "argument --backend: invalid choice: 'bad'"),
        (["ir", "tiny-mimo-7b", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["ir", "no-such-model"], "model: expected one of"),
        (["ir", str(tmp / "junk.json")], "hysparse ir: error:"),
        (["ir", "tiny-mimo-7b", "--seq-len", "0"], "--seq-len: expected a positive int, got 0"),
        (["ir", "tiny-mimo-7b", "--json", str(tmp / "no" / "such" / "g.json")], "No such file or directory"),
        (["models", "--dtype", "foo"], "argument --dtype: invalid choice: 'foo'"),
        (["models", "--seq-len", "0"], "--seq-len: expected a positive int, got 0"),
        (["train", "pretrain", "--steps", "0"], "--steps: expected a positive int, got 0"),
        (["train", "pretrain", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["train", "pretrain", "--model", "no-such-model", "--out", str(tmp / "run"), "--corpus-lines", "50"],
         "expected one of"),
        (["train", "pretrain", "--init-from", str(tmp / "nothing"), "--out", str(tmp / "run2"), "--corpus-lines", "50"],
         "no such checkpoint"),
        (["autotune", "import", str(tmp / "nonexistent")], "import: expected a folder written by `hysparse autotune export`"),
        (["autotune", "import", str(tmp / "empty")], "import: no tuned-config files"),
        (["autotune", "show"], "show: expected an OP"),
        (["autotune", "--budget", "soon", "--op", "moe", "--shape", "T=1,H=8,E=2,K=1,I=8"], "--budget: expected a duration"),
        (["recipe", "run", "no-such-recipe", "--out", str(tmp / "r")], "recipe: expected one of"),
        (["recipe", "run", "grpo", "--out", str(tmp / "r"), "--steps", "0"], "steps: expected a positive int, got 0"),
        (["recipe", "run", "grpo", "--out", str(tmp / "r"), "--set", "lr=fast"], "--set lr: expected a value of type float"),
        (["recipe", "run", "grpo", "--out", str(tmp / "r"), "--init-from", str(tmp / "nothing")], "hysparse recipe: error:"),
        (["audio", "tokenize", str(tmp / "missing.wav"), "--tokenizer", str(tmp)], "missing.wav: no such file"),
    ]


def test_every_subcommand_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYSPARSE_CACHE", str(tmp_path / "cache"))
    seen = set()
    for argv, message in _bad_inputs(tmp_path):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse exits itself
            rc = exc.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc not in (0, None), argv
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert message in lines[0], (argv, lines[0])
        seen.add(argv[0])
    assert set(cli.SUBCOMMANDS) <= seen  # every subcommand is exercised


def test_the_installed_entry_point_prints_one_line_and_exits_nonzero(tmp_path):
    res = run_cli("models", "--dtype", "foo")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    res = run_cli("ir", "tiny-mimo-7b", "--backend", "bad")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--backend" in res.stderr
