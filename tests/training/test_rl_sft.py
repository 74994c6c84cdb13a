"""SFT warm start: loss masks, exact resume, early stop at a dev target, the settings-keyed cache."""

import json

import pytest
import torch

from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.rl import runs, sft
from hysparse_kernels.training.rl.sft import SFTConfig, make_batch, render, train_sft
from hysparse_kernels.training.rl.tasks import get_task

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning"), pytest.mark.one_thread]


TINY = dict(task="arith", steps=6, batch=4, checkpoint_every=3, warmup=2)


def test_render_masks_exactly_the_model_turns():
    task, tok = get_task("lookup"), ByteTokenizer()
    ex = next(e for e in task.examples("train") if e.meta["hops"] == 2 and e.meta["answerable"])
    ids, mask = render(task, ex, tok)
    assert ids[0] == tok.bos and mask[0] == 0
    model_text = tok.decode([i for i, m in zip(ids, mask) if m])
    other_text = tok.decode([i for i, m in zip(ids, mask) if not m])
    segs = task.demonstration(ex)
    assert model_text == "".join(s.text for s in segs if s.model)
    assert other_text == "".join(s.text for s in segs if not s.model)
    assert model_text.startswith("search: ") and "answer: " in model_text and "> " not in model_text
    batch, bmask = make_batch(task, task.examples("train", 3), tok)
    assert batch.shape == bmask.shape and (batch[bmask == 0] >= 0).all()
    assert int((batch == tok.pad).sum()) == int(((bmask == 0) & (batch == tok.pad)).sum())


def test_sft_resume_is_exact_and_loss_falls(tmp_path):
    cfg = SFTConfig(**TINY)
    train_sft(cfg, tmp_path / "a", progress=False)
    assert train_sft(cfg, tmp_path / "b", progress=False, stop_after=3) == {"stopped_at": 3}
    train_sft(cfg, tmp_path / "b", progress=False, resume=True)
    a, b = runs.read_metrics(tmp_path / "a" / "metrics.jsonl"), runs.read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert a == b and len(a) == 6
    assert a[-1]["lm_loss"] < a[0]["lm_loss"]
    assert (tmp_path / "a" / "final" / "config.json").exists() and (tmp_path / "a" / "curves.png").exists()


def test_warm_start_stops_at_its_dev_target(tmp_path):
    cfg = SFTConfig(**{**TINY, "steps": 20, "target_success": 0.0, "check_every": 2, "check_n": 4})
    out = train_sft(cfg, tmp_path, progress=False)
    assert out["steps"] == 2  # success >= 0 at the first check
    checks = runs.read_metrics(tmp_path / "checks.jsonl")
    assert [c["step"] for c in checks] == [1]
    assert len(runs.read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_cached_warm_start_is_keyed_by_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HYSPARSE_CACHE", str(tmp_path))
    calls = []
    real = sft.train_sft

    def counting(cfg, out, **kw):
        calls.append(out)
        return real(cfg, out, **kw)

    monkeypatch.setattr(sft, "train_sft", counting)
    a = sft.cached_sft(SFTConfig(**{**TINY, "steps": 2}), progress=False)
    again = sft.cached_sft(SFTConfig(**{**TINY, "steps": 2}), progress=False)
    other = sft.cached_sft(SFTConfig(**{**TINY, "steps": 3}), progress=False)
    assert a == again and a != other and len(calls) == 2
    assert a.is_relative_to(tmp_path / "rl-sft") and json.loads((a / "config.json").read_text())
