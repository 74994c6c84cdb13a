"""Signal pieces the audio models and their metrics share: STFT log-magnitude, a mel filterbank,
log-mel spectrograms, the mel distance and the SNR. Waveforms are float ``[B, N]`` (or ``[N]``).

Example::

    mel = log_mel(wav, sample_rate=8000, n_fft=256, hop=80, n_mels=40)     # [B, 40, N // 80 + 1]
    mel_distance(ref, est, sample_rate=8000)                                 # mean |log-mel diff|
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


def _batch(wav: Tensor) -> Tensor:
    if wav.dim() == 1:
        return wav[None]
    if wav.dim() != 2:
        raise ValueError(f"wav: expected [N] or [B, N], got shape {tuple(wav.shape)}")
    return wav


def stft(wav: Tensor, n_fft: int, hop: int) -> Tensor:
    """Complex STFT [B, n_fft // 2 + 1, N // hop + 1] (Hann window, centred frames)."""
    wav = _batch(wav)
    window = torch.hann_window(n_fft, dtype=wav.dtype, device=wav.device)
    return torch.stft(wav, n_fft, hop, window=window, center=True, return_complex=True)


def istft(spec: Tensor, n_fft: int, hop: int, length: int) -> Tensor:
    """Inverse of ``stft``: complex [B, n_fft // 2 + 1, frames] -> [B, length]."""
    window = torch.hann_window(n_fft, dtype=spec.real.dtype, device=spec.device)
    return torch.istft(spec, n_fft, hop, window=window, center=True, length=length)


def _hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


@lru_cache(maxsize=16)
def _mel_matrix(n_fft: int, sample_rate: int, n_mels: int) -> Tensor:
    n_freqs = n_fft // 2 + 1
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    edges_mel = torch.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)  # [n_mels, n_freqs], triangles peaking at 1


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, *, dtype=torch.float32, device="cpu") -> Tensor:
    """Triangular filters on the HTK mel scale from 0 Hz to Nyquist: [n_mels, n_fft // 2 + 1]."""
    return _mel_matrix(n_fft, sample_rate, n_mels).to(dtype=dtype, device=device)


MEL_FLOOR = 1e-2  # mel magnitudes of full-scale audio reach ~100 at n_fft 256: a floor ~80 dB down


def log_mel(wav: Tensor, *, sample_rate: int, n_fft: int = 256, hop: int = 80, n_mels: int = 40, eps: float = MEL_FLOOR) -> Tensor:
    """Natural-log mel magnitudes [B, n_mels, N // hop + 1], ``log(mel + eps)``; the floor keeps
    digital silence and a faint noise floor from dominating distances."""
    mag = stft(wav, n_fft, hop).abs()
    fb = mel_filterbank(n_fft, sample_rate, n_mels, dtype=mag.dtype, device=mag.device)
    return torch.log(fb @ mag + eps)


def mel_distance(ref: Tensor, est: Tensor, *, sample_rate: int, n_fft: int = 256, hop: int = 80, n_mels: int = 40) -> Tensor:
    """Mean absolute log-mel difference per waveform [B] (0 for identical audio; ``log_mel``'s floor)."""
    ref, est = _batch(ref), _batch(est)
    if ref.shape != est.shape:
        raise ValueError(f"est: expected the shape of ref {tuple(ref.shape)}, got {tuple(est.shape)}")
    a = log_mel(ref, sample_rate=sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels)
    b = log_mel(est, sample_rate=sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels)
    return (a - b).abs().mean(dim=(1, 2))


def snr_db(ref: Tensor, est: Tensor) -> Tensor:
    """Signal-to-noise ratio ``10 log10(|ref|^2 / |ref - est|^2)`` per waveform [B], in dB."""
    ref, est = _batch(ref), _batch(est)
    if ref.shape != est.shape:
        raise ValueError(f"est: expected the shape of ref {tuple(ref.shape)}, got {tuple(est.shape)}")
    noise = (ref - est).pow(2).sum(-1).clamp(min=1e-12)
    return 10 * torch.log10(ref.pow(2).sum(-1).clamp(min=1e-12) / noise)
