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


def _save(fig, png: Path, dpi: int = 100) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
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


def spectrograms(png: Path, panels: list[tuple], sample_rate: int) -> Path:
    """Stacked log spectrograms of ``(title, audio [N])`` or ``(title, audio [N], split)`` panels;
    ``split`` (seconds) draws a line where a continuation starts."""
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.4 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        title, audio = panel[0], np.asarray(panel[1], dtype=np.float64)
        with np.errstate(divide="ignore"):  # digital silence has log 0
            ax.specgram(audio, NFFT=256, Fs=sample_rate, noverlap=192, cmap="magma")
        if len(panel) > 2 and panel[2] is not None:
            ax.axvline(panel[2], color="cyan", linestyle="--", linewidth=1.5)
        ax.set_title(title)
        ax.set_ylabel("Hz")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    return _save(fig, png, dpi=70)
