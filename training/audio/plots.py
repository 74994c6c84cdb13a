"""PNG figures of the audio runs (matplotlib, Agg): loss curves and spectrograms. Files are written
under a temporary name and renamed into place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png: Path) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    _plt().close(fig)
    tmp.replace(png)
    return png


def loss_curves(metrics_path: Path, png: Path, keys: list[str], title: str) -> Path:
    """One line per key of ``metrics.jsonl`` against the step."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines()]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, png)


def spectrograms(png: Path, panels: list[tuple[str, np.ndarray]], sample_rate: int, *, split: float | None = None) -> Path:
    """Stacked log spectrograms of ``(title, audio [N])`` panels; ``split`` (seconds) draws a line
    where a continuation starts."""
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.4 * len(panels)), squeeze=False)
    for ax, (title, audio) in zip(axes[:, 0], panels):
        audio = np.asarray(audio, dtype=np.float64)
        ax.specgram(audio + 1e-7, NFFT=256, Fs=sample_rate, noverlap=192, cmap="magma")
        if split is not None:
            ax.axvline(split, color="cyan", linestyle="--", linewidth=1.5)
        ax.set_title(title)
        ax.set_ylabel("Hz")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    return _save(fig, png)
