"""Pretraining on 2 ranks (torchrun, gloo) against one process, in float64: the same losses and
weights for FSDP2 with expert parallelism and for DDP; distributed checkpoints that load into one
process and into 2 ranks (another layout) and resume to the same metrics, convert to and from
``load_pretrained``'s layout, and are skipped when damaged; a rank killed mid-run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.models import CheckpointError, load_pretrained
from hysparse_kernels.training import sharded_checkpoint
from hysparse_kernels.training.checkpoint import CheckpointWarning
from hysparse_kernels.training.data import TokenStream
from hysparse_kernels.training.pretrain import PretrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RUN = dict(model="tiny-hysparse-80b-a3b", mtp_layers=1, steps=3, batch=4, seq_len=16, corpus_lines=200, warmup=1,
           checkpoint_every=2, dtype="float64")
TOL = dict(rtol=1e-10, atol=1e-12)


def _flags(**values):
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()] + ["--no-progress"]


def start_torchrun(*flags, nproc=2):
    """``torchrun --nproc-per-node nproc -m hysparse_kernels.training.pretrain FLAGS`` in a new
    process group, its output piped."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "hysparse_kernels.training.pretrain", *flags]
    return subprocess.Popen(cmd, env={**os.environ, "HYSPARSE_BACKEND": "reference"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def torchrun(*flags, nproc=2, timeout=300):
    """Run ``start_torchrun(*flags)`` to its end; returns (exit status, output). The whole process
    group is killed at the timeout."""
    return finish(start_torchrun(*flags, nproc=nproc), timeout, " ".join(flags))


def finish(proc, timeout, what):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"torchrun still running after {timeout} s (killed): {what}")
    return proc.returncode, out


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _same_rows(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        torch.testing.assert_close(torch.tensor([ra["loss"], ra["lm_loss"], *ra["mtp_loss"]], dtype=torch.float64),
                                   torch.tensor([rb["loss"], rb["lm_loss"], *rb["mtp_loss"]], dtype=torch.float64), **TOL)
        assert (ra["lr"], ra["tokens"]) == (rb["lr"], rb["tokens"])


def _same_weights(a, b):
    sa, sb = load_pretrained(a).state_dict(), load_pretrained(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], **TOL, msg=k)


def _one_process(out, **changes):
    with hk.use_backend("reference"):
        return train(PretrainConfig(**{**RUN, **changes, "out": str(out)}), progress=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The run in one process with the whole batch."""
    out = tmp_path_factory.mktemp("single") / "out"
    _one_process(out)
    return out


@pytest.fixture(scope="module")
def fsdp_ep(tmp_path_factory):
    """The run on 2 ranks, FSDP2 with the experts shared out over both (2 rows of each batch per rank)."""
    out = tmp_path_factory.mktemp("fsdp-ep") / "out"
    rc, log = torchrun(*_flags(**RUN, out=out, expert_parallel=2))
    assert rc == 0, log[-3000:]
    return out


def test_each_rank_draws_its_rows_of_the_global_batch():
    ids = list(range(500))
    whole = TokenStream(ids, 8, 6, seed=3)
    parts = [TokenStream(ids, 8, 6, seed=3, rank=r, world=3) for r in range(3)]
    for _ in range(2):
        assert torch.equal(torch.cat([p.next_batch() for p in parts]), whole.next_batch())
    with pytest.raises(ValueError, match="batch: expected a multiple of the 4 data-parallel ranks, got 6"):
        TokenStream(ids, 8, 6, rank=0, world=4)


@pytest.mark.slow  # torchrun processes
def test_fsdp_with_expert_parallel_on_two_ranks_equals_one_process(single, fsdp_ep):
    _same_rows(_rows(fsdp_ep), _rows(single))
    _same_weights(fsdp_ep / "final", single / "final")
    state = json.loads((fsdp_ep / "checkpoints" / "step-000002" / "trainer.json").read_text())
    assert state["format"] == "dcp" and state["world"] == 2 and len(state["files"]) == 3  # .metadata + one per rank
    assert (fsdp_ep / "loss.png").stat().st_size > 1000


@pytest.mark.slow  # torchrun processes
def test_ddp_on_two_ranks_equals_one_process(single, tmp_path):
    rc, log = torchrun(*_flags(**RUN, out=tmp_path / "ddp", data_parallel="ddp"))
    assert rc == 0, log[-3000:]
    _same_rows(_rows(tmp_path / "ddp"), _rows(single))
    _same_weights(tmp_path / "ddp" / "final", single / "final")


def _from_step_2(run, dst):
    """A copy of ``run`` whose newest checkpoint is step 2 (as if it had stopped there)."""
    shutil.copytree(run, dst)
    shutil.rmtree(dst / "checkpoints" / "step-000003")
    (dst / "checkpoints" / "latest").write_text("step-000002")
    return dst


@pytest.mark.slow  # torchrun processes
def test_a_two_rank_checkpoint_resumes_in_one_process(fsdp_ep, tmp_path):
    out = _from_step_2(fsdp_ep, tmp_path / "out")
    with hk.use_backend("reference"):
        train(PretrainConfig(**{**RUN, "out": str(out)}), resume=True, progress=False)
    _same_rows(_rows(out), _rows(fsdp_ep))
    _same_weights(out / "final", fsdp_ep / "final")


@pytest.mark.slow  # torchrun processes
def test_a_two_rank_checkpoint_resumes_on_two_ranks_with_another_layout(fsdp_ep, tmp_path):
    out = _from_step_2(fsdp_ep, tmp_path / "out")
    rc, log = torchrun(*_flags(**RUN, out=out, data_parallel="ddp"), "--resume")
    assert rc == 0, log[-3000:]
    _same_rows(_rows(out), _rows(fsdp_ep))
    _same_weights(out / "final", fsdp_ep / "final")


@pytest.mark.slow  # torchrun processes
def test_a_damaged_checkpoint_is_skipped_and_other_settings_refused(fsdp_ep, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fsdp_ep, out)
    with pytest.raises(CheckpointError, match=r"step-000003 belongs to a run with other settings \(--lr 0.003 there, 0.001 here\)"):
        with hk.use_backend("reference"):
            train(PretrainConfig(**{**RUN, "lr": 1e-3, "out": str(out)}), resume=True, progress=False)
    shard = out / "checkpoints" / "step-000003" / "state" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match=r"skipped checkpoint .*step-000003: .*__1_0.distcp: data does not match its checksum"):
        with hk.use_backend("reference"):
            train(PretrainConfig(**{**RUN, "out": str(out)}), resume=True, progress=False)
    _same_rows(_rows(out), _rows(fsdp_ep))  # resumed from step 2: the last step was trained again


@pytest.mark.slow  # torchrun processes
def test_convert_a_distributed_checkpoint_to_safetensors_and_back(fsdp_ep, tmp_path):
    """The last checkpoint of the 2-rank run holds exactly the weights its final/ folder holds."""
    from hysparse_kernels.cli import main

    assert main(["train", "convert", str(fsdp_ep / "checkpoints" / "step-000003"), str(tmp_path / "st"), "--to", "safetensors"]) == 0
    final, converted = load_pretrained(fsdp_ep / "final").state_dict(), load_pretrained(tmp_path / "st").state_dict()
    assert final.keys() == converted.keys() and all(torch.equal(final[k], converted[k]) for k in final)
    assert final["model.embed_tokens.weight"].dtype == torch.float64
    assert main(["train", "convert", str(tmp_path / "st"), str(tmp_path / "dcp"), "--to", "dcp"]) == 0
    back = sharded_checkpoint.load_model(tmp_path / "dcp").state_dict()
    assert all(torch.equal(final[k], back[k]) for k in final)
    with pytest.raises(CheckpointError, match="not a distributed checkpoint"):
        sharded_checkpoint.load_model(fsdp_ep / "final")


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of the process of ``rank`` among the descendants of ``launcher`` (from /proc), or None."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = list(children.get(launcher, []))
    while todo:
        pid = todo.pop()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b"".join(env):
            return pid
        todo += children.get(pid, [])
    return None


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_job_and_resume_continues(tmp_path):
    """Rank 1 is killed once the first checkpoint is complete: torchrun ends the job with an error
    well within the timeout (rank 0, blocked in a collective, is stopped too), and ``--resume`` in
    one process continues from the newest complete checkpoint to the uninterrupted run's metrics."""
    run = {**RUN, "steps": 16, "checkpoint_every": 2}
    out = tmp_path / "killed"
    proc = start_torchrun(*_flags(**run, out=out))
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = _worker_pid(proc.pid, 1)
    assert proc.poll() is None and pid is not None, "the run ended (or never checkpointed) before rank 1 could be killed"
    os.kill(pid, signal.SIGKILL)
    rc, log = finish(proc, 120, "after rank 1 was killed")
    assert rc != 0, log[-3000:]
    done = int(latest.read_text().split("-")[1])
    assert 2 <= done < run["steps"], done
    with hk.use_backend("reference"):
        train(PretrainConfig(**{**run, "out": str(out)}), resume=True, progress=False)
        train(PretrainConfig(**{**run, "out": str(tmp_path / "whole")}), progress=False)
    _same_rows(_rows(out), _rows(tmp_path / "whole"))
    _same_weights(out / "final", tmp_path / "whole" / "final")
