"""The audio tokenizer and its RVQ (round-trip shapes, codebook usage, EMA updates), the signal
helpers, and the files: WAV I/O and checkpoints."""

import math
import wave

import numpy as np
import pytest
import torch

from hysparse_kernels.models.audio import AudioLM, AudioTokenizer, TokenizerConfig, get_audio_config
from hysparse_kernels.models.audio.dsp import mel_distance, mel_filterbank, snr_db
from hysparse_kernels.models.audio.io import (AudioCheckpointError, load_checkpoint, read_wav, resample, save_checkpoint,
                                              write_wav)
from hysparse_kernels.models.audio.rvq import ResidualVQ

SMALL = TokenizerConfig(channels=16, res_blocks=1, latent=8, codebook_sizes=(16, 8, 8, 4))


pytestmark = pytest.mark.one_thread


def test_default_config_is_25_hz_with_8_codebooks():
    cfg = TokenizerConfig()
    assert cfg.samples_per_frame == 320 and cfg.frame_rate == 25.0 and cfg.num_codebooks == 8
    assert cfg.bits_per_second() == pytest.approx(25 * (7 + 7 + 6 * 5))
    assert cfg.bits_per_second(2) == pytest.approx(25 * 14)


@pytest.mark.parametrize("n", [320, 1000, 3200])
def test_round_trip_shapes(n):
    tok = AudioTokenizer(SMALL).eval()
    wav = torch.randn(2, n) * 0.1
    codes = tok.encode(wav)
    T = math.ceil(n / 320)
    assert codes.shape == (2, T, 4) and codes.dtype == torch.long
    assert all(int(codes[..., i].max()) < k for i, k in enumerate(SMALL.codebook_sizes)) and int(codes.min()) >= 0
    assert tok.encode(wav, levels=2).shape == (2, T, 2)
    assert torch.equal(tok.encode(wav[0]), codes[:1])  # [N] is a batch of one
    audio = tok.decode(codes)
    assert audio.shape == (2, T * 320) and torch.isfinite(audio).all()
    assert tok.decode(codes[..., :1]).shape == (2, T * 320)


def test_encode_never_updates_codebooks_and_forward_does_in_training():
    tok = AudioTokenizer(SMALL).train()
    before = [b.embed.clone() for b in tok.rvq.levels]
    tok.encode(torch.randn(2, 640))
    assert all(torch.equal(a, b.embed) for a, b in zip(before, tok.rvq.levels))
    tok(torch.randn(2, 640))
    assert all(bool(b.initialized) for b in tok.rvq.levels)
    assert not torch.equal(before[0], tok.rvq.levels[0].embed)


def test_rvq_kmeans_init_uses_the_codebook_and_each_level_refines():
    torch.manual_seed(0)
    rvq = ResidualVQ(4, (16, 16, 16)).train()
    z = torch.randn(8, 64, 4)
    rvq(z)  # k-means initialisation of every level on this batch's residuals
    rvq.eval()
    _, codes, _ = rvq(z)
    usage = rvq.usage(codes)
    assert all(u["used"] >= 0.75 and u["perplexity"] > 8 for u in usage)
    errors = [float((z - rvq.decode(codes[..., :L])).pow(2).mean()) for L in (1, 2, 3)]
    assert errors[0] < float(z.pow(2).mean()) and errors[1] < errors[0] and errors[2] < errors[1]


def test_rvq_straight_through_and_commitment():
    rvq = ResidualVQ(4, (8, 8)).train()
    z = torch.randn(2, 10, 4, requires_grad=True)
    q, codes, commit = rvq(z)
    torch.testing.assert_close(q.detach(), rvq.decode(codes))
    (q.sum() + commit).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()  # identity gradient + commitment
    assert float(commit.detach()) > 0


def test_dead_codes_are_restarted():
    rvq = ResidualVQ(2, (4,), dead_code_threshold=1.0).train()
    rvq(torch.randn(1, 32, 2))  # init
    book = rvq.levels[0]
    book.embed[3] = 1e6  # a code nobody is near
    book.cluster_size[3] = 0.0
    z = torch.randn(1, 64, 2)
    rvq(z)
    assert float(book.embed[3].abs().max()) < 100  # moved onto a residual of the batch


def test_decode_rejects_out_of_range_codes():
    tok = AudioTokenizer(SMALL)
    with pytest.raises(ValueError, match=r"codes\[\.\.\., 1\]: expected ids in \[0, 8\)"):
        tok.decode(torch.tensor([[[0, 8, 0, 0]]]))
    with pytest.raises(ValueError, match="wav: expected float"):
        tok.encode(torch.zeros(2, 3, 4))


def test_mel_filterbank_and_metrics():
    fb = mel_filterbank(256, 8000, 40)
    assert fb.shape == (40, 129) and float(fb.max()) <= 1.0 and bool((fb.sum(1) > 0).all())
    t = torch.arange(8000) / 8000
    a = torch.sin(2 * math.pi * 440 * t)[None]
    assert float(mel_distance(a, a, sample_rate=8000)) == 0
    half = float(mel_distance(a, 0.5 * a, sample_rate=8000))
    assert 0.1 < half <= math.log(2) + 1e-6  # ln 2 in bins far above the floor, less near it
    noisy = a + 0.01 * torch.randn_like(a)
    assert 30 < float(snr_db(a, noisy)) < 44  # 10 log10(0.5 / 1e-4) = 37 dB


# ---------------------------------------------------------------------------------- files


def test_wav_round_trip(tmp_path):
    audio = torch.sin(torch.linspace(0, 200, 4000)) * 0.8
    path = write_wav(tmp_path / "a.wav", audio, 8000)
    back, rate = read_wav(path)
    assert rate == 8000 and back.shape == audio.shape and back.dtype == torch.float32
    assert float((back - audio).abs().max()) <= 2 / 32767  # rounding + the 32767 / 32768 scale asymmetry of PCM
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_reads_pcm_widths_and_averages_channels(tmp_path, width):
    scale = {1: 127, 2: 32767, 3: 2 ** 23 - 1, 4: 2 ** 31 - 1}[width]
    left = np.array([0.5, -0.5, 0.25])
    right = np.array([0.0, 0.0, 0.25])
    ints = np.round(np.stack([left, right], 1) * scale).astype(np.int64).reshape(-1)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        raw = ints.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(tmp_path / "s.wav"), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(width)
        f.setframerate(16000)
        f.writeframes(raw)
    audio, rate = read_wav(tmp_path / "s.wav")
    assert rate == 16000
    np.testing.assert_allclose(audio.numpy(), (left + right) / 2, atol=2 / scale)


def test_wav_errors(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="not a readable PCM WAV file"):
        read_wav(tmp_path / "x.wav")
    with pytest.raises(ValueError, match=r"audio: expected mono \[N\]"):
        write_wav(tmp_path / "y.wav", torch.zeros(2, 10), 8000)


def test_resample_keeps_a_tone():
    t = torch.arange(16000) / 16000
    audio = torch.sin(2 * math.pi * 500 * t)
    out = resample(audio, 16000, 8000)
    assert out.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(out.numpy()))
    assert abs(int(spectrum.argmax()) - 500) <= 1  # 1 Hz bins over one second


@pytest.mark.parametrize("kind", ["tokenizer", "audio_lm"])
def test_checkpoint_round_trip_is_exact(tmp_path, kind):
    model = AudioTokenizer(SMALL).train() if kind == "tokenizer" else AudioLM(get_audio_config("tiny-mimo-audio"))
    if kind == "tokenizer":
        model(torch.randn(2, 640))  # buffers (EMA state) differ from a fresh model
    save_checkpoint(model, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck", expect=kind)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = "audio_lm" if kind == "tokenizer" else "tokenizer"
    with pytest.raises(AudioCheckpointError, match=f"expected a {other} checkpoint"):
        load_checkpoint(tmp_path / "ck", expect=other)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(AudioCheckpointError, match="config.json: missing"):
        load_checkpoint(tmp_path)
    save_checkpoint(AudioTokenizer(SMALL), tmp_path / "a")
    save_checkpoint(AudioTokenizer(TokenizerConfig(channels=16, res_blocks=1, latent=8, codebook_sizes=(16, 8))), tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").replace(tmp_path / "b" / "model.safetensors")  # weights of another shape
    with pytest.raises(AudioCheckpointError, match="keys do not match"):
        load_checkpoint(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(AudioCheckpointError, match="cannot read safetensors"):
        load_checkpoint(tmp_path / "b")
