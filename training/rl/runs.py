"""The files every recipe run writes into its directory, written the same way by every recipe:

* ``config.json``: the run's settings (what ``--resume`` checks it continues);
* ``metrics.jsonl``: one JSON object per step (on resume, lines of steps not yet reached by the
  checkpoint are dropped, so the file is what an uninterrupted run writes);
* ``curves.png``: the metrics over steps;
* ``eval.json``: ``{"recipe", "task", "metric", "before", "after", "n_eval", ...}``;
* ``checkpoints/`` (``training.checkpoint``'s atomic layout) and ``final/`` (the model).

Every JSON file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from hysparse_kernels.training.pretrain import read_metrics as _read_jsonl


def write_json(path: Path, value) -> None:
    """Write ``value`` as JSON to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path):
    """The JSON value in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a JSONL file (none when it does not exist yet); lines cut short by a kill are
    skipped with a warning, as pretraining's ``read_metrics`` does."""
    path = Path(path)
    return _read_jsonl(path) if path.exists() else []


def prepare_out(out: Path, resume: bool, config: dict) -> None:
    """Before a run writes into ``out``: remove what a killed save left there, refuse a fresh run
    over an earlier run's checkpoints, and refuse to resume a run written with other settings."""
    from .. import checkpoint

    out = Path(out)
    checkpoint.remove_leftovers(out)
    if not resume and (earlier := checkpoint.candidates(out)):
        raise ValueError(f"--out: {out} holds checkpoints of an earlier run (newest {earlier[0].name}); "
                         f"pass --resume to continue it, or choose another --out")
    if resume:
        check_resume_config(out, config)


def truncate_metrics(path: Path, upto_step: int) -> None:
    """Keep the lines of steps ``< upto_step`` (what a checkpoint at ``upto_step`` has seen)."""
    rows = [r for r in read_metrics(path) if r["step"] < upto_step]
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".metrics.")
    with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def append_metrics(path: Path, row: dict) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def check_resume_config(out: Path, config: dict) -> None:
    """Refuse to resume a run directory written with other settings."""
    path = Path(out) / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k != "checkpoint_every")
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:4])
        raise ValueError(f"--resume: {out} was written with other settings ({changes})")


def plot_curves(metrics_path: Path, png: Path, keys: list[str], title: str = "") -> None:
    """One panel per metric in ``keys`` (those present), over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not rows or not keys:
        return
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes.flat, keys):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    tmp = Path(png).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar (None when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
