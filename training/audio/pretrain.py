"""Pretraining of the audio LM on the tokenized synthetic corpus (``corpus.py``).

Loss: MiMo-Audio's weighted next-position loss (``AudioLM.losses``: text 100, RVQ channels 12, 8,
6, 4, 2, 2, 1, 1, normalised by their sum). Batch ``i`` is drawn with
``numpy.random.default_rng((seed, i))``, so a resumed run sees the uninterrupted run's batches.

Outputs in ``out``: ``config.json``, ``corpus.safetensors`` (the tokenized corpus, reused by a
resumed run), ``metrics.jsonl``, ``loss.png``, ``checkpoints/`` (atomic; ``resume=True``),
``final/`` (``load_checkpoint``-able) and ``eval.json`` (held-out losses per channel against each
channel's unigram entropy: what a model that ignores context reaches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hysparse_kernels.models.audio import AudioLM, get_audio_config
from hysparse_kernels.models.audio.io import atomic_write, load_checkpoint, save_checkpoint
from . import checkpoint
from .corpus import Corpus, build_corpus, stack_docs
from .plots import loss_curves


@dataclass
class AudioPretrainConfig:
    model: str = "tiny-mimo-audio"
    tokenizer: str = "runs/audio/tokenizer/final"
    corpus_docs: int = 2400
    eval_docs: int = 120
    steps: int = 800
    batch: int = 8
    max_len: int = 192
    decoder_patches: int = 128  # patches per step the patch decoder trains on (of ~B * max_len)
    lr: float = 2e-3
    warmup: int = 40
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: torch's default); 1 is far faster on a loaded machine
    checkpoint_every: int = 200
    out: str = "runs/audio/lm-seed0"


def _lr(cfg: AudioPretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def save_corpus(corpus: Corpus, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {"text": corpus.text.int(), "audio": corpus.audio, "offsets": corpus.offsets}
    meta = {**meta, "kinds": json.dumps(corpus.kinds)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in meta.items()}))


def load_corpus(path: Path, meta: dict) -> Corpus | None:
    """The corpus at ``path`` if it was built with ``meta``; None otherwise."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).exists():
        return None
    with safe_open(str(path), "pt") as f:
        stored = f.metadata() or {}
    if any(stored.get(k) != str(v) for k, v in meta.items()):
        return None
    t = load_file(str(path))
    return Corpus(t["text"].long(), t["audio"], t["offsets"], json.loads(stored["kinds"]))


def corpus_for(cfg: AudioPretrainConfig, tokenizer, *, num_docs: int, seed: int, path: Path, progress: bool) -> Corpus:
    meta = {"tokenizer": _file_hash(Path(cfg.tokenizer) / "model.safetensors"), "docs": num_docs, "seed": seed}
    corpus = load_corpus(path, meta)
    if corpus is None:
        corpus = build_corpus(tokenizer, num_docs, seed, group_size=get_audio_config(cfg.model).group_size, progress=progress)
        save_corpus(corpus, path, meta)
    return corpus


def unigram_entropies(corpus: Corpus, cfg) -> list[float]:
    """Entropy (nats) of each channel's codes over the corpus' audio positions."""
    from hysparse_kernels.models.audio import EMPTY

    audio = corpus.audio[corpus.text == EMPTY].long()  # [N, P, C]
    out = []
    for c, size in enumerate(cfg.codebook_sizes):
        p = torch.bincount(audio[..., c].flatten(), minlength=size + 1).double()
        p = p[p > 0] / p.sum()
        out.append(float(-(p * p.log()).sum()))
    return out


@torch.no_grad()
def evaluate_lm(model: AudioLM, corpus: Corpus, *, batch: int = 8, max_len: int = 192) -> dict:
    """Mean held-out losses over every document of ``corpus`` (first ``max_len`` positions)."""
    model.eval()
    rows = []
    for s in range(0, len(corpus), batch):
        idx = list(range(s, min(len(corpus), s + batch)))
        text, audio = stack_docs([corpus.doc(i) for i in idx], max_len, model.cfg.empty_ids)
        out = model.losses(text, audio)
        rows.append((float(out["total"]), float(out["text"]), out["audio"].tolist()))
    model.train()
    return {"total": float(np.mean([r[0] for r in rows])), "text": float(np.mean([r[1] for r in rows])),
            "audio": np.nanmean(np.array([r[2] for r in rows]), axis=0).tolist()}


def pretrain(cfg: AudioPretrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = load_checkpoint(cfg.tokenizer, expect="tokenizer")
    model_cfg = get_audio_config(cfg.model)
    if tuple(tokenizer.cfg.codebook_sizes) != tuple(model_cfg.codebook_sizes):
        raise ValueError(f"tokenizer: codebook sizes {tokenizer.cfg.codebook_sizes} differ from the model's {model_cfg.codebook_sizes}")
    corpus = corpus_for(cfg, tokenizer, num_docs=cfg.corpus_docs, seed=cfg.seed, path=out / "corpus.safetensors", progress=progress)
    held_out = corpus_for(cfg, tokenizer, num_docs=cfg.eval_docs, seed=1_000_000 + cfg.seed, path=out / "eval_corpus.safetensors",
                          progress=False)
    model = AudioLM(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    metrics_path = out / "metrics.jsonl"
    start = checkpoint.resume_or_start(out, model, optimizer, resume)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain {cfg.model}", unit="step")
    model.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        text, audio = corpus.batch(np.random.default_rng((cfg.seed, step)), cfg.batch, cfg.max_len, model_cfg.empty_ids)
        losses = model.losses(text, audio, decoder_patches=cfg.decoder_patches,
                              generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        row = {"step": step, "loss": float(losses["total"].detach()), "text": float(losses["text"].detach()),
               "audio": [float(x) for x in losses["audio"].detach()], "lr": _lr(cfg, step)}
        row["audio_mean"] = float(np.mean(row["audio"]))
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", text=f"{row['text']:.3f}", audio=f"{row['audio_mean']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint.save(out, step + 1, model, optimizer, {"model": cfg.model})
    if bar is not None:
        bar.close()
    model.eval()
    save_checkpoint(model, out / "final")
    if metrics_path.exists() and metrics_path.stat().st_size:
        loss_curves(metrics_path, out / "loss.png", ["loss", "text", "audio_mean"], f"pretraining {cfg.model}")
    report = {"model": cfg.model, "steps": cfg.steps, "train_seconds": time.perf_counter() - t0,
              "held_out": evaluate_lm(model, held_out, batch=cfg.batch, max_len=cfg.max_len),
              "unigram_entropy": unigram_entropies(held_out, model_cfg),
              "corpus_positions": int(corpus.offsets[-1]), "corpus_docs": len(corpus)}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report
