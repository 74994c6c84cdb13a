"""`hysparse autotune` end to end on the CPU (TVM backend, tiny shapes, tiny budget).

The tuner's budget clock is a fake one here (``clock`` in conftest.py): it stands still unless a
test moves it, so the machine's speed and load never decide whether a budget runs out."""

import argparse
import json

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import ir, tuned
from hysparse_kernels.autotune import cli, shapes
from hysparse_kernels.cli import main

pytest.importorskip("tvm", reason="apache-tvm is not installed")

MODEL = ["--model", "tiny-mimo-7b", "--ops", "attention", "--seq-lens", "64", "--dtype", "fp32",
         "--max-candidates", "1", "--reps", "1", "--budget", "5m", "--no-progress"]


def _files(cache):
    return {p.name: p.read_text() for p in (cache / tuned.device_key("cpu")).glob("*.json")}


def test_model_end_to_end_then_resume_then_the_plan_says_tuned(cache, capsys):
    graph = ir.get_graph("tiny-mimo-7b")
    before = ir.lower(graph, "cpu", seq_len=64)
    assert {e.config_source for e in before.entries if e.backend == "tvm"} == {"heuristic"}

    assert main(["autotune", *MODEL, "--plots", str(cache / "plots")]) == 0
    out = capsys.readouterr().out
    assert "attention_fwd" in out and "attention_decode" in out and "speed-up" in out
    files = _files(cache)
    assert set(files) == {"attention_fwd.json", "attention_decode.json"}
    for name, text in files.items():
        data = json.loads(text)
        assert data["format"] == tuned.FORMAT and data["device"]["key"] == tuned.device_key("cpu")
        (entry,) = data["backends"]["tvm"]["entries"].values()
        assert entry["complete"] and entry["time_ms"] > 0 and entry["heuristic_ms"] > 0
        assert len(entry["candidates"]) + len(entry["failed"]) == 2  # heuristic + --max-candidates 1
    assert (cache / "plots" / "attention_fwd.png").stat().st_size > 1000

    assert main(["autotune", *MODEL, "--resume", "--no-plots"]) == 0
    assert "done before (--resume)" in capsys.readouterr().out
    assert _files(cache) == files  # nothing re-tuned, nothing rewritten

    after = ir.lower(graph, "cpu", seq_len=64)
    tvm_entries = [e for e in after.entries if e.backend == "tvm"]
    assert tvm_entries and {e.config_source for e in tvm_entries} == {"tuned"}
    fwd = next(e for e in tvm_entries if e.op == "attention_fwd")
    stored = next(iter(json.loads(files["attention_fwd.json"])["backends"]["tvm"]["entries"].values()))["config"]
    assert dict(fwd.config) == stored


def test_the_kernel_runs_the_tuned_config(monkeypatch):
    from hysparse_kernels.ops.attention.tvm import launch

    q, k, v = torch.randn(1, 4, 40, 16), torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    shape = {"batch": 1, "q_heads": 4, "kv_heads": 2, "qk_dim": 16, "v_dim": 16, "seq_q": 64, "seq_k": 64}
    tuned.store("attention_fwd", backend="tvm", shape=shape, config={"rows": 16, "kv_tile": 16})
    seen, real = [], launch._run_dense
    monkeypatch.setattr(launch, "_run_dense", lambda *a, **kw: seen.append(kw["config"]) or real(*a, **kw))
    out = hk.attention(q, k, v, backend="tvm")
    assert seen == [{"rows": 16, "kv_tile": 16}]  # the 40-token call used the 64 bucket's entry
    torch.testing.assert_close(out, hk.attention(q, k, v, backend="reference"), atol=2e-5, rtol=2e-5)


def test_moe_kernel_runs_the_tuned_config(monkeypatch):
    from hysparse_kernels.ops.moe.tvm import moe as moe_tvm

    T, D, E, K, I = 8, 32, 4, 2, 16
    x, wgu, wd = torch.randn(T, D), torch.randn(E, 2 * I, D) / 6, torch.randn(E, D, I) / 4
    w, ids = torch.softmax(torch.randn(T, E), -1).topk(K, -1)
    cfg = {"gate_up_mr": 1, "gate_up_nr": 4, "down_mr": 2, "down_nr": 1, "mt": 32}
    tuned.store("moe_fwd", backend="tvm", shape={"tokens": T, "hidden": D, "experts": E, "top_k": K, "intermediate": I},
                config=cfg)
    seen, real = [], moe_tvm._moe
    monkeypatch.setattr(moe_tvm, "_moe", lambda *a: seen.append(a[-1]) or real(*a))
    out = hk.moe(x, wgu, wd, w, ids, backend="tvm")
    assert seen == [cfg]
    torch.testing.assert_close(out, hk.moe(x, wgu, wd, w, ids, backend="reference"), atol=1e-4, rtol=1e-4)


def test_op_shape_tuning_and_export_import_round_trip(cache, tmp_path, capsys):
    args = ["autotune", "--op", "moe", "--shape", "T=16,H=32,E=4,K=2,I=16", "--dtype", "fp32",
            "--max-candidates", "2", "--reps", "1", "--no-plots", "--no-progress"]
    assert main(args) == 0
    assert "moe_fwd" in capsys.readouterr().out
    original = tuned.entries("moe_fwd", backend="tvm")
    assert len(original) == 1

    assert main(["autotune", "export", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / tuned.device_key("cpu") / "moe_fwd.json").exists()
    assert main(["autotune", "clear"]) == 0
    assert tuned.entries("moe_fwd", backend="tvm") == {}
    assert main(["autotune", "import", str(tmp_path / "out")]) == 0
    back = tuned.entries("moe_fwd", backend="tvm")
    assert {k: (e["config"], e["time_ms"], e["candidates"]) for k, e in back.items()} == \
           {k: (e["config"], e["time_ms"], e["candidates"]) for k, e in original.items()}
    assert main(["autotune", "show", "moe"]) == 0
    assert "gate_up_mr=" in capsys.readouterr().out
    assert main(["autotune", "list"]) == 0
    assert "moe_fwd" in capsys.readouterr().out


def test_import_refuses_a_foreign_file(cache, tmp_path):
    path = tuned.store("moe_fwd", backend="tvm", shape={"tokens": 4, "hidden": 8, "experts": 2, "top_k": 1,
                                                         "intermediate": 8}, config={"mt": 64})
    data = json.loads(path.read_text())
    data["device"]["key"] = "cuda-some-other-gpu-sm80"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "moe_fwd.json").write_text(json.dumps(data))
    assert main(["autotune", "clear"]) == 0
    with pytest.warns(tuned.TunedConfigWarning, match="another device"):
        assert main(["autotune", "import", str(tmp_path / "in")]) == 1
    assert tuned.entries("moe_fwd", backend="tvm") == {}


def test_a_second_tuner_is_refused(cache, capsys):
    with tuned.file_lock(cache / tuned.device_key("cpu") / ".tuner.lock", blocking=False):
        assert main(["autotune", "--op", "attention.fwd", "--shape", "B=1,Hq=2,Hkv=1,S=16,D=16", "--no-progress"]) == 2
    assert "another tuner" in capsys.readouterr().err


def test_budget_zero_saves_nothing_but_reports(cache, capsys):
    assert main(["autotune", "--op", "attention.fwd", "--shape", "B=1,Hq=2,Hkv=1,S=16,D=16", "--budget", "0s",
                 "--no-progress", "--no-plots"]) == 0
    assert "not started (budget)" in capsys.readouterr().out
    assert _files(cache) == {}


def test_bad_arguments_are_named(capsys):
    assert main(["autotune", "--op", "attention.fwd", "--shape", "B=1,Hq=2", "--no-progress"]) == 2
    assert "attention shapes need" in capsys.readouterr().err
    assert main(["autotune", "--op", "route", "--shape", "T=1,H=8,E=2,K=1,I=8"]) == 2
    assert "not tunable" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--budget"):
        cli.parse_budget("soon")
    assert cli.parse_budget("1h30m") == 5400 and cli.parse_budget("90s") == 90 and cli.parse_budget("20m") == 1200
    assert shapes.parse_shape("B=1,Hq=64,Hkv=8,S=4096,D=128") == {
        "batch": 1, "q_heads": 64, "kv_heads": 8, "seq_q": 4096, "seq_k": 4096, "qk_dim": 128, "v_dim": 128}


def test_frozen_cli_options():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    options = sorted(s for a in parser._actions for s in a.option_strings)
    assert options == sorted([
        "-h", "--help", "--model", "--ops", "--op", "--shape", "--dtype", "--backend", "--device", "--seq-lens",
        "--batch", "--budget", "--resume", "--max-candidates", "--reps", "--max-memory", "--cache", "--plots",
        "--no-plots", "--no-progress"])
    positional = [a.dest for a in parser._actions if not a.option_strings]
    assert positional == ["action", "target"]
    assert next(a for a in parser._actions if a.dest == "action").choices == ("list", "show", "export", "import", "clear")


def test_ctrl_c_saves_the_best_so_far_and_resume_finishes(cache, monkeypatch, capsys):
    from hysparse_kernels.autotune import runner

    calls, real = [], runner.time_cpu

    def interrupted(fn, reps=5):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(fn, reps)

    monkeypatch.setattr(runner, "time_cpu", interrupted)
    args = ["autotune", "--op", "attention.fwd", "--shape", "B=1,Hq=2,Hkv=1,S=32,D=16", "--dtype", "fp32",
            "--max-candidates", "3", "--reps", "1", "--no-plots", "--no-progress"]
    assert main(args) == 130
    assert "partial (interrupted)" in capsys.readouterr().out
    (entry,) = tuned.entries("attention_fwd", backend="tvm").values()
    assert not entry["complete"] and len(entry["candidates"]) == 2  # heuristic + the one finished candidate
    monkeypatch.setattr(runner, "time_cpu", real)
    assert main([*args, "--resume"]) == 0  # an incomplete bucket is searched again
    (entry,) = tuned.entries("attention_fwd", backend="tvm").values()
    assert entry["complete"] and len(entry["candidates"]) + len(entry["failed"]) == 4


def test_budget_running_out_mid_bucket_saves_it_as_partial(cache, capsys, monkeypatch, clock):
    from hysparse_kernels.autotune import runner

    real = runner.time_cpu

    def one_second_per_timing(fn, reps=5):
        ms = real(fn, reps)
        clock.t += 1.0  # each timing uses up two half-second budgets: the bucket stops after the heuristic
        return ms

    monkeypatch.setattr(runner, "time_cpu", one_second_per_timing)
    args = ["autotune", "--op", "attention.fwd", "--shape", "B=1,Hq=2,Hkv=1,S=32,D=16", "--dtype", "fp32",
            "--budget", "0.5s", "--reps", "1", "--no-plots", "--no-progress"]
    assert main(args) == 0
    assert "partial (budget)" in capsys.readouterr().out
    (entry,) = tuned.entries("attention_fwd", backend="tvm").values()
    assert not entry["complete"] and entry["config"] == entry["heuristic"]
    assert len(entry["candidates"]) == 1  # the heuristic only: no candidate started after the budget ran out


def test_a_budget_that_lasts_finishes_every_bucket_whatever_the_machine_speed(cache, capsys, monkeypatch, clock):
    from hysparse_kernels.autotune import runner

    real = runner.time_cpu

    def a_little_time_per_timing(fn, reps=5):
        clock.t += 0.01
        return real(fn, reps)

    monkeypatch.setattr(runner, "time_cpu", a_little_time_per_timing)
    args = ["autotune", "--op", "attention.fwd", "--shape", "B=1,Hq=2,Hkv=1,S=32,D=16", "--dtype", "fp32",
            "--budget", "10s", "--max-candidates", "2", "--reps", "1", "--no-plots", "--no-progress"]
    assert main(args) == 0
    assert "partial" not in capsys.readouterr().out
    (entry,) = tuned.entries("attention_fwd", backend="tvm").values()
    assert entry["complete"] and len(entry["candidates"]) + len(entry["failed"]) == 3


@pytest.fixture
def read_only(cache, monkeypatch):
    """Make the tuned-config cache behave like a read-only filesystem: every write under it
    fails with EROFS. Simulated at the ``os`` layer, since root (the test machines' user)
    ignores permission bits."""
    import errno
    import os

    root = str(cache)

    def under(path) -> bool:
        return not isinstance(path, int) and os.path.abspath(os.fsdecode(path)).startswith(root)

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    real_open, real_mkdir = os.open, os.mkdir

    def ro_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if under(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path))
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def ro(real):
        return lambda path, *args, **kwargs: refuse(path) if under(path) else real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    for name in ("unlink", "remove", "replace", "rename", "rmdir"):
        monkeypatch.setattr(os, name, ro(getattr(os, name)))
    return cache


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_a_read_only_cache_is_a_one_line_error_for_tune_clear_and_import(cache, tmp_path, capsys, request):
    path = tuned.store("moe_fwd", backend="tvm", shape={"tokens": 4, "hidden": 8, "experts": 2, "top_k": 1,
                                                         "intermediate": 8}, config={"mt": 64})
    assert main(["autotune", "export", str(tmp_path / "out")]) == 0
    before = path.read_text()
    capsys.readouterr()
    request.getfixturevalue("read_only")

    assert main(["autotune", "--op", "attention.fwd", "--shape", "B=1,Hq=2,Hkv=1,S=16,D=16", "--no-progress"]) == 2
    _one_line_error(capsys, "Read-only file system", "must be writable: pass --cache DIR or set HYSPARSE_CACHE")
    assert main(["autotune", "clear"]) == 2
    _one_line_error(capsys, "Read-only file system", "must be writable")
    assert main(["autotune", "import", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "Read-only file system", "must be writable")
    assert path.read_text() == before  # nothing lost, nothing half-written
    assert main(["autotune", "list"]) == 0 and "moe_fwd" in capsys.readouterr().out  # reading still works


def test_import_of_a_missing_or_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["autotune", "import", str(tmp_path / "nonexistent")]) == 2
    _one_line_error(capsys, "import: expected a folder", "does not exist")
    (tmp_path / "empty").mkdir()
    assert main(["autotune", "import", str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, "import: no tuned-config files (*.json)")
