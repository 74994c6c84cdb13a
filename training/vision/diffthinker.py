"""DiffThinker at tiny scale: a DiT trained by rectified flow to map puzzle images to solution
images, and its evaluation by the puzzles' pixel verifiers.

Training: AdamW, linear warm-up then cosine decay, gradient clipping at 1; batch ``i`` drawn by
``numpy.random.default_rng((seed, i))`` from the training set of all settings together.
Evaluation: ``steps`` Euler steps per sample; ``n_samples`` samples per puzzle from different
noise; a puzzle counts as solved at N when any of its first N samples passes the verifier
(verifier selection among parallel candidates), and "first-sample" accuracy is N = 1.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from hysparse_kernels.models.vision import DiT, DiTConfig, euler_sample, flow_matching_loss
from .data import PuzzleSet, to_images
from .puzzles import verify_image


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_dit(config: DiTConfig, data: PuzzleSet, *, steps: int, batch: int, lr: float, seed: int,
              edit: bool = False, log=None) -> tuple[DiT, list[dict]]:
    """Train a fresh DiT on ``data`` (``cond`` -> ``target``); returns it and per-step metrics.
    ``edit``: the flow generates the edit ``target - cond`` (added back to the puzzle when
    sampling) instead of the whole answer image."""
    torch.manual_seed(seed)
    model = DiT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    metrics = []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(np.random.default_rng((seed, step)).integers(0, len(data.keys), size=batch))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=max(1, steps // 20))
        x0 = data.target[idx] - data.cond[idx] if edit else data.target[idx]
        loss = flow_matching_loss(model, x0, data.cond[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        metrics.append({"step": step, "loss": float(loss.detach()), "seconds": time.perf_counter() - start})
        if log is not None:
            log(metrics[-1])
    return model, metrics


@torch.no_grad()
def sample_answers(model: DiT, data: PuzzleSet, *, steps: int, n_samples: int, seed: int,
                   edit: bool = False, chunk: int = 64) -> np.ndarray:
    """``[n_samples, N, px, px, 3]`` uint8 answer images (sample ``s`` uses noise seed ``(seed, s)``;
    ``edit``: the model generates edits, added to the puzzle)."""
    model.eval()
    out = []
    for s in range(n_samples):
        gen = torch.Generator().manual_seed(seed * 1000 + s)
        noise = torch.randn(data.cond.shape, generator=gen)
        parts = [euler_sample(model, data.cond[i:i + chunk], steps, noise=noise[i:i + chunk], bound=2.0 if edit else 1.0)
                 for i in range(0, len(data.keys), chunk)]
        if edit:
            parts = [p + data.cond[i:i + chunk] for p, i in zip(parts, range(0, len(data.keys), chunk))]
        out.append(to_images(torch.cat(parts)))
    return np.stack(out)


def score_images(data: PuzzleSet, answers: np.ndarray) -> np.ndarray:
    """``[n_samples, N]`` bool: verifier verdict of each sampled answer image."""
    return np.array([[verify_image(p, img) for p, img in zip(data.puzzles, sample)] for sample in answers])


def rates(data: PuzzleSet, verdicts: np.ndarray, ns=(1,)) -> dict:
    """Solve rate per setting (and ``all``) for best-of-N with verifier selection, N in ``ns``:
    ``{key: {"best_of_1": r, ...}}``."""
    keys = sorted(set(data.keys)) + ["all"]
    arr = np.array(data.keys)
    out = {}
    for key in keys:
        mask = np.ones(len(arr), bool) if key == "all" else arr == key
        out[key] = {f"best_of_{n}": float(verdicts[:n, mask].any(0).mean()) for n in ns if n <= len(verdicts)}
        out[key]["n"] = int(mask.sum())
    return out
