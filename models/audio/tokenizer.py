"""The audio tokenizer: STFT log-magnitudes -> convolutional encoder -> RVQ codes at the frame rate
-> convolutional decoder -> STFT log-magnitudes -> waveform by fast Griffin-Lim phase retrieval
(the shape of MiMo-Audio's tokenizer, with convolutions in place of its Transformers; its
GAN-trained Vocos vocoder is replaced by phase retrieval, which needs no training).

At the default config: 8 kHz audio, STFT hop 80 (100 Hz), two stride-2 stages to 25 Hz, 8 RVQ
levels of 128, 128, 32 x 6 codes: ``25 * (7 + 7 + 6 * 5) = 1100`` bits per second.

Example::

    tok = AudioTokenizer(TokenizerConfig())
    codes = tok.encode(wav)            # wav [B, N] float -> long [B, ceil(N / 320), 8]
    audio = tok.decode(codes)          # [B, T * 320]
    tok.decode(codes[..., :2])         # coarser: the first two levels only
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TokenizerConfig
from .dsp import istft, stft
from .rvq import ResidualVQ

LOG_EPS = 1e-5


class ResBlock(nn.Module):
    """``x + conv1x1(gelu(conv3(gelu(x), dilation)))`` over [B, C, L]."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.gelu(self.conv(F.gelu(x))))


def _res_stack(channels: int, n: int) -> list[nn.Module]:
    return [ResBlock(channels, 3 ** i) for i in range(n)]


class Encoder(nn.Module):
    """Log-magnitude [B, F, 4T] (100 Hz) -> latent [B, latent, T] (25 Hz)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        C = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.n_fft // 2 + 1, C, 3, padding=1), *_res_stack(C, cfg.res_blocks)]
        for s in cfg.downsample:
            layers += [nn.GELU(), nn.Conv1d(C, C, 2 * s, stride=s, padding=s // 2), *_res_stack(C, cfg.res_blocks)]
        layers += [nn.GELU(), nn.Conv1d(C, cfg.latent, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        z = self.net((x + 4.0) / 4.0)  # log-magnitudes of audio in [-1, 1] span about [-11.5, 4]
        # unit RMS per frame: the codebooks live on a fixed scale the commitment loss cannot shrink
        return z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-6)


class Decoder(nn.Module):
    """Latent [B, latent, T] -> log-magnitude [B, F, 4T]."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        C, F_ = cfg.channels, cfg.n_fft // 2 + 1
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent, C, 3, padding=1), *_res_stack(C, cfg.res_blocks)]
        for s in reversed(cfg.downsample):
            # kernel 2s, stride s, padding s // 2: exactly s times longer (s even or 1)
            layers += [nn.GELU(), nn.ConvTranspose1d(C, C, 2 * s, stride=s, padding=s // 2), *_res_stack(C, cfg.res_blocks)]
        # a two-layer head per 100 Hz frame: a harmonic comb of any pitch is far from linear in
        # the features, so one linear map to the F bins underfits it
        layers += [nn.GELU(), nn.Conv1d(C, 2 * C, 1), nn.GELU(), nn.Conv1d(2 * C, F_, 1)]
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            layers[-1].bias.fill_(-5.0)  # start quiet: magnitudes near exp(-5)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).clamp(max=8.0)  # exp(8) ~ 3000: above any magnitude of audio in [-1, 1]


def griffin_lim(mag: Tensor, n_fft: int, hop: int, length: int, iters: int = 32, momentum: float = 0.99) -> Tensor:
    """Fast Griffin-Lim (Perraudin et al., 2013): a waveform [B, length] whose STFT magnitude
    approaches ``mag`` [B, F, frames] (centred frames). Starts from zero phase: deterministic."""
    angles = torch.ones_like(mag, dtype=torch.complex64 if mag.dtype != torch.float64 else torch.complex128)
    previous = torch.zeros_like(angles)
    for _ in range(iters):
        rebuilt = stft(istft(mag * angles, n_fft, hop, length), n_fft, hop)
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / angles.abs().clamp(min=1e-8)
        previous = rebuilt
    return istft(mag * angles, n_fft, hop, length)


class AudioTokenizer(nn.Module):
    """Waveform <-> RVQ codes (module docstring). ``forward`` is the training view."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.rvq = ResidualVQ(cfg.latent, cfg.codebook_sizes, decay=cfg.ema_decay, dead_code_threshold=cfg.dead_code_threshold)
        self.decoder = Decoder(cfg)

    # ------------------------------------------------------------------ pieces

    def pad(self, wav: Tensor) -> Tensor:
        """[B, N] -> [B, ceil(N / samples_per_frame) * samples_per_frame] with trailing zeros."""
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2 or not wav.is_floating_point():
            raise ValueError(f"wav: expected float [N] or [B, N], got {wav.dtype} of shape {tuple(wav.shape)}")
        spf = self.cfg.samples_per_frame
        if wav.shape[-1] == 0:
            raise ValueError("wav: expected at least one sample, got none")
        return F.pad(wav, (0, (-wav.shape[-1]) % spf))

    def features(self, wav: Tensor) -> Tensor:
        """Log-magnitude STFT frames [B, F, N / hop] of padded audio [B, N] (one frame per hop)."""
        n_frames = wav.shape[-1] // self.cfg.hop
        return torch.log(stft(wav, self.cfg.n_fft, self.cfg.hop).abs()[..., :n_frames] + LOG_EPS)

    def latent(self, wav: Tensor) -> Tensor:
        """Padded audio [B, N] -> encoder output [B, T, latent]."""
        return self.encoder(self.features(wav)).transpose(1, 2)

    def synthesize(self, z: Tensor, length: int, iters: int = 32) -> Tensor:
        """Quantized latent [B, T, latent] -> audio [B, length] (Griffin-Lim on the decoded magnitudes)."""
        logmag = self.decoder(z.transpose(1, 2))
        mag = torch.exp(torch.cat([logmag, logmag[..., -1:]], dim=-1))  # centred frames: N / hop + 1 of them
        return griffin_lim(mag, self.cfg.n_fft, self.cfg.hop, length, iters)

    def forward(self, wav: Tensor, levels: int | None = None) -> dict:
        """Training view on audio [B, N] (N a multiple of ``samples_per_frame``): ``codes`` [B, T, L],
        the ``commit`` loss, the decoded ``logmag`` and the input's ``target_logmag`` [B, F, N / hop]."""
        if wav.dim() != 2 or wav.shape[-1] % self.cfg.samples_per_frame:
            raise ValueError(f"wav: expected [B, N] with N a multiple of {self.cfg.samples_per_frame}, got shape {tuple(wav.shape)}")
        target = self.features(wav)
        quantized, codes, commit = self.rvq(self.encoder(target).transpose(1, 2), levels)
        return {"codes": codes, "commit": commit, "logmag": self.decoder(quantized.transpose(1, 2)), "target_logmag": target}

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def encode(self, wav: Tensor, levels: int | None = None) -> Tensor:
        """Audio [N] or [B, N] (padded with zeros to whole frames) -> codes long [B, T, levels].
        Never updates the codebooks, in training mode or not."""
        return self.rvq(self.latent(self.pad(wav)), levels, update=False)[1]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes long [B, T, L] (L <= num_codebooks: the first L levels) -> audio [B, T * samples_per_frame]."""
        if codes.dim() != 3:
            raise ValueError(f"codes: expected [B, T, L], got shape {tuple(codes.shape)}")
        z = self.rvq.decode(codes.long())
        return self.synthesize(z, codes.shape[1] * self.cfg.samples_per_frame)
