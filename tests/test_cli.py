"""The `hysparse` command line: top-level help, `info`, and frozen options."""

import json
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
