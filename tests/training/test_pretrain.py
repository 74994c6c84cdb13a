"""Pretraining: losses fall, checkpoints are atomic and resume reproduces the uninterrupted run."""

import json

import pytest
import torch

from hysparse_kernels.models import load_pretrained
from hysparse_kernels.training import checkpoint
from hysparse_kernels.training.data import ByteTokenizer, TokenStream, make_corpus, unigram_entropy
from hysparse_kernels.training.pretrain import PretrainConfig, losses, model_config, train

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")

SMALL = dict(model="tiny-mimo-v2-flash", mtp_layers=None, batch=2, seq_len=24, corpus_lines=300, lr=3e-3, warmup=2)


def test_corpus_is_deterministic_and_tokenizer_round_trips():
    a, b = make_corpus(50, seed=3), make_corpus(50, seed=3)
    assert a == b and a != make_corpus(50, seed=4)
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(a)) == a
    assert 0 < unigram_entropy(tok.encode(a)) < 5


def test_token_stream_rejects_short_corpus():
    with pytest.raises(ValueError, match="seq_len: expected fewer than the corpus"):
        TokenStream([1, 2, 3], seq_len=8, batch=1)


def test_mtp_losses_have_one_entry_per_block():
    from hysparse_kernels.models import HybridLM

    model = HybridLM(model_config("tiny-hysparse-80b-a3b", 3).to_graph())
    ids = torch.randint(0, 259, (2, 20))
    lm, mtp = losses(model, ids, with_mtp=True)
    assert len(mtp) == 3 and all(torch.isfinite(x) for x in [lm, *mtp])


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException, so no handler swallows it)."""


def _kill_after_checkpoint(monkeypatch, at_step):
    real = checkpoint.save

    def save_then_die(out, step, *args, **kwargs):
        path = real(out, step, *args, **kwargs)
        if step == at_step:
            raise Killed
        return path

    monkeypatch.setattr(checkpoint, "save", save_then_die)


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = PretrainConfig(steps=6, checkpoint_every=3, out=str(tmp_path / "a"), **SMALL)
    full = train(cfg, progress=False)
    part = dataclasses_replace(cfg, out=str(tmp_path / "b"))
    _kill_after_checkpoint(monkeypatch, 3)
    with pytest.raises(Killed):
        train(part, progress=False)
    monkeypatch.undo()
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 5.1')  # the kill cut a line short
    with pytest.warns(UserWarning, match=r"metrics.jsonl: skipped 1 unreadable line\(s\) \[4\]"):
        resumed = train(part, resume=True, progress=False)
    rows_a, rows_b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["step"] for r in rows_b] == list(range(6))
    assert rows_a == rows_b  # bit-exact: the same losses, the same floats
    assert resumed["final"] == full["final"]
    assert (tmp_path / "b" / "loss.png").stat().st_size > 1000
    model = load_pretrained(tmp_path / "b" / "final")
    assert model.graph.num_layers == 6


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_checkpoints_are_complete_or_absent(tmp_path):
    train(PretrainConfig(steps=2, checkpoint_every=1, out=str(tmp_path), **SMALL), progress=False)
    root = tmp_path / "checkpoints"
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", "step-000001", "step-000002"]
    assert checkpoint.latest(tmp_path).name == "step-000002"
    (root / "latest").write_text("step-000009")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.latest(tmp_path)


def test_mtp_only_leaves_the_main_model_bit_identical(tmp_path, capsys):
    """Frozen means every main-model tensor, parameters and buffers (the routers' selection
    biases, which move outside autograd), is bit-identical, so greedy decoding is unchanged."""
    from hysparse_kernels.cli import main
    from hysparse_kernels.models import generate

    base = train(PretrainConfig(steps=2, out=str(tmp_path / "base"), **SMALL), progress=False)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if v is not None]
    assert main(["train", "pretrain", *flags, "--steps=2", "--mtp-layers=0", f"--out={tmp_path / 'mtp'}", "--mtp-only",
                 f"--init-from={base['out']}/final", "--no-progress"]) == 0
    before_model = load_pretrained(tmp_path / "base" / "final")
    after_model = load_pretrained(tmp_path / "mtp" / "final")
    before, after = before_model.state_dict(), after_model.state_dict()
    main_keys = [k for k in before if not k.startswith("model.mtp.")]
    biases = [k for k in main_keys if k.endswith("e_score_correction_bias")]
    assert biases and any(bool(before[k].any()) for k in biases)  # the base run did move them
    assert [k for k in main_keys if not torch.equal(before[k], after[k])] == []
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.mtp."))
    prompts = [list(b"count 4: 4 5"), list(b"the red")]
    assert generate(before_model.eval(), prompts, 12) == generate(after_model.eval(), prompts, 12)


def test_training_learns_below_the_unigram_baseline(tmp_path):
    cfg = PretrainConfig(model="tiny-mimo-7b", mtp_layers=None, steps=60, batch=8, seq_len=48, corpus_lines=2000,
                         lr=5e-3, warmup=5, checkpoint_every=1000, out=str(tmp_path))
    summary = train(cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    late = sum(r["lm_loss"] for r in rows[-10:]) / 10
    assert late < summary["unigram_baseline"] - 0.3, (late, summary["unigram_baseline"])
