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


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = train(PretrainConfig(steps=6, checkpoint_every=3, out=str(tmp_path / "a"), **SMALL), progress=False)
    part = PretrainConfig(steps=6, checkpoint_every=3, out=str(tmp_path / "b"), **SMALL)
    # interrupted after step 3: keep only the first checkpoint, as a crash would
    train(dataclasses_replace(part, steps=3), progress=False)
    resumed = train(part, resume=True, progress=False)
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(6))
    for ra, rb in zip(rows_a, rows_b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6, abs=1e-7)
    assert resumed["final"]["loss"] == pytest.approx(full["final"]["loss"], rel=1e-6)
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


def test_mtp_only_leaves_the_main_model_unchanged(tmp_path):
    base = train(PretrainConfig(steps=2, out=str(tmp_path / "base"), **SMALL), progress=False)
    cfg = PretrainConfig(steps=2, out=str(tmp_path / "mtp"), mtp_only=True, init_from=base["out"] + "/final", **SMALL)
    train(cfg, progress=False)
    before = load_pretrained(tmp_path / "base" / "final").state_dict()
    after = load_pretrained(tmp_path / "mtp" / "final").state_dict()
    main_keys = [k for k in before if not k.startswith("model.mtp.") and "e_score_correction_bias" not in k]
    assert all(torch.equal(before[k], after[k]) for k in main_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.mtp."))


def test_training_learns_below_the_unigram_baseline(tmp_path):
    cfg = PretrainConfig(model="tiny-mimo-7b", mtp_layers=None, steps=60, batch=8, seq_len=48, corpus_lines=2000,
                         lr=5e-3, warmup=5, checkpoint_every=1000, out=str(tmp_path))
    summary = train(cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    late = sum(r["lm_loss"] for r in rows[-10:]) / 10
    assert late < summary["unigram_baseline"] - 0.3, (late, summary["unigram_baseline"])
