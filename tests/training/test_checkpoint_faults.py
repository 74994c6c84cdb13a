"""Training checkpoints under faults, simulated: another run's checkpoints, other settings,
truncated trainer state, leftovers of a kill. A resume continues its own run exactly or stops
with a one-line error; it never trains on from the wrong state."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from hysparse_kernels.models import CheckpointError
from hysparse_kernels.training import checkpoint
from hysparse_kernels.training.checkpoint import CheckpointWarning
from hysparse_kernels.training.pretrain import PretrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")

SMALL = dict(model="tiny-mimo-v2-flash", mtp_layers=None, batch=2, seq_len=24, corpus_lines=300, lr=3e-3, warmup=2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (and its metrics), trained once."""
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = PretrainConfig(steps=4, checkpoint_every=2, out=str(out), **SMALL)
    train(cfg, progress=False)
    return cfg


def _copy(cfg, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cfg.out, out)
    return PretrainConfig(**{**cfg.__dict__, "out": str(out)})


def _rows(cfg):
    return [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_refuses_an_out_holding_another_runs_checkpoints(finished, tmp_path):
    cfg = _copy(finished, tmp_path)
    with pytest.raises(ValueError, match=r"--out: .* holds checkpoints of an earlier run \(newest step-000004\); pass --resume"):
        train(PretrainConfig(**{**cfg.__dict__, "seed": 1}), progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["latest", "step-000002", "step-000004"]


@pytest.mark.parametrize("changes, named", [
    ({"seed": 1}, "--seed 0 there, 1 here"),
    ({"batch": 3}, "--batch 2 there, 3 here"),
    ({"lr": 1e-3}, "--lr 0.003 there, 0.001 here"),
    ({"seq_len": 32, "steps": 8}, "--seq-len 24 there, 32 here; --steps 4 there, 8 here"),
], ids=["seed", "batch", "lr", "seq-len-and-steps"])
def test_resume_with_other_settings_is_refused(finished, tmp_path, changes, named):
    cfg = _copy(finished, tmp_path)
    before = (tmp_path / "out" / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=f"--resume: .*step-000004 belongs to a run with other settings \\({named}\\)"):
        train(PretrainConfig(**{**cfg.__dict__, **changes}), resume=True, progress=False)
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == before  # nothing touched


def test_resume_may_change_where_checkpoints_go_and_how_often(finished, tmp_path):
    cfg = _copy(finished, tmp_path)
    summary = train(PretrainConfig(**{**cfg.__dict__, "checkpoint_every": 1}), resume=True, progress=False)
    assert summary["final"] == _rows(finished)[-1]  # already finished: nothing retrained


@pytest.mark.parametrize("victim, damage", [
    ("trainer.safetensors", "truncate"),
    ("trainer.json", "truncate"),
    ("model/model.safetensors", "flip"),
    ("trainer.json", "delete"),
])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(finished, tmp_path, victim, damage):
    cfg = _copy(finished, tmp_path)
    path = tmp_path / "out" / "checkpoints" / "step-000004" / victim
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    else:
        path.unlink()
    with pytest.warns(CheckpointWarning, match=f"resume: skipped checkpoint .*step-000004: .*{victim.split('/')[-1]}"):
        summary = train(cfg, resume=True, progress=False)
    assert _rows(cfg) == _rows(finished)  # steps 2 and 3 retrained from step 2: the same numbers
    assert summary["final"] == _rows(finished)[-1]


def test_no_readable_checkpoint_is_an_error_naming_what_was_skipped(finished, tmp_path):
    cfg = _copy(finished, tmp_path)
    for step in ("step-000002", "step-000004"):
        (tmp_path / "out" / "checkpoints" / step / "trainer.json").write_text("{")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match=r"no readable checkpoint .*skipped step-000004 .*step-000002"):
        train(cfg, resume=True, progress=False)


def test_leftovers_of_a_killed_save_are_removed_by_the_next_run(finished, tmp_path):
    cfg = _copy(finished, tmp_path)
    root = tmp_path / "out" / "checkpoints"
    (root / ".step-000006.new-x1y2z3" / "model").mkdir(parents=True)  # killed while writing step 6
    (root / ".step-000006.new-x1y2z3" / "model" / "model.safetensors").write_bytes(b"partial")
    (root / ".latest.abc").write_text("step-000006")
    (tmp_path / "out" / ".final.new-q9").mkdir()
    train(cfg, resume=True, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002", "step-000004"]
    assert not list((tmp_path / "out").glob(".final.*"))


def test_a_failed_checkpoint_save_keeps_the_previous_one_and_no_leftovers(finished, tmp_path, monkeypatch):
    from hysparse_kernels.models import files

    cfg = _copy(finished, tmp_path)
    step4 = tmp_path / "out" / "checkpoints" / "step-000004"
    before = {p.relative_to(step4): p.read_bytes() for p in step4.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", disk_full)
    model = checkpoint.load_pretrained(step4 / "model")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tmp_path / "out", 4, model, opt, torch.Generator(), {"settings": {}})
    assert {p.relative_to(step4): p.read_bytes() for p in step4.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in step4.parent.iterdir()) == ["latest", "step-000002", "step-000004"]
    assert files.read_safetensors(step4 / "trainer.safetensors")[1]["sha256"]


def test_the_cli_says_it_in_one_line(finished, tmp_path, capsys):
    from hysparse_kernels.cli import main

    cfg = _copy(finished, tmp_path)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if v is not None]
    rc = main(["train", "pretrain", *flags, "--mtp-layers=0", "--steps=4", "--seed=7", f"--out={cfg.out}", "--resume",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--seed 0 there, 7 here" in err
