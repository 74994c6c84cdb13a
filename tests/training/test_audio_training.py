"""Training the tokenizer and the audio LM: checkpoints are atomic and resume reproduces the
uninterrupted run; a minimal end-to-end train + few-shot + generate; the `hysparse audio` CLI."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from hysparse_kernels.models.audio.io import load_checkpoint, read_wav, write_wav
from hysparse_kernels.training.audio import checkpoint, fewshot, synth
from hysparse_kernels.training.audio.pretrain import AudioPretrainConfig, pretrain
from hysparse_kernels.training.audio.tokenizer_train import TokenizerTrainConfig, train_tokenizer

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning"), pytest.mark.one_thread]

# a tokenizer small enough to train in seconds, with the LM's codebook sizes
TOK = dict(tokenizer={"channels": 8, "res_blocks": 1, "latent": 8}, batch=2, clip_frames=4, warmup=2, eval_clips=2, threads=1)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _crash_after(out, step):
    """Leave ``out`` as a crash right after checkpoint ``step`` would: later checkpoints and the
    final model gone, ``latest`` naming ``step``."""
    root = out / "checkpoints"
    for p in root.glob("step-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    (root / "latest").write_text(f"step-{step:06d}")
    shutil.rmtree(out / "final")


def test_tokenizer_training_resumes_exactly(tmp_path):
    a = train_tokenizer(TokenizerTrainConfig(steps=6, checkpoint_every=3, out=str(tmp_path / "a"), **TOK), progress=False)
    train_tokenizer(TokenizerTrainConfig(steps=6, checkpoint_every=3, out=str(tmp_path / "b"), **TOK), progress=False)
    _crash_after(tmp_path / "b", 3)
    b = train_tokenizer(TokenizerTrainConfig(steps=6, checkpoint_every=3, out=str(tmp_path / "b"), **TOK), resume=True,
                        progress=False)
    ra, rb = _rows(tmp_path / "a" / "metrics.jsonl"), _rows(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in rb] == list(range(6))
    for x, y in zip(ra, rb):
        assert x["total"] == pytest.approx(y["total"], rel=1e-6, abs=1e-7)
    assert a["mean"]["levels_8"]["mel_distance"] == pytest.approx(b["mean"]["levels_8"]["mel_distance"], rel=1e-5)
    assert set(a["bits_per_second"]) == {"levels_1", "levels_2", "levels_4", "levels_8"}
    assert (tmp_path / "b" / "loss.png").stat().st_size > 1000 and (tmp_path / "b" / "eval.json").exists()
    tok_a, tok_b = load_checkpoint(tmp_path / "a" / "final"), load_checkpoint(tmp_path / "b" / "final")
    assert all(torch.equal(x, y) for x, y in zip(tok_a.state_dict().values(), tok_b.state_dict().values()))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["latest", "step-000003", "step-000006"]


def test_checkpoint_pointer_must_name_a_complete_checkpoint(tmp_path):
    train_tokenizer(TokenizerTrainConfig(steps=1, checkpoint_every=1, out=str(tmp_path), **TOK), progress=False)
    assert checkpoint.latest(tmp_path).name == "step-000001"
    (tmp_path / "checkpoints" / "latest").write_text("step-000009")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.latest(tmp_path)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TokenizerTrainConfig(steps=2, checkpoint_every=2, out=str(out), **TOK), progress=False)
    return out / "final"


def _lm_cfg(tok, out, **kw):
    values = dict(tokenizer=str(tok), corpus_docs=6, eval_docs=2, steps=4, batch=2, max_len=40, decoder_patches=16,
                  warmup=1, checkpoint_every=2, out=str(out), threads=1)
    values.update(kw)
    return AudioPretrainConfig(**values)


def test_pretraining_resumes_exactly(tmp_path, tiny_tokenizer):
    a = pretrain(_lm_cfg(tiny_tokenizer, tmp_path / "a"), progress=False)
    pretrain(_lm_cfg(tiny_tokenizer, tmp_path / "b"), progress=False)
    _crash_after(tmp_path / "b", 2)
    b = pretrain(_lm_cfg(tiny_tokenizer, tmp_path / "b"), resume=True, progress=False)
    ra, rb = _rows(tmp_path / "a" / "metrics.jsonl"), _rows(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in rb] == [0, 1, 2, 3]
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6, abs=1e-7)
    assert a["held_out"]["total"] == pytest.approx(b["held_out"]["total"], rel=1e-6)
    assert len(a["unigram_entropy"]) == 8 and a["corpus_docs"] == 6
    lm = load_checkpoint(tmp_path / "b" / "final", expect="audio_lm")
    assert lm.cfg.name == "tiny-mimo-audio"


@pytest.mark.slow
def test_end_to_end_train_fewshot_and_generate(tmp_path, tiny_tokenizer):
    """A few steps of pretraining, every few-shot task once, and `hysparse audio generate` on a WAV."""
    pretrain(_lm_cfg(tiny_tokenizer, tmp_path / "lm", steps=20, corpus_docs=12, max_len=64), progress=False)
    rows = _rows(tmp_path / "lm" / "metrics.jsonl")
    assert np.mean([r["loss"] for r in rows[-5:]]) < np.mean([r["loss"] for r in rows[:5]])
    lm = load_checkpoint(tmp_path / "lm" / "final")
    tok = load_checkpoint(tiny_tokenizer)
    results = fewshot.evaluate(lm, tok, seed=0, episodes=1, shots=(0, 1))
    assert set(results) == set(fewshot.TASKS)
    for task, row in results.items():
        assert set(row["shots"]) == {"0", "1"}
        for scores in row["shots"].values():
            assert all(0.0 <= v <= 1.0 for v in scores.values() if not np.isnan(v))
    prompt = tmp_path / "prompt.wav"
    write_wav(prompt, synth.melody(np.random.default_rng(0), notes=[60, 64, 67])[0], 8000)
    res = _cli("generate", "--model", str(tmp_path / "lm" / "final"), "--tokenizer", str(tiny_tokenizer), "--prompt", str(prompt),
               "--seconds", "0.64", "--out", str(tmp_path / "out.wav"), "--png", str(tmp_path / "spec.png"))
    assert res.returncode == 0, res.stderr
    audio, rate = read_wav(tmp_path / "out.wav")
    prompt_audio, _ = read_wav(prompt)
    assert rate == 8000 and len(audio) == len(prompt_audio) + int(0.64 * 8000)
    assert (tmp_path / "spec.png").stat().st_size > 5000


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hysparse_kernels.cli", "audio", *args], capture_output=True, text=True)


def test_cli_tokenize_writes_codes_and_reconstruction(tmp_path, tiny_tokenizer):
    wav = tmp_path / "in.wav"
    write_wav(wav, synth.tone(np.random.default_rng(0), dur=0.5)[0], 16000)  # 4000 samples at 16 kHz: resampled to 2000
    res = _cli("tokenize", str(wav), "--tokenizer", str(tiny_tokenizer), "--out", str(tmp_path / "c.safetensors"),
               "--reconstruct", str(tmp_path / "r.wav"), "--levels", "4")
    assert res.returncode == 0, res.stderr
    assert "x 4 codebooks (25 Hz" in res.stdout
    from safetensors.torch import load_file

    codes = load_file(str(tmp_path / "c.safetensors"))["codes"]
    assert codes.shape == (7, 4)  # 2000 samples at 8 kHz = 6.25 frames of 320 -> 7
    audio, rate = read_wav(tmp_path / "r.wav")
    assert rate == 8000 and len(audio) == 2000


@pytest.mark.parametrize("args, message", [
    (["tokenize", "missing.wav", "--tokenizer", "."], "missing.wav: no such file"),
    (["tokenize", "{wav}", "--tokenizer", "{tmp}"], "config.json: missing"),
    (["tokenize", "{wav}", "--tokenizer", "{tok}", "--levels", "9"], "--levels: expected 1..8, got 9"),
    (["generate", "--model", "{tok}", "--tokenizer", "{tok}", "--out", "x.wav"], "expected a audio_lm checkpoint, got a tokenizer one"),
    (["generate", "--model", "{tok}", "--tokenizer", "{tok}", "--out", "x.wav", "--seconds", "0"], "--seconds: expected a positive number"),
])
def test_cli_errors_are_one_line(tmp_path, tiny_tokenizer, args, message):
    wav = tmp_path / "in.wav"
    write_wav(wav, np.zeros(800), 8000)
    args = [a.format(wav=wav, tmp=tmp_path, tok=tiny_tokenizer) for a in args]
    res = _cli(*args)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_cli_options_are_frozen():
    """Changing `hysparse audio`'s options is a deliberate act: update this list with it."""
    import argparse

    from hysparse_kernels.training.audio import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    got = {name: sorted(a.dest for a in p._actions if a.dest != "help") for name, p in sub.choices.items()}
    assert got["tokenize"] == ["levels", "out", "reconstruct", "tokenizer", "wav"]
    assert got["generate"] == ["model", "out", "png", "prompt", "seconds", "seed", "temperature", "text", "threads", "tokenizer", "top_k"]
    assert got["fewshot"] == ["episodes", "model", "out", "seed", "threads", "tokenizer"]
    assert "resume" in got["pretrain"] and "seed" in got["pretrain"] and "resume" in got["train-tokenizer"]


def test_resume_cuts_metrics_back_and_drops_a_line_cut_short(tmp_path):
    """A kill mid-write leaves half a line in metrics.jsonl: resuming keeps the rows before the
    checkpoint's step, drops the broken line with a warning, and restores model and optimizer."""
    from hysparse_kernels.models.audio import AudioTokenizer, TokenizerConfig

    model = AudioTokenizer(TokenizerConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    checkpoint.save(tmp_path, 2, model, opt)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in range(4)) + '{"step": 4, "lo')
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.warns(UserWarning, match="unreadable line"):
        start = checkpoint.resume_or_start(tmp_path, model, opt, resume=True)
    assert start == 2
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert checkpoint.resume_or_start(tmp_path, model, opt, resume=False) == 0
    assert not (tmp_path / "metrics.jsonl").exists()
