"""`hysparse ir`: golden rows of the layer table on a tiny model, frozen options, file outputs."""

import argparse

import pytest

from hysparse_kernels import dispatch
from hysparse_kernels.cli import main
from hysparse_kernels.ir import cli, from_json, get_graph
from hysparse_kernels.ir.lower import MOE_OPS

GOLDEN_LAYER_ROWS = """\
layer  pattern                       q/kv  Dqk/Dv  rope  ffn        kv owner               kv cache
    0  full                           4/2   16/16    16  dense 172  own full             512.00 KiB
    1  sparse(top2x16, swa16, sink)   4/2   16/16    16  dense 172  layer 0 + window 16    2.00 KiB
    2  sparse(top2x16, swa16, sink)   4/2   16/16    16  dense 172  layer 0 + window 16    2.00 KiB
    3  sparse(top2x16, swa16, sink)   4/2   16/16    16  dense 172  layer 0 + window 16    2.00 KiB
    4  full                           4/2   16/16    16  dense 172  own full             512.00 KiB
    5  sparse(top2x16, swa16, sink)   4/2   16/16    16  dense 172  layer 4 + window 16    2.00 KiB
    6  sparse(top2x16, swa16, sink)   4/2   16/16    16  dense 172  layer 4 + window 16    2.00 KiB
    7  full                           4/2   16/16    16  dense 172  own full             512.00 KiB"""


def run_cli(capsys, *argv):
    rc = main(["ir", *argv])
    return rc, capsys.readouterr()


def test_layer_table_golden_rows(capsys):
    rc, out = run_cli(capsys, "tiny-hysparse-7b", "--seq-len", "4096", "--device", "cpu")
    assert rc == 0
    lines = out.out.splitlines()
    start = lines.index(GOLDEN_LAYER_ROWS.splitlines()[0])
    assert "\n".join(lines[start:start + 9]) == GOLDEN_LAYER_ROWS
    assert lines[0] == "tiny-hysparse-7b: 8 layers [FSSS FSS F]"
    # 3 full layers x 4096 tokens + 5 sparse x 16 tokens, 2 kv heads x 32 x 2 bytes; twin 8 x 4096.
    assert "KV plan (batch 1, 4096 tokens, bfloat16): 1.51 MiB; full-attention twin 4.00 MiB: 2.65x less" in out.out
    assert "selection: layer 0 emits block scores (16) and top-2 for layers 1-3" in out.out
    assert "selection: layer 4 emits block scores (16) and top-2 for layers 5,6" in out.out


def test_kernel_plan_rows(capsys):
    rc, out = run_cli(capsys, "tiny-hysparse-80b-a3b", "--seq-len", "128", "--device", "cpu")
    assert rc == 0
    text = out.out.split("kernel plan (cpu):\n", 1)[1]
    rows = [line.split() for line in text.splitlines() if line.startswith(("prefill", "decode"))]
    keyed = {(r[0], r[2], r[3]) for r in rows}
    assert ("prefill", "0", "full") in keyed  # "full + block scores" for the selecting layer
    assert ("prefill", "1-11", "sparse") in keyed and ("decode", "12", "full") in keyed
    moe = {r[4]: " ".join(r[5:]) for r in rows if r[0] == "prefill" and r[3] == "moe"}
    assert set(moe) == set(MOE_OPS) and all(r[2] == "0-12" for r in rows if r[3] == "moe")
    for op, rest in moe.items():
        assert ("not yet available" in rest) == (op not in dispatch.registered_ops())


def test_options_are_frozen():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    opts = {a.dest: (tuple(a.option_strings), a.default) for a in parser._actions if a.dest != "help"}
    assert opts == {
        "model": ((), None),
        "seq_len": (("--seq-len",), 32768),
        "batch": (("--batch",), 1),
        "dtype": (("--dtype",), "bfloat16"),
        "device": (("--device",), "auto"),
        "backend": (("--backend",), None),
        "json": (("--json",), None),
        "onnx": (("--onnx",), None),
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["tiny-mimo-7b", "--json", "a.json", "--onnx", "a.onnx"])


def test_json_written_and_read_back_as_model(capsys, tmp_path):
    path = tmp_path / "g.json"
    rc, first = run_cli(capsys, "tiny-mimo-v2-flash", "--seq-len", "256", "--device", "cpu", "--json", str(path))
    assert rc == 0 and from_json(path.read_text()) == get_graph("tiny-mimo-v2-flash")
    rc, second = run_cli(capsys, str(path), "--seq-len", "256", "--device", "cpu")
    assert rc == 0
    assert first.out.replace(f"wrote {path}\n", "") == second.out


def test_onnx_written(capsys, tmp_path):
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "g.onnx"
    rc, _ = run_cli(capsys, "tiny-hysparse-7b", "--seq-len", "64", "--device", "cpu", "--onnx", str(path))
    assert rc == 0
    onnx.checker.check_model(onnx.load(str(path)))


def test_unknown_model_and_bad_numbers(capsys):
    rc, out = run_cli(capsys, "gpt-9")
    assert rc == 2 and "model: expected one of" in out.err
    rc, out = run_cli(capsys, "tiny-mimo-7b", "--seq-len", "0")
    assert rc == 2 and "--seq-len: expected a positive int, got 0" in out.err
