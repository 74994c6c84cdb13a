"""Training and evaluation of the audio tokenizer on synthetic clips.

Loss (in the spirit of MiMo-Audio's stage-1 reconstruction terms, without its text and GAN terms;
on the STFT magnitudes, since the waveform comes from phase retrieval): spectral convergence
``|S - S'| / |S|`` + L1 of the log-magnitudes (floored at log 1e-2) + L1 of the log-mel
magnitudes + ``commitment_weight * commit``.
Codebooks follow EMA (``rvq.py``). Batch ``i`` is drawn from ``numpy.random.default_rng((seed, i))``,
so a resumed run sees the batches of the uninterrupted one.

Outputs in ``out``: ``config.json``, ``metrics.jsonl``, ``loss.png``, ``checkpoints/`` (atomic,
``resume=True`` continues from the newest), ``final/`` (``load_checkpoint``-able) and ``eval.json``
(SNR and mel distance per kind and per number of RVQ levels, codebook usage, bits per second).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hysparse_kernels.models.audio import AudioTokenizer, TokenizerConfig
from hysparse_kernels.models.audio.dsp import MEL_FLOOR, mel_distance, mel_filterbank, snr_db
from hysparse_kernels.models.audio.io import save_checkpoint
from . import checkpoint, synth
from .plots import loss_curves



@dataclass
class TokenizerTrainConfig:
    tokenizer: dict = field(default_factory=dict)  # TokenizerConfig overrides
    steps: int = 1500
    batch: int = 16
    clip_frames: int = 32  # 1.28 s at 25 Hz
    lr: float = 2e-3
    quantizer_dropout: float = 0.5
    warmup: int = 50
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: torch's default); 1 is far faster on a loaded machine
    checkpoint_every: int = 250
    eval_clips: int = 48  # per kind
    out: str = "runs/audio/tokenizer"


def clip_batch(rng: np.random.Generator, batch: int, frames: int) -> torch.Tensor:
    """[batch, frames * 320] float32: random clips (sometimes two in a row), cropped or zero-padded."""
    n = frames * synth.FRAME
    out = np.zeros((batch, n), dtype=np.float32)
    for b in range(batch):
        pos = int(rng.integers(0, synth.FRAME * 4))
        while pos < n:
            clip, _ = synth.random_clip(rng)
            take = min(len(clip), n - pos)
            out[b, pos:pos + take] += clip[:take]
            pos += take + int(rng.integers(0, synth.FRAME * 6))
            if rng.random() < 0.5:
                break
    return torch.from_numpy(out)


def reconstruction_loss(tok: AudioTokenizer, wav: torch.Tensor, out: dict) -> dict:
    """Spectral convergence + log-magnitude L1 (floored at 1e-2) + log-mel L1 of the decoded
    magnitudes, + ``commitment_weight * commit``."""
    floor = math.log(1e-2)
    pred, target = out["logmag"], out["target_logmag"]
    mag_p, mag_t = pred.exp(), target.exp()
    convergence = torch.linalg.vector_norm(mag_t - mag_p, dim=(1, 2)) / torch.linalg.vector_norm(mag_t, dim=(1, 2)).clamp(min=1e-6)
    logmag = (pred.clamp(min=floor) - target.clamp(min=floor)).abs().mean()
    fb = mel_filterbank(tok.cfg.n_fft, tok.cfg.sample_rate, tok.cfg.n_mels)
    mel = (torch.log(fb @ mag_p + MEL_FLOOR) - torch.log(fb @ mag_t + MEL_FLOOR)).abs().mean()
    total = convergence.mean() + logmag + mel + tok.cfg.commitment_weight * out["commit"]
    return {"total": total, "convergence": convergence.mean(), "logmag": logmag, "mel": mel, "commit": out["commit"]}


def _lr(cfg: TokenizerTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_tokenizer(cfg: TokenizerTrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = AudioTokenizer(TokenizerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.tokenizer.items()}))
    optimizer = torch.optim.AdamW(tok.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.8, 0.99))
    metrics_path = out / "metrics.jsonl"
    start = checkpoint.resume_or_start(out, tok, optimizer, resume)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="tokenizer", unit="step")
    tok.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        wav = clip_batch(np.random.default_rng((cfg.seed, step)), cfg.batch, cfg.clip_frames)
        # quantizer dropout (SoundStream): half the batches use only the first L levels, so that
        # every prefix of the codes decodes (the LM's coarse-to-fine channels)
        drng = np.random.default_rng((cfg.seed, step, 1))
        levels = int(drng.integers(1, tok.cfg.num_codebooks + 1)) if drng.random() < cfg.quantizer_dropout else None
        losses = reconstruction_loss(tok, wav, tok(wav, levels))
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        optimizer.step()
        row = {"step": step, **{k: float(v.detach()) for k, v in losses.items()}, "lr": _lr(cfg, step)}
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mel=f"{row['mel']:.3f}", sc=f"{row['convergence']:.3f}", commit=f"{row['commit']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint.save(out, step + 1, tok, optimizer)
    if bar is not None:
        bar.close()
    tok.eval()
    save_checkpoint(tok, out / "final")
    if metrics_path.exists() and metrics_path.stat().st_size:
        loss_curves(metrics_path, out / "loss.png", ["convergence", "logmag", "mel", "commit"], "tokenizer training")
    report = evaluate_tokenizer(tok, clips_per_kind=cfg.eval_clips, seed=10_000 + cfg.seed)
    report["train_seconds"] = time.perf_counter() - t0
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


@torch.no_grad()
def evaluate_tokenizer(tok: AudioTokenizer, *, clips_per_kind: int = 48, seed: int = 10_000, frames: int = 32) -> dict:
    """Reconstruction quality on held-out clips of each kind: SNR (dB) and log-mel L1 distance
    with the first 1, 2, 4 and all RVQ levels; per-level codebook usage; bits per second."""
    tok.eval()
    cfg = tok.cfg
    sr = cfg.sample_rate
    rng = np.random.default_rng(seed)
    levels = sorted({1, 2, 4, cfg.num_codebooks} & set(range(1, cfg.num_codebooks + 1)))
    by_kind, all_codes = {}, []
    for kind in synth.KINDS:
        wav = np.zeros((clips_per_kind, frames * synth.FRAME), dtype=np.float32)
        for i in range(clips_per_kind):
            clip, _ = synth.random_clip(rng, kind)
            wav[i, :min(len(clip), wav.shape[1])] = clip[:wav.shape[1]]
        wav = torch.from_numpy(wav)
        codes = tok.encode(wav)
        all_codes.append(codes)
        row = {}
        for L in levels:
            rec = tok.decode(codes[..., :L])
            row[f"levels_{L}"] = {"snr_db": float(snr_db(wav, rec).mean()),
                                  "mel_distance": float(mel_distance(wav, rec, sample_rate=sr).mean())}
        row["silence_mel_distance"] = float(mel_distance(wav, torch.zeros_like(wav), sample_rate=sr).mean())
        by_kind[kind] = row
    codes = torch.cat(all_codes)
    mean = {f"levels_{L}": {m: float(np.mean([by_kind[k][f"levels_{L}"][m] for k in by_kind])) for m in ("snr_db", "mel_distance")}
            for L in levels}
    return {"sample_rate": sr, "frame_rate": cfg.frame_rate, "codebook_sizes": list(cfg.codebook_sizes),
            "bits_per_second": {f"levels_{L}": cfg.bits_per_second(L) for L in levels},
            "mean": mean, "by_kind": by_kind, "codebook_usage": tok.rvq.usage(codes),
            "silence_mel_distance": float(np.mean([by_kind[k]["silence_mel_distance"] for k in by_kind]))}

